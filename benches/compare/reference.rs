//! The reference client: the floor any relay pays. A minimal tokio-tungstenite client that reads
//! each message, parses it with serde_json and writes one line per event to a buffered stdout.
//! No journal, no record, no sinks, no reconnect, no pings of its own.
//!
//! The benchmark runs it as a child process: `compare --reference-client <url> <connections>`.

use std::io::Write;

use futures_util::{FutureExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "Events", borrow)]
    events: Vec<&'a RawValue>,
}

/// Writes the events of one message, one line each.
fn write_events(out: &mut impl Write, text: &str) {
    if let Ok(envelope) = serde_json::from_str::<Envelope<'_>>(text) {
        for event in envelope.events {
            let _ = out.write_all(event.get().as_bytes());
            let _ = out.write_all(b"\n");
        }
    }
}

/// One connection until it ends: read, parse, write; flush when nothing more is waiting.
async fn connection(url: String, out: std::rc::Rc<std::cell::RefCell<impl Write>>) {
    let mut request = url.into_client_request().expect("URL");
    request.headers_mut().insert(
        "cookie",
        "ClientToken=REFERENCE; AccessToken=REFERENCE"
            .parse()
            .expect("header"),
    );
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(request).await else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        let mut next = Some(message);
        while let Some(message) = next.take() {
            if let Message::Text(text) = message {
                write_events(&mut *out.borrow_mut(), text.as_str());
            }
            // Whatever is already read goes out with this flush.
            if let Some(Some(Ok(more))) = ws.next().now_or_never() {
                next = Some(more);
            }
        }
        let _ = out.borrow_mut().flush();
    }
}

/// Runs `connections` clients on one thread until they all end.
pub fn main(url: &str, connections: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    let out = std::rc::Rc::new(std::cell::RefCell::new(std::io::BufWriter::with_capacity(
        64 * 1024,
        std::io::stdout().lock(),
    )));
    local.block_on(&rt, async {
        let tasks: Vec<_> = (0..connections)
            .map(|_| tokio::task::spawn_local(connection(url.to_owned(), out.clone())))
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    });
}

//! Helpers the benchmarks share: following an output file, percentiles, medians.
#![allow(dead_code)] // each benchmark uses part of it

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

/// Follows a growing file, handing each complete line to `on_line`, until `lines` were seen.
/// It shares the machine with the client it measures, so it copies only a line split across
/// two reads and finds line ends with `memchr`. (Byte by byte, with every read copied once
/// more, it took 6.2 % of the two cores' samples in a burst, against 2.5 % now: `perf record
/// -a` over 1.5 s of `-- --burst-events 1000000 burst`.)
pub fn tail(path: &Path, lines: usize, poll: Duration, mut on_line: impl FnMut(&[u8])) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !path.exists() {
        std::thread::sleep(poll);
    }
    let mut file = std::fs::File::open(path).unwrap();
    let (mut seen, mut buf, mut pending) = (0, vec![0u8; 1 << 20], Vec::new());
    while seen < lines {
        assert!(
            Instant::now() < deadline,
            "benchmark stalled at {seen} of {lines} lines in {}",
            path.display()
        );
        // A regular file's reads go on from where the last one stopped, also after an EOF.
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            std::thread::sleep(poll);
            continue;
        }
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', &buf[..n]) {
            if pending.is_empty() {
                on_line(&buf[start..end]);
            } else {
                pending.extend_from_slice(&buf[start..end]);
                on_line(&pending);
                pending.clear();
            }
            seen += 1;
            start = end + 1;
        }
        pending.extend_from_slice(&buf[start..n]);
    }
}

/// The `"SentNs":<n>` stamp in a line (the event carries the server's send time).
pub fn sent_ns(line: &[u8]) -> u128 {
    let text = std::str::from_utf8(line).unwrap();
    let at = text.find("\"SentNs\":").unwrap() + 9;
    let end = at + text[at..].find(['}', ',']).unwrap();
    text[at..end].parse().unwrap()
}

/// The p-th percentile of sorted durations (nearest rank).
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// The median (upper for an even count).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// What the mock server sends on the relay's connection.
pub enum Script {
    /// All messages as fast as the socket takes them.
    Burst(Vec<String>),
    /// `count` single-event messages, `rate` per second, each stamped with its send time.
    /// DeviceCommand ids are `ids[i]` when given, else `cmd-<i>`.
    Steady {
        count: usize,
        rate: u32,
        epoch: Instant,
        ids: Option<Vec<String>>,
    },
}

pub fn stamped(id: &str, sent_ns: u128) -> String {
    format!(
        r#"{{"Events":[{{"Type":"DeviceCommand","Id":"{id}","State":"Pending","SentNs":{sent_ns}}}]}}"#
    )
}

/// Serves one connection with the script; reports when sending started.
pub async fn serve(script: Script) -> (String, oneshot::Receiver<Instant>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws/connector", listener.local_addr().unwrap());
    let (started_tx, started_rx) = oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let _ = started_tx.send(Instant::now());
        match script {
            Script::Burst(messages) => {
                for m in messages {
                    ws.feed(Message::Text(m.into())).await.unwrap();
                }
                ws.flush().await.unwrap();
            }
            Script::Steady {
                count,
                rate,
                epoch,
                ids,
            } => {
                let mut tick =
                    tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                for i in 0..count {
                    tick.tick().await;
                    let sent = epoch.elapsed().as_nanos();
                    let id = ids
                        .as_ref()
                        .map_or_else(|| format!("cmd-{i}"), |ids| ids[i].clone());
                    ws.send(Message::Text(stamped(&id, sent).into()))
                        .await
                        .unwrap();
                }
            }
        }
        // Keep the connection open until the relay stops.
        while let Some(Ok(_)) = ws.next().await {}
    });
    (url, started_rx)
}

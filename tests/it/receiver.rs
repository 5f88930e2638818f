//! An in-process HTTP endpoint for the HTTP sink: it hands every request to the test and
//! answers from a script (default 200), over plain HTTP or TLS (optionally mTLS).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use crate::support::WAIT;

/// A request as the endpoint saw it.
pub struct Request {
    pub at: Instant,
    pub key: String,
    pub body: String,
    pub headers: HeaderMap,
}

impl Request {
    /// The records in the body (one object, or an array).
    pub fn records(&self) -> Vec<serde_json::Value> {
        match serde_json::from_str(&self.body).expect("the body is JSON") {
            serde_json::Value::Array(items) => items,
            one => vec![one],
        }
    }
}

/// How the endpoint answers one request.
#[derive(Clone)]
pub enum Reply {
    Ok,
    Status(u16, &'static str),
    RetryAfter(u16, &'static str),
    /// Waits this long before answering 200 (past the client's timeout).
    Slow(Duration),
}

struct Shared {
    script: Mutex<(VecDeque<Reply>, Reply)>,
    requests: mpsc::UnboundedSender<Request>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    requests: mpsc::UnboundedReceiver<Request>,
    stop: CancellationToken,
}

/// A port on 127.0.0.1 nothing listens on (until a receiver is started on it).
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn handle(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let reply = {
        let mut script = shared.script.lock().unwrap();
        let default = script.1.clone();
        script.0.pop_front().unwrap_or(default)
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let _ = shared.requests.send(Request {
        at: Instant::now(),
        key,
        body: String::from_utf8_lossy(&body).into_owned(),
        headers,
    });
    match reply {
        Reply::Ok => StatusCode::OK.into_response(),
        Reply::Status(code, body) => (StatusCode::from_u16(code).unwrap(), body).into_response(),
        Reply::RetryAfter(code, after) => {
            let mut response = (StatusCode::from_u16(code).unwrap(), "busy").into_response();
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static(after));
            response
        }
        Reply::Slow(delay) => {
            tokio::time::sleep(delay).await; // the endpoint's scripted slowness
            StatusCode::OK.into_response()
        }
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Receiver {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        Self::serve(listener, addr)
    }

    /// Over TLS; every handshake's outcome goes to the returned channel.
    pub async fn start_tls(
        config: rustls::ServerConfig,
    ) -> (Receiver, mpsc::UnboundedReceiver<Result<(), String>>) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let (handshakes_tx, handshakes) = mpsc::unbounded_channel();
        let listener = TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            handshakes: handshakes_tx,
        };
        (Self::serve(listener, addr), handshakes)
    }

    fn serve<L>(listener: L, addr: SocketAddr) -> Receiver
    where
        L: axum::serve::Listener<Addr = SocketAddr>,
    {
        let (tx, requests) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            script: Mutex::new((VecDeque::new(), Reply::Ok)),
            requests: tx,
        });
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let stop = CancellationToken::new();
        tokio::spawn(
            axum::serve(listener, router)
                .with_graceful_shutdown(stop.clone().cancelled_owned())
                .into_future(),
        );
        Receiver {
            addr,
            shared,
            requests,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    /// Answers for the next requests, in order; then the default.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.script.lock().unwrap().0.extend(replies);
    }

    /// The answer once the script is used up.
    pub fn set_default(&self, reply: Reply) {
        self.shared.script.lock().unwrap().1 = reply;
    }

    pub async fn next(&mut self) -> Request {
        timeout(WAIT, self.requests.recv())
            .await
            .expect("timed out waiting for a request")
            .expect("receiver stopped")
    }

    /// Forgets the requests received so far.
    pub fn forget(&mut self) {
        while self.requests.try_recv().is_ok() {}
    }

    /// Collects requests until they hold `n` records in all.
    pub async fn records(&mut self, n: usize) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while out.len() < n {
            out.extend(self.next().await.records());
        }
        out
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handshakes: mpsc::UnboundedSender<Result<(), String>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            match self.acceptor.accept(tcp).await {
                Ok(tls) => {
                    let _ = self.handshakes.send(Ok(()));
                    return (tls, addr);
                }
                Err(err) => {
                    let _ = self.handshakes.send(Err(err.to_string()));
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

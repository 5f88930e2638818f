//! Shared test helpers: scripted WebSocket servers on 127.0.0.1:0, the relay in-process or as
//! a child process, and waits that turn a hang into a clear failure.

#![allow(clippy::result_large_err)] // tungstenite's handshake callback returns its ErrorResponse by value

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use mews_relay::app::{AppError, Control};
use mews_relay::config::{CredentialsDir, Settings};
use mews_relay::stats::Stats;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

mod child;
pub use child::*;

/// Every wait in these tests ends within this, or the test fails saying what it waited for.
pub const WAIT: Duration = Duration::from_secs(10);

pub const CLIENT_TOKEN: &str = "E0D439EE522F44368DC78E1BFB03710C-D24FB11DBE31D4621C4817E028D9E1D";
pub const ACCESS_TOKEN: &str = "C66EF7B239D24632943D115EDE9CB810-EA00F8FD8294692C940F6B5A8F9453D";

/// An accepted WebSocket connection, handed to the test to script. A background reader
/// answers pings (like a live server) and forwards every frame the relay sends to `incoming`.
pub struct Conn {
    tx: SplitSink<WebSocketStream<TcpStream>, Message>,
    pub incoming: mpsc::UnboundedReceiver<Message>,
    reader: JoinHandle<()>,
    socket: socket2::Socket,
    pub cookie: Option<String>,
    pub at: Instant,
}

impl Conn {
    fn new(
        ws: WebSocketStream<TcpStream>,
        socket: socket2::Socket,
        cookie: Option<String>,
    ) -> Conn {
        let (tx, mut rx) = ws.split();
        let (frames, incoming) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Some(Ok(message)) = rx.next().await {
                let _ = frames.send(message);
            }
        });
        Conn {
            tx,
            incoming,
            reader,
            socket,
            cookie,
            at: Instant::now(),
        }
    }

    pub async fn send(&mut self, text: &str) {
        self.tx
            .send(Message::Text(text.into()))
            .await
            .expect("mock server send");
    }

    pub async fn send_message(&mut self, message: Message) {
        self.tx.send(message).await.expect("mock server send");
    }

    /// Sends, and says whether the connection took it (false once the relay closed it).
    pub async fn try_send(&mut self, message: Message) -> bool {
        self.tx.send(message).await.is_ok()
    }

    /// Sends `text` and a Close frame in one write, so that the relay reads both at once.
    pub async fn send_and_close(&mut self, text: &str) {
        self.tx
            .feed(Message::Text(text.into()))
            .await
            .expect("mock server feed");
        let _ = self.tx.feed(Message::Close(None)).await;
        let _ = self.tx.flush().await;
    }

    /// Sends a Close frame (a clean close).
    pub async fn close(&mut self) {
        let _ = self.tx.send(Message::Close(None)).await;
    }

    /// Stops reading: no more pongs, like a peer that vanished without a FIN or RST.
    pub fn go_silent(&self) {
        self.reader.abort();
    }

    /// Ends the TCP connection with a reset (RST), no Close frame.
    pub fn reset(self) {
        self.socket
            .set_linger(Some(Duration::ZERO))
            .expect("set linger");
        // Dropping closes the last descriptor; with linger 0 that sends the RST.
        drop(self);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The upgrade request's Cookie header.
fn cookie_of(req: &Request) -> Option<String> {
    req.headers()
        .get("cookie")
        .map(|v| v.to_str().unwrap_or_default().to_owned())
}

/// A mock Mews WebSocket server; each accepted connection arrives on `conns`.
pub struct MockServer {
    pub addr: SocketAddr,
    conns: mpsc::UnboundedReceiver<Conn>,
    reject: Arc<std::sync::atomic::AtomicU16>,
    /// Upgrades whose cookie holds this token are answered with this status.
    reject_token: Arc<std::sync::Mutex<Option<(String, u16)>>>,
    attempts: Arc<std::sync::atomic::AtomicUsize>,
}

/// A rejected upgrade attempt seen by [`RejectingServer`].
pub struct Attempt {
    pub at: Instant,
    pub cookie: Option<String>,
}

impl MockServer {
    pub async fn start() -> MockServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, conns) = mpsc::unbounded_channel();
        let reject = Arc::new(std::sync::atomic::AtomicU16::new(0));
        let rejecting = Arc::clone(&reject);
        let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counting = Arc::clone(&attempts);
        let reject_token = Arc::new(std::sync::Mutex::new(None::<(String, u16)>));
        let rejecting_token = Arc::clone(&reject_token);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let tx = tx.clone();
                let status = rejecting.load(std::sync::atomic::Ordering::Relaxed);
                let by_token = rejecting_token.lock().unwrap().clone();
                tokio::spawn(async move {
                    let mut cookie = None;
                    let callback = |req: &Request, resp: Response| {
                        cookie = cookie_of(req);
                        let status = match (&by_token, &cookie) {
                            (Some((token, code)), Some(c)) if c.contains(token.as_str()) => *code,
                            _ => status,
                        };
                        if status != 0 {
                            let mut refusal = ErrorResponse::new(None);
                            *refusal.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            return Err(refusal);
                        }
                        Ok::<_, ErrorResponse>(resp)
                    };
                    let socket = socket2::SockRef::from(&tcp)
                        .try_clone()
                        .expect("dup socket");
                    if let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await {
                        let _ = tx.send(Conn::new(ws, socket, cookie));
                    }
                });
            }
        });
        MockServer {
            addr,
            conns,
            reject,
            reject_token,
            attempts,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws/connector", self.addr)
    }

    /// TCP connections accepted so far (accepted upgrades and rejected ones).
    pub fn attempts(&self) -> usize {
        self.attempts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// From now on, answer upgrades with this HTTP status (None: accept again).
    pub fn reject_with(&self, status: Option<u16>) {
        self.reject
            .store(status.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    }

    /// From now on, answer upgrades whose cookie holds `token` with `status` (the others as
    /// before): one property refused, another accepted.
    pub fn reject_token(&self, token: &str, status: u16) {
        *self.reject_token.lock().unwrap() = Some((token.to_owned(), status));
    }

    /// A connection made since the last look, if any (no waiting).
    pub fn try_next(&mut self) -> Option<Conn> {
        self.conns.try_recv().ok()
    }

    /// The next connection the relay makes.
    pub async fn next(&mut self) -> Conn {
        timeout(WAIT, self.conns.recv())
            .await
            .expect("timed out waiting for the relay to connect")
            .expect("mock server stopped")
    }
}

/// A server that answers every upgrade with `status`.
pub struct RejectingServer {
    pub addr: SocketAddr,
    attempts: mpsc::UnboundedReceiver<Attempt>,
}

impl RejectingServer {
    pub async fn start(status: u16) -> RejectingServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, attempts) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let callback = |req: &Request, _resp: Response| {
                        let _ = tx.send(Attempt {
                            at: Instant::now(),
                            cookie: cookie_of(req),
                        });
                        let mut resp = ErrorResponse::new(Some("unauthorized".into()));
                        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Err(resp)
                    };
                    let _ = tokio_tungstenite::accept_hdr_async(tcp, callback).await;
                });
            }
        });
        RejectingServer { addr, attempts }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws/connector", self.addr)
    }

    pub async fn next(&mut self) -> Attempt {
        timeout(WAIT, self.attempts.recv())
            .await
            .expect("timed out waiting for a connection attempt")
            .expect("server stopped")
    }
}

/// A config with fast timings for tests; `sinks` is TOML for the `[[sink]]` tables.
pub fn config_text(url: &str, state_dir: &Path, sinks: &str) -> String {
    format!(
        r#"
[mews]
websocket_url = "{url}"
client_token = "{CLIENT_TOKEN}"

[[property]]
name = "old-town"
access_token = "{ACCESS_TOKEN}"

[connection]
ping_interval = "1s"
pong_timeout = "3s"
connect_timeout = "2s"
backoff_min = "20ms"
backoff_max = "200ms"
healthy_after = "5s"
max_message_size = "4KiB"

[state]
dir = "{dir}"

[shutdown]
grace_period = "5s"

{sinks}
"#,
        dir = state_dir.display()
    )
}

/// A temporary directory in memory (`/dev/shm`, where the machine has one), for a test whose
/// bound is about something other than the disk: under other writes to the disk, one durable
/// journal commit was measured to hold every record, enrichment or not, for 300-770 ms.
pub fn memory_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    match shm.is_dir() {
        true => tempfile::tempdir_in(shm).unwrap(),
        false => tempfile::tempdir().unwrap(),
    }
}

/// Writes `<dir>/relay.toml` for the child-process tests and returns its path.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `config_text` with a stdout sink, written to `<dir>/relay.toml`.
pub fn stdout_config(dir: &Path, url: &str) -> PathBuf {
    write_config(dir, &config_text(url, dir, "[[sink]]\ntype = \"stdout\"\n"))
}

/// A file sink at `path` as a TOML table.
pub fn file_sink(path: &Path) -> String {
    format!(
        "[[sink]]\ntype = \"file\"\npath = \"{}\"\nfsync = \"always\"\n",
        path.display()
    )
}

/// A mock server, a temporary state dir, and the relay in-process with one file sink at `out`.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub server: MockServer,
    pub out: PathBuf,
    pub relay: Relay,
    /// The config the relay runs with, to start it again.
    pub config: String,
}

impl Harness {
    /// Hands `text` to the running relay as a reloaded config (what SIGHUP does with the
    /// file).
    pub fn reload(&self, text: &str) {
        let settings = mews_relay::config::Settings::from_toml(
            text,
            std::path::Path::new("test.toml"),
            &mews_relay::config::CredentialsDir::default(),
        )
        .unwrap();
        self.relay
            .steer
            .reloads
            .request(Ok(std::sync::Arc::new(settings)));
    }

    /// [`Harness::reload`], then waits until the relay says the reload changed `what`.
    pub async fn reload_changing(&self, text: &str, what: &str) {
        self.reload(text);
        wait_until("the reload is applied", || {
            self.relay
                .stats
                .last_reload
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|r| r.outcome.as_ref().is_ok_and(|c| c.contains(what)))
        })
        .await;
    }

    pub async fn start() -> Harness {
        Self::start_with(|config| config).await
    }

    /// `edit` may change the config text (timings, extra sinks) before the relay starts.
    pub async fn start_with(edit: impl FnOnce(String) -> String) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let server = MockServer::start().await;
        let out = dir.path().join("out.jsonl");
        let config = edit(config_text(&server.url(), dir.path(), &file_sink(&out)));
        let relay = Relay::start(&config);
        Harness {
            dir,
            server,
            out,
            relay,
            config,
        }
    }
}

/// The relay running in this process.
pub struct Relay {
    pub control: Control,
    pub steer: mews_relay::app::ControlHandle,
    pub stats: Arc<Stats>,
    handle: JoinHandle<Result<(), AppError>>,
}

impl Relay {
    pub fn start(config: &str) -> Relay {
        let settings =
            Settings::from_toml(config, Path::new("test.toml"), &CredentialsDir::default())
                .expect("test config is valid");
        Self::start_with(settings)
    }

    pub fn start_with(settings: Settings) -> Relay {
        // `TEST_LOG=debug cargo test …` shows the in-process relay's logs.
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let (control, steer) = Control::new();
        let stats = Arc::new(Stats::default());
        let handle = tokio::spawn(mews_relay::app::run_with_stats(
            settings,
            control.clone(),
            Arc::clone(&stats),
        ));
        Relay {
            control,
            steer,
            stats,
            handle,
        }
    }

    /// Whether `run` has not returned yet.
    pub fn is_running(&self) -> bool {
        !self.handle.is_finished()
    }

    /// Waits for `run` to return on its own (e.g. a start-up error).
    pub async fn ended(self) -> Result<(), AppError> {
        timeout(WAIT, self.handle)
            .await
            .expect("relay did not end in time")
            .expect("relay task panicked")
    }

    /// Shuts down and waits for `run` to return.
    pub async fn stop(self) {
        self.control.shutdown.cancel();
        timeout(WAIT, self.handle)
            .await
            .expect("relay did not stop in time")
            .expect("relay task panicked")
            .expect("relay ended with an error");
    }
}

/// Waits until `path` holds at least `n` lines, then returns them parsed.
pub async fn wait_for_lines(path: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() >= n {
            return lines
                .iter()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
                .collect();
        }
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {n} lines in {}; it has {}:\n{text}",
                path.display(),
                lines.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `count()` reaches `target`, failing only when it stops growing for `WAIT`: for
/// a wait whose length is the machine's speed (a debug build beside other builds), not the
/// relay's behaviour.
pub async fn wait_for_progress(what: &str, target: u64, mut count: impl FnMut() -> u64) {
    let (mut last, mut since) = (count(), Instant::now());
    loop {
        let now = count();
        if now >= target {
            return;
        }
        if now > last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() > WAIT {
            panic!("timed out waiting until {what}: no progress in {WAIT:?}, at {now} of {target}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `check` holds, polling; `what` names it in the failure.
pub async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        if Instant::now() > deadline {
            panic!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `{"Events":[…]}` with DeviceCommand events numbered `from..to`.
pub fn commands(from: usize, to: usize) -> String {
    let events: Vec<String> = (from..to)
        .map(|i| format!(r#"{{"Type":"DeviceCommand","Id":"cmd-{i}","State":"Pending"}}"#))
        .collect();
    format!(r#"{{"Events":[{}]}}"#, events.join(","))
}

/// An HTTP client (rustls with this crate's provider).
pub fn http_client() -> reqwest::Client {
    let tls = mews_relay::tls::client_config(&[], None).unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .build()
        .unwrap()
}

/// A REST endpoint for the relay: while down it accepts connections and never answers (like
/// an overloaded API behind a load balancer); while up it passes them through to `target`.
pub struct RestGate {
    pub url: String,
    up: Arc<std::sync::atomic::AtomicBool>,
}

impl RestGate {
    /// Starts down; `target` is the real REST server (e.g. the simulator), if any.
    pub async fn start(target: Option<SocketAddr>) -> RestGate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let is_up = Arc::clone(&up);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                match target.filter(|_| is_up.load(std::sync::atomic::Ordering::SeqCst)) {
                    Some(target) => {
                        tokio::spawn(async move {
                            if let Ok(mut upstream) = TcpStream::connect(target).await {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut socket, &mut upstream).await;
                            }
                        });
                    }
                    None => held.push(socket),
                }
            }
        });
        RestGate { url, up }
    }

    /// From now on, new connections reach the target (held ones stay unanswered).
    pub fn open(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Waits until the async `check` holds, polling; `what` names it in the failure.
pub async fn wait_until_async<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        if Instant::now() > deadline {
            panic!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! One WebSocket session: connect, then read, decode and journal until it ends, and say why.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use http::header::{COOKIE, HeaderValue};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use tracing::Instrument;

use super::Source;
use super::progress::{Counted, Progress};
use crate::mews::command_key;
use crate::mews::enrich::{DEVICE_COMMAND, prepare};
use crate::record::decode;
use crate::rejects::Payload;

type Ws = WebSocketStream<MaybeTlsStream<Counted<TcpStream>>>;

/// Messages up to this many times `max_message_size` are read (then rejected); larger ones
/// break the connection, since they cannot be read without holding them whole.
const HARD_LIMIT_FACTOR: u64 = 64;

/// Bytes read from the socket at a time (tungstenite's default is 128 KiB per connection).
const READ_BUFFER: usize = 16 * 1024;

/// How a session ended without an error.
#[derive(Debug)]
pub(crate) enum SessionEnd {
    /// Shutdown was requested; a Close frame (1001) was sent.
    Shutdown,
    /// The server closed the connection, with or without a Close frame.
    Closed(Option<CloseFrame>),
}

/// Why a session failed. No variant ever holds a token.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("invalid WebSocket URL: {0}")]
    Url(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("no connection within {0:?} (connect_timeout)")]
    ConnectTimeout(Duration),
    #[error("Mews rejected the WebSocket upgrade with HTTP {0}: {hint}", hint = rejection_hint(*.0))]
    Rejected(http::StatusCode),
    #[error("WebSocket handshake failed: {0}")]
    Handshake(tungstenite::Error),
    #[error("no frame within {0:?} after a ping (pong_timeout): the connection is dead")]
    PongTimeout(Duration),
    #[error("connection lost: {0}")]
    Read(tungstenite::Error),
    #[error("a message did not complete within {0:?} ({1} bytes of it read; message_timeout)")]
    MessageTimeout(Duration, u64),
    #[error("the journal has stopped")]
    JournalClosed,
}

impl SessionError {
    /// A few words for the status line.
    pub(crate) fn short(&self) -> String {
        match self {
            SessionError::Rejected(status) => status.as_u16().to_string(),
            SessionError::ConnectTimeout(_) => "connect timeout".into(),
            SessionError::PongTimeout(_) => "no pong".into(),
            SessionError::Connect { source, .. } => source.kind().to_string(),
            SessionError::Handshake(_) => "handshake failed".into(),
            SessionError::Read(_) => "connection lost".into(),
            SessionError::MessageTimeout(..) => "message timeout".into(),
            SessionError::Url(_) => "bad URL".into(),
            SessionError::JournalClosed => "stopping".into(),
        }
    }
}

/// What an HTTP answer to the upgrade most likely means, and the fix. A wrong path or host is
/// answered like a missing page (Mews answers 404 off `/ws/connector`); wrong tokens and an
/// integration without WebSocket events are refused (401, 403).
pub(crate) fn rejection_hint(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 404 | 405 | 410 => {
            "the URL is wrong, not the tokens: check mews.websocket_url, which must be wss://ws.mews.com/ws/connector (production) or wss://ws.mews-demo.com/ws/connector (demo): the path /ws/connector, on the WebSocket host (ws.…), not the API host (api.…)"
        }
        401 | 403 => {
            "check client_token and this property's access_token (tokens differ between demo and production), and ask Mews support to enable WebSocket events for the integration"
        }
        300..=399 => {
            "the server redirects, so mews.websocket_url points at a web address, not the WebSocket: use wss://, the WebSocket host (ws.…) and the path /ws/connector"
        }
        429 => "too many connection attempts; it passes by itself",
        500..=599 => {
            "a problem on Mews's side (or a proxy's) that usually passes; if it lasts, ask Mews support"
        }
        _ => "check mews.websocket_url and the tokens",
    }
}

/// What a session came to, and how long it was connected.
pub(crate) struct Outcome {
    pub connected_for: Option<Duration>,
    pub result: Result<SessionEnd, SessionError>,
}

impl Source {
    /// Connects once and reads until the connection ends or shutdown.
    pub(crate) async fn session(&self, shutdown: &CancellationToken) -> Outcome {
        let limit = self.connection.connect_timeout;
        let ws = tokio::select! {
            () = shutdown.cancelled() => return Outcome { connected_for: None, result: Ok(SessionEnd::Shutdown) },
            res = timeout(limit, self.connect()) => match res {
                Err(_) => Err(SessionError::ConnectTimeout(limit)),
                Ok(res) => res,
            },
        };
        let ws = match ws {
            Ok(ws) => ws,
            Err(err) => {
                return Outcome {
                    connected_for: None,
                    result: Err(err),
                };
            }
        };
        let connected = Instant::now();
        tracing::info!(url = %self.url, "connected");
        self.stats.set_link(
            &self.name,
            crate::stats::Link::Connected(connected.into_std()),
        );
        crate::stats::Stats::add(&self.stats.connections, 1);
        // Mews does not replay what was missed: catch up over REST while reading live events.
        let catch_up = self.catch_up.as_ref().map(|job| {
            let stop = CancellationToken::new();
            let task = Arc::clone(job).run(stop.clone());
            tokio::spawn(task.instrument(tracing::Span::current()));
            stop.drop_guard()
        });
        let result = self.read(ws, shutdown).await;
        drop(catch_up);
        Outcome {
            connected_for: Some(connected.elapsed()),
            result,
        }
    }

    async fn connect(&self) -> Result<Ws, SessionError> {
        let mut request = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|err| SessionError::Url(err.to_string()))?;
        // Rebuilt on every connect; marked sensitive so no debug output shows it.
        let cookie = format!(
            "ClientToken={}; AccessToken={}",
            self.client_token.expose(),
            self.access_token.expose()
        );
        let mut cookie = HeaderValue::from_str(&cookie).map_err(|_| {
            SessionError::Url("a token holds characters a cookie cannot carry".into())
        })?;
        cookie.set_sensitive(true);
        request.headers_mut().insert(COOKIE, cookie);

        let uri = request.uri();
        let tls = uri.scheme_str() == Some("wss");
        let host = uri
            .host()
            .ok_or_else(|| SessionError::Url("no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let addr = format!("{host}:{port}");
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|source| SessionError::Connect {
                addr: addr.clone(),
                source,
            })?;
        self.tune(&tcp);

        let hard_limit = usize::try_from(
            self.connection
                .max_message_size
                .saturating_mul(HARD_LIMIT_FACTOR),
        )
        .unwrap_or(usize::MAX);
        // Small buffers: a relay may hold a thousand of these. Reads grow a message as needed;
        // writes are only pings and the close frame.
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0)
            .max_message_size(Some(hard_limit))
            .max_frame_size(Some(hard_limit));
        let connector = Connector::Rustls(Arc::clone(&self.tls));
        let (ws, _response) = tokio_tungstenite::client_async_tls_with_config(
            request,
            Counted::new(tcp),
            Some(config),
            Some(connector),
        )
        .await
        .map_err(|err| match err {
            tungstenite::Error::Http(response) => SessionError::Rejected(response.status()),
            other => SessionError::Handshake(other),
        })?;
        Ok(ws)
    }

    /// TCP keepalive, so a peer that vanished is noticed even between pings; no Nagle delay.
    fn tune(&self, tcp: &TcpStream) {
        let sock = socket2::SockRef::from(tcp);
        let idle = self.connection.tcp_keepalive;
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval((idle / 3).max(Duration::from_secs(1)))
            .with_retries(3);
        if let Err(err) = sock.set_tcp_keepalive(&keepalive) {
            tracing::debug!(error = %err, "cannot enable TCP keepalive");
        }
        let _ = tcp.set_nodelay(true);
    }

    async fn read(
        &self,
        mut ws: Ws,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, SessionError> {
        let ping_every = self.connection.ping_interval;
        let pong_timeout = self.connection.pong_timeout;
        let next_ping = Instant::now() + ping_every;
        // Set when a ping is out and no frame has arrived since.
        let mut dead_at: Option<Instant> = None;
        let mut progress = Progress::new(
            ws.get_ref().get_ref().counter(),
            self.connection.message_timeout,
        );
        let next_check = Instant::now() + progress.check_every();
        // Messages whose records were queued for the journal and not yet committed (see the
        // last branch).
        let mut queued = 0;
        // However the session ends, what it queued is committed by the writer's thread.
        let _kick = Kick(&self.journal);
        // Made once and reset when their time moves: a timer made in the loop would be
        // registered and removed again for every message.
        let cancelled = shutdown.cancelled();
        let ping = sleep_until(next_ping);
        let check = sleep_until(next_check);
        let dead = sleep_until(next_ping);
        tokio::pin!(cancelled, ping, check, dead);
        loop {
            tokio::select! {
                biased;
                () = &mut cancelled => {
                    let frame = CloseFrame { code: CloseCode::Away, reason: "mews-relay is shutting down".into() };
                    let _ = timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
                    return Ok(SessionEnd::Shutdown);
                }
                () = &mut ping, if dead_at.is_none() => {
                    match timeout(pong_timeout, ws.send(Message::Ping(Default::default()))).await {
                        Err(_) => return Err(SessionError::PongTimeout(pong_timeout)),
                        Ok(Err(err)) => return Err(SessionError::Read(err)),
                        Ok(Ok(())) => {}
                    }
                    let now = Instant::now();
                    dead_at = Some(now + pong_timeout);
                    dead.as_mut().reset(now + pong_timeout);
                    ping.as_mut().reset(now + ping_every);
                }
                // Before the read branch: a stream of fragments keeps that branch busy.
                () = &mut check => {
                    let now = Instant::now();
                    check.as_mut().reset(now + progress.check_every());
                    if let Some(bytes) = progress.overdue(now) {
                        crate::stats::Stats::add(&self.stats.messages_timed_out, 1);
                        return Err(SessionError::MessageTimeout(self.connection.message_timeout, bytes));
                    }
                }
                msg = ws.next() => {
                    dead_at = None;
                    match &msg {
                        Some(Ok(control @ (Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {
                            progress.control(control.len());
                        }
                        _ => progress.message(),
                    }
                    match msg {
                        Some(Ok(Message::Text(text))) => {
                            self.on_text(text.as_str(), queued >= BURST).await?;
                            queued += 1;
                        }
                        Some(Ok(Message::Binary(data))) => {
                            self.rejects.reject(&self.stats, &self.name, "binary message", Payload::Binary(&data));
                        }
                        Some(Ok(Message::Close(frame))) => return Ok(SessionEnd::Closed(frame)),
                        Some(Ok(_)) => {}
                        Some(Err(tungstenite::Error::Utf8(err))) => {
                            self.rejects.reject(&self.stats, &self.name, &format!("text message is not valid UTF-8: {err}"), Payload::Missing);
                        }
                        Some(Err(err)) => return Err(SessionError::Read(err)),
                        None => return Ok(SessionEnd::Closed(None)),
                    }
                }
                // After the read branch: frames already waiting (e.g. while the journal was busy)
                // prove the connection alive before the deadline is judged.
                () = &mut dead, if dead_at.is_some() => {
                    return Err(SessionError::PongTimeout(pong_timeout));
                }
                // Last: the socket holds nothing more, so what was read is committed now, on
                // this task if the journal is free (no hand-off to another thread at a steady
                // rate); in a burst the writer's thread already has it.
                () = std::future::ready(()), if queued > 0 => {
                    self.journal.commit_queued();
                    queued = 0;
                }
            }
        }
    }

    /// Decodes a message and queues its records for the journal; `burst`: the messages before
    /// are still queued (see [`crate::journal::Journal::queue`]).
    async fn on_text(&self, text: &str, burst: bool) -> Result<(), SessionError> {
        let limit = self.connection.max_message_size;
        if text.len() as u64 > limit {
            let reason = format!(
                "message of {} bytes is over max_message_size ({limit})",
                text.len()
            );
            self.rejects
                .reject(&self.stats, &self.name, &reason, Payload::Text(text));
            return Ok(());
        }
        match decode(&self.name, text, SystemTime::now()) {
            Ok(mut records) => {
                let dedupe = self.dedupe_commands();
                let mut failed = 0;
                for record in &mut records {
                    if dedupe
                        && let (Some(DEVICE_COMMAND), Some(id), Some(state)) =
                            (record.kind.as_deref(), &record.id, &record.state)
                    {
                        record.dedupe = Some(command_key(&self.name, id, state));
                    }
                    // Journaled now; the enricher settles it behind the journal.
                    if let Some(health) = &self.enrich {
                        failed += u64::from(prepare(record, &self.name, health));
                    }
                }
                crate::stats::Stats::add(&self.stats.enrich_failed, failed);
                self.journal
                    .queue(records, burst)
                    .await
                    .map_err(|_| SessionError::JournalClosed)
            }
            Err(err) => {
                self.rejects.reject(
                    &self.stats,
                    &self.name,
                    &err.to_string(),
                    Payload::Text(text),
                );
                Ok(())
            }
        }
    }
}

/// After this many messages read back to back (their records queued, not yet committed), the
/// journal's writer thread commits them while the reader goes on. Two or three in a row are
/// timing, not a burst: the reader commits those itself.
const BURST: usize = 4;

/// Wakes the journal's writer when a session ends, for whatever it queued and did not commit.
struct Kick<'a>(&'a crate::journal::Journal);

impl Drop for Kick<'_> {
    fn drop(&mut self) {
        self.0.kick();
    }
}

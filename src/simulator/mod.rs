//! A Mews-compatible server for `simulate`, `demo` and tests: the WebSocket (cookie auth,
//! realistic events of the four documented types at a chosen rate), the REST operations the
//! relay uses over an in-memory hotel ([`Hotel`]), General webhooks, and faults on demand.

mod events;
mod hotel;
mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Path;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header::COOKIE};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use events::EventFactory;
pub use hotel::Hotel;

/// How a dropped connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DropMode {
    /// A TCP reset, no Close frame (the socket is closed with SO_LINGER 0).
    #[default]
    Reset,
    /// A Close frame (1012, service restart), then the TCP close.
    Close,
}

/// The path Mews serves its WebSocket on.
pub const WS_PATH: &str = "/ws/connector";

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Events per second on each connection.
    pub rate: f64,
    /// Events in one `{"Events":[…]}` message.
    pub events_per_message: usize,
    /// When set, the `ClientToken` cookie must equal it; otherwise any value is accepted.
    pub client_token: Option<String>,
    /// When set, the `AccessToken` cookie must equal it; otherwise any value is accepted.
    pub access_token: Option<String>,
    /// When set, General webhooks are POSTed here (include `?Token=…`), one every 2 seconds.
    pub webhook_url: Option<String>,
    /// Fault: each connection is dropped this long after it opened.
    pub drop_every: Option<Duration>,
    /// Fault: how connections are dropped.
    pub drop_mode: DropMode,
    /// Fault: this long after it opened, a connection goes silent (no events, no pongs).
    pub silent_after: Option<Duration>,
    /// Fault: every upgrade is refused with this status (e.g. 401 or 503).
    pub reject_status: Option<u16>,
    /// Fault: every n-th message is malformed (0: never).
    pub malformed_every: u32,
    /// Fault: every n-th REST call is answered 429 with `Retry-After: 1` (0: never).
    pub rest_429_every: u32,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            rate: 2.0,
            events_per_message: 1,
            client_token: None,
            access_token: None,
            webhook_url: None,
            drop_every: None,
            drop_mode: DropMode::Reset,
            silent_after: None,
            reject_status: None,
            malformed_every: 0,
            rest_429_every: 0,
        }
    }
}

struct Shared {
    config: SimulatorConfig,
    shutdown: CancellationToken,
    hotel: Arc<Hotel>,
}

/// The REST operations live under this path (`api_url` is the server's root).
pub const REST_PATH: &str = "/api/connector/v1";

/// Serves a new hotel until `shutdown`, then closes every connection with 1001. Two key
/// commands are already pending, as if made before the relay connected: its catch-up finds them.
pub async fn serve(
    listener: TcpListener,
    config: SimulatorConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let hotel = Arc::new(Hotel::new());
    for _ in 0..2 {
        hotel.create_key_command(false);
    }
    serve_hotel(listener, config, hotel, shutdown).await
}

/// The same with a hotel the caller holds (tests create commands and reservations in it).
pub async fn serve_hotel(
    listener: TcpListener,
    config: SimulatorConfig,
    hotel: Arc<Hotel>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Some(url) = config.webhook_url.clone() {
        tokio::spawn(webhooks::send(url, shutdown.clone()));
    }
    hotel.throttle_every(config.rest_429_every);
    let reset = config.drop_mode == DropMode::Reset && config.drop_every.is_some();
    let shared = Arc::new(Shared {
        config,
        shutdown: shutdown.clone(),
        hotel,
    });
    let app = Router::new()
        .route(WS_PATH, get(upgrade))
        .route(&format!("{REST_PATH}/{{*operation}}"), post(rest))
        .with_state(shared);
    let listener = listener.tap_io(move |tcp| {
        let _ = tcp.set_nodelay(true);
        if reset {
            // Closing then sends a reset instead of a FIN: the "RST" fault.
            let _ = socket2::SockRef::from(&*tcp).set_linger(Some(Duration::ZERO));
        }
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
}

/// `POST /api/connector/v1/<operation>` with the tokens in the JSON body.
async fn rest(
    State(shared): State<Arc<Shared>>,
    Path(operation): Path<String>,
    body: Bytes,
) -> Response {
    let reply = |status: u16, body: serde_json::Value| {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    };
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return reply(400, serde_json::json!({"Message": "Invalid JSON"}));
    };
    let token_ok = |name: &str, expected: &Option<String>| match (body[name].as_str(), expected) {
        (Some(value), Some(expected)) => value == expected,
        (Some(value), None) => !value.is_empty(),
        (None, _) => false,
    };
    if !token_ok("ClientToken", &shared.config.client_token)
        || !token_ok("AccessToken", &shared.config.access_token)
    {
        return reply(
            401,
            serde_json::json!({"Message": "The provided ClientToken or AccessToken is invalid or has expired."}),
        );
    }
    if body["Client"].as_str().is_none_or(str::is_empty) {
        return reply(400, serde_json::json!({"Message": "Invalid Client"}));
    }
    match shared.hotel.rest(&operation, &body) {
        Ok(answer) => reply(200, answer),
        Err((429, after, message)) => {
            let mut response = reply(429, serde_json::json!({ "Message": message }));
            if let Ok(value) = axum::http::HeaderValue::from_str(&after.to_string()) {
                response
                    .headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, value);
            }
            response
        }
        Err((status, _, message)) => reply(status, serde_json::json!({ "Message": message })),
    }
}

/// The value of one cookie in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

async fn upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let accepted = |name: &str, expected: &Option<String>| match (cookie(&headers, name), expected)
    {
        (Some(value), Some(expected)) => value == expected,
        (Some(value), None) => !value.is_empty(),
        (None, _) => false,
    };
    shared.hotel.upgrade_requested();
    if let Some(status) = shared.config.reject_status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        tracing::info!(%peer, status = status.as_u16(), "simulator: upgrade refused (--reject)");
        return (status, "refused by the simulator (--reject)").into_response();
    }
    if !accepted("ClientToken", &shared.config.client_token)
        || !accepted("AccessToken", &shared.config.access_token)
    {
        tracing::info!(%peer, "simulator: upgrade rejected (401): missing or wrong ClientToken/AccessToken cookie");
        return (
            StatusCode::UNAUTHORIZED,
            "missing or wrong ClientToken/AccessToken cookie",
        )
            .into_response();
    }
    let owner: Arc<str> = Arc::from(cookie(&headers, "AccessToken").unwrap_or_default());
    ws.on_upgrade(move |socket| stream_events(socket, shared, peer, owner))
}

async fn stream_events(socket: WebSocket, shared: Arc<Shared>, peer: SocketAddr, owner: Arc<str>) {
    tracing::info!(%peer, "simulator: client connected");
    shared.hotel.connection_opened();
    let (mut tx, mut rx) = socket.split();
    let config = &shared.config;
    let per_message = config.events_per_message.max(1);
    let period = Duration::from_secs_f64(per_message as f64 / config.rate.max(0.001));
    // The first event comes one period after the connect, not at once.
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut factory = EventFactory::new();
    let mut live = shared.hotel.subscribe();
    let opened = tokio::time::Instant::now();
    let far = opened + Duration::from_secs(86_400 * 365);
    let drop_at = config.drop_every.map_or(far, |d| opened + d);
    let silent_at = config.silent_after.map_or(far, |d| opened + d);
    let mut sent = 0u64;
    loop {
        let message = tokio::select! {
            () = shared.shutdown.cancelled() => {
                let frame = CloseFrame { code: 1001, reason: "simulator shutting down".into() };
                let _ = tx.send(Message::Close(Some(frame))).await;
                break;
            }
            () = tokio::time::sleep_until(drop_at) => {
                tracing::info!(%peer, mode = ?config.drop_mode, "simulator: dropping the connection (--drop-every)");
                if config.drop_mode == DropMode::Close {
                    let frame = CloseFrame { code: 1012, reason: "simulator: service restart".into() };
                    let _ = tx.send(Message::Close(Some(frame))).await;
                }
                break;
            }
            () = tokio::time::sleep_until(silent_at) => {
                tracing::info!(%peer, "simulator: going silent (--silent-after): no events, no pongs");
                shared.shutdown.cancelled().await;
                break;
            }
            // Reading answers pings and notices the client leaving.
            incoming = rx.next() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => continue,
            },
            Ok(text) = live.recv() => text,
            _ = ticks.tick() => {
                let events: Vec<serde_json::Value> =
                    (0..per_message).map(|_| shared.hotel.next_event(&mut factory, &owner)).collect();
                serde_json::json!({ "Events": events }).to_string()
            }
        };
        sent += 1;
        let message = if config.malformed_every > 0
            && sent.is_multiple_of(u64::from(config.malformed_every))
        {
            r#"{"Events":[{"Type":"DeviceCommand","Id":"#.to_owned()
        } else {
            message
        };
        if tx.send(Message::Text(message.into())).await.is_err() {
            break;
        }
    }
    shared.hotel.connection_closed();
    tracing::info!(%peer, "simulator: client disconnected");
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn cookies_are_found_with_or_without_spaces() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("ClientToken=abc;AccessToken=def"),
        );
        assert_eq!(cookie(&headers, "ClientToken"), Some("abc"));
        assert_eq!(cookie(&headers, "AccessToken"), Some("def"));
        headers.insert(
            COOKIE,
            HeaderValue::from_static("ClientToken=abc; AccessToken=def"),
        );
        assert_eq!(cookie(&headers, "AccessToken"), Some("def"));
        assert_eq!(cookie(&headers, "Client"), None);
    }
}

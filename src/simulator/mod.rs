//! A Mews-compatible WebSocket server for `simulate`, `demo` and tests: cookie auth and
//! realistic events of the four documented types at a chosen rate.

mod events;
mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header::COOKIE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use events::EventFactory;

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
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            rate: 2.0,
            events_per_message: 1,
            client_token: None,
            access_token: None,
            webhook_url: None,
        }
    }
}

struct Shared {
    config: SimulatorConfig,
    shutdown: CancellationToken,
}

/// Serves until `shutdown`, then closes every connection with 1001.
pub async fn serve(
    listener: TcpListener,
    config: SimulatorConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Some(url) = config.webhook_url.clone() {
        tokio::spawn(webhooks::send(url, shutdown.clone()));
    }
    let shared = Arc::new(Shared {
        config,
        shutdown: shutdown.clone(),
    });
    let app = Router::new()
        .route(WS_PATH, get(upgrade))
        .with_state(shared);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
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
    ws.on_upgrade(move |socket| stream_events(socket, shared, peer))
}

async fn stream_events(socket: WebSocket, shared: Arc<Shared>, peer: SocketAddr) {
    tracing::info!(%peer, "simulator: client connected");
    let (mut tx, mut rx) = socket.split();
    let config = &shared.config;
    let per_message = config.events_per_message.max(1);
    let period = Duration::from_secs_f64(per_message as f64 / config.rate.max(0.001));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut factory = EventFactory::new();
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => {
                let frame = CloseFrame { code: 1001, reason: "simulator shutting down".into() };
                let _ = tx.send(Message::Close(Some(frame))).await;
                break;
            }
            // Reading answers pings and notices the client leaving.
            incoming = rx.next() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = ticks.tick() => {
                let message = factory.message(per_message);
                if tx.send(Message::Text(message.into())).await.is_err() {
                    break;
                }
            }
        }
    }
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

//! The simulator's WebSocket: cookie auth on the upgrade, then a stream of events from the
//! hotel at the configured rate plus the command events REST calls cause, with the connection
//! faults (drop, silence, malformed messages) on demand.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header::COOKIE};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};

use super::{DropMode, EventFactory, Shared};

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

pub(super) async fn upgrade(
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

/// Events for one connection until it ends; `owner` is its AccessToken (its property).
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
            Ok(live) = live.recv() => {
                if !live.is_for(&owner) {
                    continue;
                }
                live.message
            }
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

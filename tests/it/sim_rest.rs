//! The simulator's REST side answers as Mews does: commands move only through
//! `commands/update` (Mews's states, final states refuse further updates), `getAllActive`
//! returns Pending and Received, every answer carries a `Request-Id`, errors are Mews's
//! `{"Message","RequestId"}`; and `POST /sim/commands` makes a key command on demand.

use std::sync::Arc;

use futures_util::StreamExt;
use mews_relay::simulator::{self, CommandState, Hotel, SimulatorConfig};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::*;

/// A simulator serving `hotel`; returns its address.
async fn start_hotel(
    hotel: Arc<Hotel>,
    config: SimulatorConfig,
) -> (std::net::SocketAddr, CancellationToken) {
    simulator::serve_hotel_locally(hotel, config).await.unwrap()
}

/// An answer of the simulator's HTTP side.
struct Answer {
    status: u16,
    request_id: Option<String>,
    retry_after: Option<String>,
    body: Value,
}

/// POSTs `body` to `path` as JSON.
async fn post(addr: std::net::SocketAddr, path: &str, body: &Value) -> Answer {
    let response = http_client()
        .post(format!("http://{addr}{path}"))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (status, request_id, retry_after) = (
        response.status().as_u16(),
        header("Request-Id"),
        header("Retry-After"),
    );
    let bytes = response.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        request_id,
        retry_after,
        body,
    }
}

/// Calls a Mews REST operation with the test tokens and `Client` added to `body`.
async fn rest(addr: std::net::SocketAddr, operation: &str, mut body: Value) -> Answer {
    for (key, value) in [
        ("ClientToken", CLIENT_TOKEN),
        ("AccessToken", ACCESS_TOKEN),
        ("Client", "mews-relay tests"),
    ] {
        if body.get(key).is_none() {
            body[key] = value.into();
        }
    }
    post(
        addr,
        &format!("{}/{operation}", simulator::REST_PATH),
        &body,
    )
    .await
}

/// The active commands as (id, state).
async fn active(addr: std::net::SocketAddr) -> Vec<(String, String)> {
    let answer = rest(addr, "commands/getAllActive", json!({})).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body["Commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["Id"].as_str().unwrap().to_owned(),
                c["State"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn update(addr: std::net::SocketAddr, id: &str, state: &str) -> Answer {
    rest(
        addr,
        "commands/update",
        json!({"CommandId": id, "State": state}),
    )
    .await
}

/// Like Mews, the simulator never moves a command by itself: its busy stream creates new
/// Pending commands only, and a command stays Pending, and in `getAllActive`, across
/// connections until `commands/update` moves it.
#[tokio::test]
async fn a_command_stays_pending_until_updated_even_across_reconnects() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let hotel = Arc::new(Hotel::new());
    let (addr, stop) = start_hotel(
        Arc::clone(&hotel),
        SimulatorConfig {
            rate: 1000.0,
            events_per_message: 20,
            ..SimulatorConfig::default()
        },
    )
    .await;
    let id = hotel.create_key_command(false);
    for _connection in 0..2 {
        let mut request = format!("ws://{addr}{}", simulator::WS_PATH)
            .into_client_request()
            .unwrap();
        let cookie = format!("ClientToken={CLIENT_TOKEN};AccessToken={ACCESS_TOKEN}");
        request
            .headers_mut()
            .insert("Cookie", cookie.parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let mut commands = 0;
        while commands < 100 {
            let message = tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("an event within WAIT")
                .unwrap()
                .unwrap();
            let message: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
            for event in message["Events"].as_array().unwrap() {
                if event["Type"] == "DeviceCommand" {
                    assert_eq!(event["State"], "Pending", "only new commands: {event}");
                    assert_ne!(event["Id"], id.as_str());
                    commands += 1;
                }
            }
        }
        drop(ws);
        let still = active(addr).await;
        assert!(
            still.contains(&(id.clone(), "Pending".into())),
            "{id} missing from {still:?}"
        );
        assert!(
            still.iter().all(|(_, state)| state == "Pending"),
            "{still:?}"
        );
    }
    assert_eq!(update(addr, &id, "Received").await.status, 200);
    assert!(
        active(addr)
            .await
            .contains(&(id.clone(), "Received".into()))
    );
    assert_eq!(hotel.command_state(&id), Some(CommandState::Received));
    stop.cancel();
}

/// Processed, Cancelled and Error are final: any further update gets Mews's answer for a
/// resource in an invalid state, `400 Invalid CommandId`, with the request's id.
#[tokio::test]
async fn a_final_state_refuses_further_updates_with_mews_error() {
    let hotel = Arc::new(Hotel::new());
    let (addr, stop) = start_hotel(Arc::clone(&hotel), quiet()).await;
    for last in ["Processed", "Cancelled", "Error"] {
        let id = hotel.create_key_command(false);
        let done = rest(
            addr,
            "commands/update",
            json!({"CommandId": id, "State": last, "Notes": "desk closed"}),
        )
        .await;
        assert_eq!((done.status, &done.body), (200, &json!({})));
        for next in ["Received", "Processing", "Processed", "Cancelled", "Error"] {
            let refused = update(addr, &id, next).await;
            assert_eq!(refused.status, 400, "{last} -> {next}: {}", refused.body);
            let message = refused.body["Message"].as_str().unwrap();
            assert!(message.starts_with("Invalid CommandId"), "{message}");
            assert!(message.contains(last), "{message}");
            assert_eq!(
                refused.body["RequestId"].as_str(),
                refused.request_id.as_deref()
            );
        }
        let by_id = rest(addr, "commands/getAllByIds", json!({"CommandIds": [id]})).await;
        assert_eq!(by_id.body["Commands"][0]["State"], last);
    }
    let accepted: Vec<&str> = hotel.updates().iter().map(|u| u.state.as_str()).collect();
    assert_eq!(accepted, ["Processed", "Cancelled", "Error"]);
    assert_eq!(
        hotel.updates()[0].notes.as_deref(),
        Some("desk closed"),
        "Notes kept with a final state"
    );
    stop.cancel();
}

/// `getAllActive` returns the Pending and Received commands and nothing else; a command that
/// left them (Processing or final) cannot come back by an update to Received.
#[tokio::test]
async fn get_all_active_returns_pending_and_received_only() {
    let hotel = Arc::new(Hotel::new());
    let (addr, stop) = start_hotel(Arc::clone(&hotel), quiet()).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        let made = post(addr, simulator::SIM_COMMANDS_PATH, &json!({"KeyCount": 2})).await;
        assert_eq!(made.status, 200, "{}", made.body);
        ids.push(made.body["CommandId"].as_str().unwrap().to_owned());
    }
    for (id, state) in
        ids[1..]
            .iter()
            .zip(["Received", "Processing", "Processed", "Cancelled", "Error"])
    {
        assert_eq!(update(addr, id, state).await.status, 200, "{state}");
    }
    let back = update(addr, &ids[2], "Received").await;
    assert_eq!(back.status, 400);
    assert!(
        back.body["Message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid State")
    );
    let pending = update(addr, &ids[1], "Pending").await;
    assert_eq!(pending.status, 400, "only Mews makes a command Pending");
    assert_eq!(
        active(addr).await,
        [
            (ids[0].clone(), "Pending".to_owned()),
            (ids[1].clone(), "Received".to_owned())
        ]
    );
    stop.cancel();
}

/// Every answer carries a `Request-Id` header, and error bodies are `{"Message", "RequestId"}`
/// with the same id: 200, 400, 401, 403, 404, 408 and 429 (the last three from the fault flags;
/// `rest_429_without_retry_after` leaves `Retry-After` out).
#[tokio::test]
async fn every_rest_answer_carries_a_request_id() {
    let hotel = Arc::new(Hotel::new());
    let (addr, stop) = start_hotel(
        Arc::clone(&hotel),
        SimulatorConfig {
            access_token: Some(ACCESS_TOKEN.into()),
            rest_403: vec!["reservations/getAll/2023-06-06".into()],
            rest_408_above: Some(100),
            ..quiet()
        },
    )
    .await;
    let id = hotel.create_key_command(false);
    let limitation = |count: u64| json!({"CommandIds": [id], "Limitation": {"Count": count}});
    let answers = [
        (200, rest(addr, "commands/getAllActive", json!({})).await),
        (
            400,
            rest(addr, "commands/getAllActive", json!({"Client": ""})).await,
        ),
        (
            401,
            rest(
                addr,
                "commands/getAllActive",
                json!({"AccessToken": "other"}),
            )
            .await,
        ),
        (
            403,
            rest(
                addr,
                "reservations/getAll/2023-06-06",
                json!({"Limitation": {"Count": 10}}),
            )
            .await,
        ),
        (404, rest(addr, "commands/getAllActive/", json!({})).await),
        (
            408,
            rest(addr, "commands/getAllByIds", limitation(500)).await,
        ),
        (
            200,
            rest(addr, "commands/getAllByIds", limitation(100)).await,
        ),
    ];
    let mut ids = std::collections::HashSet::new();
    for (status, answer) in &answers {
        assert_eq!(answer.status, *status, "{}", answer.body);
        let id = answer.request_id.clone().expect("a Request-Id header");
        assert_eq!(id.len(), 36, "a GUID: {id}");
        assert!(ids.insert(id.clone()), "unique");
        if *status != 200 {
            assert!(
                answer.body["Message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
            assert_eq!(answer.body["RequestId"], id.as_str());
        }
    }
    let recorded: Vec<(u16, String)> = hotel
        .answers()
        .into_iter()
        .map(|c| (c.status, c.request_id))
        .collect();
    assert_eq!(recorded.len(), answers.len(), "every call is recorded");
    let get = http_client()
        .get(format!(
            "http://{addr}{}/commands/getAllActive",
            simulator::REST_PATH
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 404, "only POST");
    assert!(get.headers().contains_key("Request-Id"));
    hotel.throttle_next(1, Some(3));
    let throttled = rest(addr, "commands/getAllActive", json!({})).await;
    assert_eq!(throttled.status, 429);
    assert_eq!(throttled.retry_after.as_deref(), Some("3"));
    assert!(throttled.request_id.is_some());
    stop.cancel();

    let (addr, stop) = start_hotel(
        Arc::new(Hotel::new()),
        SimulatorConfig {
            rest_429_every: 1,
            rest_429_without_retry_after: true,
            ..quiet()
        },
    )
    .await;
    let throttled = rest(addr, "commands/getAllActive", json!({})).await;
    assert_eq!(throttled.status, 429);
    assert_eq!(throttled.retry_after, None, "no Retry-After");
    assert_eq!(
        throttled.body["RequestId"].as_str(),
        throttled.request_id.as_deref()
    );
    stop.cancel();
}

/// `POST /sim/commands` makes a key command while the simulator runs: the relay gets its
/// Pending event, enriched with what the key cutter needs; bad bodies get 400 with a reason.
#[tokio::test]
async fn a_command_made_with_post_sim_commands_reaches_the_relay() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(simulator::serve(listener, quiet(), stop.clone()));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let text = config_text(
        &format!("ws://{addr}{}", simulator::WS_PATH),
        dir.path(),
        &file_sink(&out),
    )
    .replace(
        "[mews]\n",
        &format!("[mews]\napi_url = \"http://{addr}\"\n"),
    );
    let relay = Relay::start(&text);
    // The two commands `serve` makes before anyone connects come by the catch-up.
    let caught_up = wait_for_lines(&out, 2).await;
    assert!(caught_up.iter().all(|r| r["origin"] == "catch_up"));
    let made = post(addr, simulator::SIM_COMMANDS_PATH, &json!({"KeyCount": 3})).await;
    assert_eq!(made.status, 200, "{}", made.body);
    assert!(made.request_id.is_some());
    let id = made.body["CommandId"].as_str().unwrap().to_owned();
    let got = wait_for_lines(&out, 3).await;
    let record = &got[2];
    assert_eq!(record["origin"], "websocket");
    assert_eq!(
        (record["id"].as_str(), record["state"].as_str()),
        (Some(id.as_str()), Some("Pending"))
    );
    assert_eq!(record["command"]["Device"]["Type"], "KeyCutter");
    assert_eq!(record["command"]["Data"]["KeyCount"], 3);
    assert!(record["command"]["Data"]["LockIds"][0].is_string());
    for (body, message) in [
        (
            json!({"ReservationId": "no-such-reservation"}),
            "Invalid ReservationId",
        ),
        (json!({"KeyCount": 0}), "Invalid KeyCount"),
    ] {
        let refused = post(addr, simulator::SIM_COMMANDS_PATH, &body).await;
        assert_eq!(
            (refused.status, refused.body["Message"].as_str()),
            (400, Some(message))
        );
    }
    let typo = post(addr, simulator::SIM_COMMANDS_PATH, &json!({"Keycount": 2})).await;
    assert_eq!(typo.status, 400);
    assert!(typo.body["Message"].as_str().unwrap().contains("Keycount"));
    relay.stop().await;
    stop.cancel();
}

/// A simulator with no stream to speak of.
fn quiet() -> SimulatorConfig {
    SimulatorConfig {
        rate: 0.001,
        ..SimulatorConfig::default()
    }
}

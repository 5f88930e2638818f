//! The built-in simulator speaks the Mews protocol: cookie auth and the four event types.

use std::path::Path;

use mews_relay::config::{CredentialsDir, Settings};
use mews_relay::simulator::{self, SimulatorConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::*;

async fn start(config: SimulatorConfig) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "ws://{}{}",
        listener.local_addr().unwrap(),
        simulator::WS_PATH
    );
    let stop = CancellationToken::new();
    tokio::spawn(simulator::serve(listener, config, stop.clone()));
    (url, stop)
}

/// Without the two cookies the upgrade gets 401.
#[tokio::test]
async fn the_simulator_answers_401_without_the_cookies() {
    let (url, stop) = start(SimulatorConfig::default()).await;
    let err = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 401),
        other => panic!("expected a 401, got {other}"),
    }
    stop.cancel();
}

/// The relay, pointed at the simulator, receives events of all four documented types; the
/// shipped demo config is the one `demo` uses.
#[tokio::test]
async fn the_relay_receives_all_four_event_types_from_the_simulator() {
    let (url, stop) = start(SimulatorConfig {
        rate: 400.0,
        events_per_message: 10,
        client_token: Some("DEMO-CLIENT-TOKEN".into()),
        access_token: Some("DEMO-ACCESS-TOKEN".into()),
        webhook_url: None,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let text = std::fs::read_to_string("config/demo.toml").unwrap();
    let mut settings = Settings::from_toml(
        &text,
        Path::new("config/demo.toml"),
        &CredentialsDir::default(),
    )
    .unwrap();
    settings.mews.websocket_url = url;
    settings.state.dir = dir.path().to_owned();
    settings.sinks = Settings::from_toml(
        &config_text("ws://x", dir.path(), &file_sink(&out)),
        Path::new("t"),
        &CredentialsDir::default(),
    )
    .unwrap()
    .sinks;
    let relay = Relay::start_with(settings);
    let lines = wait_for_lines(&out, 100).await;
    let types: std::collections::HashSet<&str> =
        lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(types.len(), 4, "{types:?}");
    assert!(
        lines
            .iter()
            .all(|l| l["property"] == "demo-hotel" && l["id"].is_string())
    );
    relay.stop().await;
    stop.cancel();
}

/// The README's first command: `demo` prints records as JSON lines on stdout and stops cleanly.
#[tokio::test]
async fn the_demo_command_prints_records_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::spawn(
        &[
            "demo",
            "--duration",
            "2s",
            "--rate",
            "50",
            "--events-per-message",
            "5",
        ],
        dir.path(),
        "demo",
    );
    assert_eq!(daemon.wait().await, Some(0), "{}", daemon.stderr_text());
    let stdout = daemon.stdout_text();
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert!(records.len() >= 20, "{stdout}");
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record["seq"], i as u64 + 1);
        assert_eq!(record["property"], "demo-hotel");
    }
}

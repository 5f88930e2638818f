//! The built-in simulator speaks the Mews protocol: cookie auth and the four event types
//! (its REST side: `sim_rest.rs`).

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
        ..SimulatorConfig::default()
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
    settings.mews.api_url = Some(
        url.replace("ws://", "http://")
            .replace(simulator::WS_PATH, ""),
    );
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
            "6s",
            "--rate",
            "10",
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
    // The two commands pending before the relay connected come from the catch-up.
    let caught_up: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["origin"] == "catch_up")
        .collect();
    assert_eq!(caught_up.len(), 2, "{stdout}");
    assert!(
        caught_up
            .iter()
            .all(|r| r["command"]["Device"]["Type"] == "KeyCutter")
    );
    // Device commands come enriched: the device and what a key cutter needs.
    let commands: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["type"] == "DeviceCommand" && r["origin"] == "websocket")
        .collect();
    assert!(!commands.is_empty(), "{stdout}");
    for command in &commands {
        assert!(
            command["command"]["Device"]["Type"].is_string(),
            "{command}"
        );
    }
    assert!(
        commands
            .iter()
            .any(|c| c["command"]["Device"]["Type"] == "KeyCutter"
                && c["command"]["Data"]["LockIds"].is_array()),
        "{stdout}"
    );
    // The whole loop: a command caught up at the connect is set Received by the relay, then
    // Processing and Processed by the demo key system through the API; Mews's events for each
    // state print.
    let first = caught_up[0]["id"].as_str().unwrap();
    let states: Vec<&str> = records
        .iter()
        .filter(|r| r["id"] == first)
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["Pending", "Received", "Processing", "Processed"],
        "{stdout}"
    );
}

/// The relay in-process against a simulator started with `faults`; returns what it counted.
async fn relay_against(faults: SimulatorConfig, until: impl Fn(&mews_relay::stats::Stats) -> bool) {
    let (url, stop) = start(faults).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let relay = Relay::start(
        &config_text(&url, dir.path(), &file_sink(&out))
            .replace("pong_timeout = \"3s\"", "pong_timeout = \"500ms\"")
            .replace("ping_interval = \"1s\"", "ping_interval = \"300ms\""),
    );
    let stats = std::sync::Arc::clone(&relay.stats);
    wait_until("the relay saw the fault", || until(&stats)).await;
    relay.stop().await;
    stop.cancel();
}

fn reconnects(stats: &mews_relay::stats::Stats) -> u64 {
    stats
        .properties
        .lock()
        .unwrap()
        .get("old-town")
        .map_or(0, |p| p.reconnects)
}

fn link(stats: &mews_relay::stats::Stats) -> String {
    format!(
        "{:?}",
        stats
            .properties
            .lock()
            .unwrap()
            .get("old-town")
            .map(|p| p.link.clone())
    )
}

/// Each fault flag does what `simulate --help` says, as the relay sees it.
#[tokio::test]
async fn the_simulator_fault_flags_break_connections_as_documented() {
    let fast = SimulatorConfig {
        rate: 50.0,
        ..SimulatorConfig::default()
    };
    // Dropped every 300 ms, with a reset and with a clean close: the relay reconnects.
    for mode in [simulator::DropMode::Reset, simulator::DropMode::Close] {
        relay_against(
            SimulatorConfig {
                drop_every: Some(std::time::Duration::from_millis(300)),
                drop_mode: mode,
                ..fast.clone()
            },
            |s| reconnects(s) >= 2,
        )
        .await;
    }
    // Silent: no events, no pongs; the relay declares it dead and reconnects.
    relay_against(
        SimulatorConfig {
            silent_after: Some(std::time::Duration::from_millis(200)),
            ..fast.clone()
        },
        |s| link(s).contains("no pong"),
    )
    .await;
    // Upgrades refused with 503 and with 401.
    for status in [503u16, 401] {
        relay_against(
            SimulatorConfig {
                reject_status: Some(status),
                ..fast.clone()
            },
            |s| link(s).contains(&status.to_string()),
        )
        .await;
    }
    // Every second message malformed: rejected and counted, the connection stays.
    relay_against(
        SimulatorConfig {
            malformed_every: 2,
            ..fast.clone()
        },
        |s| {
            mews_relay::stats::Stats::get(&s.messages_rejected) >= 3
                && mews_relay::stats::Stats::get(&s.records_committed) >= 3
                && reconnects(s) == 0
        },
    )
    .await;
}

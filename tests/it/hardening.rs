//! What a broken upstream or a careless host can do, bounded (issue 18): no token at any log
//! level, growth upstream cannot drive (rejected.jsonl, metric labels, endless fragments),
//! files that cannot be turned against the host (symlinks, modes).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use mews_relay::simulator::{self, SimulatorConfig};
use mews_relay::stats::Stats;
use nix::sys::signal::Signal;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_util::sync::CancellationToken;

use crate::attack::request;
use crate::listeners::{TOKEN, get, listening};
use crate::receiver::{Receiver, free_port};
use crate::support::*;

const SINK_SECRET: &str = "sink-secret-9d1c7e";
const URL_PASSWORD: &str = "url-password-51f0";
const URL_QUERY: &str = "url-query-77a3b2";
const API_PASSWORD: &str = "api-password-0c4d";

/// The simulator's REST API, checking the test tokens; returns `api_url` (with user info).
async fn rest_api() -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let config = SimulatorConfig {
        rate: 0.001,
        client_token: Some(CLIENT_TOKEN.into()),
        access_token: Some(ACCESS_TOKEN.into()),
        ..SimulatorConfig::default()
    };
    tokio::spawn(simulator::serve(listener, config, stop.clone()));
    (format!("http://relay:{API_PASSWORD}@{addr}"), stop)
}

/// At `--log-level trace`, a 401 spell, a session with catch-up and enrichment over REST,
/// webhooks with right and wrong tokens and an HTTP sink with a bearer header print none of
/// the secrets: tokens, the sink header, credentials in websocket_url and api_url. `check`
/// masks the URLs too. (Before: tungstenite's trace printed the Cookie on every connect.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_and_check_hold_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    server.reject_with(Some(401));
    let (api, stop_api) = rest_api().await;
    let mut receiver = Receiver::start().await;
    let hooks = free_port();
    let ws = format!(
        "ws://relay:{URL_PASSWORD}@{}/ws/connector?Key={URL_QUERY}",
        server.addr
    );
    let sinks = format!(
        "[[sink]]\ntype = \"stdout\"\n\n[[sink]]\ntype = \"http\"\nurl = \"{}\"\nheaders = {{ Authorization = \"Bearer {SINK_SECRET}\" }}\n",
        receiver.url()
    );
    let config = config_text(&ws, dir.path(), &sinks)
        .replace("[mews]\n", &format!("[mews]\napi_url = \"{api}\"\n"))
        + &format!("\n[webhooks]\nlisten = \"{hooks}\"\ntoken = \"{TOKEN}\"\n");
    let path = write_config(dir.path(), &config);
    let config_arg = path.to_str().unwrap();

    let (code, out, err) = run_binary(&["check", "--config", config_arg]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ws://***@127.0.0.1"), "{out}");
    assert!(out.contains("http://***@127.0.0.1"), "{out}");

    let mut daemon = Daemon::spawn(
        &["--log-level", "trace", "run", "--config", config_arg],
        dir.path(),
        "relay",
    );
    wait_until("the relay tried three times during the 401 spell", || {
        server.attempts() >= 3
    })
    .await;
    server.reject_with(None);
    let mut conn = server.next().await;
    conn.send(&commands(0, 2)).await;
    receiver.records(2).await;
    listening(hooks).await;
    let wrong = "POST /mews/webhooks?Token=wh-wrong-wrong-wrong-wrong HTTP/1.1\r\nHost: relay\r\nContent-Length: 2\r\n\r\n";
    assert_eq!(request(hooks, wrong, b"{}").await, Some(401));
    let right = format!(
        "POST /mews/webhooks?Token={TOKEN} HTTP/1.1\r\nHost: relay\r\nContent-Length: 2\r\n\r\n"
    );
    assert_eq!(request(hooks, &right, b"[]").await, Some(400));
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0));
    stop_api.cancel();

    let log = daemon.stderr_text() + &out + &err;
    assert!(log.contains("connected url=ws://***@127.0.0.1"), "{log}");
    assert!(
        log.contains("Client handshake done"),
        "the libraries still log below trace: {log}"
    );
    if let Ok(keep) = std::env::var("KEEP_LOG") {
        std::fs::write(keep, &log).unwrap();
    }
    for secret in [
        CLIENT_TOKEN,
        ACCESS_TOKEN,
        TOKEN,
        SINK_SECRET,
        URL_PASSWORD,
        URL_QUERY,
        API_PASSWORD,
    ] {
        assert!(!log.contains(secret), "{secret} is in the log");
    }
}

/// A webhook event nested 100,000 levels deep is refused (400) and journals nothing, like the
/// WebSocket path refuses more than 64 levels (before: accepted and forwarded).
#[tokio::test]
async fn deeply_nested_webhook_events_are_refused() {
    let hooks = free_port();
    let h = Harness::start_with(|c| {
        c + &format!("\n[webhooks]\nlisten = \"{hooks}\"\ntoken = \"{TOKEN}\"\n")
    })
    .await;
    listening(hooks).await;
    let event = |value: &str| {
        format!(
            r#"{{"EnterpriseId":"e","IntegrationId":"i","Events":[{{"Discriminator":"X","Value":{{"Id":"{value}","N":{}}}}}]}}"#,
            if value == "deep" {
                format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000))
            } else {
                "1".into()
            }
        )
    };
    let post = |body: String| {
        let head = format!(
            "POST /mews/webhooks?Token={TOKEN} HTTP/1.1\r\nHost: relay\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        async move { request(hooks, &head, body.as_bytes()).await }
    };
    assert_eq!(post(event("deep")).await, Some(400));
    assert_eq!(post(event("flat")).await, Some(202));
    let lines = wait_for_lines(&h.out, 1).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["id"], "flat");
    h.relay.stop().await;
}

/// A 60 MB WebSocket message (under the 64 MiB hard limit) leaves one line of at most the
/// 64 KiB sample plus its size in rejected.jsonl (before: the whole 60 MB, every time), and
/// the connection carries on.
#[tokio::test]
async fn a_60_mb_message_leaves_only_a_sample_on_disk() {
    let mut h = Harness::start_with(|c| {
        c.replace("max_message_size = \"4KiB\"", "max_message_size = \"1MiB\"")
    })
    .await;
    let mut conn = h.server.next().await;
    let huge = format!(
        r#"{{"Events":[{{"Type":"X","Id":"big","Blob":"{}"}}]}}"#,
        "a".repeat(60_000_000)
    );
    conn.send(&huge).await;
    conn.send(&commands(0, 1)).await;
    wait_for_lines(&h.out, 1).await;
    let file = h.dir.path().join(mews_relay::rejects::FILE_NAME);
    let kept = wait_for_lines(&file, 1).await;
    assert_eq!(kept[0]["bytes"], huge.len());
    assert_eq!(kept[0]["truncated"], true);
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(
        size <= mews_relay::rejects::SAMPLE_BYTES as u64 + 1024,
        "rejected.jsonl holds {size} bytes"
    );
    assert_eq!(Stats::get(&h.relay.stats.connections), 1);
    h.relay.stop().await;
}

/// 100,000 events with distinct Types leave `/metrics` under 48 KiB: one property has at most
/// 100 type labels plus `other` (before: one series per Type, ~8 MB here).
#[tokio::test]
async fn distinct_types_leave_metrics_bounded() {
    let metrics = free_port();
    let h = Harness::start_with(|c| {
        c.replace("max_message_size = \"4KiB\"", "max_message_size = \"1MiB\"")
            + &format!("\n[metrics]\nlisten = \"{metrics}\"\n")
    })
    .await;
    let mut h = h;
    let mut conn = h.server.next().await;
    for batch in 0..100 {
        let events: Vec<String> = (0..1_000)
            .map(|i| format!(r#"{{"Type":"Type-{batch}-{i}","Id":"e-{batch}-{i}"}}"#))
            .collect();
        conn.send(&format!(r#"{{"Events":[{}]}}"#, events.join(",")))
            .await;
    }
    let stats = std::sync::Arc::clone(&h.relay.stats);
    // A debug build journals 100,000 records in seconds, many more beside other builds: wait as
    // long as commits go on.
    wait_for_progress("100,000 records are journaled", 100_000, || {
        Stats::get(&stats.records_committed)
    })
    .await;
    listening(metrics).await;
    let (status, page) = get(metrics, "/metrics").await;
    assert_eq!(status, 200);
    assert!(page.len() < 48 * 1024, "/metrics is {} bytes", page.len());
    assert!(
        page.contains(
            r#"mews_relay_events_total{property="old-town",type="other",origin="websocket"} 99900"#
        ),
        "{page}"
    );
    h.relay.stop().await;
}

/// A message of 1-byte fragments without FIN, sent as fast as the socket takes it while pings
/// are answered, is cut off after `message_timeout`: the connection is closed, counted, and
/// the relay reconnects and forwards what comes next (before: a core busy for good).
#[tokio::test]
async fn an_endless_fragmented_message_is_cut_off() {
    let mut h = Harness::start_with(|c| {
        // The hard limit (64 × 1 MiB) is out of the flood's reach: only the deadline ends it.
        c.replace("[connection]\n", "[connection]\nmessage_timeout = \"1s\"\n")
            .replace("max_message_size = \"4KiB\"", "max_message_size = \"1MiB\"")
    })
    .await;
    let mut conn = h.server.next().await;
    let flood = tokio::spawn(async move {
        let first = Frame::message(vec![b'{'], OpCode::Data(Data::Text), false);
        let mut sent = u64::from(conn.try_send(Message::Frame(first)).await);
        loop {
            let next = Frame::message(vec![b' '], OpCode::Data(Data::Continue), false);
            if !conn.try_send(Message::Frame(next)).await {
                return sent;
            }
            sent += 1;
        }
    });
    let mut conn = h.server.next().await;
    let fragments = tokio::time::timeout(WAIT, flood).await.unwrap().unwrap();
    assert!(fragments > 64 * 1024 / 3, "{fragments} fragments sent");
    assert_eq!(Stats::get(&h.relay.stats.messages_timed_out), 1);
    conn.send(&commands(0, 1)).await;
    let lines = wait_for_lines(&h.out, 1).await;
    assert_eq!(lines[0]["id"], "cmd-0");
    h.relay.stop().await;
}

/// A file sink whose path is a symlink is refused at start with an error naming the sink and
/// the link, and the target (whose last line lacks a newline) is untouched (before: followed,
/// and its last line cut). A rejected.jsonl symlink is not written through either.
#[tokio::test]
async fn symlinked_files_are_refused_and_their_targets_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let server = MockServer::start().await;
    let target = dir.path().join("precious.txt");
    let precious = "keep this line\nand this one, which has no newline";
    std::fs::write(&target, precious).unwrap();
    let link = dir.path().join("out.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let config = config_text(&server.url(), dir.path(), &file_sink(&link));
    let err = Relay::start(&config).ended().await.unwrap_err().to_string();
    assert!(err.contains("sink \"file:"), "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), precious);

    let mut h = Harness::start().await;
    let rejected_target = h.dir.path().join("elsewhere.txt");
    std::fs::write(&rejected_target, precious).unwrap();
    std::os::unix::fs::symlink(
        &rejected_target,
        h.dir.path().join(mews_relay::rejects::FILE_NAME),
    )
    .unwrap();
    let mut conn = h.server.next().await;
    conn.send("not JSON").await;
    conn.send(&commands(0, 1)).await;
    wait_for_lines(&h.out, 1).await;
    assert_eq!(Stats::get(&h.relay.stats.messages_rejected), 1);
    assert_eq!(std::fs::read_to_string(&rejected_target).unwrap(), precious);
    h.relay.stop().await;
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Under umask 022 the state directory, the journal, a sink's new directory, the sink file,
/// rejected.jsonl, the dead-letter directory and its file are created 0700/0600 (before: 0755/0644, guests'
/// data readable by every local user).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_private_under_umask_022() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let state = dir.path().join("state");
    let out = dir.path().join("out/events.jsonl");
    let dead_end = free_port();
    let sinks = format!(
        "{}\n[[sink]]\ntype = \"http\"\nname = \"keys\"\nurl = \"http://{dead_end}/\"\ntimeout = \"200ms\"\nretry_min = \"50ms\"\nretry_max = \"100ms\"\ngive_up_after = \"500ms\"\n",
        file_sink(&out)
    );
    let config = config_text(&server.url(), &state, &sinks);
    let path = write_config(dir.path(), &config);
    let mut daemon = Daemon::spawn_in_shell(
        "umask 022",
        &["run", "--config", path.to_str().unwrap()],
        dir.path(),
        "relay",
    );
    let mut conn = server.next().await;
    conn.send("not JSON").await;
    conn.send(&commands(0, 1)).await;
    wait_for_lines(&out, 1).await;
    let dead = state.join("dead-letter/keys.jsonl");
    wait_for_lines(&dead, 1).await;
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0));
    assert_eq!(mode(&state), 0o700, "state.dir");
    assert_eq!(mode(&state.join("journal.redb")), 0o600, "the journal");
    assert_eq!(mode(out.parent().unwrap()), 0o700, "the sink's directory");
    assert_eq!(mode(&out), 0o600, "the sink file");
    assert_eq!(mode(&state.join("rejected.jsonl")), 0o600, "rejected.jsonl");
    assert_eq!(mode(dead.parent().unwrap()), 0o700, "dead-letter/");
    assert_eq!(mode(&dead), 0o600, "the dead-letter file");
}

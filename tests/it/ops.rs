//! Running under systemd: notifications on a fake NOTIFY_SOCKET, and the shipped unit file
//! checked by systemd-analyze.

use nix::sys::signal::Signal;
use tokio::net::UnixDatagram;

use crate::support::*;

async fn next_notice(socket: &UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, socket.recv(&mut buf))
        .await
        .expect("a notification")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// READY=1 once started (the Mews side may be down), WATCHDOG=1 while healthy when
/// WATCHDOG_USEC is set, a STATUS= line per property, RELOADING=1 + MONOTONIC_USEC then READY=1
/// around a SIGHUP reload, and STOPPING=1 on SIGTERM.
#[tokio::test]
async fn systemd_gets_ready_watchdog_status_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let mut server = MockServer::start().await;
    let config = stdout_config(dir.path(), &server.url());
    let env = [
        ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
        ("WATCHDOG_USEC", "200000"),
    ];
    let mut daemon = Daemon::spawn_env(
        &["run", "--config", config.to_str().unwrap()],
        dir.path(),
        "relay",
        &env,
    );
    let mut notices = Vec::new();
    while !notices.iter().any(|n: &String| n.contains("READY=1")) {
        notices.push(next_notice(&socket).await);
    }
    let _conn = server.next().await;
    let mut watchdogs = 0;
    let mut connected_status = false;
    while watchdogs < 3 || !connected_status {
        let notice = next_notice(&socket).await;
        watchdogs += usize::from(notice.contains("WATCHDOG=1"));
        connected_status |= notice.contains("STATUS=old-town: connected");
    }
    daemon.signal(Signal::SIGHUP);
    loop {
        let notice = next_notice(&socket).await;
        if notice.contains("RELOADING=1") {
            assert!(notice.contains("MONOTONIC_USEC="), "{notice}");
            break;
        }
    }
    while !next_notice(&socket).await.contains("READY=1") {}
    daemon.signal(Signal::SIGTERM);
    loop {
        if next_notice(&socket).await.contains("STOPPING=1") {
            break;
        }
    }
    assert_eq!(daemon.wait().await, Some(0));
}

/// The unit scores 1.5 or lower in `systemd-analyze security` and `verify` finds nothing to say
/// (with ExecStart pointed at the built binary). Skipped with a note where systemd-analyze is
/// missing; `.ci/run` installs it.
#[test]
fn the_unit_file_is_hardened_and_valid() {
    let Ok(version) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("systemd-analyze is not installed; skipping the unit checks");
        return;
    };
    assert!(version.status.success());
    let security = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "systemd/mews-relay.service"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout).into_owned()
        + &String::from_utf8_lossy(&security.stderr);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("exposure level for mews-relay.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score in:\n{text}"));
    assert!(score <= 1.5, "exposure {score} > 1.5:\n{text}");

    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string("systemd/mews-relay.service")
        .unwrap()
        .replace("/usr/bin/mews-relay", env!("CARGO_BIN_EXE_mews-relay"));
    let path = dir.path().join("mews-relay.service");
    std::fs::write(&path, unit).unwrap();
    let verify = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stdout).into_owned()
        + &String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}

/// `--log-format json` writes one JSON object per log line on stderr, stdout untouched.
#[tokio::test]
async fn logs_can_be_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let config = stdout_config(dir.path(), &server.url());
    let args = [
        "run",
        "--config",
        config.to_str().unwrap(),
        "--log-format",
        "json",
        "--log-level",
        "info",
    ];
    let mut daemon = Daemon::spawn(&args, dir.path(), "relay");
    server.next().await;
    wait_until("the connection is logged", || {
        daemon.stderr_text().contains("connected")
    })
    .await;
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0));
    let stderr = daemon.stderr_text();
    for line in stderr.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            value["level"].is_string() && value["fields"].is_object(),
            "{line}"
        );
    }
    assert!(stderr.lines().count() >= 3);
    assert!(
        !stderr.contains("DEBUG"),
        "--log-level info wins over RUST_LOG=debug"
    );
    assert!(daemon.stdout_text().is_empty());
}

/// SIGHUP (the process's own signal) with a sink added: the WebSocket stays connected, the new
/// sink starts with new records, the old one neither loses nor repeats one. An invalid config
/// is refused and the running one keeps going on the same connection.
#[tokio::test]
async fn sighup_adds_a_sink_without_a_reconnect_and_refuses_an_invalid_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let config = dir.path().join("relay.toml");
    let url = server.url();
    let write =
        |sinks: &str| std::fs::write(&config, config_text(&url, dir.path(), sinks)).unwrap();
    write(&file_sink(&a));
    let mut daemon = Daemon::spawn(
        &["run", "--config", config.to_str().unwrap()],
        dir.path(),
        "relay",
    );
    let mut conn = server.next().await;
    conn.send(&commands(0, 5)).await;
    wait_for_lines(&a, 5).await;

    write(&format!("{}\n{}", file_sink(&a), file_sink(&b)));
    daemon.signal(Signal::SIGHUP);
    wait_until("the reload is applied", || {
        daemon.stderr_text().contains("configuration reloaded")
    })
    .await;
    assert!(
        server.try_next().is_none(),
        "adding a sink did not reconnect"
    );
    conn.send(&commands(5, 10)).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while std::fs::read_to_string(&b).map_or(0, |t| t.lines().count()) < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new sink got nothing:\n{}",
            daemon.stderr_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let in_b = wait_for_lines(&b, 5).await;
    let in_a = wait_for_lines(&a, 10).await;
    let ids = |lines: &[serde_json::Value]| {
        lines
            .iter()
            .map(|l| l["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&in_a),
        (0..10).map(|i| format!("cmd-{i}")).collect::<Vec<_>>(),
        "nothing lost or repeated"
    );
    assert_eq!(
        ids(&in_b),
        (5..10).map(|i| format!("cmd-{i}")).collect::<Vec<_>>(),
        "the new sink starts with new records"
    );

    std::fs::write(&config, "[mews]\nwebsocket_url = 5\n").unwrap();
    daemon.signal(Signal::SIGHUP);
    wait_until("the refusal is logged", || {
        daemon.stderr_text().contains("was not applied")
    })
    .await;
    conn.send(&commands(10, 12)).await;
    assert_eq!(wait_for_lines(&a, 12).await.len(), 12);
    assert!(
        server.try_next().is_none(),
        "the running config kept its connection"
    );
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0));
    assert_eq!(std::fs::read_to_string(&a).unwrap().lines().count(), 12);
}

async fn get(url: &str) -> (u16, String) {
    let client = http_client();
    for _ in 0..200 {
        match client.get(url).send().await {
            Ok(response) => return (response.status().as_u16(), response.text().await.unwrap()),
            Err(err) if err.is_connect() => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await
            }
            Err(err) => panic!("{err}"),
        }
    }
    panic!("{url} never answered");
}

/// Polls `url` until its body contains `needle`; returns status and body.
async fn get_until(url: &str, needle: &str) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = get(url).await;
        if body.contains(needle) {
            return (status, body);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} never said {needle:?}; last: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `/metrics` and `/readyz` follow the connection as the server accepts, drops and rejects;
/// `/healthz` always answers.
#[tokio::test]
async fn metrics_and_readiness_follow_the_connection() {
    let addr = crate::receiver::free_port();
    let mut h = Harness::start_with(|c| c + &format!("\n[metrics]\nlisten = \"{addr}\"\n")).await;
    let base = format!("http://{addr}");
    let mut conn = h.server.next().await;
    conn.send(&commands(0, 3)).await;
    wait_for_lines(&h.out, 3).await;
    assert_eq!(get(&format!("{base}/healthz")).await, (200, "ok\n".into()));
    let (status, ready) = get_until(&format!("{base}/readyz"), "\"ready\":true").await;
    assert_eq!(status, 200, "{ready}");
    let (_, metrics) = get_until(
        &format!("{base}/metrics"),
        "mews_relay_sink_delivered_total",
    )
    .await;
    for line in [
        "mews_relay_events_total{property=\"old-town\",type=\"DeviceCommand\",origin=\"websocket\"} 3",
        "mews_relay_connected{property=\"old-town\"} 1",
        "mews_relay_reconnects_total{property=\"old-town\"} 0",
        "# TYPE mews_relay_sink_lag_seconds gauge",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in:\n{metrics}");
    }
    assert!(metrics.contains("mews_relay_last_event_age_seconds{property=\"old-town\"}"));

    h.server.reject_with(Some(401));
    conn.reset();
    let (status, body) = get_until(&format!("{base}/readyz"), "reconnecting (401)").await;
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["properties"]["old-town"], "reconnecting (401)");
    let (_, metrics) = get_until(
        &format!("{base}/metrics"),
        "mews_relay_connected{property=\"old-town\"} 0",
    )
    .await;
    assert!(
        metrics.contains("mews_relay_reconnects_total{property=\"old-town\"} 1"),
        "{metrics}"
    );

    h.server.reject_with(None);
    h.server.next().await;
    let (status, _) = get_until(&format!("{base}/readyz"), "\"ready\":true").await;
    assert_eq!(status, 200);
    h.relay.stop().await;
}

/// A sink behind for longer than `ready_max_lag` makes `/readyz` fail and say which.
#[tokio::test]
async fn readiness_fails_while_a_sink_is_too_far_behind() {
    let addr = crate::receiver::free_port();
    let dead = format!("http://{}/never", crate::receiver::free_port());
    let mut h = Harness::start_with(|c| {
        c.replace("grace_period = \"5s\"", "grace_period = \"100ms\"")
            + &format!("\n[metrics]\nlisten = \"{addr}\"\nready_max_lag = \"200ms\"\n")
            + &format!("\n[[sink]]\ntype = \"http\"\nname = \"hooks\"\nurl = \"{dead}\"\nretry_min = \"50ms\"\nretry_max = \"100ms\"\n")
    })
    .await;
    h.server.next().await.send(&commands(0, 2)).await;
    let (status, body) = get_until(&format!("http://{addr}/readyz"), "hooks").await;
    assert_eq!(status, 503);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["sinks"]["hooks"]["lag_records"], 2);
    let (_, metrics) = get_until(
        &format!("http://{addr}/metrics"),
        "mews_relay_sink_retries_total{sink=\"hooks\"}",
    )
    .await;
    assert!(
        metrics.contains("mews_relay_sink_lag_records{sink=\"hooks\"} 2"),
        "{metrics}"
    );
    h.relay.stop().await;
}

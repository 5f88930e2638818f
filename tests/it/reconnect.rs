//! The connection survives resets, clean closes and a server that silently stops answering.

use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// After a TCP reset the relay reconnects and later events follow the earlier ones.
#[tokio::test]
async fn reconnects_after_the_server_resets_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let out = dir.path().join("out.jsonl");
    let relay = Relay::start(&config_text(&server.url(), dir.path(), &file_sink(&out)));
    let mut first = server.next().await;
    first.send(&commands(0, 2)).await;
    wait_for_lines(&out, 2).await;
    first.reset();

    let mut second = server.next().await;
    second.send(&commands(2, 4)).await;
    let lines = wait_for_lines(&out, 4).await;
    let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["cmd-0", "cmd-1", "cmd-2", "cmd-3"]);
    assert!(
        second.cookie.as_deref().unwrap().contains(ACCESS_TOKEN),
        "cookie rebuilt on reconnect"
    );
    relay.stop().await;
}

/// After a Close frame from the server the relay reconnects.
#[tokio::test]
async fn reconnects_after_a_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let out = dir.path().join("out.jsonl");
    let relay = Relay::start(&config_text(&server.url(), dir.path(), &file_sink(&out)));
    let mut first = server.next().await;
    first.send(&commands(0, 1)).await;
    first.close().await;

    let mut second = server.next().await;
    second.send(&commands(1, 2)).await;
    let lines = wait_for_lines(&out, 2).await;
    assert_eq!(lines[1]["id"], "cmd-1");
    relay.stop().await;
}

/// A server that accepts and then never answers (no pong, no frame) is declared dead within
/// ping_interval + pong_timeout (plus one reconnect delay and a margin), and the relay reconnects.
#[tokio::test]
async fn detects_a_half_open_server_and_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let out = dir.path().join("out.jsonl");
    let relay = Relay::start(&config_text(&server.url(), dir.path(), &file_sink(&out)));
    // Held but never read: pings go unanswered, like a peer behind a dead NAT entry.
    let silent = server.next().await;
    silent.go_silent();
    let second = server.next().await;
    let took = second.at - silent.at;
    // ping_interval 300ms + pong_timeout 300ms; backoff_max 200ms; margin 600ms.
    assert!(
        took >= Duration::from_millis(550),
        "declared dead too early: {took:?}"
    );
    assert!(
        took <= Duration::from_millis(1400),
        "half-open connection detected too late: {took:?}"
    );
    drop(silent);
    relay.stop().await;
}

/// A healthy connection is pinged, and pongs keep it alive past several pong timeouts.
#[tokio::test]
async fn a_server_that_answers_pings_stays_connected() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let out = dir.path().join("out.jsonl");
    let relay = Relay::start(&config_text(&server.url(), dir.path(), &file_sink(&out)));
    let mut conn = server.next().await;
    // Reading lets tungstenite answer pings; count them over a few ping intervals.
    let mut pings = 0;
    while pings < 4 {
        match tokio::time::timeout(WAIT, conn.incoming.recv())
            .await
            .expect("a ping within the wait")
        {
            Some(Message::Ping(_)) => pings += 1,
            Some(other) => panic!("unexpected {other:?}"),
            other => panic!("connection ended: {other:?}"),
        }
    }
    assert_eq!(
        mews_relay::stats::Stats::get(&relay.stats.connections),
        1,
        "no reconnect while pongs flow"
    );
    relay.stop().await;
}

/// A server that accepts and closes at once cannot drive a fast loop: delays grow. A session
/// that stays up `healthy_after` resets them, so the next reconnect is quick again.
#[tokio::test]
async fn backoff_grows_while_sessions_die_young_and_resets_after_a_healthy_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let out = dir.path().join("out.jsonl");
    let config = config_text(&server.url(), dir.path(), &file_sink(&out))
        .replace("backoff_max = \"200ms\"", "backoff_max = \"5s\"")
        .replace("healthy_after = \"5s\"", "healthy_after = \"300ms\"");
    let relay = Relay::start(&config);
    let mut times = Vec::new();
    for _ in 0..7 {
        let mut conn = server.next().await;
        times.push(conn.at);
        conn.close().await;
    }
    let span = times[6] - times[0];
    // Six delays of at least 20ms each with ceilings 20..640ms: ~690ms expected, 120ms if the
    // schedule never grew.
    assert!(
        span >= Duration::from_millis(160),
        "reconnects too fast: {span:?} for 6 retries"
    );

    // A healthy session: the server keeps it up past healthy_after, then closes.
    let mut healthy = server.next().await;
    tokio::time::sleep(Duration::from_millis(400)).await; // the server's scripted uptime
    healthy.close().await;
    let closed = tokio::time::Instant::now();
    let next = server.next().await;
    let gap = next.at - closed;
    assert!(
        gap < Duration::from_millis(150),
        "backoff did not reset after a healthy session: {gap:?}"
    );
    relay.stop().await;
}

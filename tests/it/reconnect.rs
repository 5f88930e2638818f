//! The connection survives resets, clean closes and a server that silently stops answering.

use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// After a TCP reset the relay reconnects and later events follow the earlier ones.
#[tokio::test]
async fn reconnects_after_the_server_resets_the_connection() {
    let mut h = Harness::start().await;
    let mut first = h.server.next().await;
    first.send(&commands(0, 2)).await;
    wait_for_lines(&h.out, 2).await;
    first.reset();

    let mut second = h.server.next().await;
    second.send(&commands(2, 4)).await;
    let lines = wait_for_lines(&h.out, 4).await;
    let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["cmd-0", "cmd-1", "cmd-2", "cmd-3"]);
    assert!(
        second.cookie.as_deref().unwrap().contains(ACCESS_TOKEN),
        "cookie rebuilt on reconnect"
    );
    h.relay.stop().await;
}

/// After a Close frame from the server the relay reconnects.
#[tokio::test]
async fn reconnects_after_a_clean_close() {
    let mut h = Harness::start().await;
    let mut first = h.server.next().await;
    first.send(&commands(0, 1)).await;
    first.close().await;

    let mut second = h.server.next().await;
    second.send(&commands(1, 2)).await;
    let lines = wait_for_lines(&h.out, 2).await;
    assert_eq!(lines[1]["id"], "cmd-1");
    h.relay.stop().await;
}

/// A server that accepts and then never answers (no pong, no frame) is declared dead within
/// ping_interval + pong_timeout (plus one reconnect delay and a margin), and the relay reconnects.
#[tokio::test]
async fn detects_a_half_open_server_and_reconnects() {
    let mut h = Harness::start_with(|c| {
        c.replace("ping_interval = \"1s\"", "ping_interval = \"300ms\"")
            .replace("pong_timeout = \"3s\"", "pong_timeout = \"300ms\"")
    })
    .await;
    // Held but never read: pings go unanswered, like a peer behind a dead NAT entry.
    let silent = h.server.next().await;
    silent.go_silent();
    let second = h.server.next().await;
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
    h.relay.stop().await;
}

/// A healthy connection is pinged, and pongs keep it alive past several pong timeouts.
#[tokio::test]
async fn a_server_that_answers_pings_stays_connected() {
    let mut h =
        Harness::start_with(|c| c.replace("ping_interval = \"1s\"", "ping_interval = \"200ms\""))
            .await;
    let mut conn = h.server.next().await;
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
        mews_relay::stats::Stats::get(&h.relay.stats.connections),
        1,
        "no reconnect while pongs flow"
    );
    h.relay.stop().await;
}

/// A server that accepts and closes at once cannot drive a fast loop: delays grow. A session
/// that stays up `healthy_after` resets them, so the next reconnect is quick again.
#[tokio::test]
async fn backoff_grows_while_sessions_die_young_and_resets_after_a_healthy_one() {
    let mut h = Harness::start_with(|config| {
        config
            .replace("backoff_max = \"200ms\"", "backoff_max = \"5s\"")
            .replace("healthy_after = \"5s\"", "healthy_after = \"300ms\"")
    })
    .await;
    let mut times = Vec::new();
    for _ in 0..7 {
        let mut conn = h.server.next().await;
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
    let mut healthy = h.server.next().await;
    tokio::time::sleep(Duration::from_millis(400)).await; // the server's scripted uptime
    healthy.close().await;
    let closed = tokio::time::Instant::now();
    let next = h.server.next().await;
    let gap = next.at - closed;
    assert!(
        gap < Duration::from_millis(150),
        "backoff did not reset after a healthy session: {gap:?}"
    );
    h.relay.stop().await;
}

/// A server that accepts TCP but never answers the upgrade is given up on after
/// connect_timeout, and the relay tries again.
#[tokio::test]
async fn a_hanging_upgrade_times_out_and_is_retried() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws/connector", listener.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let config = config_text(&url, dir.path(), &file_sink(&dir.path().join("out.jsonl")))
        .replace("connect_timeout = \"2s\"", "connect_timeout = \"300ms\"");
    let relay = Relay::start(&config);
    let mut held = Vec::new();
    let mut accepted = Vec::new();
    for _ in 0..3 {
        let (tcp, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .expect("the relay tries again")
            .unwrap();
        accepted.push(tokio::time::Instant::now());
        held.push(tcp); // never answered
    }
    let gap = accepted[1] - accepted[0];
    assert!(
        gap >= Duration::from_millis(300),
        "gave up before connect_timeout: {gap:?}"
    );
    assert!(
        gap < Duration::from_millis(1500),
        "connect_timeout not applied: {gap:?}"
    );
    relay.stop().await;
}

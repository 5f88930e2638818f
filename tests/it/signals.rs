//! Signals in-process: the relay's signal handling (`app::signals::handle`) fed from a channel
//! instead of the process's signals, steering a relay that runs in the test.

use mews_relay::app::signals::{self, Handled, Signal};
use mews_relay::config::{CredentialsDir, Settings};
use tokio::sync::mpsc;

use crate::support::*;

/// SIGHUP reloads a changed config (the WebSocket reconnects, the new sink starts with new
/// records, the old one goes on without a gap) and refuses an invalid one: the running config
/// keeps its connection, and files are reopened either way.
#[tokio::test]
async fn sighup_reloads_a_valid_config_and_refuses_an_invalid_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let config = write_config(
        dir.path(),
        &config_text(&server.url(), dir.path(), &file_sink(&a)),
    );
    let settings = Settings::load(&config, &CredentialsDir::default()).unwrap();
    let relay = Relay::start_with(settings);
    let (signal, signals) = mpsc::channel(4);
    let handler = tokio::spawn(signals::handle(
        signals,
        relay.control.shutdown.clone(),
        Some(relay.steer.clone()),
        Some(config.clone()),
    ));
    // Held open: dropped, it would make the relay reconnect, and that reconnect could be taken
    // for the one the reload makes.
    let mut first = server.next().await;
    first.send(&commands(0, 2)).await;
    wait_for_lines(&a, 2).await;

    let both = format!("{}\n{}", file_sink(&a), file_sink(&b));
    write_config(dir.path(), &config_text(&server.url(), dir.path(), &both));
    signal.send(Signal::Hangup).await.unwrap();
    let mut conn = server.next().await; // reconnected with the new config
    conn.send(&commands(2, 4)).await;
    let in_b = wait_for_lines(&b, 2).await;
    assert_eq!(
        in_b[0]["id"], "cmd-2",
        "the new sink starts with new records"
    );
    assert_eq!(wait_for_lines(&a, 4).await.len(), 4);

    std::fs::write(&config, "[mews]\nwebsocket_url = 5\n").unwrap();
    signal.send(Signal::Hangup).await.unwrap();
    let reopen = relay.control.reopen.clone();
    wait_until("the second SIGHUP reopened the files", || {
        *reopen.borrow() == 2
    })
    .await;
    conn.send(&commands(4, 6)).await;
    assert_eq!(wait_for_lines(&b, 4).await.len(), 4);
    assert!(
        server.try_next().is_none(),
        "the invalid config was not applied: the running one kept its connection"
    );
    let applied = relay.control.reload.borrow().clone().unwrap();
    assert_eq!(applied.sinks.len(), 2, "the last valid config stays");

    signal.send(Signal::Terminate).await.unwrap();
    wait_until("the first stop signal starts the shutdown", || {
        relay.control.shutdown.is_cancelled()
    })
    .await;
    relay.stop().await;
    drop(signal);
    assert_eq!(handler.await.unwrap(), Handled::Closed);
    assert_eq!(std::fs::read_to_string(&a).unwrap().lines().count(), 6);
}

/// The first SIGTERM starts the drain; a second one ends the wait at once, while a sink that
/// cannot deliver still holds the drain inside its grace period.
#[tokio::test]
async fn a_second_stop_signal_does_not_wait_for_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let dead = format!("http://{}/never", crate::receiver::free_port());
    let sinks = format!(
        "[[sink]]\ntype = \"http\"\nname = \"hooks\"\nurl = \"{dead}\"\nretry_min = \"50ms\"\nretry_max = \"100ms\"\n"
    );
    let text = config_text(&server.url(), dir.path(), &sinks)
        .replace("grace_period = \"5s\"", "grace_period = \"1h\"");
    let relay = Relay::start(&text);
    let (signal, signals) = mpsc::channel(4);
    let handler = tokio::spawn(signals::handle(
        signals,
        relay.control.shutdown.clone(),
        None,
        None,
    ));
    server.next().await.send(&commands(0, 2)).await;
    let stats = std::sync::Arc::clone(&relay.stats);
    wait_until("the sink is failing", || {
        stats
            .sinks
            .lock()
            .unwrap()
            .get("hooks")
            .is_some_and(|s| s.retries > 0)
    })
    .await;

    signal.send(Signal::Terminate).await.unwrap();
    wait_until("the first signal starts the shutdown", || {
        relay.control.shutdown.is_cancelled()
    })
    .await;
    assert!(
        !handler.is_finished(),
        "the first signal only starts the drain"
    );
    signal.send(Signal::Interrupt).await.unwrap();
    let handled = tokio::time::timeout(WAIT, handler)
        .await
        .expect("the second signal is handled at once")
        .unwrap();
    assert_eq!(handled, Handled::ExitNow(Signal::Interrupt));
    assert!(
        relay.is_running(),
        "the relay was still draining towards the dead endpoint"
    );
}

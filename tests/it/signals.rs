//! Signals in-process: the relay's signal handling (`app::signals::handle`) fed from a channel
//! instead of the process's signals, steering a relay that runs in the test.

use mews_relay::app::signals::{self, Handled, Signal};
use mews_relay::config::{CredentialsDir, Settings};
use tokio::sync::mpsc;

use crate::support::*;

/// A token for old-town other than [`ACCESS_TOKEN`].
const OTHER_TOKEN: &str = "D77EF7B239D24632943D115EDE9CB810-EA00F8FD8294692C940F6B5A8F9453D";

/// The relay of the config file `config`, started with its signal handler (reloads read that
/// file): the relay, the handler's signal channel and its task.
fn with_signals(
    config: &std::path::Path,
) -> (
    Relay,
    mpsc::Sender<Signal>,
    tokio::task::JoinHandle<Handled>,
) {
    let relay = Relay::start_with(Settings::load(config, &CredentialsDir::default()).unwrap());
    let (signal, signals) = mpsc::channel(4);
    let handler = tokio::spawn(signals::handle(
        signals,
        relay.control.shutdown.clone(),
        Some(relay.steer.clone()),
        Some(config.to_owned()),
    ));
    (relay, signal, handler)
}

/// Waits until reload request `generation` is done with; returns its outcome.
async fn reloaded(stats: &mews_relay::stats::Stats, generation: u64) -> Result<String, String> {
    wait_until(&format!("reload {generation} is done with"), || {
        stats
            .last_reload
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|r| r.generation >= generation)
    })
    .await;
    let last = stats.last_reload.lock().unwrap().clone().unwrap();
    assert_eq!(last.generation, generation);
    last.outcome
}

/// SIGHUP applies only what changed: a sink added keeps the property's WebSocket (the server
/// sees one connection) and starts with new records while the old sink goes on without a gap;
/// a changed token reconnects that property with the new token; an invalid file is refused,
/// the running config keeps its connection. Files are reopened every time.
#[tokio::test]
async fn sighup_restarts_only_what_changed_and_refuses_an_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let config = write_config(
        dir.path(),
        &config_text(&server.url(), dir.path(), &file_sink(&a)),
    );
    let (relay, signal, handler) = with_signals(&config);
    let mut first = server.next().await;
    first.send(&commands(0, 2)).await;
    wait_for_lines(&a, 2).await;

    // A sink added: the WebSocket stays.
    let both = format!("{}\n{}", file_sink(&a), file_sink(&b));
    write_config(dir.path(), &config_text(&server.url(), dir.path(), &both));
    signal.send(Signal::Hangup).await.unwrap();
    let outcome = reloaded(&relay.stats, 1).await;
    assert!(
        outcome.as_ref().is_ok_and(|c| c.contains("sinks: added")),
        "{outcome:?}"
    );
    first.send(&commands(2, 4)).await;
    let in_b = wait_for_lines(&b, 2).await;
    assert_eq!(
        in_b[0]["id"], "cmd-2",
        "the new sink starts with new records"
    );
    assert_eq!(wait_for_lines(&a, 4).await.len(), 4);
    assert!(
        server.try_next().is_none(),
        "adding a sink did not reconnect"
    );
    assert_eq!(server.attempts(), 1, "the server saw one connection");

    // The property's token changed: it reconnects, with the new token.
    let text = config_text(&server.url(), dir.path(), &both).replace(ACCESS_TOKEN, OTHER_TOKEN);
    write_config(dir.path(), &text);
    signal.send(Signal::Hangup).await.unwrap();
    let mut conn = server.next().await;
    assert!(
        conn.cookie
            .as_deref()
            .is_some_and(|c| c.contains(OTHER_TOKEN)),
        "reconnected with the new token: {:?}",
        conn.cookie
    );
    let outcome = reloaded(&relay.stats, 2).await;
    assert!(
        outcome
            .as_ref()
            .is_ok_and(|c| c.contains("changed old-town")),
        "{outcome:?}"
    );
    conn.send(&commands(4, 6)).await;
    assert_eq!(wait_for_lines(&b, 4).await.len(), 4);

    // An invalid file: refused, nothing restarts.
    std::fs::write(&config, "[mews]\nwebsocket_url = 5\n").unwrap();
    signal.send(Signal::Hangup).await.unwrap();
    let outcome = reloaded(&relay.stats, 3).await;
    assert!(
        outcome.as_ref().is_err_and(|e| e.contains("refused")),
        "{outcome:?}"
    );
    assert_eq!(
        *relay.control.reopen.borrow(),
        3,
        "every SIGHUP reopened the files"
    );
    assert!(
        relay
            .stats
            .status_line(std::time::Duration::from_secs(60))
            .contains("last reload failed"),
        "STATUS= says the last reload failed"
    );
    conn.send(&commands(6, 8)).await;
    assert_eq!(wait_for_lines(&b, 6).await.len(), 6);
    assert!(
        server.try_next().is_none(),
        "the invalid config was not applied: the running one kept its connection"
    );

    signal.send(Signal::Terminate).await.unwrap();
    wait_until("the first stop signal starts the shutdown", || {
        relay.control.shutdown.is_cancelled()
    })
    .await;
    relay.stop().await;
    drop(signal);
    assert_eq!(handler.await.unwrap(), Handled::Closed);
    assert_eq!(std::fs::read_to_string(&a).unwrap().lines().count(), 8);
}

/// SIGUSR1 (logrotate): a file sink reopens its path — the rotated file keeps what was
/// written, the new one gets what comes next — and the WebSocket stays connected.
#[tokio::test]
async fn sigusr1_reopens_files_without_a_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let a = dir.path().join("a.jsonl");
    let config = write_config(
        dir.path(),
        &config_text(&server.url(), dir.path(), &file_sink(&a)),
    );
    let (relay, signal, handler) = with_signals(&config);
    let mut conn = server.next().await;
    conn.send(&commands(0, 2)).await;
    wait_for_lines(&a, 2).await;

    let rotated = dir.path().join("a.jsonl.1");
    std::fs::rename(&a, &rotated).unwrap();
    signal.send(Signal::User1).await.unwrap();
    let reopen = relay.control.reopen.clone();
    wait_until("SIGUSR1 asked for a reopen", || *reopen.borrow() == 1).await;
    conn.send(&commands(2, 4)).await;
    let fresh = wait_for_lines(&a, 2).await;
    assert_eq!(
        fresh[0]["id"], "cmd-2",
        "the reopened file starts with what came next"
    );
    assert_eq!(
        std::fs::read_to_string(&rotated).unwrap().lines().count(),
        2
    );
    assert!(server.try_next().is_none(), "no reconnect");
    assert_eq!(server.attempts(), 1);
    assert!(
        relay.stats.last_reload.lock().unwrap().is_none(),
        "no reload either"
    );

    relay.control.shutdown.cancel();
    relay.stop().await;
    drop(signal);
    assert_eq!(handler.await.unwrap(), Handled::Closed);
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

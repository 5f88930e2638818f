//! SIGTERM stops the sessions with a Close frame, drains the sinks, and exits 0.

use std::io::Read;

use nix::sys::signal::Signal;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::crash::{commit_all, records_by_seq, relay_config};
use crate::support::*;

/// With stdout blocked on a full pipe at SIGTERM, the relay still delivers every committed
/// record once the pipe is read, closes the WebSocket with 1001, and exits 0.
#[tokio::test]
async fn sigterm_drains_committed_records_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let config = relay_config(dir.path(), &server.url(), "10s");
    let mut daemon = Daemon::spawn_piped(
        &["run", "--config", config.to_str().unwrap()],
        dir.path(),
        "relay",
    );
    let mut pipe = daemon.child.stdout.take().unwrap();
    let mut conn = commit_all(&mut server, dir.path()).await;

    daemon.signal(Signal::SIGTERM);
    loop {
        match tokio::time::timeout(WAIT, conn.incoming.recv())
            .await
            .unwrap()
        {
            Some(Message::Ping(_) | Message::Pong(_)) => continue, // the heartbeat
            Some(Message::Close(Some(frame))) => break assert_eq!(frame.code, CloseCode::Away),
            other => panic!("expected a Close frame with 1001, got {other:?}"),
        }
    }
    let reader = tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        pipe.read_to_string(&mut out).map(|_| out)
    });
    assert_eq!(daemon.wait().await, Some(0), "{}", daemon.stderr_text());
    let out = reader.await.unwrap().unwrap();
    let records = records_by_seq(&out);
    assert_eq!(records.len(), 2000);
    assert_eq!(out.lines().count(), 2000, "each record exactly once");
}

/// When a sink cannot drain, the grace period ends the wait and the process still exits 0.
#[tokio::test]
async fn the_grace_period_bounds_a_drain_that_cannot_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let config = relay_config(dir.path(), &server.url(), "300ms");
    let mut daemon = Daemon::spawn_piped(
        &["run", "--config", config.to_str().unwrap()],
        dir.path(),
        "relay",
    );
    let _pipe = daemon.child.stdout.take().unwrap(); // never read
    let _conn = commit_all(&mut server, dir.path()).await;
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0));
    assert!(
        daemon.stderr_text().contains("grace period over"),
        "{}",
        daemon.stderr_text()
    );
}

/// A second SIGTERM during a drain exits at once.
#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let config = relay_config(dir.path(), &server.url(), "1h");
    let mut daemon = Daemon::spawn_piped(
        &["run", "--config", config.to_str().unwrap()],
        dir.path(),
        "relay",
    );
    let _pipe = daemon.child.stdout.take().unwrap(); // never read: the drain cannot finish
    let _conn = commit_all(&mut server, dir.path()).await;
    daemon.signal(Signal::SIGTERM);
    wait_until("the first signal is logged", || {
        daemon
            .stderr_text()
            .contains("send it again to exit at once")
    })
    .await;
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(130));
}

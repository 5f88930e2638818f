//! The journal on disk: seqs survive restarts, cursors are per sink, delivered records are
//! pruned, and a file that cannot be opened is one clear error.

use std::path::Path;
use std::sync::Arc;

use mews_relay::journal::{Entry, FILE_NAME, Journal};
use mews_relay::record::{Origin, Record};
use mews_relay::stats::Stats;
use serde_json::value::RawValue;

use crate::support::*;

fn record(id: usize) -> Record {
    Record {
        kind: Some("DeviceCommand".into()),
        id: Some(format!("cmd-{id}")),
        state: Some("Pending".into()),
        ..Record::new(
            "old-town".into(),
            Origin::Websocket,
            "2026-11-23T12:00:00.000000Z".into(),
            RawValue::from_string(format!(r#"{{"Type":"DeviceCommand","Id":"cmd-{id}"}}"#))
                .unwrap(),
        )
    }
}

async fn open(dir: &Path, sinks: &[&str]) -> (Journal, tokio::task::JoinHandle<()>) {
    let names: Vec<String> = sinks.iter().map(|s| s.to_string()).collect();
    let (journal, writer) =
        Journal::open(dir, &names, 1 << 30, Arc::new(Stats::default())).unwrap();
    (journal, tokio::spawn(writer.run()))
}

async fn close(journal: Journal, writer: tokio::task::JoinHandle<()>) {
    drop(journal);
    writer.await.unwrap();
}

/// Seqs continue after a restart, even when every record was pruned.
#[tokio::test]
async fn seqs_are_monotonic_across_restarts_and_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, writer) = open(dir.path(), &["a"]).await;
    assert_eq!(
        journal
            .append_committed((0..3).map(record).map(Entry::Record).collect())
            .await
            .unwrap(),
        3
    );
    journal.advance("a", 3).await.unwrap();
    journal.flush().await.unwrap();
    close(journal, writer).await;

    let (journal, writer) = open(dir.path(), &["a"]).await;
    assert_eq!(journal.cursor("a"), 3);
    assert!(
        journal.read_after(0, 10).await.unwrap().is_empty(),
        "records every sink passed are pruned"
    );
    assert_eq!(
        journal
            .append_committed(vec![Entry::Record(record(3))])
            .await
            .unwrap(),
        4
    );
    let read = journal.read_after(3, 10).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].seq, 4);
    assert!(
        String::from_utf8_lossy(&read[0].json).starts_with(r#"{"seq":4,"property":"old-town""#)
    );
    close(journal, writer).await;
}

/// Records stay until the slowest sink passes them; a new sink starts at the end; a removed
/// sink's cursor no longer holds records back.
#[tokio::test]
async fn records_stay_until_every_sink_has_passed_them() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, writer) = open(dir.path(), &["fast", "slow"]).await;
    journal
        .append_committed((0..5).map(record).map(Entry::Record).collect())
        .await
        .unwrap();
    journal.advance("fast", 5).await.unwrap();
    journal.advance("slow", 2).await.unwrap();
    journal.flush().await.unwrap();
    journal.flush().await.unwrap(); // pruning runs with the commit after the cursor moved
    let left: Vec<u64> = journal
        .read_after(0, 10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(left, vec![3, 4, 5]);
    close(journal, writer).await;

    let (journal, writer) = open(dir.path(), &["fast", "new"]).await;
    assert_eq!(
        journal.cursor("new"),
        5,
        "a new sink starts after the last record"
    );
    assert_eq!(journal.cursor("slow"), 0, "a removed sink is forgotten");
    journal.flush().await.unwrap();
    assert!(journal.read_after(0, 10).await.unwrap().is_empty());
    close(journal, writer).await;
}

/// A corrupt journal stops the daemon with exit 74 and one line saying where and what to do.
#[tokio::test]
async fn a_corrupt_journal_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(FILE_NAME), vec![0x5a; 64 * 1024]).unwrap();
    let config = write_config(
        dir.path(),
        &config_text(
            "ws://127.0.0.1:9/ws/connector",
            dir.path(),
            "[[sink]]\ntype = \"stdout\"\n",
        ),
    );
    let mut daemon = Daemon::spawn(
        &["run", "--config", config.to_str().unwrap()],
        dir.path(),
        "relay",
    );
    assert_eq!(daemon.wait().await, Some(74));
    let last = daemon
        .stderr_text()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    assert!(
        last.contains(&dir.path().join(FILE_NAME).display().to_string()),
        "{last}"
    );
    assert!(last.contains("move it aside"), "{last}");
    assert_eq!(
        std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len(),
        64 * 1024,
        "left as it was"
    );
}

/// A second relay on the same state directory is refused instead of sharing the journal.
#[tokio::test]
async fn a_journal_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, writer) = open(dir.path(), &["a"]).await;
    let err = Journal::open(
        dir.path(),
        &["a".into()],
        1 << 30,
        Arc::new(Stats::default()),
    )
    .err()
    .expect("second open fails");
    assert!(
        err.to_string().contains("in use by another mews-relay"),
        "{err}"
    );
    close(journal, writer).await;
}

/// Disk full (simulated with the file-size limit RLIMIT_FSIZE, hit by the journal while the
/// only sink is stuck): the relay logs and counts what it cannot store and keeps the WebSocket
/// reading; once there is room again (the limit is lifted), records are stored and delivered.
#[tokio::test]
async fn a_full_disk_is_logged_and_counted_and_writing_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let config = dir.path().join("relay.toml");
    let text = config_text(&server.url(), dir.path(), "[[sink]]\ntype = \"stdout\"\n")
        .replace("max_message_size = \"4KiB\"", "max_message_size = \"1MiB\"");
    std::fs::write(&config, text).unwrap();
    let mut relay = FullDisk::spawn(&config, dir.path(), 1 << 20);
    let pipe = relay.take_stdout();
    let stderr = || relay.stderr_text();
    let mut conn = server.next().await;

    // Nobody reads stdout yet: the pipe fills, the sink blocks, the journal grows to the limit.
    for start in (0..40_000).step_by(500) {
        conn.send(&commands(start, start + 500)).await; // ~2.5 MiB of records, over the limit
    }
    wait_until("the relay reports that it cannot write", || {
        stderr().contains("cannot write to the journal")
    })
    .await;
    let log = stderr();
    assert!(
        log.contains("lost_total="),
        "lost records are counted:\n{log}"
    );
    assert_eq!(
        log.matches("cannot write to the journal").count(),
        1,
        "reported once, not per commit:\n{log}"
    );

    // Room again: lift the limit (as an admin freeing disk space would), and read stdout.
    relay.make_room();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(pipe)) {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    conn.send(&commands(9_000_000, 9_000_003)).await;
    let mut delivered = 0;
    while delivered < 3 {
        let line = tokio::time::timeout(WAIT, lines.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "events sent after recovery did not reach the sink:\n{}",
                    stderr()
                )
            })
            .expect("stdout open");
        if line.contains("\"id\":\"cmd-900000") {
            delivered += 1;
        }
    }
    assert!(
        stderr().contains("journal writes work again"),
        "{}",
        stderr()
    );
    assert!(
        server.try_next().is_none(),
        "the WebSocket was never dropped"
    );
    let code = relay.terminate().await;
    assert_eq!(code, Some(0), "{}", relay.stderr_text());
}

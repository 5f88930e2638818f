//! `kill -9` loses nothing that was committed; every sink resumes after its own cursor.

use std::collections::BTreeMap;
use std::io::Read;

use crate::support::*;

const EVENTS: usize = 2000;

/// Complete JSON lines of a stream, by seq (a line cut by the kill is ignored).
pub fn records_by_seq(text: &str) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let seq = value["seq"].as_u64().unwrap();
        if let Some(earlier) = out.insert(seq, line.to_owned()) {
            assert_eq!(earlier, line, "a redelivered record is the same record");
        }
    }
    out
}

pub fn relay_config(dir: &std::path::Path, url: &str, grace: &str) -> std::path::PathBuf {
    let sinks = format!(
        "[[sink]]\ntype = \"stdout\"\n\n{}",
        file_sink(&dir.join("out.jsonl"))
    );
    let text = config_text(url, dir, &sinks)
        .replace("max_message_size = \"4KiB\"", "max_message_size = \"1MiB\"")
        .replace(
            "grace_period = \"5s\"",
            &format!("grace_period = \"{grace}\""),
        );
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Sends EVENTS commands in messages of 100 and waits until the file sink has them all,
/// which proves they are committed. The stdout sink meanwhile is stuck on a full pipe.
pub async fn commit_all(server: &mut MockServer, dir: &std::path::Path) -> Conn {
    let mut conn = server.next().await;
    for start in (0..EVENTS).step_by(100) {
        conn.send(&commands(start, start + 100)).await;
    }
    wait_for_lines(&dir.join("out.jsonl"), EVENTS).await;
    conn
}

/// A killed relay, restarted, delivers to stdout everything it had not, none skipped; the file
/// sink holds every committed record (duplicates only as identical lines).
#[tokio::test]
async fn kill_9_loses_nothing_committed_and_each_sink_resumes_at_its_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let config = relay_config(dir.path(), &server.url(), "5s");
    let args = ["run", "--config", config.to_str().unwrap()];

    let mut daemon = Daemon::spawn_piped(&args, dir.path(), "first");
    let mut pipe = daemon.child.stdout.take().unwrap();
    let _conn = commit_all(&mut server, dir.path()).await;
    daemon.child.kill().unwrap(); // SIGKILL
    daemon.wait().await;
    let mut before = String::new();
    pipe.read_to_string(&mut before).unwrap();
    let before = records_by_seq(&before);
    assert!(
        before.len() < EVENTS,
        "the stdout sink was still behind when killed"
    );

    let mut daemon = Daemon::spawn(&args, dir.path(), "second");
    let _conn = server.next().await;
    let last_before = before.keys().max().copied().unwrap_or(0);
    let missing = EVENTS - last_before as usize;
    wait_until("stdout of the restarted relay catches up", || {
        records_by_seq(&daemon.stdout_text()).len() >= missing
    })
    .await;
    let after = records_by_seq(&daemon.stdout_text());
    let first_after = *after.keys().next().unwrap();
    assert!(
        first_after <= last_before + 1,
        "records skipped: before ended at {last_before}, after starts at {first_after}"
    );
    let mut all = before;
    all.extend(after);
    assert_eq!(
        all.keys().copied().collect::<Vec<_>>(),
        (1..=EVENTS as u64).collect::<Vec<_>>()
    );
    for (seq, line) in &all {
        assert!(
            line.contains(&format!("\"id\":\"cmd-{}\"", seq - 1)),
            "{line}"
        );
    }

    let file = records_by_seq(&std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap());
    assert_eq!(file.len(), EVENTS);
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0));
}

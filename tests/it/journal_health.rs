//! A journal that cannot store is loud: `/readyz`, webhooks and the log say so while the state
//! disk is full or `journal.redb` was deleted under the running relay; only what is really
//! lost counts as lost; the file is private and never opened through a link (issue 18).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use mews_relay::journal::FILE_NAME;
use nix::sys::signal::Signal;

use crate::listeners::{TOKEN, counter, get, listeners, listening, readyz_becomes};
use crate::receiver::free_port;
use crate::support::*;

/// A General webhook with one event.
fn webhook(id: &str) -> String {
    format!(
        r#"{{"EnterpriseId":"e","IntegrationId":"i","Events":[{{"Discriminator":"ServiceOrderUpdated","Value":{{"Id":"{id}"}}}}]}}"#
    )
}

async fn post_webhook(hooks: SocketAddr, id: &str) -> u16 {
    http_client()
        .post(format!("http://{hooks}/mews/webhooks?Token={TOKEN}"))
        .body(webhook(id))
        .send()
        .await
        .unwrap_or_else(|err| panic!("POST webhook: {err}"))
        .status()
        .as_u16()
}

/// `mews_relay_events_total` summed over its series.
fn events_total(page: &str) -> u64 {
    page.lines()
        .filter(|l| l.starts_with("mews_relay_events_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Waits for the record with `id` in a file sink's output and returns its seq. Records after
/// the sink's last saved position may come again before it (at least once).
async fn seq_of(out: &Path, id: &str) -> u64 {
    let find = || {
        std::fs::read_to_string(out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|r| r["id"] == id)
            .and_then(|r| r["seq"].as_u64())
    };
    wait_until(&format!("{id} is delivered"), || find().is_some()).await;
    find().unwrap()
}

/// While the state disk is full (RLIMIT_FSIZE), `/readyz` is 503 naming the journal and the
/// fix, and a webhook is answered 503 without counting as lost (Mews sends it again): only
/// WebSocket events that could not be stored are in `records_lost_total`. Once there is room,
/// `/readyz` is 200 again without waiting for new events, and webhooks are taken (before:
/// ready throughout, and each refused webhook counted as lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_disk_makes_the_relay_unready_until_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let (hooks, metrics) = (free_port(), free_port());
    let text = config_text(&server.url(), dir.path(), "[[sink]]\ntype = \"stdout\"\n")
        .replace("max_message_size = \"4KiB\"", "max_message_size = \"1MiB\"");
    // A sink stuck behind a full pipe must not be what makes the relay unready here.
    let text = listeners(text, hooks, metrics, "ready_max_lag = \"1h\"\n");
    let config = write_config(dir.path(), &text);
    let mut relay = FullDisk::spawn(&config, dir.path(), 1 << 20);
    let _pipe = relay.take_stdout(); // held unread: the stdout sink blocks, the journal grows
    let mut conn = server.next().await;
    listening(metrics).await;
    readyz_becomes(metrics, 200, "connected, journal fine").await;

    const SENT: u64 = 40_000;
    for start in (0..SENT as usize).step_by(500) {
        conn.send(&commands(start, start + 500)).await; // ~2.5 MiB of records, over the limit
    }
    let body = readyz_becomes(metrics, 503, "the journal cannot be written").await;
    assert!(body.contains(r#""journal":"journal writes fail"#), "{body}");
    assert!(body.contains("free space on the state directory"), "{body}");
    // Every WebSocket event is either stored or lost, and counted as one or the other.
    let deadline = tokio::time::Instant::now() + WAIT;
    let lost = loop {
        let (_, page) = get(metrics, "/metrics").await;
        let lost = counter(&page, "mews_relay_records_lost_total");
        if events_total(&page) + lost == SENT {
            break lost;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events sent are neither stored nor counted as lost:\n{page}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(lost > 0, "the limit was hit");

    assert_eq!(post_webhook(hooks, "during").await, 503);
    let (_, page) = get(metrics, "/metrics").await;
    assert_eq!(
        counter(&page, "mews_relay_records_lost_total"),
        lost,
        "a webhook answered 503 is not lost"
    );
    assert!(page.contains("mews_relay_journal_ok 0"), "{page}");
    assert!(
        page.contains(
            r#"mews_relay_listener_refusals_total{listener="webhooks",reason="journal"} 1"#
        ),
        "{page}"
    );

    relay.make_room();
    readyz_becomes(metrics, 200, "room again").await;
    assert_eq!(post_webhook(hooks, "after").await, 202);
    let (_, page) = get(metrics, "/metrics").await;
    assert_eq!(counter(&page, "mews_relay_records_lost_total"), lost);
    assert!(page.contains("mews_relay_journal_ok 1"), "{page}");
    let log = relay.stderr_text();
    assert_eq!(
        log.matches("cannot write to the journal:").count(),
        1,
        "one error for the spell:\n{log}"
    );
    assert!(log.contains("journal writes work again"), "{log}");
}

/// `journal.redb` deleted while the relay runs: `/readyz` is 503 naming it, a webhook is
/// answered 503 (not 202 into a file that is gone after a restart), a WebSocket event is
/// counted as lost, and the log has one error saying to restart. On SIGTERM the relay writes
/// the journal it held back to its path: the next start goes on from it (seqs continue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_journal_is_loud_takes_nothing_and_is_put_back_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let (hooks, metrics) = (free_port(), free_port());
    let out = dir.path().join("out.jsonl");
    let text = listeners(
        config_text(&server.url(), dir.path(), &file_sink(&out)),
        hooks,
        metrics,
        "",
    );
    let config = write_config(dir.path(), &text);
    let args = ["run", "--config", config.to_str().unwrap()];
    let mut daemon = Daemon::spawn(&args, dir.path(), "first");
    let mut conn = server.next().await;
    conn.send(&commands(0, 3)).await;
    wait_for_lines(&out, 3).await;
    listening(metrics).await;
    assert_eq!(post_webhook(hooks, "before").await, 202);
    wait_for_lines(&out, 4).await;

    let journal = dir.path().join(FILE_NAME);
    std::fs::remove_file(&journal).unwrap();
    let body = readyz_becomes(metrics, 503, "the journal file is gone").await;
    assert!(body.contains("journal.redb was deleted"), "{body}");
    assert!(body.contains("restart the relay"), "{body}");
    assert_eq!(post_webhook(hooks, "during").await, 503, "not 202");
    conn.send(&commands(3, 4)).await;
    wait_until_async("the WebSocket event is counted as lost", || async {
        let (_, page) = get(metrics, "/metrics").await;
        counter(&page, "mews_relay_records_lost_total") == 1
    })
    .await;
    assert!(
        !journal.exists(),
        "no new, empty journal behind the relay's back"
    );
    let log = daemon.stderr_text();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one error:\n{log}");
    assert!(
        errors[0].contains("was deleted while the relay runs")
            && errors[0].contains("restart the relay"),
        "{}",
        errors[0]
    );

    daemon.signal(Signal::SIGTERM);
    assert_eq!(
        daemon.wait().await,
        Some(74),
        "the final commit failed: {}",
        daemon.stderr_text()
    );
    assert!(
        daemon
            .stderr_text()
            .contains("the journal this relay held is back at its path"),
        "{}",
        daemon.stderr_text()
    );
    assert!(journal.exists(), "written back");

    let mut daemon = Daemon::spawn(&args, dir.path(), "second");
    let mut conn = server.next().await;
    conn.send(&commands(4, 5)).await;
    assert_eq!(
        seq_of(&out, "cmd-4").await,
        5,
        "seqs go on from the journal written back"
    );
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0), "{}", daemon.stderr_text());
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A journal left readable by an older version (0644) is made 0600 at start; a symlink at
/// `journal.redb` is refused with exit 74 and a line naming it, its target untouched (before:
/// the journal stayed 0644, and the link was followed and its target made a journal).
#[tokio::test]
async fn the_journal_is_made_private_and_never_opened_through_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let server = MockServer::start().await;
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let journal = state.join(FILE_NAME);
    std::fs::write(&journal, "").unwrap(); // redb makes an empty file a journal
    std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = write_config(
        dir.path(),
        &config_text(&server.url(), &state, "[[sink]]\ntype = \"stdout\"\n"),
    );
    let args = ["run", "--config", config.to_str().unwrap()];
    let mut daemon = Daemon::spawn(&args, dir.path(), "older");
    wait_until("the relay started", || {
        daemon.stderr_text().contains("mews-relay started")
    })
    .await;
    assert_eq!(mode(&journal), 0o600);
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0), "{}", daemon.stderr_text());

    // An empty file is what redb would make a journal of, through the link (before: it did).
    std::fs::remove_file(&journal).unwrap();
    let target = dir.path().join("precious");
    std::fs::write(&target, "").unwrap();
    std::os::unix::fs::symlink(&target, &journal).unwrap();
    let mut daemon = Daemon::spawn(&args, dir.path(), "link");
    assert_eq!(daemon.wait().await, Some(74), "{}", daemon.stderr_text());
    let stderr = daemon.stderr_text();
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains(&journal.display().to_string()), "{last}");
    assert!(last.contains("symbolic link"), "{last}");
    assert_eq!(std::fs::metadata(&target).unwrap().len(), 0, "untouched");
}

/// A reload is a way out too: the journal the relay held is written back on the way out of the
/// old configuration, and the new one goes on from it: healthy again, seqs continuing.
#[tokio::test]
async fn a_reload_puts_a_deleted_journal_back_and_goes_on_from_it() {
    let mut h = Harness::start().await;
    let mut conn = h.server.next().await;
    conn.send(&commands(0, 2)).await;
    wait_for_lines(&h.out, 2).await;
    std::fs::remove_file(h.dir.path().join(FILE_NAME)).unwrap();
    wait_until("the deleted journal is noticed", || {
        !h.relay.stats.journal.is_ok()
    })
    .await;

    h.reload(&h.config);
    let mut conn = h.server.next().await; // reconnected after the reload
    wait_until("the journal is healthy again", || {
        h.relay.stats.journal.is_ok()
    })
    .await;
    assert!(h.dir.path().join(FILE_NAME).exists());
    conn.send(&commands(2, 3)).await;
    assert_eq!(seq_of(&h.out, "cmd-2").await, 3, "seqs go on");
    h.relay.stop().await;
}

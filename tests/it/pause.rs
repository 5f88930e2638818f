//! An HTTP endpoint that is broken (a wrong API key on the receiver) pauses its sink: nothing
//! is dead-lettered, `/readyz` and `STATUS=` name the sink, and once the endpoint answers
//! again every record is delivered within 5 s with the default retry settings (issue 15).

use std::time::Duration;

use tokio::time::Instant;

use crate::listeners::readyz_becomes;
use crate::receiver::{Receiver, Reply, free_port};
use crate::support::*;

/// 401 for a while: the records wait (no dead letter), `/readyz` is 503 naming the sink and
/// why, the status line names it; then 200, and every record arrives within 5 s of the fix
/// (default `retry_min`/`retry_max`).
#[tokio::test]
async fn an_endpoint_answering_401_pauses_the_sink_until_it_is_fixed() {
    let mut receiver = Receiver::start().await;
    receiver.set_default(Reply::Status(401, "invalid api key sk-ECHOED-SECRET"));
    let metrics = free_port();
    let url = receiver.url();
    let mut h = Harness::start_with(|c| {
        format!(
            "{c}\n[metrics]\nlisten = \"{metrics}\"\n\n[[sink]]\ntype = \"http\"\nname = \"hooks\"\nurl = \"{url}\"\n"
        )
    })
    .await;
    h.server.next().await.send(&commands(0, 3)).await;
    wait_for_lines(&h.out, 3).await;
    for _ in 0..3 {
        receiver.next().await; // refused, and tried again
    }

    let body = readyz_becomes(metrics, 503, "the sink is paused").await;
    assert!(body.contains("\"hooks\""), "{body}");
    assert!(body.contains("paused") && body.contains("401"), "{body}");
    // A receiver may echo the key it refused: its answer stays out of the unauthenticated
    // `/readyz` (and `status`), which carry the status and the fix only.
    assert!(!body.contains("ECHOED-SECRET"), "{body}");
    let line = h.relay.stats.status_line(Duration::from_secs(60));
    assert!(
        line.contains("hooks: paused"),
        "STATUS= names the sink: {line}"
    );
    let dead = h.dir.path().join("dead-letter/hooks.jsonl");
    assert!(
        !dead.exists(),
        "nothing is dead-lettered for a broken endpoint"
    );
    let dead_lettered = h.relay.stats.sinks.lock().unwrap()["hooks"].dead_lettered;
    assert_eq!(dead_lettered, 0);

    receiver.set_default(Reply::Ok);
    let fixed = Instant::now();
    let mut delivered = std::collections::BTreeSet::new();
    while delivered.len() < 3 {
        let request = receiver.next().await;
        if request.at < fixed {
            continue; // answered 401
        }
        for record in request.records() {
            delivered.insert(record["id"].as_str().unwrap().to_owned());
        }
    }
    let resumed = fixed.elapsed();
    eprintln!("resumed {resumed:?} after the endpoint was fixed");
    assert!(
        resumed < Duration::from_secs(5),
        "resumed after {resumed:?}"
    );
    assert_eq!(
        delivered.into_iter().collect::<Vec<_>>(),
        ["cmd-0", "cmd-1", "cmd-2"]
    );
    readyz_becomes(metrics, 200, "the sink delivers again").await;
    assert!(!dead.exists());
    h.relay.stop().await;
}

/// A record-specific answer (422 by default) still dead-letters that record at once, and the
/// sink is not paused for it; `dead_letter_status` changes which answers do.
#[tokio::test]
async fn a_record_refused_for_what_it_is_is_dead_lettered_not_paused() {
    let mut receiver = Receiver::start().await;
    receiver.script([
        Reply::Status(422, "no such room"),
        Reply::Status(409, "dup"),
    ]);
    let url = receiver.url();
    let mut h = Harness::start_with(|c| {
        format!(
            "{c}\n[[sink]]\ntype = \"http\"\nname = \"hooks\"\nurl = \"{url}\"\nretry_min = \"50ms\"\nretry_max = \"100ms\"\ndead_letter_status = [409, 422]\n"
        )
    })
    .await;
    h.server.next().await.send(&commands(0, 3)).await;
    let records = receiver.records(3).await;
    assert_eq!(
        records[2]["id"], "cmd-2",
        "the third one is delivered at once"
    );
    let dead = wait_for_lines(&h.dir.path().join("dead-letter/hooks.jsonl"), 2).await;
    assert_eq!(dead.len(), 2);
    let paused = h.relay.stats.sinks.lock().unwrap()["hooks"]
        .trouble
        .as_ref()
        .is_some_and(|t| t.paused);
    assert!(!paused);
    h.relay.stop().await;
}

/// The usual fix for a 401: the sink's key, changed in the config and reloaded. Only that sink
/// restarts (the WebSocket stays), where the paused one stood: every record arrives, with the
/// new key, and nothing was dead-lettered.
#[tokio::test]
async fn a_reload_with_the_right_key_resumes_a_paused_sink_where_it_stood() {
    let mut receiver = Receiver::start().await;
    receiver.set_default(Reply::Status(401, "invalid api key"));
    let url = receiver.url();
    let sink = |key: &str| {
        format!(
            "\n[[sink]]\ntype = \"http\"\nname = \"hooks\"\nurl = \"{url}\"\nretry_min = \"50ms\"\nretry_max = \"200ms\"\nheaders = {{ \"X-Api-Key\" = \"{key}\" }}\n"
        )
    };
    let mut h = Harness::start_with(|c| c + &sink("old-key")).await;
    let mut conn = h.server.next().await;
    conn.send(&commands(0, 3)).await;
    wait_for_lines(&h.out, 3).await;
    wait_until("the sink is paused", || {
        h.relay.stats.sinks.lock().unwrap()["hooks"]
            .trouble
            .as_ref()
            .is_some_and(|t| t.paused)
    })
    .await;

    let fixed = h.config.clone() + &sink("new-key");
    let fixed = fixed.replacen(&sink("old-key"), "", 1);
    h.reload_changing(&fixed, "changed hooks").await;
    receiver.set_default(Reply::Ok);
    let mut delivered = std::collections::BTreeSet::new();
    while delivered.len() < 3 {
        let request = receiver.next().await;
        if request
            .headers
            .get("x-api-key")
            .is_some_and(|v| v == "new-key")
        {
            delivered.extend(
                request
                    .records()
                    .iter()
                    .map(|r| r["id"].as_str().unwrap().to_owned()),
            );
        }
    }
    assert_eq!(
        delivered.into_iter().collect::<Vec<_>>(),
        ["cmd-0", "cmd-1", "cmd-2"]
    );
    assert!(
        h.server.try_next().is_none(),
        "the WebSocket stayed connected"
    );
    assert!(!h.dir.path().join("dead-letter/hooks.jsonl").exists());
    h.relay.stop().await;
}

/// A paused sink whose held records a reload filters out (its `events` no longer name them)
/// is not left paused: the trouble of the driver before the reload is not this one's, and
/// `/readyz` is ready again although nothing more is delivered.
#[tokio::test]
async fn a_reload_that_filters_out_the_held_records_clears_the_pause() {
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::Status(401, "invalid api key"));
    let url = receiver.url();
    let metrics = free_port();
    let sink = |events: &str| {
        format!(
            "\n[[sink]]\ntype = \"http\"\nname = \"hooks\"\nurl = \"{url}\"\nretry_min = \"50ms\"\nretry_max = \"200ms\"\n{events}"
        )
    };
    let mut h =
        Harness::start_with(|c| format!("{c}\n[metrics]\nlisten = \"{metrics}\"\n") + &sink(""))
            .await;
    let mut conn = h.server.next().await;
    conn.send(&commands(0, 3)).await;
    wait_for_lines(&h.out, 3).await;
    readyz_becomes(metrics, 503, "the sink is paused").await;

    let filtered = h
        .config
        .replacen(&sink(""), &sink("events = [\"Reservation\"]\n"), 1);
    h.reload_changing(&filtered, "changed hooks").await;
    readyz_becomes(metrics, 200, "the pause ends with the driver that hit it").await;
    wait_until("the sink passed the records it no longer takes", || {
        h.relay.stats.sinks.lock().unwrap()["hooks"].lag_records == 0
    })
    .await;
    assert!(
        h.relay.stats.sinks.lock().unwrap()["hooks"]
            .trouble
            .is_none(),
        "no trouble is noted for the new settings"
    );
    h.relay.stop().await;
}

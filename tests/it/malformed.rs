//! Bad messages are logged, counted and kept; the connection and later events carry on.

use mews_relay::stats::Stats;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// Not-JSON, no `Events`, binary and oversized messages land in rejected.jsonl; the good
/// events around them are delivered on the same connection.
#[tokio::test]
async fn malformed_binary_and_oversized_messages_do_not_stop_later_events() {
    let mut h = Harness::start().await;
    let mut conn = h.server.next().await;

    conn.send(&commands(0, 1)).await;
    conn.send("this is not JSON {").await;
    conn.send(r#"{"Events":{"Type":"DeviceCommand"}}"#).await;
    conn.send_message(Message::Binary(vec![0u8, 159, 146, 150].into()))
        .await;
    let oversized = commands(100, 200); // ~6 KiB, over the test's 4 KiB max_message_size
    assert!(oversized.len() > 4096);
    conn.send(&oversized).await;
    conn.send(&commands(1, 2)).await;

    let lines = wait_for_lines(&h.out, 2).await;
    let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["cmd-0", "cmd-1"]);

    let rejected = wait_for_lines(&h.dir.path().join("rejected.jsonl"), 4).await;
    let reasons: Vec<&str> = rejected
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    assert!(reasons[0].starts_with("not valid JSON"), "{reasons:?}");
    assert!(reasons[1].contains("Events"), "{reasons:?}");
    assert_eq!(reasons[2], "binary message");
    assert!(reasons[3].contains("max_message_size"), "{reasons:?}");
    assert_eq!(rejected[0]["text"], "this is not JSON {");
    assert_eq!(rejected[2]["base64"], "AJ+Slg==");
    assert_eq!(
        rejected[3]["text"],
        Value::String(oversized.clone()),
        "kept whole"
    );
    assert!(rejected.iter().all(|r| r["property"] == "old-town"));

    assert_eq!(Stats::get(&h.relay.stats.messages_rejected), 4);
    assert_eq!(
        Stats::get(&h.relay.stats.connections),
        1,
        "the connection carried on"
    );
    h.relay.stop().await;
}

/// Every file in tests/fixtures/malformed has the outcome `outcomes.toml` documents, on one
/// connection that carries on; so do a 20 MiB message and a flood of 1,000 pings.
#[tokio::test]
async fn the_malformed_corpus_has_its_documented_outcomes() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    let mut h = Harness::start_with(|c| {
        c.replace("max_message_size = \"4KiB\"", "max_message_size = \"1MiB\"")
    })
    .await;
    let mut conn = h.server.next().await;
    let dir = std::path::Path::new("tests/fixtures/malformed");
    let outcomes: toml::Table = std::fs::read_to_string(dir.join("outcomes.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let rejected_file = h.dir.path().join("rejected.jsonl");
    let (mut lines, mut rejected, mut sentinel) = (0usize, 0usize, 0usize);
    let mut cases: Vec<(String, Message, String)> = outcomes
        .iter()
        .map(|(name, outcome)| {
            let bytes = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            let message = match name.as_str() {
                "binary.bin" => Message::Binary(bytes.into()),
                n if n.ends_with(".bin") => {
                    Message::Frame(Frame::message(bytes, OpCode::Data(Data::Text), true))
                }
                _ => Message::Text(String::from_utf8(bytes).unwrap().into()),
            };
            (
                name.clone(),
                message,
                outcome
                    .as_str()
                    .map_or_else(|| outcome.to_string(), str::to_owned),
            )
        })
        .collect();
    let huge = format!(
        r#"{{"Events":[{{"Type":"X","Id":"big","Blob":"{}"}}]}}"#,
        "a".repeat(20 << 20)
    );
    cases.push((
        "20 MiB message".into(),
        Message::Text(huge.into()),
        "rejected".into(),
    ));
    let mut connections = 1;
    for (name, message, outcome) in cases {
        conn.send_message(message).await;
        if outcome.ends_with("reconnects") {
            conn = h.server.next().await;
            connections += 1;
        }
        conn.send(&commands(1_000 + sentinel, 1_001 + sentinel))
            .await;
        sentinel += 1;
        let forwarded: usize = if outcome.starts_with("rejected") {
            0
        } else {
            outcome.parse().unwrap()
        };
        lines += forwarded + 1;
        // Raw lines: a forwarded event may hold numbers beyond what a strict parser accepts.
        wait_until(&format!("{name}: the sentinel arrives"), || {
            std::fs::read_to_string(&h.out)
                .unwrap_or_default()
                .contains(&format!("\"id\":\"cmd-{}\"", 999 + sentinel))
        })
        .await;
        let got = std::fs::read_to_string(&h.out).unwrap();
        assert_eq!(
            got.lines().count(),
            lines,
            "{name}: forwarded a different number of records"
        );
        if forwarded == 0 {
            rejected += 1;
            let kept = wait_for_lines(&rejected_file, rejected).await;
            assert_eq!(kept.len(), rejected, "{name}: kept once in rejected.jsonl");
        }
    }
    for _ in 0..1000 {
        conn.send_message(Message::Ping(Default::default())).await;
    }
    conn.send(&commands(5_000, 5_001)).await;
    wait_until("the last sentinel arrives", || {
        std::fs::read_to_string(&h.out)
            .unwrap_or_default()
            .contains("cmd-5000")
    })
    .await;
    assert!(
        h.server.try_next().is_none(),
        "no reconnect but the documented ones"
    );
    assert_eq!(
        mews_relay::stats::Stats::get(&h.relay.stats.connections),
        connections
    );
    assert_eq!(
        mews_relay::stats::Stats::get(&h.relay.stats.messages_rejected),
        rejected as u64
    );
    h.relay.stop().await;
}

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

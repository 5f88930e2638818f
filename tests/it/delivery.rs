//! Events travel from the WebSocket through the journal to the sinks, in order and intact.

use crate::support::*;

/// Every event of a multi-event message becomes one record, in order, raw JSON byte for byte,
/// with the documented fields; a filtered sink gets only its type.
#[tokio::test]
async fn events_reach_file_sinks_in_order_with_raw_json_intact() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let all = dir.path().join("out/all.jsonl");
    let reservations = dir.path().join("reservations.jsonl");
    let sinks = format!(
        "{}\n[[sink]]\ntype = \"file\"\nname = \"reservations\"\npath = \"{}\"\nevents = [\"Reservation\"]\n",
        file_sink(&all),
        reservations.display()
    );
    let relay = Relay::start(&config_text(&server.url(), dir.path(), &sinks));
    let mut conn = server.next().await;
    assert_eq!(
        conn.cookie.as_deref(),
        Some(format!("ClientToken={CLIENT_TOKEN}; AccessToken={ACCESS_TOKEN}").as_str()),
        "Mews cookie auth, no spaces around '='"
    );

    let odd = r#"{ "Type":"Reservation" ,"Id":"r-1","State":"Started","StartUtc":"2016-02-20T13:00:00Z","Future":{"n":1.10,"s":"é\u00e9"}}"#;
    conn.send(&format!(r#"{{"Events":[{{"Type":"DeviceCommand","Id":"cmd-0","State":"Pending"}},{odd},{{"Type":"NewKind","Id":"n-1"}}]}}"#)).await;
    conn.send(&commands(1, 3)).await;

    let lines = wait_for_lines(&all, 5).await;
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["cmd-0", "r-1", "n-1", "cmd-1", "cmd-2"]);
    assert_eq!(lines[1]["type"], "Reservation");
    assert_eq!(lines[1]["state"], "Started");
    assert_eq!(lines[1]["property"], "old-town");
    assert_eq!(lines[1]["origin"], "websocket");
    assert_eq!(lines[2]["type"], "NewKind", "unknown types are forwarded");
    assert!(lines[2]["state"].is_null());
    assert!(lines[0]["received_at"].as_str().unwrap().ends_with('Z'));
    let text = std::fs::read_to_string(&all).unwrap();
    let second = text.lines().nth(1).unwrap();
    assert!(
        second.contains(&format!(r#""event":{odd}}}"#)),
        "raw event kept byte for byte: {second}"
    );

    let filtered = wait_for_lines(&reservations, 1).await;
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0]["id"], "r-1");
    assert_eq!(filtered[0]["seq"], 2);
    relay.stop().await;
}

/// The stdout sink prints one JSON line per record and nothing else; logs go to stderr.
#[tokio::test]
async fn the_stdout_sink_prints_json_lines_and_logs_stay_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let config = stdout_config(dir.path(), &server.url());
    let mut daemon = Daemon::spawn(
        &["run", "--config", config.to_str().unwrap()],
        dir.path(),
        "relay",
    );
    let mut conn = server.next().await;
    conn.send(&commands(0, 3)).await;
    wait_until("stdout has 3 lines", || {
        daemon.stdout_text().lines().count() >= 3
    })
    .await;
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0));
    let stdout = daemon.stdout_text();
    for (i, line) in stdout.lines().enumerate() {
        let record: serde_json::Value =
            serde_json::from_str(line).expect("stdout holds only JSON lines");
        assert_eq!(record["id"], format!("cmd-{i}"));
    }
    assert_eq!(stdout.lines().count(), 3);
    assert!(
        daemon.stderr_text().contains("connected"),
        "logs are on stderr"
    );
}

/// A message that arrives together with the server's Close frame is delivered at once: the
/// reader ends before it would commit what it read, and the journal's writer commits it (no
/// further event, no reconnect needed).
#[tokio::test]
async fn the_last_message_before_a_close_is_delivered_without_waiting_for_more() {
    let mut h = Harness::start().await;
    let mut conn = h.server.next().await;
    conn.send_and_close(&commands(0, 3)).await;
    let lines = wait_for_lines(&h.out, 3).await;
    assert_eq!(lines[2]["id"], "cmd-2");
    h.relay.stop().await;
}

/// SIGHUP's reopen: after logrotate moves the file away, new records go to a new file.
#[tokio::test]
async fn file_sinks_reopen_their_file_after_rotation() {
    let mut h = Harness::start().await;
    let mut conn = h.server.next().await;
    conn.send(&commands(0, 1)).await;
    wait_for_lines(&h.out, 1).await;
    let rotated = h.dir.path().join("out.jsonl.1");
    std::fs::rename(&h.out, &rotated).unwrap();
    h.relay.steer.reopen.send_modify(|n| *n += 1);
    wait_until("the sink reopened its file", || h.out.exists()).await;
    conn.send(&commands(1, 2)).await;
    let lines = wait_for_lines(&h.out, 1).await;
    assert_eq!(lines[0]["id"], "cmd-1");
    assert_eq!(
        std::fs::read_to_string(&rotated).unwrap().lines().count(),
        1
    );
    h.relay.stop().await;
}

/// Each `[[property]]` gets its own connection with its own token; records carry the property
/// name, and a sink filtered by property gets only that property's records.
#[tokio::test]
async fn each_property_has_its_own_connection_and_sinks_can_filter_by_property() {
    const AIRPORT_TOKEN: &str = "CC150C355D6A4048A220AD20015483AB-B6D09C0C84B09538077CB8FFBB907B4";
    let airport_only = std::cell::RefCell::new(std::path::PathBuf::new());
    let mut h = Harness::start_with(|config| {
        let dir = config.lines().find_map(|l| l.strip_prefix("dir = \"")).unwrap().trim_end_matches('"').to_owned();
        let path = std::path::Path::new(&dir).join("airport.jsonl");
        *airport_only.borrow_mut() = path.clone();
        config.replace(
            "[connection]",
            &format!("[[property]]\nname = \"airport\"\naccess_token = \"{AIRPORT_TOKEN}\"\n\n[connection]"),
        ) + &format!("\n[[sink]]\ntype = \"file\"\nname = \"airport-only\"\npath = \"{}\"\nproperties = [\"airport\"]\n", path.display())
    })
    .await;
    let airport_only = airport_only.into_inner();
    let mut first = h.server.next().await;
    let mut second = h.server.next().await;
    if !second.cookie.as_deref().unwrap().contains(AIRPORT_TOKEN) {
        std::mem::swap(&mut first, &mut second);
    }
    let (mut old_town, mut airport) = (first, second);
    assert!(old_town.cookie.as_deref().unwrap().contains(ACCESS_TOKEN));
    assert!(airport.cookie.as_deref().unwrap().contains(AIRPORT_TOKEN));
    old_town.send(&commands(0, 1)).await;
    wait_for_lines(&h.out, 1).await;
    airport.send(&commands(1, 2)).await;
    let all = wait_for_lines(&h.out, 2).await;
    assert_eq!(
        (all[0]["property"].as_str(), all[1]["property"].as_str()),
        (Some("old-town"), Some("airport"))
    );
    let filtered = wait_for_lines(&airport_only, 1).await;
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0]["id"], "cmd-1");
    h.relay.stop().await;
}

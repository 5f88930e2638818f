//! Enrichment behind the journal: every event is journaled whatever the Mews REST API does,
//! a REST outage costs one timeout, and commands that went out without details are healed.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::catch_up::{Site, config, dropped, lines, live_command};
use crate::support::*;

/// Event `i` of a mixed stream: every third a DeviceCommand, the others Resource, Reservation
/// and PriceUpdate events; ids are unique. Returns the id and the message.
fn mixed(i: usize) -> (String, String) {
    let event = match i % 6 {
        0 | 3 => format!(r#"{{"Type":"DeviceCommand","Id":"cmd-{i}","State":"Pending"}}"#),
        1 => format!(r#"{{"Type":"Resource","Id":"res-{i}","State":"Dirty"}}"#),
        2 => format!(
            r#"{{"Type":"Reservation","Id":"resv-{i}","State":"Confirmed","StartUtc":"2026-12-01T14:00:00Z","EndUtc":"2026-12-03T10:00:00Z"}}"#
        ),
        _ => format!(r#"{{"Type":"PriceUpdate","Id":"pu-{i}","RateId":"r"}}"#),
    };
    let id = event
        .split(r#""Id":""#)
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    (id, format!(r#"{{"Events":[{event}]}}"#))
}

/// The ids of the complete lines in `path` (a line cut by a kill is skipped).
fn ids(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|l| l["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Mixed events at about 250 per second while the Mews REST API accepts connections and
/// never answers, and a `kill -9` in the middle: after the restart, every event the first
/// relay had journaled when it was killed is in the file sink.
///
/// What it had journaled is what its `/metrics` counted just before the kill (events are
/// journaled in the order they were sent), not a guess from the time: on a busy machine the
/// relay may be many events behind the sender when the kill comes.
#[tokio::test]
async fn a_kill_9_while_rest_hangs_loses_no_event() {
    let gate = RestGate::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let out = dir.path().join("out.jsonl");
    let metrics = crate::receiver::free_port();
    let text = config(&server.url(), &gate.url, dir.path(), &file_sink(&out), "")
        + &format!("\n[metrics]\nlisten = \"{metrics}\"\n");
    let path = write_config(dir.path(), &text);
    let args = ["run", "--config", path.to_str().unwrap()];
    let mut daemon = Daemon::spawn(&args, dir.path(), "first");
    let mut conn = server.next().await;
    let mut written = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(4));
    let started = Instant::now();
    let mut journaled = 0;
    for i in 0.. {
        ticks.tick().await;
        // Mid-stream, with the first DeviceCommand still waiting for its details (2 s).
        if started.elapsed() >= Duration::from_millis(1600) && i % 25 == 0 {
            journaled = events_journaled(metrics).await;
            if journaled >= 200 {
                daemon.child.kill().unwrap(); // SIGKILL
                break;
            }
            assert!(started.elapsed() < WAIT, "journaled only {journaled}");
        }
        let (id, message) = mixed(i);
        assert!(conn.try_send(Message::Text(message.into())).await);
        written.push(id);
    }
    daemon.wait().await;

    let mut daemon = Daemon::spawn(&args, dir.path(), "second");
    let _conn = server.next().await;
    let all = written.len();
    let journaled = usize::try_from(journaled).unwrap();
    // Whatever the first relay journaled arrives; the assertion below names what did not.
    let delivered = || -> std::collections::HashSet<String> { ids(&out).into_iter().collect() };
    let deadline = Instant::now() + WAIT;
    while !written[..journaled]
        .iter()
        .all(|id| delivered().contains(id))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = delivered();
    let missing: Vec<(usize, &String)> = written
        .iter()
        .enumerate()
        .filter(|(_, id)| !got.contains(*id))
        .collect();
    assert!(
        missing.iter().all(|(at, _)| *at >= journaled),
        "{} of {all} events missing, not only some of those the first relay had not journaled ({journaled} had been): {missing:?}\nfirst relay:\n{}\nsecond relay:\n{}",
        missing.len(),
        std::fs::read_to_string(dir.path().join("first.stderr")).unwrap_or_default(),
        daemon.stderr_text()
    );
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0));
}

/// Events the relay listening on `metrics` has journaled (`mews_relay_events_total`, summed).
async fn events_journaled(metrics: std::net::SocketAddr) -> u64 {
    let Ok(response) = http_client()
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
    else {
        return 0; // not listening yet
    };
    let page = response.text().await.unwrap_or_default();
    page.lines()
        .filter(|l| l.starts_with("mews_relay_events_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Sends `events` 10 ms apart and returns, for each, how long until its line was in `out`.
async fn latencies(
    conn: &mut Conn,
    out: &std::path::Path,
    events: &[(String, String)],
) -> Vec<Duration> {
    // Watch the file (reading only what was appended) while the events go out.
    let watched = out.to_owned();
    let expected = events.len();
    let seen = tokio::spawn(async move {
        let mut at: HashMap<String, Instant> = HashMap::new();
        let mut offset = std::fs::metadata(&watched).map_or(0, |m| m.len() as usize);
        let deadline = Instant::now() + WAIT;
        while at.len() < expected && Instant::now() < deadline {
            let text = std::fs::read(&watched).unwrap_or_default();
            let now = Instant::now();
            let whole = text[offset..]
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1);
            for line in String::from_utf8_lossy(&text[offset..offset + whole]).lines() {
                let id = line
                    .split(r#""id":""#)
                    .nth(1)
                    .and_then(|r| r.split('"').next());
                at.entry(id.unwrap_or_default().to_owned()).or_insert(now);
            }
            offset += whole;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        at
    });
    let mut sent = HashMap::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    for (id, message) in events {
        ticks.tick().await;
        sent.insert(id.clone(), Instant::now());
        conn.send(message).await;
    }
    let seen = seen.await.unwrap();
    let mut latencies: Vec<Duration> = sent
        .iter()
        .map(|(id, at)| {
            seen.get(id)
                .unwrap_or_else(|| panic!("{id} never reached the file"))
                .saturating_duration_since(*at)
        })
        .collect();
    latencies.sort();
    latencies
}

/// The REST API never answers, `enrich.timeout = "500ms"`: the first DeviceCommand waits for
/// the timeout, then the outage is known and records of every type go on at once — the median
/// latency of a mixed stream stays under 100 ms, a fifth of the timeout a held record would
/// wait (on a busy machine: within three times the latency of a stream that never touches
/// enrichment, measured first by the same relay), none near 500 ms. (The median bound was
/// 20 ms, or twice the control: under two CPU hogs and a build the load changed between the
/// two measurements, 8 ms then 28 ms, with nothing held.) The journal is kept in memory: with
/// the disk busy with other writes (`dd … conv=fdatasync` beside it) the test failed 4 runs in
/// 5, and a control stream that enrichment never touches was held 300-770 ms too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_first_timeout_records_are_not_held_while_rest_is_down() {
    let gate = RestGate::start(None).await;
    // The journal in memory: the bound is about enrichment, not the disk's stalls.
    let dir = memory_tempdir();
    let mut server = MockServer::start().await;
    let out = dir.path().join("out.jsonl");
    let sink = format!(
        "[[sink]]\ntype = \"file\"\npath = \"{}\"\nfsync = \"never\"\n",
        out.display()
    );
    let text = config(&server.url(), &gate.url, dir.path(), &sink, "")
        + "[catch_up]\ncommands = false\n[enrich]\ntimeout = \"500ms\"\n";
    let relay = Relay::start(&text);
    let mut conn = server.next().await;
    // The same relay and machine, events enrichment never holds: the floor.
    let control: Vec<(String, String)> = (0..30)
        .map(|i| {
            let id = format!("room-{i}");
            let message =
                format!(r#"{{"Events":[{{"Type":"Resource","Id":"{id}","State":"Dirty"}}]}}"#);
            (id, message)
        })
        .collect();
    let floor = latencies(&mut conn, &out, &control).await[15];

    let first = Instant::now();
    conn.send(&live_command("first", "Pending")).await;
    let got = wait_for_lines(&out, 31).await;
    assert!(first.elapsed() >= Duration::from_millis(450));
    assert!(got[30]["enrich_error"].is_string());

    let mixed: Vec<(String, String)> = (0..60).map(mixed).collect();
    let after = latencies(&mut conn, &out, &mixed).await;
    let median = after[after.len() / 2];
    let bound = Duration::from_millis(100).max(floor * 3);
    assert!(
        median < bound,
        "median {median:?} (bound {bound:?}, control median {floor:?}), all: {after:?}"
    );
    assert!(
        *after.last().unwrap() < Duration::from_millis(450),
        "a record was held about as long as the timeout: {after:?}"
    );
    let all = lines(&out);
    let commands: Vec<_> = all
        .iter()
        .filter(|l| l["type"] == "DeviceCommand")
        .collect();
    assert_eq!(commands.len(), 21);
    assert!(commands.iter().all(|l| l["enrich_error"].is_string()));
    relay.stop().await;
}

/// A relay of `site` whose REST calls pass a gate that is closed (calls hang) until opened,
/// with `enrich.timeout` 300 ms and `request_timeout` 1 s.
async fn behind_a_gate(site: &Site) -> (RestGate, Relay) {
    let target = site.api.trim_start_matches("http://").parse().unwrap();
    let gate = RestGate::start(Some(target)).await;
    let text = config(
        &site.server.url(),
        &gate.url,
        site.dir.path(),
        &file_sink(&site.out),
        "[enrich]\ntimeout = \"300ms\"\n",
    )
    .replace("[mews]\n", "[mews]\nrequest_timeout = \"1s\"\n");
    (gate, Relay::start(&text))
}

/// The REST API hangs at first, then answers: the commands that went out with `enrich_error`
/// come again with `command` (origin `catch_up`), once each, and neither the catch-up nor a
/// reconnect repeats anything.
#[tokio::test]
async fn commands_that_went_out_without_details_are_healed_once() {
    let mut site = Site::start().await;
    let (gate, relay) = behind_a_gate(&site).await;
    let conn = {
        let mut conn = site.server.next().await;
        let commands: Vec<String> = (0..3)
            .map(|_| site.hotel.create_key_command(false))
            .collect();
        for id in &commands {
            conn.send(&live_command(id, "Pending")).await;
        }
        conn.send(r#"{"Events":[{"Type":"Resource","Id":"res-1","State":"Dirty"}]}"#)
            .await;
        let got = wait_for_lines(&site.out, 4).await;
        for (line, id) in got.iter().zip(&commands) {
            assert_eq!(line["id"], id.as_str());
            assert!(line["enrich_error"].is_string(), "{line}");
        }
        gate.open();
        let got = wait_for_lines(&site.out, 7).await;
        let mut healed: Vec<&str> = got[4..]
            .iter()
            .map(|l| {
                assert_eq!(l["origin"], "catch_up", "{l}");
                assert_eq!(l["command"]["Device"]["Type"], "KeyCutter", "{l}");
                assert_eq!(l["command"]["State"], "Pending", "{l}");
                l["id"].as_str().unwrap()
            })
            .collect();
        healed.sort();
        let mut expected: Vec<&str> = commands.iter().map(String::as_str).collect();
        expected.sort();
        assert_eq!(healed, expected);
        // The catch-up after the connect and the healing both found them: one was dropped.
        wait_until("the second copy of each was dropped", || {
            dropped(&relay) >= 3
        })
        .await;
        conn
    };
    conn.reset();
    let _conn = site.server.next().await;
    wait_until("the catch-up after the reconnect was deduplicated", || {
        dropped(&relay) >= 6
    })
    .await;
    relay.stop().await;
    assert_eq!(lines(&site.out).len(), 7, "{:?}", lines(&site.out));
}

/// Records still waiting for enrichment at a `kill -9` are in the journal: after the restart
/// they are enriched and delivered, in order, each once.
#[tokio::test]
async fn records_pending_at_a_kill_are_delivered_settled_and_in_order_after_the_restart() {
    let mut site = Site::start().await;
    let gate = RestGate::start(None).await;
    let metrics = crate::receiver::free_port();
    let extra = format!("[enrich]\ntimeout = \"60s\"\n[metrics]\nlisten = \"{metrics}\"\n");
    let hanging = config(
        &site.server.url(),
        &gate.url,
        site.dir.path(),
        &file_sink(&site.out),
        &extra,
    );
    let path = write_config(site.dir.path(), &hanging);
    let args = ["run", "--config", path.to_str().unwrap()];
    let mut daemon = Daemon::spawn(&args, site.dir.path(), "first");
    let mut conn = site.server.next().await;
    let (a, b) = (
        site.hotel.create_key_command(false),
        site.hotel.create_key_command(false),
    );
    conn.send(&live_command(&a, "Pending")).await;
    conn.send(r#"{"Events":[{"Type":"Resource","Id":"res-1","State":"Dirty"}]}"#)
        .await;
    conn.send(&live_command(&b, "Pending")).await;
    let client = http_client();
    wait_until_async("the three events are journaled", || async {
        let text = match client.get(format!("http://{metrics}/metrics")).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        text.contains(r#"type="DeviceCommand",origin="websocket"} 2"#)
            && text.contains(r#"type="Resource",origin="websocket"} 1"#)
    })
    .await;
    assert!(
        lines(&site.out).is_empty(),
        "held back while enrichment waits"
    );
    daemon.child.kill().unwrap();
    daemon.wait().await;

    // The same journal, now with a REST API that answers.
    let answering = config(
        &site.server.url(),
        &site.api,
        site.dir.path(),
        &file_sink(&site.out),
        "",
    );
    write_config(site.dir.path(), &answering);
    let mut daemon = Daemon::spawn(&args, site.dir.path(), "second");
    let _conn = site.server.next().await;
    let got = wait_for_lines(&site.out, 3).await;
    assert_eq!(got[0]["id"], a.as_str());
    assert_eq!(got[1]["id"], "res-1");
    assert_eq!(got[2]["id"], b.as_str());
    assert!(
        got[0]["command"]["Data"]["LockIds"].is_array(),
        "{}",
        got[0]
    );
    assert!(
        got[2]["command"]["Data"]["LockIds"].is_array(),
        "{}",
        got[2]
    );
    assert!(got[0]["seq"].as_u64() < got[1]["seq"].as_u64());
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0));
    assert_eq!(lines(&site.out).len(), 3);
}

/// Mews refuses a whole `commands/getAllByIds` for one id it will not answer (the simulator
/// takes that strictest reading): a command Mews does not know, among commands it does, costs
/// only its own details. The outage's probe asks for it alone and is refused: that is an
/// answer, so the outage ends; the healing pass asks for all three, the refused request is
/// split, the two Mews knows are healed with their details; the next command is enriched.
#[tokio::test]
async fn a_command_id_mews_refuses_costs_only_its_own_details() {
    let mut site = Site::start().await;
    let (gate, relay) = behind_a_gate(&site).await;
    let mut conn = site.server.next().await;
    let unknown = "0b7e2f6a-3c1d-4e5f-8a9b-0c1d2e3f4a5b";
    let known: Vec<String> = (0..2)
        .map(|_| site.hotel.create_key_command(false))
        .collect();
    // The unknown one first: its record waits out the timeout, so the outage's probe asks
    // for it; the others then go out at once, without details.
    conn.send(&live_command(unknown, "Pending")).await;
    wait_for_lines(&site.out, 1).await;
    for id in &known {
        conn.send(&live_command(id, "Pending")).await;
    }
    let got = wait_for_lines(&site.out, 3).await;
    assert!(got.iter().all(|l| l["enrich_error"].is_string()), "{got:?}");
    gate.open();
    let got = wait_for_lines(&site.out, 5).await;
    let mut healed: Vec<&str> = got[3..]
        .iter()
        .map(|l| {
            assert_eq!(l["origin"], "catch_up", "{l}");
            assert_eq!(l["command"]["State"], "Pending", "{l}");
            l["id"].as_str().unwrap()
        })
        .collect();
    healed.sort();
    let mut expected: Vec<&str> = known.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(healed, expected);
    // The probe's refusal, then the healing pass's first request (healing waits for the
    // outage to end).
    wait_until("the probe and the healing pass were refused", || {
        let answers = site.hotel.answers();
        let refused = |c: &&mews_relay::simulator::Call| {
            c.operation == "commands/getAllByIds" && c.status == 400
        };
        answers.iter().filter(refused).count() >= 2
    })
    .await;

    let next = site.hotel.create_key_command(false);
    conn.send(&live_command(&next, "Pending")).await;
    let got = wait_for_lines(&site.out, 6).await;
    assert_eq!(got[5]["id"], next.as_str());
    assert_eq!(got[5]["origin"], "websocket");
    assert_eq!(
        got[5]["command"]["Device"]["Type"], "KeyCutter",
        "{}",
        got[5]
    );
    assert!(got[5]["enrich_error"].is_null(), "{}", got[5]);
    relay.stop().await;
    let all = lines(&site.out);
    assert_eq!(all.len(), 6, "{all:?}");
    assert_eq!(all.iter().filter(|l| l["id"] == unknown).count(), 1);
}

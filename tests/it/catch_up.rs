//! The gap Mews leaves: REST catch-up after every (re)connect, enrichment of live device
//! commands, dedupe between the two (also across restarts), the rate limit, and redaction.
//! The WebSocket side is a mock the tests steer; the REST side is the simulator's hotel.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mews_relay::simulator::{self, Hotel, SimulatorConfig};
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::support::*;

/// The simulator serving `hotel` over REST (its WebSocket stays unused); returns `api_url`.
pub(crate) async fn rest_server(hotel: Arc<Hotel>) -> (String, CancellationToken) {
    let config = SimulatorConfig {
        rate: 0.001,
        ..SimulatorConfig::default()
    };
    let (addr, stop) = simulator::serve_hotel_locally(hotel, config).await.unwrap();
    (format!("http://{addr}"), stop)
}

/// The test config pointed at `api_url`, with `extra` tables appended.
pub(crate) fn config(ws: &str, api: &str, dir: &Path, sinks: &str, extra: &str) -> String {
    config_text(ws, dir, sinks).replace("[mews]\n", &format!("[mews]\napi_url = \"{api}\"\n"))
        + extra
}

/// The hotel served over REST, a steerable WebSocket, a state directory and a file sink at
/// `out`; the REST server stops when it is dropped.
pub(crate) struct Site {
    pub(crate) hotel: Arc<Hotel>,
    pub(crate) api: String,
    stop_rest: CancellationToken,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) out: std::path::PathBuf,
    pub(crate) server: MockServer,
}

impl Site {
    pub(crate) async fn start() -> Site {
        let hotel = Arc::new(Hotel::new());
        let (api, stop_rest) = rest_server(Arc::clone(&hotel)).await;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        Site {
            hotel,
            api,
            stop_rest,
            dir,
            out,
            server: MockServer::start().await,
        }
    }

    /// The relay's config with the file sink at `out` and `extra` tables appended.
    pub(crate) fn config(&self, extra: &str) -> String {
        self.config_with_sinks(&file_sink(&self.out), extra)
    }

    pub fn config_with_sinks(&self, sinks: &str, extra: &str) -> String {
        config(&self.server.url(), &self.api, self.dir.path(), sinks, extra)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.stop_rest.cancel();
    }
}

pub(crate) fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub(crate) fn calls(hotel: &Hotel, operation: &str) -> usize {
    hotel
        .calls()
        .iter()
        .filter(|(_, op)| op == operation)
        .count()
}

pub(crate) fn live_command(id: &str, state: &str) -> String {
    format!(r#"{{"Events":[{{"Type":"DeviceCommand","Id":"{id}","State":"{state}"}}]}}"#)
}

pub(crate) fn dropped(relay: &Relay) -> u64 {
    mews_relay::stats::Stats::get(&relay.stats.duplicates_dropped)
}

/// Commands created while the relay was not listening arrive after the reconnect, with the
/// device and the key-cutter data, and later reconnects do not send them again.
#[tokio::test]
async fn commands_missed_while_disconnected_arrive_once_with_details() {
    let mut site = Site::start().await;
    let hotel = Arc::clone(&site.hotel);
    let relay = Relay::start(&site.config(""));
    let conn = site.server.next().await;
    wait_until("the first catch-up ran", || {
        calls(&hotel, "commands/getAllActive") >= 1
    })
    .await;
    // Created in Mews, but no event reached the relay.
    let missed: Vec<String> = (0..3).map(|_| hotel.create_key_command(false)).collect();
    conn.reset();
    let conn = site.server.next().await;
    let got = wait_for_lines(&site.out, 3).await;
    for (record, id) in got.iter().zip(&missed) {
        assert_eq!(record["origin"], "catch_up");
        assert_eq!(record["type"], "DeviceCommand");
        assert_eq!(record["id"], id.as_str());
        assert_eq!(record["state"], "Pending");
        assert_eq!(record["event"]["Id"], id.as_str());
        assert_eq!(record["command"]["Device"]["Type"], "KeyCutter");
        assert!(record["command"]["Data"]["LockIds"].is_array());
        assert!(record["command"]["Data"]["LastName"].is_string());
    }
    // Two more reconnects: the same active commands come back from Mews and are dropped.
    conn.reset();
    let mut conn = site.server.next().await;
    wait_until("the repeated catch-up was deduplicated", || {
        dropped(&relay) >= 3
    })
    .await;
    conn.close().await;
    let _conn = site.server.next().await;
    wait_until("the third catch-up was deduplicated", || {
        dropped(&relay) >= 6
    })
    .await;
    relay.stop().await;
    let all = lines(&site.out);
    assert_eq!(all.len(), 3, "{all:?}");
}

/// Live first, catch-up second (and the reverse): one record per command state, also after
/// a restart of the relay.
#[tokio::test]
async fn live_and_catch_up_never_duplicate_a_state_even_across_a_restart() {
    let mut site = Site::start().await;
    let hotel = Arc::clone(&site.hotel);
    let text = site.config("");
    let relay = Relay::start(&text);
    let mut conn = site.server.next().await;
    wait_until("the first catch-up ran", || {
        calls(&hotel, "commands/getAllActive") >= 1
    })
    .await;

    // Live first: the event is enriched, then catch-up sees the same state and drops it.
    let live = hotel.create_key_command(false);
    conn.send(&live_command(&live, "Pending")).await;
    let got = wait_for_lines(&site.out, 1).await;
    assert_eq!(got[0]["origin"], "websocket");
    assert_eq!(got[0]["command"]["Device"]["Type"], "KeyCutter");
    conn.reset();
    let mut conn = site.server.next().await;
    wait_until("catch-up dropped the live state", || dropped(&relay) >= 1).await;

    // Catch-up first: a command the relay missed arrives by REST, then its late live event
    // with the same state is dropped.
    let missed = hotel.create_key_command(false);
    conn.close().await;
    let mut conn = site.server.next().await;
    wait_for_lines(&site.out, 2).await;
    conn.send(&live_command(&missed, "Pending")).await;
    wait_until("the late live event was dropped", || dropped(&relay) >= 3).await;
    // A new state is news, from either side.
    conn.send(&live_command(&missed, "Processed")).await;
    wait_for_lines(&site.out, 3).await;
    relay.stop().await;

    // After a restart, the journal still knows both states.
    let relay = Relay::start(&text);
    let _conn = site.server.next().await;
    wait_until("the catch-up after the restart was deduplicated", || {
        dropped(&relay) >= 2
    })
    .await;
    relay.stop().await;
    let all = lines(&site.out);
    let keys: Vec<(String, String, String)> = all
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                r["state"].as_str().unwrap().to_owned(),
                r["origin"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            (live.clone(), "Pending".into(), "websocket".into()),
            (missed.clone(), "Pending".into(), "catch_up".into()),
            (missed.clone(), "Processed".into(), "websocket".into()),
        ]
    );
}

/// 429 with `Retry-After: 2` makes the relay wait at least that long, then the call succeeds.
#[tokio::test]
async fn throttled_calls_wait_for_retry_after_then_succeed() {
    let mut site = Site::start().await;
    let hotel = Arc::clone(&site.hotel);
    let missed = hotel.create_key_command(false);
    hotel.throttle_next(1, Some(2));
    let relay = Relay::start(&site.config(""));
    let _conn = site.server.next().await;
    let got = wait_for_lines(&site.out, 1).await;
    assert_eq!(got[0]["id"], missed.as_str());
    let tries: Vec<std::time::Instant> = hotel
        .calls()
        .into_iter()
        .filter(|(_, op)| op == "commands/getAllActive")
        .map(|(at, _)| at)
        .collect();
    assert_eq!(tries.len(), 2, "one 429, one success");
    let waited = tries[1] - tries[0];
    assert!(
        waited >= Duration::from_millis(1950),
        "retried after {waited:?}"
    );
    assert_eq!(
        mews_relay::stats::Stats::get(&relay.stats.rest_throttled),
        1
    );
    relay.stop().await;
}

/// A burst of 500 live commands against a budget of 5 requests per 30 s: the relay sends at
/// most 5 (ids are coalesced; past the budget, records go on with `enrich_error`), and every
/// record arrives.
#[tokio::test]
async fn the_rate_limiter_keeps_a_burst_under_the_budget() {
    let mut site = Site::start().await;
    let hotel = Arc::clone(&site.hotel);
    let ids: Vec<String> = (0..500).map(|_| hotel.create_key_command(false)).collect();
    let text = site.config("").replace(
        "[mews]\n",
        "[mews]\nrate_limit = 5\nrate_window = \"30s\"\n",
    ) + "[catch_up]\ncommands = false\n[enrich]\ntimeout = \"500ms\"\n";
    let relay = Relay::start(&text);
    let mut conn = site.server.next().await;
    let started = Instant::now();
    for id in &ids {
        conn.send(&live_command(id, "Received")).await;
    }
    let got = wait_for_lines(&site.out, 500).await;
    let elapsed = started.elapsed();
    let calls = hotel.calls();
    assert!(
        calls.len() <= 5,
        "{} REST calls within {elapsed:?}, budget 5 per 30 s",
        calls.len()
    );
    assert!(elapsed < Duration::from_secs(30));
    for (record, id) in got.iter().zip(&ids) {
        assert_eq!(record["id"], id.as_str(), "in order, nothing lost");
        assert!(
            record["command"].is_object() != record["enrich_error"].is_string(),
            "{record}"
        );
    }
    assert!(got[0]["command"]["Device"].is_object());
    relay.stop().await;
}

/// The REST API accepts connections but never answers: live records still arrive, without
/// `command` and with `enrich_error`, within `enrich.timeout` plus a margin; other events are
/// not held up behind them for longer.
#[tokio::test]
async fn an_unresponsive_rest_api_delays_records_by_at_most_the_enrich_timeout() {
    let gate = RestGate::start(None).await;
    let api = gate.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let mut server = MockServer::start().await;
    let text = config(&server.url(), &api, dir.path(), &file_sink(&out), "")
        + "[enrich]\ntimeout = \"700ms\"\n";
    let relay = Relay::start(&text);
    let mut conn = server.next().await;
    let sent = Instant::now();
    conn.send(&live_command("cmd-1", "Pending")).await;
    conn.send(r#"{"Events":[{"Type":"Resource","Id":"room-1","State":"Dirty"}]}"#)
        .await;
    let got = wait_for_lines(&out, 2).await;
    let took = sent.elapsed();
    assert!(took >= Duration::from_millis(650), "waited {took:?}");
    assert!(took < Duration::from_millis(700 + 1500), "waited {took:?}");
    assert_eq!(got[0]["id"], "cmd-1");
    assert!(got[0].get("command").is_none());
    assert!(
        got[0]["enrich_error"]
            .as_str()
            .unwrap()
            .contains("enrich.timeout"),
        "{}",
        got[0]
    );
    assert_eq!(got[1]["type"], "Resource", "order kept");
    assert!(got[1].get("enrich_error").is_none());
    assert_eq!(mews_relay::stats::Stats::get(&relay.stats.enrich_failed), 1);
    relay.stop().await;
}

/// Whether the reservations catch-up listed its last window: the answer to a request for the
/// window that ends where the whole catch-up ends (the latest `EndUtc` asked) came back with
/// less than a page (a full one is split and its halves listed). Among the calls after `from`.
fn listed_to_the_end(hotel: &Hotel, from: usize) -> bool {
    let calls: Vec<_> = hotel
        .answers()
        .into_iter()
        .skip(from)
        .filter(|c| c.operation == "reservations/getAll/2023-06-06")
        .collect();
    let Some(end) = calls.iter().filter_map(|c| c.updated_until.clone()).max() else {
        return false;
    };
    calls.iter().any(|c| {
        c.status == 200
            && c.updated_until.as_deref() == Some(end.as_str())
            && c.items < c.count.map(|n| n as usize)
    })
}

/// 2,500 reservations updated in the same second since the last sync: the relay halves its
/// window until one second holds them, and pages through that second; after a restart it
/// asks only from its mark on (one request), and gets only what changed since.
#[tokio::test]
async fn reservation_catch_up_pages_and_resumes_from_its_mark() {
    let mut site = Site::start().await;
    let hotel = Arc::clone(&site.hotel);
    hotel.add_reservations(2500, SystemTime::now() - Duration::from_secs(60));
    let text = site.config(
        "[catch_up]\ncommands = false\nreservations = true\nreservations_since = \"1h\"\nmargin = \"1s\"\n",
    );
    let relay = Relay::start(&text);
    let _conn = site.server.next().await;
    let got = wait_for_lines(&site.out, 2500).await;
    assert!(
        got.iter()
            .all(|r| r["origin"] == "catch_up" && r["type"] == "Reservation")
    );
    assert!(got.iter().all(|r| r["event"]["UpdatedUtc"].is_string()));
    let ids: std::collections::HashSet<&str> =
        got.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2500);
    wait_until("the first catch-up listed its last window", || {
        listed_to_the_end(&hotel, 0)
    })
    .await;
    relay.stop().await;
    let first = hotel.answers().len();

    hotel.add_reservations(10, SystemTime::now());
    let relay = Relay::start(&text);
    let _conn = site.server.next().await;
    let got = wait_for_lines(&site.out, 2510).await;
    wait_until("the second catch-up listed its last window", || {
        listed_to_the_end(&hotel, first)
    })
    .await;
    relay.stop().await;
    assert_eq!(
        calls(&hotel, "reservations/getAll/2023-06-06") - first,
        1,
        "one page from the mark"
    );
    assert_eq!(
        lines(&site.out).len(),
        2510,
        "only the ten new ones: {:?}",
        &got[2500..]
    );
}

/// Mews pages newest first, and a cursor whose reservation changed meanwhile may end the
/// listing (the simulator takes that strictest reading, and here each full page's last
/// reservation changes before the next page is asked): the relay never rests on a cursor, so
/// all 2,500 reservations of the last hour (50 a minute) arrive — those that changed after the
/// catch-up began with the next one (at Mews their change is also a live event).
#[tokio::test]
async fn reservations_changing_during_the_catch_up_cost_nothing() {
    let mut site = Site::start().await;
    let hotel = Arc::clone(&site.hotel);
    let before: std::collections::HashSet<String> = hotel.reservation_ids().into_iter().collect();
    for minute in 1..=50 {
        hotel.add_reservations(50, SystemTime::now() - Duration::from_secs(60 * minute));
    }
    let ids: Vec<String> = hotel
        .reservation_ids()
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect();
    assert_eq!(ids.len(), 2500);
    hotel.update_reservations_while_paging(true);
    let relay = Relay::start(&site.config(
        "[catch_up]\ncommands = false\nreservations = true\nreservations_since = \"1h\"\n",
    ));
    let conn = site.server.next().await;
    wait_until("the catch-up listed its last window", || {
        listed_to_the_end(&hotel, 0)
    })
    .await;
    let first = hotel.answers().len();
    conn.reset();
    let _conn = site.server.next().await;
    wait_until("the next catch-up listed its last window", || {
        listed_to_the_end(&hotel, first)
    })
    .await;
    let missing = || {
        let got: std::collections::HashSet<String> = lines(&site.out)
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect();
        ids.iter().filter(|id| !got.contains(*id)).count()
    };
    wait_until("every reservation arrived", || missing() == 0).await;
    relay.stop().await;
}

/// `redact` masks the configured paths in one sink; the other sink gets the data as it is.
#[tokio::test]
async fn redaction_masks_paths_in_one_sink_only() {
    let mut site = Site::start().await;
    site.hotel.create_key_command(false);
    let full = site.dir.path().join("full.jsonl");
    let masked = site.dir.path().join("masked.jsonl");
    let sinks = format!(
        "{}name = \"full\"\n{}name = \"masked\"\nredact = [\"command.Data.Email\", \"command.Data.Telephone\", \"command.Data.FirstName\"]\n",
        file_sink(&full),
        file_sink(&masked)
    );
    let relay = Relay::start(&site.config_with_sinks(&sinks, ""));
    let _conn = site.server.next().await;
    let full = wait_for_lines(&full, 1).await;
    let masked = wait_for_lines(&masked, 1).await;
    relay.stop().await;
    let (data, hidden) = (&full[0]["command"]["Data"], &masked[0]["command"]["Data"]);
    assert!(data["Email"].as_str().unwrap().contains('@'));
    assert!(data["Telephone"].as_str().unwrap().starts_with('+'));
    assert_eq!(hidden["Email"], "***");
    assert_eq!(hidden["Telephone"], "***");
    assert_eq!(hidden["FirstName"], "***");
    assert_eq!(hidden["LastName"], data["LastName"], "other fields stay");
    assert_eq!(hidden["LockIds"], data["LockIds"]);
    assert_eq!(masked[0]["seq"], full[0]["seq"]);
}

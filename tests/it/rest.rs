//! The Mews REST client reads Mews's answers as Mews documents them: 401 is one error per
//! property naming the operation and the fix, 403 refuses one operation and leaves the rest
//! running, 408 leads to smaller pages, 429 without `Retry-After` waits longer each time, and
//! every failure is logged with its `Request-Id`. The REST side is the simulator's hotel.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mews_relay::simulator::{self, Hotel, SimulatorConfig};
use serde_json::Value;
use tokio::time::Instant;

use crate::catch_up::{Site, calls, lines, live_command};
use crate::support::*;

const RESERVATIONS: &str = "reservations/getAll/2023-06-06";

/// The relay binary with `config`, logging JSON lines (one object per line) on stderr.
fn spawn_relay(site: &Site, config: &str) -> Daemon {
    let path = write_config(site.dir.path(), config);
    let path = path.to_str().unwrap();
    Daemon::spawn(
        &["run", "--config", path, "--log-format", "json"],
        site.dir.path(),
        "relay",
    )
}

/// Stops the relay with SIGTERM and returns its log lines.
async fn stop(mut daemon: Daemon) -> Vec<Value> {
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0), "{}", daemon.stderr_text());
    daemon
        .stderr_text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The log lines at `level` whose `status` field is `status`.
fn logged<'a>(logs: &'a [Value], level: &str, status: u64) -> Vec<&'a Value> {
    logs.iter()
        .filter(|l| l["level"] == level && l["fields"]["status"] == status)
        .collect()
}

/// The `Request-Id`s the simulator gave to answers of `operation` with `status`.
fn request_ids(hotel: &Hotel, operation: &str, status: u16) -> Vec<String> {
    hotel
        .answers()
        .into_iter()
        .filter(|c| c.operation == operation && c.status == status)
        .map(|c| c.request_id)
        .collect()
}

/// With `reservations/getAll` refused (the fault set on the site's hotel), a relay catching
/// up reservations: a key command caught up on the first connection, another on the next one
/// (the commands step is not held up by the refused one), and reservations asked for exactly
/// once per connection. Returns the relay's log lines.
async fn catch_up_twice_with_reservations_refused(site: &mut Site) -> Vec<Value> {
    let hotel = Arc::clone(&site.hotel);
    let first = hotel.create_key_command(false);
    let daemon = spawn_relay(site, &site.config("[catch_up]\nreservations = true\n"));
    let conn = site.server.next().await;
    let got = wait_for_lines(&site.out, 1).await;
    assert_eq!(
        (got[0]["id"].as_str(), got[0]["origin"].as_str()),
        (Some(first.as_str()), Some("catch_up"))
    );
    wait_until("reservations were refused once", || {
        calls(&hotel, RESERVATIONS) == 1
    })
    .await;
    let second = hotel.create_key_command(false);
    conn.reset();
    let _conn = site.server.next().await;
    let got = wait_for_lines(&site.out, 2).await;
    assert_eq!(got[1]["id"], second.as_str());
    wait_until("the next connection tried reservations again", || {
        calls(&hotel, RESERVATIONS) == 2
    })
    .await;
    let logs = stop(daemon).await;
    assert_eq!(
        calls(&hotel, RESERVATIONS),
        2,
        "one try per connection, not hammered"
    );
    logs
}

/// A 403 on `reservations/getAll` refuses that step only: active commands are still caught
/// up, on this connection and the next; the refusal is logged once with Mews's `Message` and
/// `Request-Id`, and the refused step is not called again on the same connection.
#[tokio::test]
async fn a_403_on_reservations_leaves_the_commands_catch_up_working() {
    let mut site = Site::start().await;
    let hotel = Arc::clone(&site.hotel);
    hotel.refuse(RESERVATIONS);
    let logs = catch_up_twice_with_reservations_refused(&mut site).await;
    let refused = logged(&logs, "WARN", 403);
    assert_eq!(refused.len(), 1, "once until it succeeds: {refused:?}");
    let fields = &refused[0]["fields"];
    assert_eq!(fields["operation"], RESERVATIONS);
    assert!(
        fields["mews_message"]
            .as_str()
            .unwrap()
            .contains("does not allow reservations/getAll/2023-06-06"),
        "Mews's Message: {fields}"
    );
    assert_eq!(
        fields["request_id"],
        request_ids(&hotel, RESERVATIONS, 403)[0].as_str()
    );
    assert!(
        logs.iter().all(|l| l["level"] != "ERROR"),
        "a 403 is no token problem: {logs:?}"
    );
    assert_eq!(lines(&site.out).len(), 2);
}

/// A 401 is one ERROR for the property, naming the operation and the fix, with the
/// `Request-Id`, however many calls fail after it (catch-up again, enrichment). `run` also
/// warns about the default `Client`.
#[tokio::test]
async fn a_401_is_one_error_naming_the_operation_and_the_fix() {
    let hotel = Arc::new(Hotel::new());
    let config = SimulatorConfig {
        rate: 0.001,
        access_token: Some("ANOTHER-ACCESS-TOKEN".into()),
        ..SimulatorConfig::default()
    };
    let (addr, stop_rest) = simulator::serve_hotel_locally(Arc::clone(&hotel), config)
        .await
        .unwrap();
    let api = format!("http://{addr}");
    let mut site = Site::start().await;
    let text = site
        .config("")
        .replace(&site_api(&site), &format!("api_url = \"{api}\""));
    let daemon = spawn_relay(&site, &text);
    let mut conn = site.server.next().await;
    conn.send(&live_command("cmd-1", "Pending")).await;
    let got = wait_for_lines(&site.out, 1).await;
    assert!(got[0]["enrich_error"].as_str().unwrap().contains("401"));
    conn.reset();
    let _conn = site.server.next().await;
    wait_until("catch-up was refused on both connections", || {
        calls(&hotel, "commands/getAllActive") >= 2
    })
    .await;
    let logs = stop(daemon).await;
    stop_rest.cancel();
    let errors: Vec<&Value> = logs.iter().filter(|l| l["level"] == "ERROR").collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let fields = &errors[0]["fields"];
    let operation = fields["operation"].as_str().unwrap();
    let text = fields["message"].as_str().unwrap();
    assert!(
        text.contains(operation) && text.contains("access_token"),
        "{fields}"
    );
    assert!(
        fields["mews_message"]
            .as_str()
            .unwrap()
            .contains("invalid or has expired")
    );
    assert!(
        request_ids(&hotel, operation, 401)
            .contains(&fields["request_id"].as_str().unwrap().to_owned()),
        "{fields}"
    );
    assert!(
        logs.iter().any(|l| l["level"] == "WARN"
            && l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("mews.client"))),
        "run warns about the default Client"
    );
}

/// `api_url = "…"` as the site's config writes it.
fn site_api(site: &Site) -> String {
    let text = site.config("");
    text.lines()
        .find(|l| l.starts_with("api_url"))
        .unwrap()
        .to_owned()
}

/// Mews answers 408 to pages of more than 300 reservations: the relay halves
/// `Limitation.Count` (1000, 500, 250) and pages through all 2,500 at 250.
#[tokio::test]
async fn a_408_leads_to_smaller_pages() {
    let mut site = Site::start().await;
    let hotel = Arc::clone(&site.hotel);
    hotel.add_reservations(2500, SystemTime::now() - Duration::from_secs(60));
    hotel.too_heavy_above(Some(300));
    let relay = Relay::start(&site.config(
        "[catch_up]\ncommands = false\nreservations = true\nreservations_since = \"1h\"\n",
    ));
    let _conn = site.server.next().await;
    let got = wait_for_lines(&site.out, 2500).await;
    let ids: std::collections::HashSet<&str> =
        got.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2500);
    // The records are out before the empty page that ends the listing is asked for: stopping
    // now could cut it off.
    wait_until("the listing asks for its empty last page", || {
        hotel.page_counts(RESERVATIONS).len() >= 2 + 11
    })
    .await;
    relay.stop().await;
    let counts = hotel.page_counts(RESERVATIONS);
    assert_eq!(counts[..2], [1000, 500], "{counts:?}");
    // Ten full pages of 250, then the empty page that ends the listing. (On a busy machine a
    // reconnect may start a second listing after these; it halves from 1000 again.)
    assert!(counts.len() >= 2 + 11, "{counts:?}");
    assert!(counts[2..13].iter().all(|c| *c == 250), "{counts:?}");
    assert!(request_ids(&hotel, RESERVATIONS, 408).len() >= 2);
}

/// Three 429s without `Retry-After` in a row: the relay waits longer each time (about 0.5-1 s,
/// 1-2 s, 2-4 s), not a fixed pause, then gets the command.
#[tokio::test]
async fn throttled_calls_without_retry_after_wait_longer_each_time() {
    let mut site = Site::start().await;
    let hotel = Arc::clone(&site.hotel);
    let missed = hotel.create_key_command(false);
    hotel.throttle_next(3, None);
    let relay = Relay::start(&site.config(""));
    let _conn = site.server.next().await;
    // The three waits take up to 7 s: give the whole a wider margin than one WAIT.
    let deadline = Instant::now() + WAIT * 2;
    while lines(&site.out).is_empty() {
        assert!(Instant::now() < deadline, "the command never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lines(&site.out)[0]["id"], missed.as_str());
    let stats = Arc::clone(&relay.stats);
    relay.stop().await;
    let tries: Vec<std::time::Instant> = hotel
        .calls()
        .into_iter()
        .filter(|(_, op)| op == "commands/getAllActive")
        .map(|(at, _)| at)
        .collect();
    assert_eq!(tries.len(), 4, "three 429s, then the answer");
    let gaps: Vec<Duration> = tries.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, least) in gaps.iter().zip([500, 1000, 2000]) {
        assert!(*gap >= Duration::from_millis(least), "{gaps:?}");
    }
    assert!(gaps[2] > gaps[0], "waits grow: {gaps:?}");
    assert_eq!(mews_relay::stats::Stats::get(&stats.rest_throttled), 3);
}

/// A 401 for one operation, the tokens being right (Mews: "The client does not have
/// permission to perform the requested operation"), stops that step only: active commands are
/// still caught up, on this connection and the next; one ERROR names the operation.
#[tokio::test]
async fn a_401_for_one_operation_leaves_the_other_catch_up_steps_working() {
    let mut site = Site::start().await;
    site.hotel.deny_permission(RESERVATIONS);
    let logs = catch_up_twice_with_reservations_refused(&mut site).await;
    let denied = logged(&logs, "ERROR", 401);
    assert_eq!(denied.len(), 1, "one ERROR per property: {denied:?}");
    assert_eq!(denied[0]["fields"]["operation"], RESERVATIONS);
}

//! The device-command loop with Mews: `[commands] received_after` sets a delivered command
//! `Received` once, the local API takes the key system's states and the relay applies them in
//! Mews once — through Mews outages and restarts — and `mews-relay command` drives the API.

use std::sync::Arc;

use mews_relay::simulator::{CommandState, Hotel};
use serde_json::Value;

use crate::catch_up::{Site, config, live_command};
use crate::receiver::{Receiver, Reply, free_port};
use crate::support::*;

const TOKEN: &str = "api-token-for-the-key-system";

/// Accepted `commands/update` calls of one command, as (state, progress, notes).
fn updates_of(hotel: &Hotel, id: &str) -> Vec<CommandState> {
    hotel
        .updates()
        .into_iter()
        .filter(|u| u.command_id == id)
        .map(|u| u.state)
        .collect()
}

/// The site's config with a file sink named "keys" and `extra` tables.
fn keys_config(site: &Site, extra: &str) -> String {
    let sink = format!("{}name = \"keys\"\n", file_sink(&site.out));
    config(&site.server.url(), &site.api, site.dir.path(), &sink, extra)
}

/// `[api]` on a free port; returns the tables and the base URL.
fn api_tables() -> (String, String) {
    let addr = free_port();
    (
        format!("[api]\nlisten = \"{addr}\"\ntoken = \"{TOKEN}\"\n"),
        format!("http://{addr}"),
    )
}

/// A relay with `[api]` whose file sink "keys" has delivered one Pending key command `id`.
struct Delivered {
    site: Site,
    hotel: Arc<Hotel>,
    relay: Relay,
    /// The API's base URL.
    base: String,
    id: String,
    /// The WebSocket, kept open.
    _conn: Conn,
}

impl Delivered {
    async fn start() -> Delivered {
        let mut site = Site::start().await;
        let hotel = Arc::clone(&site.hotel);
        let (api, base) = api_tables();
        let relay = Relay::start(&keys_config(&site, &api));
        let mut conn = site.server.next().await;
        api_up(&base).await;
        let id = hotel.create_key_command(false);
        conn.send(&live_command(&id, "Pending")).await;
        wait_for_lines(&site.out, 1).await;
        Delivered {
            site,
            hotel,
            relay,
            base,
            id,
            _conn: conn,
        }
    }
}

/// POSTs a state to the API; returns the status and the JSON body.
async fn post(base: &str, id: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut request = http_client()
        .post(format!("{base}/v1/commands/{id}"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the API answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    let response = http_client()
        .get(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("the API answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Waits until the API answers at all (the listener is bound a moment after the start).
async fn api_up(base: &str) {
    let client = http_client();
    wait_until_async("the API answers", || async {
        client.get(format!("{base}/v1/status")).send().await.is_ok()
    })
    .await;
}

/// Each Pending command the "keys" sink delivered is set `Received` in Mews once; the
/// simulator's state follows.
#[tokio::test]
async fn received_after_sets_each_delivered_command_received_once() {
    let mut site = Site::start().await;
    let hotel = Arc::clone(&site.hotel);
    let relay = Relay::start(&keys_config(
        &site,
        "[catch_up]\ncommands = false\n[commands]\nreceived_after = \"keys\"\n",
    ));
    let mut conn = site.server.next().await;
    let ids: Vec<String> = (0..5).map(|_| hotel.create_key_command(false)).collect();
    for id in &ids {
        conn.send(&live_command(id, "Pending")).await;
    }
    wait_for_lines(&site.out, 5).await;
    wait_until("every delivered command is Received in Mews", || {
        ids.iter()
            .all(|id| hotel.command_state(id) == Some(CommandState::Received))
    })
    .await;
    // A later state of the same command is not acknowledged again.
    conn.send(&live_command(&ids[0], "Received")).await;
    let other = hotel.create_key_command(false);
    conn.send(&live_command(&other, "Pending")).await;
    wait_until("the next command is Received too", || {
        hotel.command_state(&other) == Some(CommandState::Received)
    })
    .await;
    relay.stop().await;
    for id in ids.iter().chain([&other]) {
        assert_eq!(updates_of(&hotel, id), [CommandState::Received], "{id}");
    }
}

/// A `kill -9` while acknowledgements are under way: after the restart every delivered command
/// is `Received` exactly once — none skipped, none twice.
#[tokio::test]
async fn received_is_set_once_per_command_across_a_kill_9() {
    let mut site = Site::start().await;
    let hotel = Arc::clone(&site.hotel);
    let text = keys_config(
        &site,
        "[catch_up]\ncommands = false\n[commands]\nreceived_after = \"keys\"\n",
    );
    let path = write_config(site.dir.path(), &text);
    let args = ["run", "--config", path.to_str().unwrap()];
    let mut daemon = Daemon::spawn(&args, site.dir.path(), "first");
    let mut conn = site.server.next().await;
    let ids: Vec<String> = (0..40).map(|_| hotel.create_key_command(false)).collect();
    for id in &ids {
        conn.send(&live_command(id, "Pending")).await;
    }
    wait_until("some commands are Received", || hotel.updates().len() >= 5).await;
    daemon.child.kill().unwrap();
    daemon.wait().await;

    let mut daemon = Daemon::spawn(&args, site.dir.path(), "second");
    let mut conn = site.server.next().await;
    // One more command after the restart: updates go out in order, so once it is Received
    // every earlier one was sent (or skipped) already.
    let last = hotel.create_key_command(false);
    conn.send(&live_command(&last, "Pending")).await;
    wait_until("the command sent after the restart is Received", || {
        hotel.command_state(&last) == Some(CommandState::Received)
    })
    .await;
    for id in ids.iter().chain([&last]) {
        assert_eq!(
            updates_of(&hotel, id),
            [CommandState::Received],
            "{id}:\n{}",
            daemon.stderr_text()
        );
    }
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0));
}

/// While the HTTP sink's endpoint answers 503 nothing is acknowledged; a record the endpoint
/// refused for good (dead-lettered) is never acknowledged; a delivered one is.
#[tokio::test]
async fn received_is_not_set_before_delivery_nor_for_a_dead_letter() {
    let mut site = Site::start().await;
    let hotel = Arc::clone(&site.hotel);
    let mut endpoint = Receiver::start().await;
    endpoint.set_default(Reply::Status(503, "down"));
    let sink = format!(
        "[[sink]]\ntype = \"http\"\nname = \"keys\"\nurl = \"{}\"\nretry_min = \"50ms\"\nretry_max = \"100ms\"\n",
        endpoint.url()
    );
    let text = config(
        &site.server.url(),
        &site.api,
        site.dir.path(),
        &sink,
        "[catch_up]\ncommands = false\n[commands]\nreceived_after = \"keys\"\n",
    );
    let relay = Relay::start(&text);
    let mut conn = site.server.next().await;
    let refused = hotel.create_key_command(false);
    conn.send(&live_command(&refused, "Pending")).await;
    for _ in 0..3 {
        endpoint.next().await; // three 503s
    }
    assert!(hotel.updates().is_empty(), "nothing delivered yet");
    endpoint.script([Reply::Status(400, "bad record")]);
    endpoint.set_default(Reply::Ok);
    let delivered = hotel.create_key_command(false);
    conn.send(&live_command(&delivered, "Pending")).await;
    wait_until("the delivered command is Received", || {
        hotel.command_state(&delivered) == Some(CommandState::Received)
    })
    .await;
    relay.stop().await;
    assert!(updates_of(&hotel, &refused).is_empty(), "dead-lettered");
    assert_eq!(hotel.command_state(&refused), Some(CommandState::Pending));
}

/// The API: 401 without the token, 404 for a command the relay never saw, 400 with the reason
/// for a request Mews would refuse, 202 and the state in Mews for a good one, 409 after a
/// final state; `GET` shows Mews's answer with its `Request-Id`.
#[tokio::test]
async fn the_api_checks_requests_and_applies_states_in_mews() {
    let Delivered {
        site: _site,
        hotel,
        relay,
        base,
        id,
        _conn,
    } = Delivered::start().await;

    let processing = r#"{"State":"Processing","Progress":0.5}"#;
    assert_eq!(post(&base, &id, None, processing).await.0, 401);
    assert_eq!(
        post(&base, &id, Some("wrong-token-wrong-token"), processing)
            .await
            .0,
        401
    );
    let (status, body) = post(&base, "never-seen", Some(TOKEN), processing).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["Message"].as_str().unwrap().contains("?property="));
    for bad in [
        r#"{"State":"Done"}"#,
        r#"{"State":"Processing","Progress":2}"#,
        r#"{"State":"Received","Notes":"too early"}"#,
        r#"{"State":"Processed","Colour":"red"}"#,
        "not json",
    ] {
        let (status, body) = post(&base, &id, Some(TOKEN), bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["Message"].is_string(), "{bad}: {body}");
    }
    assert!(hotel.updates().is_empty(), "nothing invalid reached Mews");

    let (status, body) = post(&base, &id, Some(TOKEN), processing).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["Requested"]["State"], "Processing");
    wait_until("Mews has it", || {
        hotel.command_state(&id) == Some(CommandState::Processing)
    })
    .await;
    assert_eq!(hotel.updates()[0].progress, Some(0.5));
    let done = r#"{"State":"Processed","Notes":"2 keys cut"}"#;
    assert_eq!(post(&base, &id, Some(TOKEN), done).await.0, 202);
    let (status, body) = post(&base, &id, Some(TOKEN), processing).await;
    assert_eq!(status, 409, "{body}");
    wait_until_async("GET shows Mews's answer to Processed", || async {
        get(&base, &format!("/v1/commands/{id}")).await.1["Mews"]["State"] == "Processed"
    })
    .await;
    let (_, shown) = get(&base, &format!("/v1/commands/{id}")).await;
    assert_eq!(shown["Mews"]["Accepted"], true, "{shown}");
    assert_eq!(shown["Mews"]["Status"], 200);
    assert!(
        shown["Mews"]["RequestId"].as_str().unwrap().len() >= 32,
        "{shown}"
    );
    assert_eq!(shown["Requested"]["Notes"], "2 keys cut");
    assert_eq!(shown["EventState"], "Pending");
    assert_eq!(shown["Property"], "old-town");

    // A command the relay never saw, with its property named.
    let unseen = hotel.create_key_command(false);
    let (status, _) = post(
        &base,
        &format!("{unseen}?property=old-town"),
        Some(TOKEN),
        r#"{"State":"Cancelled"}"#,
    )
    .await;
    assert_eq!(status, 202);
    wait_until("the unseen command is Cancelled", || {
        hotel.command_state(&unseen) == Some(CommandState::Cancelled)
    })
    .await;
    let (_, status_doc) = get(&base, "/v1/status").await;
    assert_eq!(status_doc["Properties"]["old-town"]["State"], "connected");
    relay.stop().await;
    assert_eq!(
        updates_of(&hotel, &id).len(),
        2,
        "Processing and Processed, once each"
    );
}

/// Mews answers 503 while the update waits, and the relay is killed and started again in
/// between: the update is applied once, and `GET` shows it accepted.
#[tokio::test]
async fn an_update_survives_a_mews_outage_and_a_restart_and_is_applied_once() {
    let mut site = Site::start().await;
    let hotel = Arc::clone(&site.hotel);
    let (api, base) = api_tables();
    let path = write_config(site.dir.path(), &keys_config(&site, &api));
    let args = ["run", "--config", path.to_str().unwrap()];
    let mut daemon = Daemon::spawn(&args, site.dir.path(), "first");
    let mut conn = site.server.next().await;
    api_up(&base).await;
    let id = hotel.create_key_command(false);
    conn.send(&live_command(&id, "Pending")).await;
    wait_for_lines(&site.out, 1).await;

    hotel.set_down(true);
    let (status, _) = post(
        &base,
        &id,
        Some(TOKEN),
        r#"{"State":"Processed","Notes":"ok"}"#,
    )
    .await;
    assert_eq!(status, 202);
    wait_until("Mews answered the update 503", || {
        hotel
            .answers()
            .iter()
            .any(|c| c.operation == "commands/update" && c.status == 503)
    })
    .await;
    let (_, status) = get(&base, "/v1/status").await;
    let waiting = status["CommandUpdates"]["Waiting"].as_u64().unwrap_or(0);
    assert!(waiting >= 1, "the update waits in the outbox: {status}");
    daemon.child.kill().unwrap();
    daemon.wait().await;
    hotel.set_down(false);

    let mut daemon = Daemon::spawn(&args, site.dir.path(), "second");
    let _conn = site.server.next().await;
    wait_until("the update is applied after the restart", || {
        hotel.command_state(&id) == Some(CommandState::Processed)
    })
    .await;
    api_up(&base).await;
    wait_until_async("GET shows it accepted", || async {
        get(&base, &format!("/v1/commands/{id}")).await.1["Mews"]["Accepted"] == true
    })
    .await;
    assert_eq!(updates_of(&hotel, &id), [CommandState::Processed]);
    let (_, shown) = get(&base, &format!("/v1/commands/{id}")).await;
    assert_eq!(shown["Waiting"], 0, "{shown}");
    wait_until_async("the status counts no update waiting", || async {
        get(&base, "/v1/status").await.1["CommandUpdates"]["Waiting"] == 0
    })
    .await;
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0));
}

/// `mews-relay command set-state` reaches the running relay's API and prints the command; with
/// no relay running it says so and exits 69.
#[tokio::test]
async fn the_command_line_sets_states_through_the_running_relay() {
    let mut site = Site::start().await;
    let hotel = Arc::clone(&site.hotel);
    let (api, base) = api_tables();
    let path = write_config(site.dir.path(), &keys_config(&site, &api));
    let config = path.to_str().unwrap().to_owned();
    let mut daemon = Daemon::spawn(&["run", "--config", &config], site.dir.path(), "relay");
    let mut conn = site.server.next().await;
    api_up(&base).await;
    let id = hotel.create_key_command(false);
    conn.send(&live_command(&id, "Pending")).await;
    wait_for_lines(&site.out, 1).await;
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_binary(&args)
        })
    };
    let args = |extra: &[&str]| -> Vec<String> {
        ["command", "set-state", "--config", &config]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let (code, stdout, stderr) = run(args(&[&id, "Processing", "--progress", "0.25"]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{stderr}");
    let printed: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(printed["Requested"]["Progress"], 0.25);
    wait_until("Mews has it", || {
        hotel.command_state(&id) == Some(CommandState::Processing)
    })
    .await;
    let (code, _, stderr) = run(args(&[&id, "Processed", "--progress", "0.5"]))
        .await
        .unwrap();
    assert_eq!(code, 1, "refused: Progress goes with Processing");
    assert!(stderr.contains("Progress"), "{stderr}");

    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0));
    let (code, _, stderr) = run(args(&[&id, "Processed"])).await.unwrap();
    assert_eq!(code, 69, "{stderr}");
    assert!(stderr.contains("no mews-relay answers"), "{stderr}");
}

/// Mews applies an update and its answer is lost (408 after the work was done): the relay
/// tries again, Mews refuses the repeat, and the relay sees from the command's state that it
/// was applied — once, and shown as accepted.
#[tokio::test]
async fn an_update_whose_answer_is_lost_after_mews_applied_it_counts_as_applied_once() {
    let Delivered {
        site: _site,
        hotel,
        relay,
        base,
        id,
        _conn,
    } = Delivered::start().await;

    hotel.time_out_after_applying(1);
    let done = r#"{"State":"Processed","Notes":"2 keys cut"}"#;
    assert_eq!(post(&base, &id, Some(TOKEN), done).await.0, 202);
    wait_until_async("the relay shows the update accepted", || async {
        get(&base, &format!("/v1/commands/{id}")).await.1["Mews"]["Accepted"] == true
    })
    .await;
    assert_eq!(
        updates_of(&hotel, &id),
        [CommandState::Processed],
        "applied once"
    );
    let answers: Vec<u16> = hotel
        .answers()
        .iter()
        .filter(|c| c.operation == "commands/update")
        .map(|c| c.status)
        .collect();
    assert_eq!(
        answers[..2],
        [408, 400],
        "a lost answer, then the refused repeat: {answers:?}"
    );
    let (_, shown) = get(&base, &format!("/v1/commands/{id}")).await;
    assert!(
        shown["Mews"]["Message"]
            .as_str()
            .is_some_and(|m| m.contains("already had this state")),
        "{shown}"
    );
    relay.stop().await;
}

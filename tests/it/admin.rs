//! The admin's commands against a running relay (the binary, through its `[api]`): `status`
//! (text, `--json`, exit codes), `dead-letters list` and `replay` while it runs, and `reload`
//! (applied, refused, could not start) — issue 15.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;

use crate::receiver::{Receiver, Reply, free_port};
use crate::support::*;

/// The API's bearer token.
const API_TOKEN: &str = "0123456789abcdef0123456789abcdef";
/// airport's token: the server refuses it (401).
const AIRPORT_TOKEN: &str = "D77EF7B239D24632943D115EDE9CB810-EA00F8FD8294692C940F6B5A8F9453D";

/// The binary with `args`, off the test's runtime (the mock servers keep serving).
async fn cli(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_binary(&args)
    })
    .await
    .unwrap()
}

/// A relay config: old-town (accepted) and, with `airport`, airport (refused); a file sink
/// and an HTTP sink "hooks" to `hooks`; `[api]` on `api`; `extra` tables.
/// Nothing answers on the REST port (`rest`): catch-up fails and is retried; it does not
/// matter here.
fn config(
    server: &MockServer,
    rest: SocketAddr,
    dir: &Path,
    api: SocketAddr,
    hooks: &str,
    airport: bool,
    extra: &str,
) -> String {
    let sinks = format!(
        "{}\n[[sink]]\ntype = \"http\"\nname = \"hooks\"\nurl = \"{hooks}\"\nretry_min = \"50ms\"\nretry_max = \"200ms\"\n",
        file_sink(&dir.join("out.jsonl"))
    );
    let airport = if airport {
        format!("[[property]]\nname = \"airport\"\naccess_token = \"{AIRPORT_TOKEN}\"\n\n")
    } else {
        String::new()
    };
    config_text(&server.url(), dir, &sinks)
        .replace(
            "[mews]\n",
            &format!("[mews]\napi_url = \"http://{rest}\"\n"),
        )
        .replace("[connection]\n", &format!("{airport}[connection]\n"))
        + &format!("\n[api]\nlisten = \"{api}\"\ntoken = \"{API_TOKEN}\"\n{extra}")
}

/// `status --json --config F`: exit code and document.
async fn status_json(config: &Path) -> (i32, Value) {
    let (code, out, err) = cli(&["status", "--json", "--config", &path(config)]).await;
    let doc = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
    (code, doc)
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// `status` against a relay with one connected and one refused property: text and JSON say
/// which is which and why, exit 1; with the refused one reloaded away, exit 0; with no relay,
/// exit 69. `dead-letters list` and `replay` work while the relay runs: the replayed records
/// go to that sink only. `reload` exits 0 with what changed, 64 for an invalid file, 1 with the
/// reason when the new config could not start (and `status` then says so).
#[tokio::test]
async fn status_dead_letters_and_reload_against_a_running_relay() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    server.reject_token(AIRPORT_TOKEN, 401);
    let mut receiver = Receiver::start().await;
    receiver.set_default(Reply::Status(422, "unknown room"));
    let (api, rest) = (free_port(), free_port());
    let text = config(&server, rest, dir.path(), api, &receiver.url(), true, "");
    let file = write_config(dir.path(), &text);
    let mut relay = Daemon::spawn(&["run", "--config", &path(&file)], dir.path(), "relay");
    let mut conn = server.next().await;
    conn.send(&commands(0, 2)).await;
    let out = dir.path().join("out.jsonl");
    wait_for_lines(&out, 2).await;
    let dead = dir.path().join("dead-letter/hooks.jsonl");
    wait_for_lines(&dead, 2).await;
    crate::listeners::listening(api).await;

    // One connected, one refused. The dead-letter file gets its line before the sink moves its
    // cursor past the record, so its lag reaches 0 a moment after the line is there.
    wait_until_async("airport is reported refused, hooks caught up", || async {
        let (_, doc) = status_json(&file).await;
        doc["Properties"]["airport"]["State"] == "reconnecting"
            && doc["Sinks"]["hooks"]["LagRecords"] == 0
    })
    .await;
    let (code, doc) = status_json(&file).await;
    assert_eq!(code, 1, "not all is well: {doc}");
    assert_eq!(doc["Properties"]["old-town"]["State"], "connected");
    assert!(doc["Properties"]["old-town"]["LastEventSeconds"].is_number());
    let reason = doc["Properties"]["airport"]["Reason"].as_str().unwrap();
    assert!(reason.contains("401"), "{reason}");
    assert_eq!(doc["Sinks"]["hooks"]["DeadLetters"], 2);
    assert_eq!(doc["Sinks"]["hooks"]["LagRecords"], 0);
    let (code, text, _) = cli(&["status", "--config", &path(&file)]).await;
    assert_eq!(code, 1);
    assert!(text.contains("NOT WELL"), "{text}");
    assert!(
        text.contains("old-town") && text.contains("connected for"),
        "{text}"
    );
    assert!(
        text.contains("airport") && text.contains("RECONNECTING"),
        "{text}"
    );
    assert!(text.contains("2 dead letters"), "{text}");

    // Dead letters, listed and replayed while the relay runs.
    let (code, list, err) = cli(&[
        "dead-letters",
        "list",
        "--sink",
        "hooks",
        "--config",
        &path(&file),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(list.contains("cmd-0") && list.contains("cmd-1"), "{list}");
    assert!(list.contains("HTTP 422"), "{list}");
    receiver.set_default(Reply::Ok);
    receiver.forget();
    let (code, _, err) = cli(&[
        "dead-letters",
        "replay",
        "--sink",
        "hooks",
        "--config",
        &path(&file),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("running relay"), "{err}");
    let mut ids: Vec<String> = receiver
        .records(2)
        .await
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["cmd-0", "cmd-1"]);
    conn.send(&commands(2, 3)).await;
    receiver.records(1).await;
    let lines = wait_for_lines(&out, 3).await;
    assert_eq!(lines.len(), 3, "the replay was for hooks only");

    // A reload that removes airport: applied, old-town stays connected.
    let text = config(&server, rest, dir.path(), api, &receiver.url(), false, "");
    std::fs::write(&file, &text).unwrap();
    let (code, said, err) = cli(&["reload", "--config", &path(&file)]).await;
    assert_eq!(code, 0, "{said} {err}");
    assert!(said.contains("removed airport"), "{said}");
    let (code, doc) = status_json(&file).await;
    assert_eq!(code, 0, "all is well now: {doc}");
    assert!(server.try_next().is_none(), "old-town did not reconnect");

    // An invalid file: refused before the relay is asked.
    std::fs::write(&file, "[mews]\nwebsocket_url = 5\n").unwrap();
    let (code, _, err) = cli(&["reload", "--config", &path(&file)]).await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("refused"), "{err}");

    // Valid, but cannot start (its metrics port is taken): exit 1 with the reason.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap();
    let text = config(
        &server,
        rest,
        dir.path(),
        api,
        &receiver.url(),
        false,
        &format!("\n[metrics]\nlisten = \"{port}\"\n"),
    );
    std::fs::write(&file, &text).unwrap();
    let (code, _, err) = cli(&["reload", "--config", &path(&file)]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("could not start") && err.contains(&port.to_string()),
        "{err}"
    );
    let (code, doc) = status_json(&file).await;
    assert_eq!(code, 1, "a failed reload is not well: {doc}");
    assert_eq!(doc["LastReload"]["Ok"], false);
    conn.send(&commands(3, 4)).await;
    wait_for_lines(&out, 4).await; // the running config goes on
    drop(taken);

    relay.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(relay.wait().await, Some(0), "{}", relay.stderr_text());
    let (code, _, err) = cli(&["status", "--config", &path(&file)]).await;
    assert_eq!(code, 69, "no relay answers: {err}");
}

/// Without `[api]`, `reload` (the unit's `ExecReload=`, systemd passing `$MAINPID`) sends
/// SIGHUP to the relay and says that the outcome is only in its log and `STATUS=`; without a
/// pid it refuses (64) and says how to get one.
#[tokio::test]
async fn reload_without_an_api_signals_the_main_pid() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let out = dir.path().join("out.jsonl");
    let file = write_config(
        dir.path(),
        &config_text(&server.url(), dir.path(), &file_sink(&out)),
    );
    let mut relay = Daemon::spawn(&["run", "--config", &path(&file)], dir.path(), "relay");
    let mut conn = server.next().await;
    conn.send(&commands(0, 1)).await;
    wait_for_lines(&out, 1).await;

    let (code, _, err) = cli(&["reload", "--config", &path(&file)]).await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--pid"), "{err}");

    let other = dir.path().join("other.jsonl");
    let both = format!("{}\n{}", file_sink(&out), file_sink(&other));
    std::fs::write(&file, config_text(&server.url(), dir.path(), &both)).unwrap();
    let pid = relay.child.id().to_string();
    let (code, _, err) = cli(&["reload", "--config", &path(&file), "--pid", &pid]).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("sent SIGHUP"), "{err}");
    wait_until("the relay applied it", || {
        relay.stderr_text().contains("configuration reloaded")
    })
    .await;
    conn.send(&commands(1, 2)).await;
    wait_for_lines(&other, 1).await;
    assert!(server.try_next().is_none(), "no reconnect");
    relay.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(relay.wait().await, Some(0));
}

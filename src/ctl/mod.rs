//! The admin's commands against a relay: `status` and `reload` through its API (`[api]`),
//! `dead-letters list` from the sink's file, `dead-letters replay` through the API while the
//! relay runs and on the journal itself when none does. Each returns the process's exit code.
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | all is well / done |
//! | 1 | the relay answered: not all is well (`status`), the reload was refused or could not start (`reload`), or another failure |
//! | 64 | the config given is invalid, or has no `[api]` where one is needed |
//! | 69 | no relay answers on `[api] listen` |
//! | 74 | the journal cannot be opened (an offline replay) |
//! | 77 | the relay refused the API token |

mod render;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::api::client::{ApiClient, ClientError};
use crate::config::{CredentialsDir, Settings};
use crate::journal::JournalError;
use crate::sink::dead_letter::{self, ReplayError};

/// Exit: done, all well.
pub const EXIT_OK: u8 = 0;
/// Exit: not all is well, or the request failed.
pub const EXIT_NOT_WELL: u8 = 1;
/// Exit: a bad config (sysexits' EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;
/// Exit: no relay answers on its API (sysexits' EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: u8 = 69;
/// Exit: the journal cannot be opened (sysexits' EX_IOERR).
pub const EXIT_JOURNAL: u8 = 74;
/// Exit: the relay refused the token (sysexits' EX_NOPERM).
pub const EXIT_NOPERM: u8 = 77;

/// How often `reload` asks whether its request is done.
const POLL: Duration = Duration::from_millis(100);

/// Prints `err` as `mews-relay: …` and gives `code`.
fn fail(code: u8, err: impl std::fmt::Display) -> u8 {
    eprintln!("mews-relay: {err}");
    code
}

/// The exit code of a failed API request.
fn client_failure(err: &ClientError) -> u8 {
    match err {
        ClientError::NotConfigured(_) => EXIT_CONFIG,
        ClientError::Unreachable { .. } => EXIT_UNAVAILABLE,
        ClientError::Refused { status: 401, .. } => EXIT_NOPERM,
        ClientError::Refused { .. } => EXIT_NOT_WELL,
    }
}

/// `mews-relay status`: the running relay's status, as text or (`json`) its JSON document;
/// 0 when it lists no problem, else 1.
pub async fn status(settings: &Settings, json: bool) -> u8 {
    let client = match ApiClient::new(settings) {
        Ok(client) => client,
        Err(err) => return fail(client_failure(&err), err),
    };
    let doc = match client.status().await {
        Ok(doc) => doc,
        Err(err) => return fail(client_failure(&err), err),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).unwrap_or_else(|_| doc.to_string())
        );
    } else {
        print!("{}", render::status(&doc, client.addr()));
    }
    let well = doc["Problems"].as_array().is_some_and(Vec::is_empty);
    if well { EXIT_OK } else { EXIT_NOT_WELL }
}

/// `mews-relay reload`: checks `config`, has the running relay read its config file again
/// and waits (up to `wait`) for how it went: 0 applied, 1 refused or could not start. Without
/// `[api]` it sends SIGHUP to `pid` (systemd's `$MAINPID`) and cannot learn more.
pub async fn reload(config: &Path, pid: Option<i32>, wait: Duration) -> u8 {
    let settings = match Settings::load(config, &CredentialsDir::from_env()) {
        Ok(settings) => settings,
        Err(err) => {
            return fail(
                EXIT_CONFIG,
                format!(
                    "the new configuration is refused: {err}; the running relay keeps its configuration"
                ),
            );
        }
    };
    if settings.api.is_none() {
        return reload_by_signal(config, pid);
    }
    let client = match ApiClient::new(&settings) {
        Ok(client) => client,
        Err(err) => return fail(client_failure(&err), err),
    };
    let generation = match client.reload().await {
        Ok(answer) => answer["Generation"].as_u64().unwrap_or(0),
        Err(err) => return fail(client_failure(&err), err),
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match client.status().await {
            Ok(doc) if doc["LastReload"]["Generation"].as_u64() >= Some(generation) => {
                return reload_outcome(&doc["LastReload"], generation);
            }
            // While everything restarts the API is down for a moment.
            Ok(_) | Err(ClientError::Unreachable { .. }) => {}
            Err(err) => return fail(client_failure(&err), err),
        }
        if tokio::time::Instant::now() >= deadline {
            return fail(
                EXIT_NOT_WELL,
                format!(
                    "the relay took the reload but said nothing of it within {}; see its log (journalctl -u mews-relay) and `mews-relay status`",
                    humantime::format_duration(wait)
                ),
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How reload `generation` went, from the status's `LastReload`.
fn reload_outcome(last: &Value, generation: u64) -> u8 {
    if last["Generation"].as_u64() != Some(generation) {
        eprintln!("mews-relay: another reload came after this one; see `mews-relay status`");
    }
    if last["Ok"].as_bool() == Some(true) {
        println!("reloaded: {}", last["Changes"].as_str().unwrap_or("done"));
        EXIT_OK
    } else {
        fail(
            EXIT_NOT_WELL,
            last["Error"].as_str().unwrap_or("the reload failed"),
        )
    }
}

/// A reload without `[api]`: SIGHUP to `pid`, whose outcome only the relay's log and `STATUS=`
/// tell.
fn reload_by_signal(config: &Path, pid: Option<i32>) -> u8 {
    use nix::sys::signal::{Signal, kill};
    let Some(pid) = pid.filter(|pid| *pid > 0) else {
        return fail(
            EXIT_CONFIG,
            format!(
                "{}: no [api] section: this command learns how a reload went through the relay's API; add [api] (listen, token), or pass --pid (systemd sets $MAINPID for ExecReload=) to send SIGHUP without learning the outcome",
                config.display()
            ),
        );
    };
    match kill(nix::unistd::Pid::from_raw(pid), Signal::SIGHUP) {
        Ok(()) => {
            eprintln!(
                "mews-relay: sent SIGHUP to {pid}; without [api] the outcome is only in the relay's log (journalctl -u mews-relay) and its STATUS= line (systemctl status mews-relay), which says when a reload failed"
            );
            EXIT_OK
        }
        Err(err) => fail(
            EXIT_UNAVAILABLE,
            format!("cannot signal process {pid}: {err}; is the relay running?"),
        ),
    }
}

/// `mews-relay dead-letters list`: the sink's dead letters from its file, as text or (`json`)
/// one JSON object per line as the file holds them.
pub fn list_dead_letters(settings: &Settings, sink: &str, json: bool) -> u8 {
    let names: Vec<String> = settings.sinks.iter().map(|s| s.name.clone()).collect();
    let lines = match dead_letter::list(&settings.state.dir, &names, sink) {
        Ok(lines) => lines,
        Err(err) => return fail(EXIT_NOT_WELL, err),
    };
    if json {
        for line in &lines {
            println!("{line}");
        }
    } else {
        let path = dead_letter::path_for(&settings.state.dir, sink);
        print!("{}", render::dead_letters(sink, &path, &lines));
    }
    EXIT_OK
}

/// `mews-relay dead-letters replay`: through the running relay's API when `[api]` is set and
/// a relay answers; else on the journal itself (no relay may run then).
pub async fn replay(settings: &Settings, sink: &str) -> u8 {
    if settings.api.is_some() {
        let client = match ApiClient::new(settings) {
            Ok(client) => client,
            Err(err) => return fail(client_failure(&err), err),
        };
        match client.replay(sink).await {
            Ok(answer) => {
                let count = answer["Replayed"].as_u64().unwrap_or(0);
                eprintln!(
                    "mews-relay: {count} dead letters of \"{sink}\" are back in the running relay's journal; it delivers them to that sink"
                );
                return EXIT_OK;
            }
            Err(ClientError::Unreachable { .. }) => {} // no relay runs: replay offline
            Err(err) => return fail(client_failure(&err), err),
        }
    }
    match dead_letter::replay(settings, sink).await {
        Ok(count) => {
            eprintln!(
                "mews-relay: {count} dead letters of \"{sink}\" are back in the journal; they are delivered when the relay runs"
            );
            EXIT_OK
        }
        Err(ReplayError::Journal(JournalError::Open { path, problem }))
            if problem.contains("in use") =>
        {
            let how = if settings.api.is_some() {
                "its API ([api]) does not answer"
            } else {
                "add [api] to its config (and reload it) so that the replay goes through it"
            };
            fail(
                EXIT_JOURNAL,
                format!(
                    "journal {}: the relay is running and holds it: {how}; or stop the relay and replay again",
                    path.display()
                ),
            )
        }
        Err(err @ ReplayError::Journal(_)) => fail(EXIT_JOURNAL, err),
        Err(err) => fail(EXIT_NOT_WELL, err),
    }
}

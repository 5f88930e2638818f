//! `GET /v1/status`: each property's connection, each sink's progress and trouble, the
//! journal, the last reload, and the problems among them — what `mews-relay status` prints.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::{Shared, answer, refused};
use crate::config::Settings;
use crate::stats::{Link, Stats};

/// `GET /v1/status`.
pub(super) async fn status(State(state): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    if let Some(refusal) = refused(&state, &parts) {
        return refusal;
    }
    let settings = state.settings();
    // Counting dead letters reads files.
    let doc = tokio::task::spawn_blocking(move || status_of(&state.ctx.stats, &settings))
        .await
        .unwrap_or(Value::Null);
    answer(StatusCode::OK, &doc)
}

/// The status document of a relay running `settings`. `Ready` is what `/readyz` says (every
/// property connected, no sink paused or behind for longer than `ready_max_lag`, the journal
/// storing); `Problems` lists what is not well, a failed last reload included, one line each.
/// Counting a sink's dead letters reads its file.
pub fn status_of(stats: &Stats, settings: &Settings) -> Value {
    let max_lag = crate::ops::max_lag(settings);
    let mut problems = Vec::new();
    let properties = properties(stats, &mut problems);
    let sinks = sinks(stats, settings, max_lag, &mut problems);
    let journal = stats.journal.problem();
    if let Some(problem) = &journal {
        problems.push(format!("journal: {problem}"));
    }
    let ready = problems.is_empty();
    let last_reload = stats
        .last_reload
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let last_reload = last_reload.map(|r| {
        if let Err(error) = &r.outcome {
            problems.push(format!("last reload: {error}"));
        }
        json!({
            "Generation": r.generation,
            "At": crate::record::format_time(r.at),
            "Ok": r.outcome.is_ok(),
            "Changes": r.outcome.as_ref().ok(),
            "Error": r.outcome.as_ref().err(),
        })
    });
    json!({
        "Version": env!("CARGO_PKG_VERSION"),
        "Config": settings.origin.display().to_string(),
        "Ready": ready,
        "Problems": problems,
        "Properties": properties,
        "Sinks": sinks,
        "Journal": { "Ok": journal.is_none(), "Problem": journal },
        "JournalBytes": Stats::get(&stats.journal_bytes),
        "LastReload": last_reload,
        "CommandUpdates": {
            "Applied": Stats::get(&stats.command_updates_applied),
            "Refused": Stats::get(&stats.command_updates_refused),
            "Waiting": Stats::get(&stats.command_updates_waiting),
        },
    })
}

/// Each property's connection; those not connected go to `problems`.
fn properties(stats: &Stats, problems: &mut Vec<String>) -> Map<String, Value> {
    let now = SystemTime::now();
    stats
        .properties
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(name, p)| {
            let (link, since, reason) = match &p.link {
                Link::Connected(at) => ("connected", Some(at.elapsed().as_secs()), None),
                Link::Connecting => ("connecting", None, None),
                Link::Reconnecting(why) => ("reconnecting", None, Some(why.clone())),
            };
            if link != "connected" {
                let why = reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                problems.push(format!("property {name}: {link}{why}"));
            }
            let age = p
                .last_event
                .map(|at| now.duration_since(at).unwrap_or_default().as_secs_f64());
            let value = json!({
                "State": link,
                "ConnectedSeconds": since,
                "Reason": reason,
                "LastEventSeconds": age,
                "Reconnects": p.reconnects,
            });
            (name.clone(), value)
        })
        .collect()
}

/// Each sink's progress and trouble; those paused or behind for longer than `max_lag` go to
/// `problems`.
fn sinks(
    stats: &Stats,
    settings: &Settings,
    max_lag: Duration,
    problems: &mut Vec<String>,
) -> Map<String, Value> {
    let all = stats
        .sinks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    all.iter()
        .map(|(name, s)| {
            if let Some(problem) = s.problem(max_lag) {
                problems.push(format!("sink {name}: {problem}"));
            }
            let state = match &s.trouble {
                Some(t) if t.paused => "paused",
                Some(_) => "retrying",
                None if s.lag() > max_lag => "behind",
                None => "delivering",
            };
            let path = crate::sink::dead_letter::path_for(&settings.state.dir, name);
            let value = json!({
                "State": state,
                "Reason": s.trouble.as_ref().map(|t| t.reason.clone()),
                "TroubleSeconds": s.trouble.as_ref().map(|t| t.since.elapsed().as_secs()),
                "LagRecords": s.lag_records,
                "LagSeconds": s.lag().as_secs(),
                "Delivered": s.delivered,
                "DeadLettered": s.dead_lettered,
                "DeadLetters": count_lines(&path),
                "DeadLetterFile": path.display().to_string(),
                "Retries": s.retries,
            });
            (name.clone(), value)
        })
        .collect()
}

/// Whole lines in the file at `path` (0 when there is none).
fn count_lines(path: &std::path::Path) -> u64 {
    use std::io::Read;
    let Ok(mut file) = crate::files::open_read(path) else {
        return 0;
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut lines = 0u64;
    while let Ok(n) = file.read(&mut buf) {
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
    lines
}

//! How `mews-relay status` and `dead-letters list` read to a person: the status document and
//! the dead-letter lines as aligned text.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// `n` seconds as `3m 12s`.
fn ago(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// The status document as text.
pub fn status(doc: &Value, addr: SocketAddr) -> String {
    let mut out = String::new();
    let problems = doc["Problems"].as_array().cloned().unwrap_or_default();
    let verdict = if problems.is_empty() {
        "all well".to_owned()
    } else {
        format!("NOT WELL ({} problems)", problems.len())
    };
    let _ = writeln!(
        out,
        "mews-relay {} at {addr} · {} · {verdict}",
        doc["Version"].as_str().unwrap_or("?"),
        doc["Config"].as_str().unwrap_or("?"),
    );
    properties(&mut out, doc);
    sinks(&mut out, doc);
    if let Some(problem) = doc["Journal"]["Problem"].as_str() {
        let _ = writeln!(out, "\njournal: NOT STORING: {problem}");
    }
    let last = &doc["LastReload"];
    if !last.is_null() {
        let what = if last["Ok"].as_bool() == Some(true) {
            format!("ok: {}", last["Changes"].as_str().unwrap_or(""))
        } else {
            format!("FAILED: {}", last["Error"].as_str().unwrap_or(""))
        };
        let _ = writeln!(
            out,
            "\nlast reload {}: {what}",
            last["At"].as_str().unwrap_or("?")
        );
    }
    if !problems.is_empty() {
        let _ = writeln!(out, "\nproblems:");
        for problem in problems {
            let _ = writeln!(out, "  - {}", problem.as_str().unwrap_or_default());
        }
    }
    out
}

/// The names of an object's keys, padded to the longest.
fn width(map: &serde_json::Map<String, Value>) -> usize {
    map.keys().map(String::len).max().unwrap_or(0)
}

fn properties(out: &mut String, doc: &Value) {
    let Some(props) = doc["Properties"].as_object() else {
        return;
    };
    let _ = writeln!(out, "\nproperties:");
    let w = width(props);
    for (name, p) in props {
        let state = match p["State"].as_str().unwrap_or("?") {
            "connected" => format!(
                "connected for {}",
                ago(p["ConnectedSeconds"].as_u64().unwrap_or(0))
            ),
            "reconnecting" => format!("RECONNECTING ({})", p["Reason"].as_str().unwrap_or("?")),
            other => other.to_uppercase(),
        };
        let last = match p["LastEventSeconds"].as_f64() {
            Some(secs) => format!("last event {} ago", ago(secs as u64)),
            None => "no event yet".into(),
        };
        let _ = writeln!(out, "  {name:w$}  {state}; {last}");
    }
}

fn sinks(out: &mut String, doc: &Value) {
    let Some(sinks) = doc["Sinks"].as_object() else {
        return;
    };
    let _ = writeln!(out, "\nsinks:");
    let w = width(sinks);
    for (name, s) in sinks {
        let lag = format!(
            "{} records behind ({})",
            s["LagRecords"].as_u64().unwrap_or(0),
            ago(s["LagSeconds"].as_u64().unwrap_or(0))
        );
        let dead = match s["DeadLetters"].as_u64().unwrap_or(0) {
            0 => "no dead letters".to_owned(),
            n => format!("{n} dead letters (mews-relay dead-letters list --sink {name})"),
        };
        let state = match s["State"].as_str().unwrap_or("?") {
            "paused" => format!(
                "PAUSED for {}: {}",
                ago(s["TroubleSeconds"].as_u64().unwrap_or(0)),
                s["Reason"].as_str().unwrap_or("?")
            ),
            "retrying" => format!(
                "RETRYING for {}: {}",
                ago(s["TroubleSeconds"].as_u64().unwrap_or(0)),
                s["Reason"].as_str().unwrap_or("?")
            ),
            "behind" => "BEHIND".into(),
            other => other.into(),
        };
        let _ = writeln!(out, "  {name:w$}  {state}");
        let _ = writeln!(out, "  {:w$}  {lag}; {dead}", "");
    }
}

/// A sink's dead letters (the lines of its file) as text.
pub fn dead_letters(sink: &str, path: &Path, lines: &[Value]) -> String {
    let mut out = String::new();
    if lines.is_empty() {
        let _ = writeln!(out, "no dead letters for \"{sink}\" ({})", path.display());
        return out;
    }
    let _ = writeln!(
        out,
        "{} dead letters for \"{sink}\" in {} (oldest first):",
        lines.len(),
        path.display()
    );
    for line in lines {
        let record = &line["record"];
        let status = line["status"]
            .as_u64()
            .map_or_else(String::new, |s| format!("HTTP {s} "));
        let _ = writeln!(
            out,
            "  {}  seq {}  {} {} {}  {status}{}  key {}",
            line["dead_lettered_at"].as_str().unwrap_or("?"),
            record["seq"],
            record["property"].as_str().unwrap_or("?"),
            record["type"].as_str().unwrap_or("?"),
            record["id"].as_str().unwrap_or("-"),
            line["reason"].as_str().unwrap_or("?"),
            line["key"].as_str().unwrap_or("?"),
        );
    }
    let _ = writeln!(
        out,
        "replay them (the relay running or not): mews-relay dead-letters replay --sink {sink}"
    );
    out
}

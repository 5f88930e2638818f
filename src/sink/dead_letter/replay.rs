//! Looking at dead letters and putting them back: [`list`] reads a sink's file, [`replay_into`]
//! puts its records back into a running journal (the API does this while the relay runs),
//! [`replay`] opens the journal itself (the relay must not be running).

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

use super::{Line, lock_of, path_for};
use crate::journal::{Entry, Journal, JournalError, Replay};

/// Why dead letters could not be listed or replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// No such sink in the config.
    #[error("no sink is named \"{0}\" in the config; the names are: {1}")]
    UnknownSink(String, String),
    /// The file could not be read or parsed.
    #[error("{path}: {problem}", path = .0.display(), problem = .1)]
    File(PathBuf, String),
    /// The journal could not take them.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// `sink` among the configured `names`, or the error listing them.
fn known(names: &[String], sink: &str) -> Result<(), ReplayError> {
    if names.iter().any(|n| n == sink) {
        Ok(())
    } else {
        Err(ReplayError::UnknownSink(sink.to_owned(), names.join(", ")))
    }
}

/// The lines of `path` (none when there is no file). A last line without its newline is one
/// being written: it is left for the next look.
fn read_lines(path: &Path) -> Result<Vec<String>, ReplayError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(ReplayError::File(path.to_owned(), err.to_string())),
    };
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    Ok(complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect())
}

/// The dead letters of `sink` under `state_dir`, oldest first, as their file holds them (one
/// JSON object each: `dead_lettered_at`, `sink`, `reason`, `status`, `response`, `key`,
/// `record`). `names` are the configured sinks.
pub fn list(
    state_dir: &Path,
    names: &[String],
    sink: &str,
) -> Result<Vec<serde_json::Value>, ReplayError> {
    known(names, sink)?;
    let path = path_for(state_dir, sink);
    read_lines(&path)?
        .iter()
        .enumerate()
        .map(|(n, line)| {
            serde_json::from_str(line)
                .map_err(|err| ReplayError::File(path.clone(), format!("line {}: {err}", n + 1)))
        })
        .collect()
}

/// The journal entries for the lines of a dead-letter file: each record for `sink` only,
/// under its first key.
fn entries(path: &Path, sink: &str, lines: &[String]) -> Result<Vec<Entry>, ReplayError> {
    #[derive(Deserialize)]
    struct Head {
        property: Option<String>,
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    let mut entries = Vec::with_capacity(lines.len());
    for (n, line) in lines.iter().enumerate() {
        let bad = |err: serde_json::Error| {
            ReplayError::File(
                path.to_owned(),
                format!("line {}: {err}; fix or remove that line", n + 1),
            )
        };
        let line: Line<'_> = serde_json::from_str(line).map_err(bad)?;
        let head: Head = serde_json::from_str(line.record.get()).map_err(bad)?;
        entries.push(Entry::Replay(Replay {
            sink: sink.to_owned(),
            key: line.key,
            property: head.property.unwrap_or_default(),
            kind: head.kind,
            json: line.record.get().as_bytes().to_vec(),
        }));
    }
    Ok(entries)
}

/// Puts sink `sink`'s dead letters back into `journal`, for that sink only, durably, and
/// renames the file to `…jsonl.replayed-<unix time>`. The sink's task waits meanwhile to
/// write new dead letters (they start a new file). `names` are the configured sinks. Returns
/// how many records were put back.
pub async fn replay_into(
    journal: &Journal,
    state_dir: &Path,
    names: &[String],
    sink: &str,
) -> Result<usize, ReplayError> {
    known(names, sink)?;
    let path = path_for(state_dir, sink);
    let lock = lock_of(&path);
    let _turn = lock.lock().await;
    // Read and parsed on the blocking pool: the file may be large, the disk slow.
    let entries = {
        let (file, sink) = (path.clone(), sink.to_owned());
        tokio::task::spawn_blocking(move || entries(&file, &sink, &read_lines(&file)?))
            .await
            .map_err(|err| ReplayError::File(path.clone(), err.to_string()))??
    };
    if entries.is_empty() {
        return Ok(0);
    }
    let count = entries.len();
    journal.append_committed(entries).await?;
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let done = path.with_extension(format!("jsonl.replayed-{stamp}"));
    std::fs::rename(&path, &done).map_err(|err| {
        ReplayError::File(
            path.clone(),
            format!(
                "{err}; the records are back in the journal: move the file away before replaying again"
            ),
        )
    })?;
    Ok(count)
}

/// [`replay_into`] the journal of `settings`, opened here: the relay must not be running (the
/// journal is in use while it does; replay through its API then).
pub async fn replay(settings: &crate::config::Settings, sink: &str) -> Result<usize, ReplayError> {
    let names: Vec<String> = settings.sinks.iter().map(|s| s.name.clone()).collect();
    known(&names, sink)?;
    if read_lines(&path_for(&settings.state.dir, sink))?.is_empty() {
        return Ok(0);
    }
    let stats = std::sync::Arc::new(crate::stats::Stats::default());
    let (journal, writer) = Journal::open(
        &settings.state.dir,
        &names,
        crate::rejects::journal_share(settings.state.max_bytes),
        stats,
    )?;
    let writer = tokio::spawn(writer.run());
    let result = replay_into(&journal, &settings.state.dir, &names, sink).await;
    drop(journal);
    let _ = writer.await;
    result
}

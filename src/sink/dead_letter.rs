//! Dead letters: records a sink gave up on, kept in `<state.dir>/dead-letter/<sink>.jsonl` with
//! the reason, so they can be looked at and replayed (`mews-relay dead-letters replay`).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::journal::StoredRecord;
use crate::record::format_time;

/// Folder of dead-letter files inside `state.dir`.
pub const DIR: &str = "dead-letter";

/// The dead-letter file of sink `name` (characters unsafe in a file name become `_`).
pub fn path_for(state_dir: &Path, name: &str) -> PathBuf {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    state_dir.join(DIR).join(format!("{safe}.jsonl"))
}

/// Why records were dead-lettered.
pub struct Reason<'a> {
    /// One line for people.
    pub text: &'a str,
    /// The HTTP status, when there was a response.
    pub status: Option<u16>,
    /// The start of the response body.
    pub response: Option<&'a str>,
}

/// One line of a dead-letter file.
#[derive(Serialize, Deserialize)]
pub struct Line<'a> {
    /// When it was given up on.
    pub dead_lettered_at: String,
    /// The sink.
    pub sink: String,
    /// Why.
    pub reason: String,
    /// HTTP status, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<u16>,
    /// Start of the response body, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub response: Option<String>,
    /// The record's stable key (`Idempotency-Key`).
    pub key: String,
    /// The record as the sink would have delivered it.
    #[serde(borrow)]
    pub record: &'a RawValue,
}

/// Appends dead letters for one sink; the file is created on first use.
pub struct DeadLetters {
    sink: String,
    path: PathBuf,
    file: Option<File>,
}

impl DeadLetters {
    /// Dead letters of `sink` under `state_dir`.
    pub fn new(state_dir: &Path, sink: &str) -> Self {
        DeadLetters {
            sink: sink.to_owned(),
            path: path_for(state_dir, sink),
            file: None,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the records with the reason, and syncs the file.
    pub fn write(&mut self, records: &[&StoredRecord], reason: &Reason<'_>) -> io::Result<()> {
        let mut buf = Vec::new();
        let now = format_time(SystemTime::now());
        for record in records {
            let raw = std::str::from_utf8(&record.json)
                .ok()
                .and_then(|text| serde_json::from_str::<&RawValue>(text).ok());
            let fallback;
            let raw = match raw {
                Some(raw) => raw,
                None => {
                    fallback =
                        serde_json::value::to_raw_value(&String::from_utf8_lossy(&record.json))?;
                    &fallback
                }
            };
            let line = Line {
                dead_lettered_at: now.clone(),
                sink: self.sink.clone(),
                reason: reason.text.to_owned(),
                status: reason.status,
                response: reason.response.map(str::to_owned),
                key: record.key(),
                record: raw,
            };
            serde_json::to_writer(&mut buf, &line)?;
            buf.push(b'\n');
        }
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                crate::files::create_private_dir(dir)?;
            }
            self.file = Some(crate::files::open_append(&self.path, false)?);
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("dead-letter file not open"))?;
        let result = file.write_all(&buf).and_then(|()| file.sync_data());
        if result.is_err() {
            self.file = None;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_names_become_safe_file_names() {
        let path = path_for(
            Path::new("/var/lib/mews-relay"),
            "http:keys.example:8443/mews hooks",
        );
        assert_eq!(
            path,
            Path::new("/var/lib/mews-relay/dead-letter/http_keys.example_8443_mews_hooks.jsonl")
        );
    }

    #[test]
    fn a_dead_letter_file_that_is_a_symlink_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "untouched").unwrap();
        std::fs::create_dir(dir.path().join(DIR)).unwrap();
        std::os::unix::fs::symlink(&target, path_for(dir.path(), "keys")).unwrap();
        let mut dead = DeadLetters::new(dir.path(), "keys");
        let record = super::super::stdout::test_record("{\"seq\":1}");
        let reason = Reason {
            text: "gave up",
            status: None,
            response: None,
        };
        let err = dead.write(&[&record], &reason).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
    }
}

/// Why dead letters could not be replayed.
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
    Journal(#[from] crate::journal::JournalError),
}

/// Puts sink `sink`'s dead letters back into the journal, for that sink only, and renames the
/// file to `…jsonl.replayed-<unix time>`. The relay must not be running (the journal is
/// opened here). Returns how many records were put back.
pub async fn replay(settings: &crate::config::Settings, sink: &str) -> Result<usize, ReplayError> {
    use crate::journal::{Entry, Journal, Replay};
    let names: Vec<String> = settings.sinks.iter().map(|s| s.name.clone()).collect();
    if !names.iter().any(|n| n == sink) {
        return Err(ReplayError::UnknownSink(sink.to_owned(), names.join(", ")));
    }
    let path = path_for(&settings.state.dir, sink);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(ReplayError::File(path, err.to_string())),
    };
    #[derive(Deserialize)]
    struct Head {
        property: Option<String>,
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    let mut entries = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |err: serde_json::Error| {
            ReplayError::File(
                path.clone(),
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
    let count = entries.len();
    let stats = std::sync::Arc::new(crate::stats::Stats::default());
    let (journal, writer) = Journal::open(
        &settings.state.dir,
        &names,
        crate::rejects::journal_share(settings.state.max_bytes),
        stats,
    )?;
    let writer = tokio::spawn(writer.run());
    let result = journal.append_committed(entries).await;
    drop(journal);
    let _ = writer.await;
    result?;
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let done = path.with_extension(format!("jsonl.replayed-{stamp}"));
    std::fs::rename(&path, &done)
        .map_err(|err| ReplayError::File(path.clone(), err.to_string()))?;
    Ok(count)
}

//! Dead letters: records a sink gave up on, kept in `<state.dir>/dead-letter/<sink>.jsonl` with
//! the reason, so they can be listed and replayed (`mews-relay dead-letters list|replay`, the
//! latter through the running relay's API or, when none runs, on the journal itself).
//!
//! A file has one lock in the process: the sink's task appending and a replay renaming the
//! file away take turns, so no line lands in a file already replayed.

mod replay;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::SystemTime;

pub use replay::{ReplayError, list, replay, replay_into};

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

/// The lock of the dead-letter file at `path`, shared by everything in this process that
/// writes or replays it.
fn lock_of(path: &Path) -> Arc<tokio::sync::Mutex<()>> {
    type Locks = std::sync::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>;
    static LOCKS: LazyLock<Locks> = LazyLock::new(Locks::default);
    let mut locks = LOCKS.lock().unwrap_or_else(|p| p.into_inner());
    Arc::clone(locks.entry(path.to_owned()).or_default())
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

    /// Appends the records with the reason, and syncs the file; a file a replay renamed away
    /// meanwhile is left alone and a new one started.
    pub async fn write(
        &mut self,
        records: &[&StoredRecord],
        reason: &Reason<'_>,
    ) -> io::Result<()> {
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
        let lock = lock_of(&self.path);
        let _turn = lock.lock().await;
        if self
            .file
            .as_ref()
            .is_some_and(|file| !still_at(file, &self.path))
        {
            self.file = None;
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

/// Whether `path` still names the open `file` (a replay renames it away).
fn still_at(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
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

    #[tokio::test]
    async fn a_dead_letter_file_that_is_a_symlink_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "untouched").unwrap();
        std::fs::create_dir(dir.path().join(DIR)).unwrap();
        std::os::unix::fs::symlink(&target, path_for(dir.path(), "keys")).unwrap();
        let mut dead = DeadLetters::new(dir.path(), "keys");
        let record = crate::sink::stdout::test_record("{\"seq\":1}");
        let reason = Reason {
            text: "gave up",
            status: None,
            response: None,
        };
        let err = dead.write(&[&record], &reason).await.unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
    }

    #[tokio::test]
    async fn a_file_renamed_away_by_a_replay_is_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut dead = DeadLetters::new(dir.path(), "keys");
        let record = crate::sink::stdout::test_record("{\"seq\":1}");
        let reason = Reason {
            text: "refused",
            status: Some(400),
            response: None,
        };
        dead.write(&[&record], &reason).await.unwrap();
        let moved = dir.path().join("moved.jsonl");
        std::fs::rename(dead.path(), &moved).unwrap();
        dead.write(&[&record], &reason).await.unwrap();
        let lines = |p: &Path| std::fs::read_to_string(p).unwrap().lines().count();
        assert_eq!((lines(&moved), lines(dead.path())), (1, 1));
    }
}

//! `rejected.jsonl`: messages that could not become records, kept so nothing vanishes silently.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use base64::Engine;
use serde::Serialize;

use crate::record::format_time;
use crate::stats::Stats;

/// File name inside `state.dir`.
pub const FILE_NAME: &str = "rejected.jsonl";
/// Characters of a rejected message shown in the log line.
const SAMPLE_CHARS: usize = 160;

/// The rejected-messages file, appended to by every source.
#[derive(Debug)]
pub struct Rejects {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

/// What was rejected: text keeps its characters, binary is kept as base64.
pub enum Payload<'a> {
    /// A text message.
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
    /// Nothing to keep (the bytes never reached the relay, e.g. invalid UTF-8).
    Missing,
}

#[derive(Serialize)]
struct Line<'a> {
    received_at: String,
    property: &'a str,
    reason: &'a str,
    bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base64: Option<String>,
}

impl Rejects {
    /// Uses `<dir>/rejected.jsonl`; the file is created on the first rejection.
    pub fn new(dir: &Path) -> Self {
        Rejects {
            path: dir.join(FILE_NAME),
            file: Mutex::new(None),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Logs (with a short sample), counts and keeps a rejected message.
    pub fn reject(&self, stats: &Stats, property: &str, reason: &str, payload: Payload<'_>) {
        let total = Stats::add(&stats.messages_rejected, 1);
        let (bytes, sample) = match &payload {
            Payload::Text(text) => (text.len(), sample(text)),
            Payload::Binary(data) => (data.len(), sample(&String::from_utf8_lossy(data))),
            Payload::Missing => (0, String::new()),
        };
        tracing::warn!(
            property,
            reason,
            bytes,
            sample = %sample,
            rejected_total = total,
            file = %self.path.display(),
            "message rejected and kept"
        );
        let line = Line {
            received_at: format_time(SystemTime::now()),
            property,
            reason,
            bytes,
            text: match payload {
                Payload::Text(text) => Some(text),
                _ => None,
            },
            base64: match payload {
                Payload::Binary(data) => {
                    Some(base64::engine::general_purpose::STANDARD.encode(data))
                }
                _ => None,
            },
        };
        if let Err(err) = self.append(&line) {
            tracing::error!(error = %err, file = %self.path.display(), "cannot keep a rejected message");
        }
    }

    fn append(&self, line: &Line<'_>) -> std::io::Result<()> {
        let mut buf = serde_json::to_vec(line)?;
        buf.push(b'\n');
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        match guard.as_mut() {
            Some(file) => file.write_all(&buf),
            None => Ok(()),
        }
    }
}

/// The first characters of a message, escaped for one log line.
pub fn sample(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(SAMPLE_CHARS)
        .flat_map(char::escape_default)
        .collect();
    if text.chars().nth(SAMPLE_CHARS).is_some() {
        out.push('…');
    }
    out
}

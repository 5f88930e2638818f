//! `rejected.jsonl`: messages that could not become records, kept so nothing vanishes silently
//! — a bounded sample of each, in a file that is size-capped, rotated once
//! (`rejected.jsonl.1`), and counted in `state.max_bytes`.

use std::fs::File;
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
/// The previous file, replaced at each rotation.
pub const ROTATED_NAME: &str = "rejected.jsonl.1";
/// Characters of a rejected message shown in the log line.
const SAMPLE_CHARS: usize = 160;
/// Bytes of a rejected message kept in the file, at most.
pub const SAMPLE_BYTES: usize = 64 * 1024;
/// Largest share of `state.max_bytes` the two files may take.
const RESERVE_MAX: u64 = 64 << 20;

/// The part of `state.max_bytes` kept for `rejected.jsonl` and its rotated copy: 1/16, at most
/// 64 MiB.
pub fn reserve(max_bytes: u64) -> u64 {
    (max_bytes / 16).min(RESERVE_MAX)
}

/// The part of `state.max_bytes` left for the journal.
pub fn journal_share(max_bytes: u64) -> u64 {
    max_bytes - reserve(max_bytes)
}

/// The rejected-messages file, appended to by every source.
#[derive(Debug)]
pub struct Rejects {
    path: PathBuf,
    rotated: PathBuf,
    /// Each of the two files stays under this.
    file_cap: u64,
    /// A line is cut (its sample shortened) to stay under this.
    line_cap: usize,
    /// The open file and its length.
    file: Mutex<Option<(File, u64)>>,
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
    /// The whole message's size.
    bytes: usize,
    /// Set when `text`/`base64` hold only the start of the message.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base64: Option<String>,
}

/// The first `max` bytes of `text`, cut at a character boundary.
fn head(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl Rejects {
    /// Uses `<dir>/rejected.jsonl` (created on the first rejection) within its share of
    /// `max_bytes` ([`reserve`]).
    pub fn new(dir: &Path, max_bytes: u64) -> Self {
        let file_cap = (reserve(max_bytes) / 2).max(4096);
        let line_cap = usize::try_from(file_cap / 4).unwrap_or(usize::MAX);
        Rejects {
            path: dir.join(FILE_NAME),
            rotated: dir.join(ROTATED_NAME),
            file_cap,
            line_cap,
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
            Payload::Binary(data) => (
                data.len(),
                sample(&String::from_utf8_lossy(
                    &data[..data.len().min(SAMPLE_CHARS)],
                )),
            ),
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
        let buf = self.line(property, reason, bytes, &payload);
        if let Err(err) = self.append(&buf) {
            tracing::error!(error = %err, file = %self.path.display(), "cannot keep a rejected message");
        }
    }

    /// The JSON line, its sample shortened until the line fits `line_cap`.
    fn line(&self, property: &str, reason: &str, bytes: usize, payload: &Payload<'_>) -> Vec<u8> {
        let mut keep = SAMPLE_BYTES.min(self.line_cap / 2);
        loop {
            let (text, base64, truncated) = match payload {
                Payload::Text(text) => {
                    let kept = head(text, keep);
                    (Some(kept), None, kept.len() < text.len())
                }
                Payload::Binary(data) => {
                    let kept = &data[..data.len().min(keep / 4 * 3)];
                    let encoded = base64::engine::general_purpose::STANDARD.encode(kept);
                    (None, Some(encoded), kept.len() < data.len())
                }
                Payload::Missing => (None, None, false),
            };
            let line = Line {
                received_at: format_time(SystemTime::now()),
                property: crate::stats::label_value(property),
                reason: head(reason, 1024),
                bytes,
                truncated,
                text,
                base64,
            };
            let mut buf = serde_json::to_vec(&line).unwrap_or_default();
            buf.push(b'\n');
            if buf.len() <= self.line_cap || keep == 0 {
                return buf;
            }
            keep /= 2;
        }
    }

    /// Appends a line; a file that would pass its cap is first rotated to `rejected.jsonl.1`.
    fn append(&self, buf: &[u8]) -> std::io::Result<()> {
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let file = crate::files::open_append(&self.path, false)?;
            let len = file.metadata()?.len();
            *guard = Some((file, len));
        }
        if let Some((_, len)) = guard.as_ref()
            && *len > 0
            && *len + buf.len() as u64 > self.file_cap
        {
            *guard = None;
            std::fs::rename(&self.path, &self.rotated)?;
            let file = crate::files::open_append(&self.path, false)?;
            *guard = Some((file, 0));
        }
        match guard.as_mut() {
            Some((file, len)) => {
                let result = file.write_all(buf);
                if result.is_ok() {
                    *len += buf.len() as u64;
                } else {
                    *guard = None;
                }
                result
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_messages_leave_a_sample_and_the_files_stay_under_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let max_bytes = 16 << 20;
        let rejects = Rejects::new(dir.path(), max_bytes);
        let stats = Stats::default();
        let big = "é".repeat(1 << 20);
        for _ in 0..20 {
            rejects.reject(&stats, "old-town", "too big", Payload::Text(&big));
        }
        let line: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(rejects.path())
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(line["bytes"], 2 << 20);
        assert_eq!(line["truncated"], true);
        assert!(line["text"].as_str().unwrap().len() <= SAMPLE_BYTES);
        let on_disk: u64 = [FILE_NAME, ROTATED_NAME]
            .iter()
            .filter_map(|name| std::fs::metadata(dir.path().join(name)).ok())
            .map(|m| m.len())
            .sum();
        assert!(on_disk <= reserve(max_bytes), "{on_disk}");
        assert!(dir.path().join(ROTATED_NAME).exists(), "rotated");

        let binary = vec![0u8; 1 << 20];
        rejects.reject(
            &stats,
            "old-town",
            "binary message",
            Payload::Binary(&binary),
        );
        let last = std::fs::read_to_string(rejects.path()).unwrap();
        let last: serde_json::Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
        assert_eq!(last["bytes"], 1 << 20);
        assert!(last["base64"].as_str().unwrap().len() <= SAMPLE_BYTES);
    }

    #[test]
    fn the_journal_gets_what_the_reserve_leaves() {
        assert_eq!(reserve(1 << 30), 64 << 20);
        assert_eq!(journal_share(1 << 30), (1 << 30) - (64 << 20));
        assert_eq!(reserve(1 << 20), 64 << 10);
    }
}

//! Process-wide counters: what was stored, rejected and lost. Exported by `/metrics` later.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// What a property's connection is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Not connected yet.
    Connecting,
    /// Connected since then.
    Connected(Instant),
    /// Lost or refused; the short reason.
    Reconnecting(String),
}

/// Counters shared by every component of one running relay.
#[derive(Debug, Default)]
pub struct Stats {
    /// Records durably committed to the journal.
    pub records_committed: AtomicU64,
    /// Records that reached the relay but could not be stored (journal write failed).
    pub records_lost: AtomicU64,
    /// Messages that were not decoded into records (kept in `rejected.jsonl`).
    pub messages_rejected: AtomicU64,
    /// WebSocket connections established.
    pub connections: AtomicU64,
    /// Webhook requests refused for a missing or wrong token (401).
    pub webhooks_refused: AtomicU64,
    /// Webhook bodies that were not a Mews webhook (400).
    pub webhooks_malformed: AtomicU64,
    /// Each property's connection.
    pub links: Mutex<BTreeMap<String, Link>>,
}

impl Stats {
    /// Adds `n` to a counter and returns the new total.
    pub fn add(counter: &AtomicU64, n: u64) -> u64 {
        counter.fetch_add(n, Ordering::Relaxed) + n
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Records what a property's connection is doing.
    pub fn set_link(&self, property: &str, link: Link) {
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(property.to_owned(), link);
    }

    /// One line for systemd's STATUS=: `old-town: connected 3m · airport: reconnecting (401)`.
    pub fn status_line(&self) -> String {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let parts: Vec<String> = links
            .iter()
            .map(|(name, link)| match link {
                Link::Connecting => format!("{name}: connecting"),
                Link::Connected(since) => {
                    let secs = since.elapsed().as_secs();
                    let up = humantime::format_duration(std::time::Duration::from_secs(
                        secs - secs % if secs >= 60 { 60 } else { 1 },
                    ));
                    format!("{name}: connected {up}")
                }
                Link::Reconnecting(why) => format!("{name}: reconnecting ({why})"),
            })
            .collect();
        parts.join(" · ")
    }
}

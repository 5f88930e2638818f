//! Process-wide counters: what was stored, rejected and lost. Exported by `/metrics` later.

use std::sync::atomic::{AtomicU64, Ordering};

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
}

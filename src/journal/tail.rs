//! The records just committed, in memory: a sink that keeps up reads them from here, with no
//! read from disk and no copy of their bytes. Bounded by count and bytes; older records are
//! read from the log.

use std::collections::VecDeque;
use std::sync::RwLock;

use super::value::StoredRecord;

/// At most this many records are kept.
const MAX_RECORDS: usize = 8192;
/// At most this many bytes of records are kept.
const MAX_BYTES: usize = 4 << 20;

/// The newest committed records, consecutive seqs.
pub(super) struct Tail {
    journal_id: u64,
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    records: VecDeque<StoredRecord>,
    bytes: usize,
}

impl Tail {
    pub fn new(journal_id: u64) -> Tail {
        Tail {
            journal_id,
            inner: RwLock::new(Inner::default()),
        }
    }

    /// The journal's id (for records decoded into the tail).
    pub fn journal_id(&self) -> u64 {
        self.journal_id
    }

    /// Appends freshly committed records (seqs following the last ones kept).
    pub fn push(&self, records: Vec<StoredRecord>) {
        if records.is_empty() {
            return;
        }
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let follows = match (inner.records.back(), records.first()) {
            (Some(last), Some(first)) => last.seq + 1 == first.seq,
            _ => true,
        };
        if !follows {
            inner.records.clear();
            inner.bytes = 0;
        }
        for record in records {
            inner.bytes += record.json.len();
            inner.records.push_back(record);
        }
        while inner.records.len() > MAX_RECORDS || inner.bytes > MAX_BYTES {
            match inner.records.pop_front() {
                Some(old) => inner.bytes -= old.json.len(),
                None => break,
            }
        }
    }

    /// Puts the final value of settled records in place (those still kept).
    pub fn replace(&self, settled: impl Iterator<Item = StoredRecord>) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let Some(first) = inner.records.front().map(|r| r.seq) else {
            return;
        };
        for record in settled {
            let Some(at) = record.seq.checked_sub(first).map(|i| i as usize) else {
                continue;
            };
            if let Some(slot) = inner.records.get_mut(at) {
                let old = std::mem::replace(slot, record);
                inner.bytes = inner.bytes - old.json.len() + inner.records[at].json.len();
            }
        }
    }

    /// Up to `max` records after `after`, none after `upto`, if the tail holds `after + 1`
    /// (`None`: read the log).
    pub fn read(&self, after: u64, upto: u64, max: usize) -> Option<Vec<StoredRecord>> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let first = inner.records.front()?.seq;
        let start = after.checked_add(1)?;
        if start < first {
            return None;
        }
        let from = (start - first) as usize;
        let take = (upto.saturating_sub(after) as usize).min(max);
        Some(
            inner
                .records
                .iter()
                .skip(from)
                .take(take)
                .cloned()
                .collect(),
        )
    }
}

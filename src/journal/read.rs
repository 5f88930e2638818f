//! Reading from the journal: committed records for the sinks, where they stand, and the state
//! kept around the records (marks, heal keys, commands).

use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

use super::{Journal, JournalError, StoredRecord, commands};

/// Reads of at most this many fresh records run on the calling task (see `read_after`).
const INLINE_READ: usize = 64;

impl Journal {
    /// The heal keys (see [`Settle::heal`](super::Settle::heal)) that start with `prefix`.
    pub async fn heal_keys(&self, prefix: &str) -> Result<Vec<String>, JournalError> {
        let store = Arc::clone(&self.store);
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || store.heal_keys(&prefix))
            .await
            .map_err(|_| JournalError::Closed)?
    }

    /// The last committed seq, and a way to wait for the next one.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }

    /// The last seq sinks may read (records after the oldest one still waiting for
    /// enrichment are held back, so every sink keeps the order), and a way to wait for more.
    pub fn visible(&self) -> watch::Receiver<u64> {
        self.visible.clone()
    }

    /// Where a sink stood when the journal was opened (0 for an empty journal).
    pub fn cursor(&self, sink: &str) -> u64 {
        self.cursors.get(sink).copied().unwrap_or(0)
    }

    /// What the journal knows of a command.
    pub async fn command(&self, id: &str) -> Result<Option<commands::CommandEntry>, JournalError> {
        let store = Arc::clone(&self.store);
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || store.command(&id))
            .await
            .map_err(|_| JournalError::Closed)?
    }

    /// Up to `max` visible records after `after`, oldest first.
    pub async fn read_after(
        &self,
        after: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, JournalError> {
        let upto = *self.visible.borrow();
        let after = after.max(self.pruned.load(std::sync::atomic::Ordering::Acquire));
        if after >= upto {
            return Ok(Vec::new());
        }
        // A sink that keeps up reads what the writer has just committed, from memory.
        if let Some(records) = self.tail.read(after, upto, max) {
            return Ok(records);
        }
        if upto.saturating_sub(after) <= INLINE_READ as u64 {
            return self.store.read_after(after, upto, max.min(INLINE_READ));
        }
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || store.read_after(after, upto, max))
            .await
            .map_err(|_| JournalError::Closed)?
    }

    /// Raised by the writer when the journal is over `max_bytes`: the sink should dead-letter
    /// its records up to this seq and move on.
    pub fn shed_signal(&self, sink: &str) -> watch::Receiver<u64> {
        match self.shed.get(sink) {
            Some(rx) => rx.clone(),
            None => watch::channel(0).1,
        }
    }

    /// A catch-up mark (unix milliseconds), if one was ever set.
    pub async fn mark(&self, name: &str) -> Result<Option<u64>, JournalError> {
        let store = Arc::clone(&self.store);
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || store.mark(&name))
            .await
            .map_err(|_| JournalError::Closed)?
    }

    /// This journal's random id, part of every record key.
    pub fn journal_id(&self) -> u64 {
        self.journal_id
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        self.store.path()
    }
}

//! The durable journal (redb): records in seq order, a cursor per sink, pruning behind them all.
//!
//! Producers hand records to [`Journal::append`]; one writer task commits whatever arrived
//! meanwhile in one transaction with one fsync (group commit), then publishes the new last
//! seq. Sinks only ever see committed records.

mod store;
mod value;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::record::Record;
use crate::stats::Stats;

pub use value::{Entry, Replay, StoredRecord, record_key};
pub use writer::JournalWriter;

use store::Store;
use writer::Op;

/// Reads of at most this many fresh records run on the calling task (see `read_after`).
const INLINE_READ: usize = 64;

/// File name of the journal inside `state.dir`.
pub const FILE_NAME: &str = "journal.redb";

/// Why the journal could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Opening failed; the message says what to do.
    #[error("journal {path}: {problem}", path = .path.display())]
    Open {
        /// The journal file or state directory.
        path: PathBuf,
        /// What failed and the fix.
        problem: String,
    },
    /// A read or commit failed.
    #[error("journal {path}: {source}", path = .path.display())]
    Storage {
        /// The journal file.
        path: PathBuf,
        /// redb's error.
        source: redb::Error,
    },
    /// A commit failed; the records given were not stored.
    #[error("{0}")]
    Write(String),
    /// The writer has stopped.
    #[error("the journal writer has stopped")]
    Closed,
}

/// A handle to the journal; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    store: Arc<Store>,
    ops: mpsc::Sender<Op>,
    committed: watch::Receiver<u64>,
    cursors: Arc<HashMap<String, u64>>,
    shed: Arc<HashMap<String, watch::Receiver<u64>>>,
    journal_id: u64,
}

impl Journal {
    /// Opens (or creates) `<dir>/journal.redb` for these sinks. Sinks new to the journal start
    /// after its last record; cursors of sinks no longer configured are dropped. Past
    /// `max_bytes`, the sinks holding the journal back are told to shed their oldest records.
    pub fn open(
        dir: &Path,
        sinks: &[String],
        max_bytes: u64,
        stats: Arc<Stats>,
    ) -> Result<(Journal, JournalWriter), JournalError> {
        std::fs::create_dir_all(dir).map_err(|err| JournalError::Open {
            path: dir.to_owned(),
            problem: format!(
                "cannot create the state directory: {err}; check state.dir and its permissions"
            ),
        })?;
        let (store, opened) = Store::open(&dir.join(FILE_NAME), sinks)?;
        let store = Arc::new(store);
        let (ops_tx, ops_rx) = mpsc::channel(writer::QUEUE);
        let (committed_tx, committed_rx) = watch::channel(opened.last_seq);
        let (shed_tx, shed_rx): (HashMap<_, _>, HashMap<_, _>) = sinks
            .iter()
            .map(|name| {
                let (tx, rx) = watch::channel(0);
                ((name.clone(), tx), (name.clone(), rx))
            })
            .unzip();
        let journal = Journal {
            store: Arc::clone(&store),
            ops: ops_tx,
            committed: committed_rx,
            cursors: Arc::new(opened.cursors.clone()),
            shed: Arc::new(shed_rx),
            journal_id: opened.journal_id,
        };
        let writer = JournalWriter::new(writer::Setup {
            store,
            ops: ops_rx,
            committed: committed_tx,
            opened,
            max_bytes,
            shed: shed_tx,
            stats,
        });
        Ok((journal, writer))
    }

    /// Queues records for the next group commit. Waits only when the writer is far behind.
    pub async fn append(&self, records: Vec<Record>) -> Result<(), JournalError> {
        if records.is_empty() {
            return Ok(());
        }
        let entries = records.into_iter().map(Entry::Record).collect();
        self.ops
            .send(Op::Append(entries, None))
            .await
            .map_err(|_| JournalError::Closed)
    }

    /// Appends and waits for the durable commit; returns the last seq given.
    pub async fn append_committed(&self, entries: Vec<Entry>) -> Result<u64, JournalError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Append(entries, Some(tx)))
            .await
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// The last committed seq, and a way to wait for the next one.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }

    /// Where a sink stood when the journal was opened (0 for an empty journal).
    pub fn cursor(&self, sink: &str) -> u64 {
        self.cursors.get(sink).copied().unwrap_or(0)
    }

    /// Records a sink's progress; persisted with the next commit (at the latest within a second).
    pub async fn advance(&self, sink: &str, seq: u64) -> Result<(), JournalError> {
        self.ops
            .send(Op::Cursor(sink.to_owned(), seq))
            .await
            .map_err(|_| JournalError::Closed)
    }

    /// Commits everything queued so far, durably.
    pub async fn flush(&self) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Flush(tx))
            .await
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)
    }

    /// Returns once the writer has worked through everything queued before: a stuck writer
    /// never answers (the watchdog relies on this).
    pub async fn ping(&self) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Ping(tx))
            .await
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)
    }

    /// Up to `max` committed records after `after`, oldest first.
    pub async fn read_after(
        &self,
        after: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, JournalError> {
        // A sink that keeps up reads a few records the writer has just committed: they are in
        // redb's cache, and a hop to the blocking pool would cost more than the read itself.
        if self.committed.borrow().saturating_sub(after) <= INLINE_READ as u64 {
            return self.store.read_after(after, max.min(INLINE_READ));
        }
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || store.read_after(after, max))
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

    /// Sets a catch-up mark durably; call it after the records it covers are committed.
    pub async fn set_mark(&self, name: &str, at: u64) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Mark(name.to_owned(), at, tx))
            .await
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)?
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

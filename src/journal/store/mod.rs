//! The journal on disk: records in the append-only log (`<state.dir>/log/`, see `super::log`),
//! the state around them in redb (`journal.redb`): sink cursors, dedupe keys, records held for
//! enrichment and their final values, heal keys, catch-up marks, the command loop's tables.
//!
//! A commit appends the records to the log (one write, one `fdatasync`) and, only when it has
//! state to change, runs one redb transaction after it; `meta.applied_seq` says up to which seq
//! that state is in redb, and on open the frames after it replay their effects (each frame
//! carries them), so a crash between the two loses nothing. Format version 2; a journal of
//! version 1 (records in redb) is moved into the log when it is opened.

mod commit;
mod migrate;
mod open;
mod read;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use redb::{Database, TableDefinition};

pub(super) use commit::{CommandWork, Commit, Committed, Seen, Settled};

use super::JournalError;
use super::commands::Outgoing;
use super::file::{self, Identity};
use super::health::FileProblem;
use super::log::{Log, segment};
use super::value::StoredRecord;

/// Version 1 only: seq -> encoded entry; moved into the log on open.
const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
/// sink name -> last seq the sink has passed.
const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");
/// `last_seq`: the last seq ever given (survives pruning); `applied_seq`: the last seq whose
/// effects are in these tables; `journal_id`: random, set once, part of every record key;
/// `format`: 2.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// dedupe key -> unix seconds it was first journaled (see [`crate::record::Record::dedupe`]).
const SEEN: TableDefinition<&str, u64> = TableDefinition::new("seen");
/// Progress marks of the REST catch-up (e.g. the last reservation sync), unix milliseconds.
const MARKS: TableDefinition<&str, u64> = TableDefinition::new("marks");
/// Records held back from sinks until enrichment settles them: seq -> unix seconds journaled.
const PENDING: TableDefinition<u64, u64> = TableDefinition::new("pending");
/// The final value of a settled record (its log frame holds the first one): seq -> value.
const SETTLED: TableDefinition<u64, &[u8]> = TableDefinition::new("settled");
/// Command states that went out without details (`enrich_error`): dedupe key -> unix seconds.
/// The enricher forwards them again once Mews answers (see `crate::mews::enrich`).
const HEAL: TableDefinition<&str, u64> = TableDefinition::new("heal");
/// Scratch space of [`Store::probe`]; empty between probes.
const PROBE: TableDefinition<u64, &[u8]> = TableDefinition::new("probe");
/// What a probe writes: a commit this big must fit for the journal to count as writable.
pub(super) const PROBE_BYTES: usize = 1 << 20;
const LAST_SEQ: &str = "last_seq";
const APPLIED_SEQ: &str = "applied_seq";
const JOURNAL_ID: &str = "journal_id";
const FORMAT: &str = "format";
/// The on-disk format this version writes.
const FORMAT_VERSION: u64 = 2;
/// The next key of the command-update outbox.
const OUTBOX_KEY: &str = "outbox_key";

/// What the journal knew when it was opened.
pub(super) struct Opened {
    pub last_seq: u64,
    pub stored_bytes: u64,
    pub journal_id: u64,
    pub cursors: HashMap<String, u64>,
    /// Records still waiting for enrichment, oldest first.
    pub pending: Vec<StoredRecord>,
    /// Command updates still waiting to be applied in Mews, in order.
    pub outbox: Vec<Outgoing>,
    /// Records the state says were committed but the log no longer holds (lost writes,
    /// damage): logged as an error when the journal opens.
    pub lost: u64,
}

/// The journal: redb for state, the log for records.
pub(super) struct Store {
    path: PathBuf,
    journal_id: u64,
    db: RwLock<Option<Arc<Database>>>,
    log: Log,
    /// A second descriptor of the file, kept to put it back if it is deleted.
    held: std::fs::File,
    /// Which file the relay opened (device, inode).
    identity: Identity,
    /// Effects of records stored in the log whose state transaction failed: applied with the
    /// next one.
    unapplied: std::sync::Mutex<Vec<segment::Frame>>,
    /// Tests: this many next commits fail as if the disk were full.
    #[cfg(test)]
    pub fail_commits: std::sync::atomic::AtomicU32,
}

pub(super) fn storage(path: &Path, err: impl Into<redb::Error>) -> JournalError {
    JournalError::Storage {
        path: path.to_owned(),
        source: err.into(),
    }
}

impl Store {
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db(&self) -> Result<Arc<Database>, JournalError> {
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        guard.clone().ok_or_else(|| JournalError::Open {
            path: self.path.clone(),
            problem: "is being reopened after an I/O error".into(),
        })
    }

    /// The database, opened again first if an earlier reopen failed (e.g. still no space).
    fn db_or_reopen(&self) -> Result<Arc<Database>, JournalError> {
        match self.db() {
            Ok(db) => Ok(db),
            Err(_) => {
                self.reopen()?;
                self.db()
            }
        }
    }

    fn io(&self, err: std::io::Error) -> JournalError {
        JournalError::Write(format!("record log {}: {err}", self.log.dir().display()))
    }

    /// After an I/O error redb refuses further writes until the file is opened again; only
    /// the same file is opened (see [`file::reopen`]). The log starts from its last segment.
    pub fn reopen(&self) -> Result<(), JournalError> {
        self.close();
        self.log.reset();
        let opened = file::reopen(&self.path, self.identity)?;
        *self.db.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(opened.db));
        Ok(())
    }

    /// Closes the database (waiting for readers to let go); reads and commits fail after.
    fn close(&self) {
        let old = self.db.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut old) = old {
            // Readers hold the database only for one read; wait for them to let go.
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => break drop(db),
                    Err(shared) => {
                        old = shared;
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                }
            }
        }
    }

    /// Whether the paths still hold the files the relay has open (a `stat` each of
    /// journal.redb and the log folder).
    pub fn check_file(&self) -> Option<FileProblem> {
        file::check(&self.path, self.identity).or_else(|| {
            let dir = self.log.dir();
            match std::fs::symlink_metadata(dir) {
                Ok(_) => None,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    Some(FileProblem::Deleted(dir.to_owned()))
                }
                Err(_) => None,
            }
        })
    }

    /// The last act of a relay whose journal file was deleted or replaced: closes the database
    /// and copies the file it held back to its path, or beside the file now there; log
    /// segments that were deleted are copied back too.
    pub fn put_back(&self) -> std::io::Result<PathBuf> {
        self.close();
        for (path, segment) in self.log.files() {
            if std::fs::symlink_metadata(&path).is_err() {
                file::put_back(&path, &segment)?;
            }
        }
        match file::check(&self.path, self.identity) {
            None => Ok(self.path.clone()),
            Some(_) => file::put_back(&self.path, &self.held),
        }
    }

    /// Whether a commit of about [`PROBE_BYTES`] would be stored now, in redb and in the log:
    /// written durably, then removed again. Run while commits fail, to notice that the disk
    /// has room again.
    pub fn probe(&self) -> Result<(), JournalError> {
        self.log.probe(PROBE_BYTES).map_err(|err| self.io(err))?;
        let db = self.db_or_reopen()?;
        let err = |e: redb::Error| storage(&self.path, e);
        let blob = vec![0u8; PROBE_BYTES];
        for value in [Some(blob.as_slice()), None] {
            let txn = db.begin_write().map_err(|e| err(e.into()))?;
            {
                let mut table = txn.open_table(PROBE).map_err(|e| err(e.into()))?;
                match value {
                    Some(value) => table.insert(0, value).map(drop),
                    None => table.remove(0).map(drop),
                }
                .map_err(|e| err(e.into()))?;
            }
            txn.commit().map_err(|e| err(e.into()))?;
        }
        Ok(())
    }
}

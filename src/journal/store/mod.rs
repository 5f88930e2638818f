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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

pub(super) use commit::{CommandWork, Commit, Committed, Seen, Settled};

use super::JournalError;
use super::commands::{self, COMMANDS, CommandEntry, OUTBOX, Outgoing};
use super::file::{self, Identity};
use super::health::FileProblem;
use super::log::{self, Log, segment};
use super::value::{self, StoredRecord};

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

fn log_error(path: &Path, err: std::io::Error) -> JournalError {
    JournalError::Open {
        path: path.to_owned(),
        problem: format!(
            "cannot open the record log: {err}; check free space and that the mews-relay user owns the state directory"
        ),
    }
}

impl Store {
    /// Opens `journal.redb` and the log beside it, moves a version-1 journal's records into
    /// the log, replays the effects of frames a crash left unapplied, registers the sinks.
    pub fn open(
        path: &Path,
        sinks: &[String],
        max_bytes: u64,
    ) -> Result<(Store, Opened), JournalError> {
        let file::Opened { db, held, identity } = file::open(path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let log_dir = dir.join(log::DIR);
        let applied = migrate::applied_seq(&db, path)?;
        let (log, recovered) = Log::open(&log_dir, applied, log::segment_bytes(max_bytes))
            .map_err(|err| log_error(&log_dir, err))?;
        if recovered.cut > 0 {
            tracing::warn!(
                bytes = recovered.cut,
                dir = %log_dir.display(),
                "cut a record-log write that a crash interrupted (it was never committed)"
            );
        }
        migrate::records_into_log(&db, path, &log, recovered.last_seq)?;
        let txn = db.begin_write().map_err(|e| storage(path, e))?;
        let opened = {
            for table in [SEEN, MARKS, HEAL] {
                txn.open_table(table).map_err(|e| storage(path, e))?;
            }
            txn.open_table(SETTLED).map_err(|e| storage(path, e))?;
            txn.open_table(COMMANDS).map_err(|e| storage(path, e))?;
            let outbox = commands::outbox(&txn.open_table(OUTBOX).map_err(|e| storage(path, e))?)
                .map_err(|e| storage(path, e))?;
            let mut meta = txn.open_table(META).map_err(|e| storage(path, e))?;
            let get = |meta: &redb::Table<&str, u64>, key| -> Result<Option<u64>, JournalError> {
                Ok(meta
                    .get(key)
                    .map_err(|e| storage(path, e))?
                    .map(|v| v.value()))
            };
            let journal_id = match get(&meta, JOURNAL_ID)? {
                Some(id) => id,
                None => {
                    let id = fastrand::u64(..);
                    meta.insert(JOURNAL_ID, id).map_err(|e| storage(path, e))?;
                    id
                }
            };
            let last_seq = get(&meta, LAST_SEQ)?
                .unwrap_or(0)
                .max(log.last_seq().unwrap_or(0));
            // What a crash left between the log and these tables: effects replayed.
            commit::replay(&txn, &recovered.unapplied).map_err(|e| storage(path, e))?;
            meta.insert(LAST_SEQ, last_seq)
                .map_err(|e| storage(path, e))?;
            meta.insert(APPLIED_SEQ, last_seq)
                .map_err(|e| storage(path, e))?;
            meta.insert(FORMAT, FORMAT_VERSION)
                .map_err(|e| storage(path, e))?;
            let cursors = register_sinks(&txn, path, sinks, last_seq)?;
            let pending_seqs: Vec<u64> = {
                let pending = txn.open_table(PENDING).map_err(|e| storage(path, e))?;
                let mut seqs = Vec::new();
                for entry in pending.iter().map_err(|e| storage(path, e))? {
                    seqs.push(entry.map_err(|e| storage(path, e))?.0.value());
                }
                seqs
            };
            let mut pending = Vec::with_capacity(pending_seqs.len());
            let mut names = value::Names::default();
            for seq in pending_seqs {
                let frames = log
                    .read(seq - 1, seq, 1)
                    .map_err(|err| log_error(&log_dir, err))?;
                if let Some(frame) = frames.into_iter().find(|f| f.seq == seq) {
                    pending.push(value::decode(
                        journal_id,
                        seq,
                        Bytes::from(frame.value),
                        &mut names,
                    ));
                }
            }
            Opened {
                last_seq,
                stored_bytes: log.bytes(),
                journal_id,
                cursors,
                pending,
                outbox,
            }
        };
        txn.commit().map_err(|e| storage(path, e))?;
        let store = Store {
            path: path.to_owned(),
            journal_id: opened.journal_id,
            db: RwLock::new(Some(Arc::new(db))),
            log,
            held,
            identity,
            unapplied: std::sync::Mutex::new(Vec::new()),
            #[cfg(test)]
            fail_commits: std::sync::atomic::AtomicU32::new(0),
        };
        Ok((store, opened))
    }

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

    /// Up to `max` records after `after`, none after `upto`, from the log; a settled record
    /// with its final value.
    pub fn read_after(
        &self,
        after: u64,
        upto: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, JournalError> {
        if after >= upto {
            return Ok(Vec::new());
        }
        let frames = self
            .log
            .read(after, upto, max)
            .map_err(|err| self.io(err))?;
        let settled: Vec<u64> = frames
            .iter()
            .filter(|f| f.flags & segment::PENDING != 0)
            .map(|f| f.seq)
            .collect();
        let mut finals = HashMap::new();
        if !settled.is_empty() {
            let db = self.db()?;
            let txn = db.begin_read().map_err(|e| storage(&self.path, e))?;
            let table = txn
                .open_table(SETTLED)
                .map_err(|e| storage(&self.path, e))?;
            for seq in settled {
                if let Some(value) = table.get(seq).map_err(|e| storage(&self.path, e))? {
                    finals.insert(seq, value.value().to_vec());
                }
            }
        }
        let mut names = value::Names::default();
        Ok(frames
            .into_iter()
            .map(|frame| {
                let value = finals.remove(&frame.seq).unwrap_or(frame.value);
                value::decode(self.journal_id, frame.seq, Bytes::from(value), &mut names)
            })
            .collect())
    }

    fn io(&self, err: std::io::Error) -> JournalError {
        JournalError::Write(format!("record log {}: {err}", self.log.dir().display()))
    }

    /// Makes `sinks` the registered sinks while the journal is open (a reload), durably: a new
    /// one starts after `last_seq`, a position no longer listed is dropped. The positions as
    /// stored (those of sinks already registered may be behind what they reported since).
    pub fn set_sinks(
        &self,
        sinks: &[String],
        last_seq: u64,
    ) -> Result<HashMap<String, u64>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(|e| storage(&self.path, e))?;
        let cursors = register_sinks(&txn, &self.path, sinks, last_seq)?;
        txn.commit().map_err(|e| storage(&self.path, e))?;
        Ok(cursors)
    }

    /// A catch-up mark, if one was ever set.
    pub fn mark(&self, name: &str) -> Result<Option<u64>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| storage(&self.path, e))?;
        let table = txn.open_table(MARKS).map_err(|e| storage(&self.path, e))?;
        Ok(table
            .get(name)
            .map_err(|e| storage(&self.path, e))?
            .map(|v| v.value()))
    }

    /// The heal keys starting with `prefix`.
    pub fn heal_keys(&self, prefix: &str) -> Result<Vec<String>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| storage(&self.path, e))?;
        let table = txn.open_table(HEAL).map_err(|e| storage(&self.path, e))?;
        let mut keys = Vec::new();
        for entry in table.range(prefix..).map_err(|e| storage(&self.path, e))? {
            let (key, _) = entry.map_err(|e| storage(&self.path, e))?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            keys.push(key.to_owned());
        }
        Ok(keys)
    }

    /// What the journal knows of a command.
    pub fn command(&self, id: &str) -> Result<Option<CommandEntry>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| storage(&self.path, e))?;
        let table = txn
            .open_table(COMMANDS)
            .map_err(|e| storage(&self.path, e))?;
        Ok(table
            .get(id)
            .map_err(|e| storage(&self.path, e))?
            .and_then(|v| serde_json::from_slice(v.value()).ok()))
    }

    /// The seq up to which the oldest records after `after` add up to at least `bytes`.
    pub fn seq_covering(&self, after: u64, bytes: u64) -> Result<u64, JournalError> {
        self.log
            .seq_covering(after, bytes)
            .map_err(|err| self.io(err))
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
        let db = match self.db() {
            Ok(db) => db,
            Err(_) => {
                self.reopen()?;
                self.db()?
            }
        };
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

/// The configured sinks' cursors: a new sink starts after the last record; the cursor of a
/// sink no longer configured is dropped.
fn register_sinks(
    txn: &redb::WriteTransaction,
    path: &Path,
    sinks: &[String],
    last_seq: u64,
) -> Result<HashMap<String, u64>, JournalError> {
    let mut table = txn.open_table(CURSORS).map_err(|e| storage(path, e))?;
    let mut stored = HashMap::new();
    for entry in table.iter().map_err(|e| storage(path, e))? {
        let (name, seq) = entry.map_err(|e| storage(path, e))?;
        stored.insert(name.value().to_owned(), seq.value());
    }
    let mut cursors = HashMap::new();
    for name in sinks {
        let seq = match stored.remove(name) {
            Some(seq) => seq,
            None => {
                tracing::info!(sink = %name, from_seq = last_seq + 1, "new sink: it receives records from now on");
                table
                    .insert(name.as_str(), last_seq)
                    .map_err(|e| storage(path, e))?;
                last_seq
            }
        };
        cursors.insert(name.clone(), seq);
    }
    for (name, seq) in stored {
        tracing::info!(sink = %name, at_seq = seq, "dropping the position of a sink that is no longer configured");
        table.remove(name.as_str()).map_err(|e| storage(path, e))?;
    }
    Ok(cursors)
}

#[cfg(test)]
mod tests {
    use super::commit::{CommandWork, Commit, Seen};
    use super::*;
    use crate::journal::value::Entry;
    use crate::record::{Enrich, Origin, Record};
    use serde_json::value::RawValue;

    fn record(id: &str, enrich: Enrich, dedupe: Option<&str>) -> Record {
        Record {
            property: Arc::from("p"),
            origin: Origin::Websocket,
            received_at: "t".into(),
            kind: Some("DeviceCommand".into()),
            id: Some(id.into()),
            state: Some("Pending".into()),
            event: RawValue::from_string(format!(r#"{{"Id":"{id}"}}"#)).unwrap(),
            command: None,
            enterprise_id: None,
            integration_id: None,
            enrich_error: None,
            dedupe: dedupe.map(str::to_owned),
            enrich,
        }
    }

    fn commit_of(entries: Vec<Entry>) -> Commit {
        Commit {
            entries,
            cursors: Vec::new(),
            prune_to: None,
            sync: false,
            marks: Vec::new(),
            seen: Seen {
                now: 1_000,
                window: 3_600,
                forget_before: None,
            },
            settled: Vec::new(),
            unheal: Vec::new(),
            commands: CommandWork::default(),
        }
    }

    /// A crash after a record reached the log but before its state transaction: opening the
    /// journal again replays what the frame carries (held for enrichment, its dedupe key).
    #[test]
    fn effects_a_crash_left_unapplied_are_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let sinks = ["s".to_owned()];
        let (store, opened) = Store::open(&path, &sinks, 1 << 30).unwrap();
        let done = store
            .commit(
                opened.last_seq,
                &commit_of(vec![Entry::Record(record("a", Enrich::None, None))]),
            )
            .unwrap();
        assert_eq!(done.seq, 1);
        // The crash: the next record's frame is in the log, its state transaction never ran.
        let pending = Entry::Record(record("b", Enrich::Pending, Some("key-b")));
        let mut frame = Vec::new();
        let effects = segment::Effects {
            pending: true,
            dedupe: Some("key-b"),
            heal: None,
        };
        segment::encode(&mut frame, 2, &effects, |out| {
            value::encode(2, &pending, out)
        });
        store.log.append(&frame, 2, 2, &[(2, 0)]).unwrap();
        drop(store);

        let (store, opened) = Store::open(&path, &sinks, 1 << 30).unwrap();
        assert_eq!(opened.last_seq, 2);
        assert_eq!(opened.pending.len(), 1, "held back for enrichment again");
        assert_eq!(opened.pending[0].seq, 2);
        let again = store
            .commit(
                2,
                &commit_of(vec![Entry::Record(record(
                    "b",
                    Enrich::None,
                    Some("key-b"),
                ))]),
            )
            .unwrap();
        assert_eq!(again.dropped, [0], "its dedupe key was replayed");
        let read = store.read_after(0, 2, 10).unwrap();
        assert_eq!(read.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
    }

    /// A journal of format 1 (records in redb) opens: its records move into the log with their
    /// seqs, a record held for enrichment stays held, cursors stay, seqs go on.
    #[test]
    fn a_version_1_journal_is_moved_into_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut records = txn.open_table(RECORDS).unwrap();
                for seq in 1..=3u64 {
                    let mut value = Vec::new();
                    let entry = Entry::Record(record(&format!("v1-{seq}"), Enrich::None, None));
                    value::encode(seq, &entry, &mut value);
                    records.insert(seq, value.as_slice()).unwrap();
                }
                let mut meta = txn.open_table(META).unwrap();
                meta.insert(LAST_SEQ, 3).unwrap();
                meta.insert(JOURNAL_ID, 0xab).unwrap();
                txn.open_table(CURSORS).unwrap().insert("s", 1).unwrap();
                txn.open_table(PENDING).unwrap().insert(3, 1).unwrap();
            }
            txn.commit().unwrap();
        }
        let sinks = ["s".to_owned()];
        let (store, opened) = Store::open(&path, &sinks, 1 << 30).unwrap();
        assert_eq!(opened.last_seq, 3);
        assert_eq!(opened.cursors["s"], 1);
        assert_eq!(opened.journal_id, 0xab);
        assert_eq!(
            opened.pending.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [3]
        );
        let read = store.read_after(1, 3, 10).unwrap();
        assert_eq!(read.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 3]);
        assert!(String::from_utf8_lossy(&read[0].json).contains("v1-2"));
        let db = store.db().unwrap();
        let txn = db.begin_read().unwrap();
        assert!(txn.open_table(RECORDS).is_err(), "the old table is gone");
        drop(txn);
        drop(db);
        let next = store
            .commit(
                3,
                &commit_of(vec![Entry::Record(record("v2", Enrich::None, None))]),
            )
            .unwrap();
        assert_eq!(next.seq, 4);
        drop(store);
        let (store, opened) = Store::open(&path, &sinks, 1 << 30).unwrap();
        assert_eq!(opened.last_seq, 4);
        assert_eq!(store.read_after(0, 4, 10).unwrap().len(), 4);
    }
}

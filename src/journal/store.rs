//! The redb file: tables, value layout, and the blocking operations on it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::JournalError;
use super::commands::{
    self, Ack, Answered, COMMANDS, CommandEntry, CommandTables, OUTBOX, Outgoing, Request,
    RequestOutcome,
};
use super::file::{self, Identity};
use super::health::FileProblem;
use super::value::{self, Entry, StoredRecord};
use crate::record::Enrich;

/// seq -> encoded entry (see [`value::encode`]).
const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
/// sink name -> last seq the sink has passed.
const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");
/// `last_seq`: the last seq ever given (survives pruning); `stored_bytes`: the size of all
/// entries; `journal_id`: random, set once, part of every record key.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// dedupe key -> unix seconds it was first journaled (see [`crate::record::Record::dedupe`]).
const SEEN: TableDefinition<&str, u64> = TableDefinition::new("seen");
/// Progress marks of the REST catch-up (e.g. the last reservation sync), unix milliseconds.
const MARKS: TableDefinition<&str, u64> = TableDefinition::new("marks");
/// Records held back from sinks until enrichment settles them: seq -> unix seconds journaled.
const PENDING: TableDefinition<u64, u64> = TableDefinition::new("pending");
/// Command states that went out without details (`enrich_error`): dedupe key -> unix seconds.
/// The enricher forwards them again once Mews answers (see `crate::mews::enrich`).
const HEAL: TableDefinition<&str, u64> = TableDefinition::new("heal");
/// Scratch space of [`Store::probe`]; empty between probes.
const PROBE: TableDefinition<u64, &[u8]> = TableDefinition::new("probe");
/// What a probe writes: a commit this big must fit for the journal to count as writable.
pub(super) const PROBE_BYTES: usize = 1 << 20;
const LAST_SEQ: &str = "last_seq";
const STORED_BYTES: &str = "stored_bytes";
const JOURNAL_ID: &str = "journal_id";
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

/// A record settled by the enricher: its new value, and whether its command must be healed.
pub(super) struct Settled {
    pub seq: u64,
    /// The whole encoded entry (see [`value::encode`]).
    pub value: Vec<u8>,
    /// Went out without details: this dedupe key is forgotten and remembered for healing.
    pub heal: Option<String>,
}

/// What one transaction does.
pub(super) struct Commit {
    pub entries: Vec<Entry>,
    pub cursors: Vec<(String, u64)>,
    pub prune_to: Option<u64>,
    pub durable: bool,
    pub marks: Vec<(String, u64)>,
    /// Dedupe: keys first seen less than `window` seconds before `now` drop their record.
    pub seen: Seen,
    /// Pending records that got their final value.
    pub settled: Vec<Settled>,
    /// Heal keys done with (their command was forwarded again, or is no longer active).
    pub unheal: Vec<String>,
    /// The command loop: its work in this transaction.
    pub commands: CommandWork,
}

/// What the command loop does in one transaction.
#[derive(Default)]
pub(super) struct CommandWork {
    /// Remember the property and state of every DeviceCommand record journaled.
    pub track: bool,
    /// Key-system requests.
    pub requests: Vec<Request>,
    /// Pending commands the `received_after` sink delivered.
    pub acks: Vec<Ack>,
    /// Mews's answers to outgoing updates.
    pub answered: Vec<Answered>,
}

impl CommandWork {
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.acks.is_empty() && self.answered.is_empty()
    }
}

/// The clock and window the dedupe keys are judged by, and an optional clean-up.
#[derive(Clone, Copy)]
pub(super) struct Seen {
    pub now: u64,
    pub window: u64,
    /// Forget keys first seen before this (unix seconds).
    pub forget_before: Option<u64>,
}

/// What a transaction did.
pub(super) struct Committed {
    pub seq: u64,
    pub bytes: u64,
    /// Indexes of entries dropped as duplicates (no seq given).
    pub dropped: Vec<usize>,
    /// Command updates queued, for the updaters.
    pub queued: Vec<Outgoing>,
    /// What became of each request, in order.
    pub outcomes: Vec<RequestOutcome>,
}

/// The command loop's part of a transaction: track journaled commands, queue requested and
/// acknowledged updates, record Mews's answers.
fn command_work<'a>(
    txn: &redb::WriteTransaction,
    meta: &mut redb::Table<&str, u64>,
    commit: &Commit,
    kept: impl Iterator<Item = &'a Entry>,
) -> Result<(Vec<Outgoing>, Vec<RequestOutcome>), redb::Error> {
    let now = commit.seen.now;
    let mut tables = CommandTables {
        commands: txn.open_table(COMMANDS)?,
        outbox: txn.open_table(OUTBOX)?,
        next_key: meta.get(OUTBOX_KEY)?.map_or(1, |v| v.value()),
        now,
        now_text: crate::record::format_time(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(now),
        ),
        queued: Vec::new(),
    };
    let work = &commit.commands;
    if work.track {
        for entry in kept {
            if let Entry::Record(record) = entry
                && record.kind.as_deref() == Some(crate::mews::enrich::DEVICE_COMMAND)
                && let Some(id) = &record.id
            {
                tables.track(&record.property, id, record.state.as_deref())?;
            }
        }
    }
    for ack in &work.acks {
        tables.ack(ack)?;
    }
    let outcomes = work
        .requests
        .iter()
        .map(|request| tables.request(request.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    for answered in &work.answered {
        tables.answered(answered)?;
    }
    if commit.seen.forget_before.is_some() {
        tables.forget()?;
    }
    meta.insert(OUTBOX_KEY, tables.next_key)?;
    Ok((tables.queued, outcomes))
}

/// The database, replaceable after an I/O error poisoned it.
pub(super) struct Store {
    path: PathBuf,
    journal_id: u64,
    db: RwLock<Option<Arc<Database>>>,
    /// The file redb has open (see [`file::Opened`]).
    held: std::fs::File,
    identity: Identity,
    /// Tests: this many next commits fail as if the disk were full.
    #[cfg(test)]
    pub fail_commits: std::sync::atomic::AtomicU32,
}

fn storage(path: &Path, err: impl Into<redb::Error>) -> JournalError {
    JournalError::Storage {
        path: path.to_owned(),
        source: err.into(),
    }
}

impl Store {
    /// Opens the file, registers the sinks, and returns the last seq and every sink's cursor.
    pub fn open(path: &Path, sinks: &[String]) -> Result<(Store, Opened), JournalError> {
        let file::Opened { db, held, identity } = file::open(path)?;
        let txn = db.begin_write().map_err(|e| storage(path, e))?;
        let opened = {
            let _seen = txn.open_table(SEEN).map_err(|e| storage(path, e))?;
            let _marks = txn.open_table(MARKS).map_err(|e| storage(path, e))?;
            let _heal = txn.open_table(HEAL).map_err(|e| storage(path, e))?;
            let _commands = txn.open_table(COMMANDS).map_err(|e| storage(path, e))?;
            let outbox = commands::outbox(&txn.open_table(OUTBOX).map_err(|e| storage(path, e))?)
                .map_err(|e| storage(path, e))?;
            let pending_seqs: Vec<u64> = {
                let pending = txn.open_table(PENDING).map_err(|e| storage(path, e))?;
                let mut seqs = Vec::new();
                for entry in pending.iter().map_err(|e| storage(path, e))? {
                    seqs.push(entry.map_err(|e| storage(path, e))?.0.value());
                }
                seqs
            };
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
            let stored_bytes = get(&meta, STORED_BYTES)?.unwrap_or(0);
            let mut table = txn.open_table(CURSORS).map_err(|e| storage(path, e))?;
            let last_seq = get(&meta, LAST_SEQ)?.unwrap_or(0);
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
            let records = txn.open_table(RECORDS).map_err(|e| storage(path, e))?;
            let mut pending = Vec::with_capacity(pending_seqs.len());
            for seq in pending_seqs {
                if let Some(value) = records.get(seq).map_err(|e| storage(path, e))? {
                    pending.push(value::decode(journal_id, seq, value.value()));
                }
            }
            Opened {
                last_seq,
                stored_bytes,
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
            held,
            identity,
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

    /// Up to `max` records after `after`, none after `upto`.
    pub fn read_after(
        &self,
        after: u64,
        upto: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| storage(&self.path, e))?;
        let table = txn
            .open_table(RECORDS)
            .map_err(|e| storage(&self.path, e))?;
        let mut out = Vec::new();
        let Some(start) = after.checked_add(1).filter(|start| *start <= upto) else {
            return Ok(out);
        };
        for entry in table
            .range(start..=upto)
            .map_err(|e| storage(&self.path, e))?
            .take(max)
        {
            let (seq, value) = entry.map_err(|e| storage(&self.path, e))?;
            out.push(value::decode(self.journal_id, seq.value(), value.value()));
        }
        Ok(out)
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

    /// Runs one transaction: entries get seqs after `at.0`; `at.1` is the stored size before.
    /// Returns the new last seq and stored size, and which entries were duplicates.
    pub fn commit(&self, at: (u64, u64), commit: &Commit) -> Result<Committed, JournalError> {
        #[cfg(test)]
        if self
            .fail_commits
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok()
        {
            return Err(JournalError::Write(
                "simulated: no space left on device".into(),
            ));
        }
        let db = match self.db() {
            Ok(db) => db,
            // An earlier reopen failed (e.g. still no space): try again now.
            Err(_) => {
                self.reopen()?;
                self.db()?
            }
        };
        let err = |e: redb::Error| storage(&self.path, e);
        let mut txn = db.begin_write().map_err(|e| err(e.into()))?;
        if !commit.durable {
            txn.set_durability(Durability::None)
                .map_err(|e| err(e.into()))?;
        }
        let (mut seq, mut bytes) = at;
        let mut dropped = Vec::new();
        let (mut queued, mut outcomes) = (Vec::new(), Vec::new());
        {
            let mut table = txn.open_table(RECORDS).map_err(|e| err(e.into()))?;
            let mut seen = txn.open_table(SEEN).map_err(|e| err(e.into()))?;
            let mut pending = txn.open_table(PENDING).map_err(|e| err(e.into()))?;
            let mut heal = txn.open_table(HEAL).map_err(|e| err(e.into()))?;
            let mut buf = Vec::with_capacity(512);
            let Seen { now, window, .. } = commit.seen;
            for (i, entry) in commit.entries.iter().enumerate() {
                if let Entry::Record(crate::record::Record {
                    dedupe: Some(key), ..
                }) = entry
                {
                    let first = seen
                        .insert(key.as_str(), now)
                        .map_err(|e| err(e.into()))?
                        .map(|v| v.value());
                    if let Some(first) = first.filter(|first| now.saturating_sub(*first) < window) {
                        seen.insert(key.as_str(), first)
                            .map_err(|e| err(e.into()))?;
                        dropped.push(i);
                        continue;
                    }
                }
                seq += 1;
                buf.clear();
                value::encode(seq, entry, &mut buf);
                bytes += buf.len() as u64;
                table
                    .insert(seq, buf.as_slice())
                    .map_err(|e| err(e.into()))?;
                if let Entry::Record(record) = entry {
                    match &record.enrich {
                        Enrich::None => {}
                        Enrich::Pending => {
                            pending.insert(seq, now).map_err(|e| err(e.into()))?;
                        }
                        Enrich::Heal(key) => {
                            heal.insert(key.as_str(), now).map_err(|e| err(e.into()))?;
                        }
                    }
                }
            }
            for settled in &commit.settled {
                if pending
                    .remove(settled.seq)
                    .map_err(|e| err(e.into()))?
                    .is_none()
                {
                    continue; // settled already (a second answer after a restart)
                }
                let old = table
                    .insert(settled.seq, settled.value.as_slice())
                    .map_err(|e| err(e.into()))?
                    .map_or(0, |old| old.value().len() as u64);
                bytes = bytes.saturating_sub(old) + settled.value.len() as u64;
                if let Some(key) = &settled.heal {
                    seen.remove(key.as_str()).map_err(|e| err(e.into()))?;
                    heal.insert(key.as_str(), now).map_err(|e| err(e.into()))?;
                }
            }
            for key in &commit.unheal {
                heal.remove(key.as_str()).map_err(|e| err(e.into()))?;
            }
            if let Some(to) = commit.prune_to {
                for entry in table
                    .extract_from_if(..=to, |_, _| true)
                    .map_err(|e| err(e.into()))?
                {
                    let (_, value) = entry.map_err(|e| err(e.into()))?;
                    bytes = bytes.saturating_sub(value.value().len() as u64);
                }
            }
            let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            if commit.commands.track || !commit.commands.is_empty() {
                let kept = commit
                    .entries
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !dropped.contains(i))
                    .map(|(_, entry)| entry);
                (queued, outcomes) = command_work(&txn, &mut meta, commit, kept).map_err(err)?;
            }
            meta.insert(LAST_SEQ, seq).map_err(|e| err(e.into()))?;
            meta.insert(STORED_BYTES, bytes)
                .map_err(|e| err(e.into()))?;
            let mut cursors = txn.open_table(CURSORS).map_err(|e| err(e.into()))?;
            for (name, at) in &commit.cursors {
                cursors
                    .insert(name.as_str(), *at)
                    .map_err(|e| err(e.into()))?;
            }
            let mut marks = txn.open_table(MARKS).map_err(|e| err(e.into()))?;
            for (name, at) in &commit.marks {
                marks
                    .insert(name.as_str(), *at)
                    .map_err(|e| err(e.into()))?;
            }
            if let Some(before) = commit.seen.forget_before {
                seen.retain(|_, first| first >= before)
                    .map_err(|e| err(e.into()))?;
                heal.retain(|_, first| first >= before)
                    .map_err(|e| err(e.into()))?;
            }
        }
        txn.commit().map_err(|e| err(e.into()))?;
        Ok(Committed {
            seq,
            bytes,
            dropped,
            queued,
            outcomes,
        })
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

    /// The seq up to which the oldest entries after `after` add up to at least `bytes`.
    pub fn seq_covering(&self, after: u64, bytes: u64) -> Result<u64, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| storage(&self.path, e))?;
        let table = txn
            .open_table(RECORDS)
            .map_err(|e| storage(&self.path, e))?;
        let (mut sum, mut last) = (0u64, after);
        for entry in table
            .range(after.saturating_add(1)..)
            .map_err(|e| storage(&self.path, e))?
        {
            let (seq, value) = entry.map_err(|e| storage(&self.path, e))?;
            sum += value.value().len() as u64;
            last = seq.value();
            if sum >= bytes {
                break;
            }
        }
        Ok(last)
    }

    /// After an I/O error redb refuses further writes until the file is opened again; only
    /// the same file is opened (see [`file::reopen`]).
    pub fn reopen(&self) -> Result<(), JournalError> {
        self.close();
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

    /// Whether the path still holds the file the relay has open (one `stat`).
    pub fn check_file(&self) -> Option<FileProblem> {
        file::check(&self.path, self.identity)
    }

    /// The last act of a relay whose journal file was deleted or replaced: closes the database
    /// and copies the file it held back to its path, or beside the file now there.
    pub fn put_back(&self) -> std::io::Result<PathBuf> {
        self.close();
        file::put_back(&self.path, &self.held)
    }

    /// Whether a commit of about [`PROBE_BYTES`] would be stored now: written durably, then
    /// removed again. Run while commits fail, to notice that the disk has room again.
    pub fn probe(&self) -> Result<(), JournalError> {
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

//! The redb file: tables, value layout, and the blocking operations on it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use redb::{Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::JournalError;
use crate::record::Record;

/// seq -> encoded record (see [`encode_value`]).
const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
/// sink name -> last seq the sink has passed.
const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");
/// `last_seq` -> the last seq ever given (survives pruning).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LAST_SEQ: &str = "last_seq";

/// A committed record as a sink reads it.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    /// Its position in the journal.
    pub seq: u64,
    /// The property it belongs to (for filters).
    pub property: String,
    /// The event `Type` (for filters).
    pub kind: Option<String>,
    /// The record's JSON line, without the newline.
    pub json: Vec<u8>,
}

/// What one transaction does.
pub(super) struct Commit {
    pub records: Vec<Record>,
    pub cursors: Vec<(String, u64)>,
    pub prune_to: Option<u64>,
    pub durable: bool,
}

/// The database, replaceable after an I/O error poisoned it.
pub(super) struct Store {
    path: PathBuf,
    db: RwLock<Option<Arc<Database>>>,
}

fn storage(path: &Path, err: impl Into<redb::Error>) -> JournalError {
    JournalError::Storage {
        path: path.to_owned(),
        source: err.into(),
    }
}

fn open_db(path: &Path) -> Result<Database, JournalError> {
    Database::create(path).map_err(|err| {
        let problem = match err {
            DatabaseError::DatabaseAlreadyOpen => "is in use by another mews-relay process; stop it, or give this one its own state.dir".to_owned(),
            DatabaseError::Storage(redb::StorageError::Io(io)) if io.kind() != std::io::ErrorKind::InvalidData => format!("cannot be opened: {io}; check free space and that the mews-relay user owns the state directory"),
            other => format!(
                "cannot be read ({other}); move it aside (mv {p} {p}.broken) and start again: the relay then starts with an empty journal, and records in the old file that no sink had delivered are not sent",
                p = path.display()
            ),
        };
        JournalError::Open { path: path.to_owned(), problem }
    })
}

impl Store {
    /// Opens the file, registers the sinks, and returns the last seq and every sink's cursor.
    pub fn open(
        path: &Path,
        sinks: &[String],
    ) -> Result<(Store, u64, HashMap<String, u64>), JournalError> {
        let db = open_db(path)?;
        let txn = db.begin_write().map_err(|e| storage(path, e))?;
        let (last_seq, cursors) = {
            let _records = txn.open_table(RECORDS).map_err(|e| storage(path, e))?;
            let meta = txn.open_table(META).map_err(|e| storage(path, e))?;
            let mut table = txn.open_table(CURSORS).map_err(|e| storage(path, e))?;
            let last_seq = meta
                .get(LAST_SEQ)
                .map_err(|e| storage(path, e))?
                .map_or(0, |v| v.value());
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
            (last_seq, cursors)
        };
        txn.commit().map_err(|e| storage(path, e))?;
        let store = Store {
            path: path.to_owned(),
            db: RwLock::new(Some(Arc::new(db))),
        };
        Ok((store, last_seq, cursors))
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

    /// Up to `max` records after `after`.
    pub fn read_after(&self, after: u64, max: usize) -> Result<Vec<StoredRecord>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| storage(&self.path, e))?;
        let table = txn
            .open_table(RECORDS)
            .map_err(|e| storage(&self.path, e))?;
        let mut out = Vec::new();
        let Some(start) = after.checked_add(1) else {
            return Ok(out);
        };
        for entry in table
            .range(start..)
            .map_err(|e| storage(&self.path, e))?
            .take(max)
        {
            let (seq, value) = entry.map_err(|e| storage(&self.path, e))?;
            out.push(decode_value(seq.value(), value.value()));
        }
        Ok(out)
    }

    /// Runs one transaction: records get seqs after `last_seq`. Returns the new last seq.
    pub fn commit(&self, last_seq: u64, commit: &Commit) -> Result<u64, JournalError> {
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
        let mut seq = last_seq;
        {
            if !commit.records.is_empty() {
                let mut table = txn.open_table(RECORDS).map_err(|e| err(e.into()))?;
                let mut buf = Vec::with_capacity(512);
                for record in &commit.records {
                    seq += 1;
                    buf.clear();
                    encode_value(seq, record, &mut buf);
                    table
                        .insert(seq, buf.as_slice())
                        .map_err(|e| err(e.into()))?;
                }
                let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
                meta.insert(LAST_SEQ, seq).map_err(|e| err(e.into()))?;
            }
            if !commit.cursors.is_empty() {
                let mut table = txn.open_table(CURSORS).map_err(|e| err(e.into()))?;
                for (name, at) in &commit.cursors {
                    table
                        .insert(name.as_str(), *at)
                        .map_err(|e| err(e.into()))?;
                }
            }
            if let Some(to) = commit.prune_to {
                let mut table = txn.open_table(RECORDS).map_err(|e| err(e.into()))?;
                table
                    .retain_in(..=to, |_, _| false)
                    .map_err(|e| err(e.into()))?;
            }
        }
        txn.commit().map_err(|e| err(e.into()))?;
        Ok(seq)
    }

    /// After an I/O error redb refuses further writes until the file is opened again.
    pub fn reopen(&self) -> Result<(), JournalError> {
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
        let db = open_db(&self.path)?;
        *self.db.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(db));
        Ok(())
    }
}

/// Value layout: `u16 len | property | u16 len (0xFFFF = none) | type | JSON line`.
fn encode_value(seq: u64, record: &Record, out: &mut Vec<u8>) {
    let property = record.property.as_bytes();
    let property = &property[..property.len().min(u16::MAX as usize - 1)];
    out.extend_from_slice(&(property.len() as u16).to_le_bytes());
    out.extend_from_slice(property);
    match record.kind.as_deref().map(str::as_bytes) {
        Some(kind) if kind.len() < u16::MAX as usize => {
            out.extend_from_slice(&(kind.len() as u16).to_le_bytes());
            out.extend_from_slice(kind);
        }
        _ => out.extend_from_slice(&u16::MAX.to_le_bytes()),
    }
    record.encode(seq, out);
}

fn decode_value(seq: u64, value: &[u8]) -> StoredRecord {
    // Written only by encode_value; a short value yields empty fields rather than a panic.
    let take = |at: usize| -> (Option<&[u8]>, usize) {
        let Some(len) = value.get(at..at + 2) else {
            return (None, value.len());
        };
        let len = u16::from_le_bytes([len[0], len[1]]);
        if len == u16::MAX {
            return (None, at + 2);
        }
        let end = (at + 2 + len as usize).min(value.len());
        (value.get(at + 2..end), end)
    };
    let (property, at) = take(0);
    let (kind, at) = take(at);
    let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
    StoredRecord {
        seq,
        property: text(property).unwrap_or_default(),
        kind: text(kind),
        json: value.get(at..).unwrap_or_default().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Origin;
    use serde_json::value::RawValue;

    #[test]
    fn values_round_trip_with_and_without_a_type() {
        for kind in [Some("DeviceCommand".to_owned()), None] {
            let record = Record {
                property: "old-town".into(),
                origin: Origin::Websocket,
                received_at: "t".into(),
                kind: kind.clone(),
                id: None,
                state: None,
                event: RawValue::from_string("{}".into()).unwrap(),
                command: None,
            };
            let mut buf = Vec::new();
            encode_value(3, &record, &mut buf);
            let stored = decode_value(3, &buf);
            assert_eq!(stored.property, "old-town");
            assert_eq!(stored.kind, kind);
            assert!(stored.json.starts_with(br#"{"seq":3,"#));
        }
    }
}

//! Opening a journal of format version 1 (records in redb's `records` table): its records are
//! moved into the log, in seq order, with their pending flag; then the table is dropped. A
//! crash in between repeats only what the log does not have yet.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableError};

use super::super::JournalError;
use super::super::log::Log;
use super::super::log::segment::{self, Effects};
use super::{APPLIED_SEQ, FORMAT, FORMAT_VERSION, LAST_SEQ, META, PENDING, RECORDS, storage};

/// Records moved per log append.
const CHUNK_BYTES: usize = 8 << 20;

/// Up to which seq the state tables hold the records' effects: `applied_seq` in format 2; in
/// format 1 every commit wrote records and effects together, so `last_seq`.
pub(super) fn applied_seq(db: &Database, path: &Path) -> Result<u64, JournalError> {
    let txn = db.begin_read().map_err(|e| storage(path, e))?;
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(err) => return Err(storage(path, err)),
    };
    let get = |key| -> Result<Option<u64>, JournalError> {
        Ok(meta
            .get(key)
            .map_err(|e| storage(path, e))?
            .map(|v| v.value()))
    };
    match get(FORMAT)? {
        Some(FORMAT_VERSION) => Ok(get(APPLIED_SEQ)?.unwrap_or(0)),
        Some(newer) if newer > FORMAT_VERSION => Err(JournalError::Open {
            path: path.to_owned(),
            problem: format!(
                "was written by a newer mews-relay (journal format {newer}, this one reads up to {FORMAT_VERSION}); run that version, or move state.dir aside to start empty"
            ),
        }),
        _ => Ok(get(LAST_SEQ)?.unwrap_or(0)),
    }
}

/// Moves a version-1 journal's records (those after `log_last`) into the log, then drops the
/// table.
pub(super) fn records_into_log(
    db: &Database,
    path: &Path,
    log: &Log,
    log_last: u64,
) -> Result<(), JournalError> {
    let txn = db.begin_read().map_err(|e| storage(path, e))?;
    let records = match txn.open_table(RECORDS) {
        Ok(records) => records,
        Err(TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(err) => return Err(storage(path, err)),
    };
    let pending: std::collections::HashSet<u64> = match txn.open_table(PENDING) {
        Ok(table) => table
            .iter()
            .map_err(|e| storage(path, e))?
            .filter_map(|entry| entry.ok().map(|(seq, _)| seq.value()))
            .collect(),
        Err(TableError::TableDoesNotExist(_)) => Default::default(),
        Err(err) => return Err(storage(path, err)),
    };
    let io =
        |err: std::io::Error| JournalError::Write(format!("moving records into the log: {err}"));
    let mut moved = 0u64;
    let mut buf = Vec::new();
    let (mut first, mut last) = (0u64, 0u64);
    for entry in records
        .range(log_last.saturating_add(1)..)
        .map_err(|e| storage(path, e))?
    {
        let (seq, value) = entry.map_err(|e| storage(path, e))?;
        let seq = seq.value();
        if buf.is_empty() {
            first = seq;
        } else if seq != last + 1 {
            // A gap (v1 never left one): flush what is contiguous first.
            log.append(&buf, first, last, &[(first, 0)]).map_err(io)?;
            buf.clear();
            first = seq;
        }
        let effects = Effects {
            pending: pending.contains(&seq),
            ..Effects::default()
        };
        segment::encode(&mut buf, seq, &effects, |out| {
            out.extend_from_slice(value.value())
        });
        last = seq;
        moved += 1;
        if buf.len() >= CHUNK_BYTES {
            log.append(&buf, first, last, &[(first, 0)]).map_err(io)?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        log.append(&buf, first, last, &[(first, 0)]).map_err(io)?;
    }
    drop(records);
    drop(txn);
    let txn = db.begin_write().map_err(|e| storage(path, e))?;
    txn.delete_table(RECORDS).map_err(|e| storage(path, e))?;
    {
        let mut meta = txn.open_table(META).map_err(|e| storage(path, e))?;
        meta.insert(FORMAT, FORMAT_VERSION)
            .map_err(|e| storage(path, e))?;
    }
    txn.commit().map_err(|e| storage(path, e))?;
    if moved > 0 {
        tracing::info!(
            records = moved,
            "journal format 1 → 2: records moved from journal.redb into the record log"
        );
    }
    Ok(())
}

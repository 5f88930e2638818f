//! Reads from the store: records from the log (a settled one with its final value), catch-up
//! marks, heal keys, commands, and sizing for shedding.

use std::collections::HashMap;

use bytes::Bytes;
use redb::ReadableDatabase;

use super::{HEAL, MARKS, SETTLED, Store, storage};
use crate::journal::JournalError;
use crate::journal::commands::{COMMANDS, CommandEntry};
use crate::journal::log::segment;
use crate::journal::value::{self, StoredRecord};

impl Store {
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
}

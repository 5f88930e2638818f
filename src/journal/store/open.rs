//! Opening the store: the files, a version-1 journal moved into the log, effects a crash left
//! unapplied replayed, and the sinks registered (at open and on a reload).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use redb::ReadableTable;

use super::{
    APPLIED_SEQ, CURSORS, FORMAT, FORMAT_VERSION, HEAL, JOURNAL_ID, LAST_SEQ, MARKS, META, Opened,
    PENDING, SEEN, SETTLED, Store, commit, migrate, storage,
};
use crate::journal::JournalError;
use crate::journal::commands::{self, COMMANDS, OUTBOX};
use crate::journal::file;
use crate::journal::log::{self, Log};
use crate::journal::value;

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
            // The state's last seq is written after the log append it follows: a log that
            // ends before it lost committed records (the disk lost writes, or was damaged).
            let stored = get(&meta, LAST_SEQ)?.unwrap_or(0);
            let logged = log.last_seq().unwrap_or(0);
            let lost = stored.saturating_sub(logged);
            if lost > 0 {
                tracing::error!(
                    dir = %log_dir.display(),
                    log_ends_at = logged,
                    committed_up_to = stored,
                    "the record log has lost {lost} committed records (the disk lost writes or the log was damaged): they cannot be delivered; new records follow the last seq"
                );
            }
            let last_seq = stored.max(logged);
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
                lost,
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
}

/// The type part of a sink's default name (`http:…`, `file:…`, `nats:…`); none for a name the
/// config gave.
fn default_kind(name: &str) -> Option<&str> {
    name.split_once(':')
        .map(|(kind, _)| kind)
        .filter(|kind| matches!(*kind, "http" | "file" | "nats"))
}

/// Renamed sinks: a sink without a `name` of its own is named after its url, path or stream,
/// so fixing those renames it. Where exactly one such sink of a type left and exactly one of
/// that type came, the new name goes on from where the old one stood (new → (old, seq)), so
/// what the old one had not delivered (e.g. while paused on a wrong url) is not skipped.
fn renamed(stored: &HashMap<String, u64>, sinks: &[String]) -> HashMap<String, (String, u64)> {
    let mut out = HashMap::new();
    for kind in ["http", "file", "nats"] {
        let gone: Vec<(&String, &u64)> = stored
            .iter()
            .filter(|(name, _)| !sinks.contains(name) && default_kind(name) == Some(kind))
            .collect();
        let came: Vec<&String> = sinks
            .iter()
            .filter(|name| !stored.contains_key(*name) && default_kind(name) == Some(kind))
            .collect();
        if let ([(old, seq)], [new]) = (gone.as_slice(), came.as_slice()) {
            out.insert((*new).clone(), ((*old).clone(), **seq));
        }
    }
    out
}

/// The configured sinks' cursors: a new sink starts after the last record (a renamed one where
/// its old name stood, see [`renamed`]); the cursor of a sink no longer configured is dropped.
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
    let renamed = renamed(&stored, sinks);
    let mut cursors = HashMap::new();
    for name in sinks {
        let seq = match stored.remove(name) {
            Some(seq) => seq,
            None if renamed.contains_key(name) => {
                let (old, seq) = &renamed[name];
                stored.remove(old);
                tracing::warn!(
                    sink = %name,
                    was = %old,
                    from_seq = seq + 1,
                    behind = last_seq.saturating_sub(*seq),
                    "a sink without a name of its own was renamed by its new url, path or stream: it goes on where the old one stood; its dead letters stay under the old name (give the sink a `name` to keep one across such changes)"
                );
                table
                    .insert(name.as_str(), *seq)
                    .map_err(|e| storage(path, e))?;
                table.remove(old.as_str()).map_err(|e| storage(path, e))?;
                *seq
            }
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
        if seq < last_seq {
            tracing::warn!(sink = %name, at_seq = seq, undelivered = last_seq - seq, "dropping the position of a sink that is no longer configured: the records it had not delivered are not sent anywhere (give a sink a `name` of its own to change its url or path and keep its position)");
        } else {
            tracing::info!(sink = %name, at_seq = seq, "dropping the position of a sink that is no longer configured");
        }
        table.remove(name.as_str()).map_err(|e| storage(path, e))?;
    }
    Ok(cursors)
}

#[cfg(test)]
mod tests {
    use super::super::RECORDS;
    use super::super::commit::{CommandWork, Commit, Seen};
    use super::*;
    use crate::journal::log::segment;
    use crate::journal::value::{Entry, StoredRecord, test_record};
    use crate::record::{Enrich, Record};
    use redb::{Database, ReadableDatabase};

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

    /// What a commit hands to the sinks that keep up (taken while encoding, not read back)
    /// is what a sink that fell behind reads from the disk: records with and without a type,
    /// one whose type is too long for the value's header, and a replayed dead letter.
    #[test]
    fn a_commits_fresh_records_are_what_the_disk_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let (store, opened) = Store::open(&path, &["s".to_owned()], 1 << 30).unwrap();
        let plain = test_record("a", Enrich::None, None);
        let untyped = Record {
            kind: None,
            ..test_record("b", Enrich::None, None)
        };
        let long = Record {
            kind: Some("T".repeat(70_000)),
            ..test_record("c", Enrich::None, None)
        };
        let replay = crate::journal::value::Replay {
            sink: "s".into(),
            key: "0000000000000001-9".into(),
            property: "old-town".into(),
            kind: Some("Resource".into()),
            json: br#"{"seq":9}"#.to_vec(),
        };
        let entries = vec![
            Entry::Record(plain),
            Entry::Record(untyped),
            Entry::Record(long),
            Entry::Replay(replay),
        ];
        let done = store.commit(opened.last_seq, &commit_of(entries)).unwrap();
        let read = store.read_after(0, done.seq, 100).unwrap();
        let fields = |r: &StoredRecord| {
            (
                r.seq,
                r.property.to_string(),
                r.kind.as_deref().map(str::to_owned),
                r.journal_id,
                r.replay_key.clone(),
                r.only_sink.clone(),
                r.json.clone(),
            )
        };
        assert_eq!(done.fresh.len(), 4);
        assert_eq!(
            done.fresh.iter().map(fields).collect::<Vec<_>>(),
            read.iter().map(fields).collect::<Vec<_>>()
        );
        assert_eq!(done.fresh[0].kind.as_deref(), Some("DeviceCommand"));
        assert_eq!(done.fresh[2].kind, None, "too long for the header: none");
        assert_eq!(done.fresh[3].only_sink.as_deref(), Some("s"));
    }

    /// A sink named after its url goes on where it stood when the url changes (one http sink
    /// left, one came); a named sink and an unrelated type are not paired.
    #[test]
    fn a_sink_renamed_by_its_url_keeps_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let old = ["http:old.example/hooks".to_owned(), "keys".to_owned()];
        let (store, opened) = Store::open(&path, &old, 1 << 30).unwrap();
        let entries = (0..5)
            .map(|i| Entry::Record(test_record(&format!("r{i}"), Enrich::None, None)))
            .collect();
        let done = store.commit(opened.last_seq, &commit_of(entries)).unwrap();
        assert_eq!(done.seq, 5);
        let now = [
            "http:new.example/hooks".to_owned(),
            "file:/tmp/x.jsonl".to_owned(),
            "other".to_owned(),
        ];
        let cursors = store.set_sinks(&now, done.seq).unwrap();
        assert_eq!(
            cursors["http:new.example/hooks"], 0,
            "where the old one stood"
        );
        assert_eq!(
            cursors["file:/tmp/x.jsonl"], 5,
            "a new sink starts with new records"
        );
        assert_eq!(cursors["other"], 5, "a named sink is never paired");
        // Two http sinks coming for one leaving: nobody can tell which is the old one.
        let two = [
            "http:a/x".to_owned(),
            "http:b/x".to_owned(),
            "other".to_owned(),
        ];
        let cursors = store.set_sinks(&two, done.seq).unwrap();
        assert_eq!((cursors["http:a/x"], cursors["http:b/x"]), (5, 5));
    }

    /// Committed records whose bytes the disk lost (read back as zeros, which also end a
    /// preallocated tail) are not passed over silently: the open counts them as lost, and
    /// new records follow the last seq the state knew.
    #[test]
    fn records_the_log_lost_are_counted_not_skipped_silently() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let sinks = ["s".to_owned()];
        let (store, opened) = Store::open(&path, &sinks, 1 << 30).unwrap();
        let entries = (0..3)
            .map(|i| Entry::Record(test_record(&format!("r{i}"), Enrich::None, None)))
            .collect();
        let commit = Commit {
            sync: true,
            ..commit_of(entries)
        };
        assert_eq!(store.commit(opened.last_seq, &commit).unwrap().seq, 3);
        drop(store);
        // The disk gives back zeros where the frames were.
        let segment = dir.path().join("log").join(format!("{:020}.seg", 1));
        let size = std::fs::metadata(&segment).unwrap().len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap();
        use std::os::unix::fs::FileExt;
        file.write_all_at(
            &vec![0u8; (size - segment::HEADER) as usize],
            segment::HEADER,
        )
        .unwrap();
        drop(file);
        let (_, opened) = Store::open(&path, &sinks, 1 << 30).unwrap();
        assert_eq!(opened.lost, 3);
        assert_eq!(opened.last_seq, 3, "new records do not reuse the lost seqs");
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
                &commit_of(vec![Entry::Record(test_record("a", Enrich::None, None))]),
            )
            .unwrap();
        assert_eq!(done.seq, 1);
        // The crash: the next record's frame is in the log, its state transaction never ran.
        let pending = Entry::Record(test_record("b", Enrich::Pending, Some("key-b")));
        let mut frame = Vec::new();
        let effects = segment::Effects {
            pending: true,
            dedupe: Some("key-b"),
            heal: None,
        };
        segment::encode(&mut frame, 2, &effects, |out| {
            value::encode(2, &pending, out);
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
                &commit_of(vec![Entry::Record(test_record(
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
                    let entry =
                        Entry::Record(test_record(&format!("v1-{seq}"), Enrich::None, None));
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
                &commit_of(vec![Entry::Record(test_record("v2", Enrich::None, None))]),
            )
            .unwrap();
        assert_eq!(next.seq, 4);
        drop(store);
        let (store, opened) = Store::open(&path, &sinks, 1 << 30).unwrap();
        assert_eq!(opened.last_seq, 4);
        assert_eq!(store.read_after(0, 4, 10).unwrap().len(), 4);
    }
}

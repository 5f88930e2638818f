//! The durable journal: records in seq order in an append-only segment log (`log/`), the state
//! around them (a position per sink, dedupe keys, pending records, marks, the command loop) in
//! redb (`journal.redb`), pruning behind every sink.
//!
//! Producers queue records ([`Journal::queue`], [`Journal::append_committed`]); one commit at a time
//! appends whatever is queued with one durable write (group commit), then publishes the new last
//! seq and keeps the fresh records in memory (`tail`) for sinks that keep up. Sinks only ever
//! see committed records. Commits run on the writer's own thread, or on a WebSocket reader's
//! that has read all its socket holds and finds no commit running (`writer/serve.rs`).

mod claims;
pub mod commands;
mod file;
mod health;
mod log;
mod ops;
mod positions;
mod read;
mod store;
mod tail;
mod value;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::stats::Stats;

pub use health::{FileProblem, JournalHealth};
pub use value::{Entry, Replay, StoredRecord, record_key};
pub use writer::{JournalWriter, Note, Settle};

pub(crate) use positions::Positions;
use store::Store;

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
    /// The journal file was deleted or replaced under the running relay: nothing is stored
    /// until a restart (the message says what to do).
    #[error("{0}")]
    Gone(String),
    /// The writer has stopped.
    #[error("the journal writer has stopped")]
    Closed,
}

/// Where a sink the journal took on while open starts, and its shed signal (see
/// [`Journal::shed_signal`]).
#[derive(Debug)]
pub struct SinkStart {
    /// The last seq it has passed.
    pub cursor: u64,
    /// Raised when it should dead-letter its records up to the seq given.
    pub shed: watch::Receiver<u64>,
}

/// A handle to the journal; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    store: Arc<Store>,
    link: Arc<ops::Link>,
    committed: watch::Receiver<u64>,
    visible: watch::Receiver<u64>,
    cursors: Arc<HashMap<String, u64>>,
    positions: Positions,
    shed: Arc<HashMap<String, watch::Receiver<u64>>>,
    journal_id: u64,
    tail: Arc<tail::Tail>,
    /// Every sink has passed the records up to here: they are gone (or about to go) and never
    /// read again.
    pruned: Arc<std::sync::atomic::AtomicU64>,
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
        let (store, opened) = Store::open(&dir.join(FILE_NAME), sinks, max_bytes)?;
        let store = Arc::new(store);
        let (ops_tx, ops_rx) = mpsc::channel(writer::QUEUE);
        let (committed_tx, committed_rx) = watch::channel(opened.last_seq);
        let first_pending = opened.pending.iter().map(|r| r.seq).min();
        let (visible_tx, visible_rx) =
            watch::channel(first_pending.map_or(opened.last_seq, |seq| seq - 1));
        let (shed_tx, shed_rx): (HashMap<_, _>, HashMap<_, _>) = sinks
            .iter()
            .map(|name| {
                let (tx, rx) = watch::channel(0);
                ((name.clone(), tx), (name.clone(), rx))
            })
            .unzip();
        let tail = Arc::new(tail::Tail::new(opened.journal_id));
        let positions = Positions::new(&opened.cursors);
        let pruned = Arc::new(std::sync::atomic::AtomicU64::new(
            opened.cursors.values().copied().min().unwrap_or(0),
        ));
        let (cursors, journal_id) = (opened.cursors.clone(), opened.journal_id);
        let core = writer::Core::new(writer::Setup {
            store: Arc::clone(&store),
            ops: ops_rx,
            committed: committed_tx,
            visible: visible_tx,
            opened,
            max_bytes,
            shed: shed_tx,
            stats,
            tail: Arc::clone(&tail),
            pruned: Arc::clone(&pruned),
            positions: positions.clone(),
        });
        let shared = writer::Shared::new(core);
        let journal = Journal {
            pruned,
            tail,
            store,
            link: Arc::new(ops::Link::new(ops_tx, Arc::clone(&shared))),
            committed: committed_rx,
            visible: visible_rx,
            cursors: Arc::new(cursors),
            positions,
            shed: Arc::new(shed_rx),
            journal_id,
        };
        let writer = JournalWriter::new(shared);
        Ok((journal, writer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Enrich, Record};

    fn record(id: &str, pending: bool) -> Record {
        let enrich = if pending {
            Enrich::Pending
        } else {
            Enrich::None
        };
        value::test_record(id, enrich, None)
    }

    fn open(dir: &Path) -> (Journal, tokio::task::JoinHandle<()>) {
        let (journal, writer) =
            Journal::open(dir, &["s".to_owned()], 1 << 30, Arc::new(Stats::default())).unwrap();
        (journal, tokio::spawn(writer.run()))
    }

    /// A flush after records could not be stored says so, until records are stored again.
    #[tokio::test]
    async fn a_failed_final_commit_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, writer) = open(dir.path());
        journal
            .store
            .fail_commits
            .store(1, std::sync::atomic::Ordering::SeqCst);
        journal.queue(vec![record("a", false)], true).await.unwrap();
        let err = journal.flush().await.unwrap_err();
        assert!(err.to_string().contains("no space"), "{err}");
        let err = journal.flush().await.unwrap_err();
        assert!(err.to_string().contains("1 records lost"), "{err}");
        journal.queue(vec![record("b", false)], true).await.unwrap();
        journal.flush().await.unwrap();
        drop(journal);
        writer.await.unwrap();
    }

    /// A failed commit loses only what nobody waits for (WebSocket events); records whose
    /// sender is told (a webhook, answered 503) are counted as refused. The journal reports
    /// the failure until a commit stores records again.
    #[tokio::test]
    async fn only_records_nobody_waits_for_count_as_lost() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let (journal, writer) =
            Journal::open(dir.path(), &["s".to_owned()], 1 << 30, Arc::clone(&stats)).unwrap();
        let writer = tokio::spawn(writer.run());
        let fail = |n| {
            journal
                .store
                .fail_commits
                .store(n, std::sync::atomic::Ordering::SeqCst)
        };
        fail(1);
        let hook = vec![
            Entry::Record(record("h1", false)),
            Entry::Record(record("h2", false)),
        ];
        assert!(journal.append_committed(hook).await.is_err());
        assert_eq!(Stats::get(&stats.records_lost), 0);
        assert_eq!(Stats::get(&stats.records_refused), 2);
        let problem = stats.journal.problem().expect("reported");
        assert!(problem.contains("no space left"), "{problem}");
        fail(1);
        journal
            .queue(vec![record("ws", false)], true)
            .await
            .unwrap();
        assert!(journal.flush().await.is_err());
        assert_eq!(Stats::get(&stats.records_lost), 1);
        assert_eq!(Stats::get(&stats.records_refused), 2);
        journal
            .append_committed(vec![Entry::Record(record("later", false))])
            .await
            .unwrap();
        assert!(stats.journal.is_ok());
        drop(journal);
        writer.await.unwrap();
    }

    /// A journal file deleted under the writer: once noticed, nothing more is committed (a
    /// waiter is told why), and at the end the file is written back from the open one, so the
    /// next start goes on from every record it held.
    #[tokio::test]
    async fn a_deleted_journal_takes_nothing_more_and_is_put_back_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let (journal, writer) =
            Journal::open(dir.path(), &["s".to_owned()], 1 << 30, Arc::clone(&stats)).unwrap();
        let writer = tokio::spawn(writer.run());
        journal
            .append_committed(vec![Entry::Record(record("kept", false))])
            .await
            .unwrap();
        std::fs::remove_file(journal.path()).unwrap();
        // A failed commit makes the writer look at the file at once.
        journal
            .store
            .fail_commits
            .store(1, std::sync::atomic::Ordering::SeqCst);
        assert!(journal.flush().await.is_err());
        let problem = stats.journal.problem().expect("reported");
        assert!(problem.contains("journal.redb was deleted"), "{problem}");
        let err = journal
            .append_committed(vec![Entry::Record(record("refused", false))])
            .await
            .unwrap_err();
        assert!(matches!(err, JournalError::Gone(_)), "{err}");
        assert!(
            !journal.path().exists(),
            "no new file behind the relay's back"
        );
        let path = journal.path().to_owned();
        drop(journal);
        writer.await.unwrap();

        assert!(path.exists(), "written back at the end");
        let (journal, writer) = open(dir.path());
        let read = journal.read_after(0, 10).await.unwrap();
        assert_eq!(read.len(), 1);
        assert!(String::from_utf8_lossy(&read[0].json).contains("kept"));
        assert_eq!(
            journal
                .append_committed(vec![Entry::Record(record("next", false))])
                .await
                .unwrap(),
            2,
            "seqs go on"
        );
        drop(journal);
        writer.await.unwrap();
    }

    /// A pending record holds back itself and everything after it, until it is settled;
    /// after a restart it is still pending and goes to whoever claims its property.
    #[tokio::test]
    async fn pending_records_are_held_back_until_settled_also_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, writer) = open(dir.path());
        journal
            .append_committed(vec![
                Entry::Record(record("a", false)),
                Entry::Record(record("b", true)),
                Entry::Record(record("c", false)),
            ])
            .await
            .unwrap();
        assert_eq!(*journal.visible().borrow(), 1);
        assert_eq!(journal.read_after(0, 10).await.unwrap().len(), 1);
        drop(journal);
        writer.await.unwrap();

        let (journal, writer) = open(dir.path());
        assert_eq!(
            *journal.visible().borrow(),
            1,
            "still held back after a restart"
        );
        let mut inbox = journal.claim("p").await.unwrap();
        let note = inbox.recv().await.unwrap();
        assert_eq!((note.seq, note.record.id.as_deref()), (2, Some("b")));
        let mut record = note.record;
        record.enrich_error = Some("no answer".into());
        journal
            .settle(vec![Settle {
                seq: 2,
                record,
                heal: Some("c\u{1f}p\u{1f}b\u{1f}Pending".into()),
            }])
            .await
            .unwrap();
        journal.flush().await.unwrap();
        assert_eq!(*journal.visible().borrow(), 3);
        let read = journal.read_after(0, 10).await.unwrap();
        assert_eq!(read.len(), 3);
        assert!(
            String::from_utf8_lossy(&read[1].json).contains(r#""enrich_error":"no answer""#),
            "the settled value replaced the pending one"
        );
        assert_eq!(
            journal.heal_keys("c\u{1f}p\u{1f}").await.unwrap(),
            ["c\u{1f}p\u{1f}b\u{1f}Pending"]
        );
        journal
            .append_healed(Vec::new(), vec!["c\u{1f}p\u{1f}b\u{1f}Pending".into()])
            .await
            .unwrap();
        assert!(
            journal
                .heal_keys("c\u{1f}p\u{1f}")
                .await
                .unwrap()
                .is_empty()
        );
        drop(journal);
        writer.await.unwrap();
    }

    /// Pending records of a property nobody claims are released with the reason.
    #[tokio::test]
    async fn unclaimed_pending_records_are_released_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, writer) = open(dir.path());
        journal
            .append_committed(vec![Entry::Record(record("a", true))])
            .await
            .unwrap();
        drop(journal);
        writer.await.unwrap();
        let (journal, writer) = open(dir.path());
        journal
            .release_unclaimed("enrichment is off")
            .await
            .unwrap();
        assert_eq!(*journal.visible().borrow(), 1);
        let read = journal.read_after(0, 10).await.unwrap();
        assert!(String::from_utf8_lossy(&read[0].json).contains("enrichment is off"));
        drop(journal);
        writer.await.unwrap();
    }
}

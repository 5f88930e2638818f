//! The single journal writer: group commits, cursor updates, pruning, and what to do when a
//! write fails.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::JournalError;
use super::store::{Commit, Committed, Opened, Seen, Store};
use super::value::Entry;
use crate::stats::Stats;

/// Queue depth: how many appends may wait while a commit runs before producers wait too.
pub(super) const QUEUE: usize = 4096;
/// At most this many records in one transaction.
const MAX_BATCH_RECORDS: usize = 16_384;
/// Cursor-only commits skip fsync; this long after one, a durable commit follows.
const CURSOR_SYNC_AFTER: Duration = Duration::from_secs(1);

type Waiter = oneshot::Sender<Result<u64, JournalError>>;

/// A request to the writer.
pub(super) enum Op {
    Append(Vec<Entry>, Option<Waiter>),
    Cursor(String, u64),
    Flush(oneshot::Sender<()>),
    /// Answered once everything queued before it is done: proof the writer is not stuck.
    Ping(oneshot::Sender<()>),
    /// Sets a catch-up mark, durably.
    Mark(String, u64, oneshot::Sender<Result<(), JournalError>>),
}

/// Dedupe keys older than the window are forgotten this often.
const FORGET_EVERY: Duration = Duration::from_secs(600);

/// The task that owns all writes. Run it with [`JournalWriter::run`]; it ends when every
/// [`super::Journal`] handle is dropped, after a last durable commit.
pub struct JournalWriter {
    store: Arc<Store>,
    ops: mpsc::Receiver<Op>,
    committed: watch::Sender<u64>,
    last_seq: u64,
    stored_bytes: u64,
    max_bytes: u64,
    cursors: HashMap<String, u64>,
    pruned_to: u64,
    shed: HashMap<String, watch::Sender<u64>>,
    shed_to: u64,
    stats: Arc<Stats>,
    outage: Option<Outage>,
    dedupe_window: Duration,
    last_forget: Option<std::time::Instant>,
}

/// What [`JournalWriter::new`] needs.
pub(super) struct Setup {
    pub store: Arc<Store>,
    pub ops: mpsc::Receiver<Op>,
    pub committed: watch::Sender<u64>,
    pub opened: Opened,
    pub max_bytes: u64,
    pub shed: HashMap<String, watch::Sender<u64>>,
    pub stats: Arc<Stats>,
}

/// A run of failed commits, reported once at its start, then every [`REPORT_EVERY`].
struct Outage {
    lost: u64,
    last_report: std::time::Instant,
}

/// While commits keep failing, a summary is logged this often.
const REPORT_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Batch {
    records: Vec<Entry>,
    waiters: Vec<(Waiter, usize)>,
    cursors: HashMap<String, u64>,
    flushes: Vec<oneshot::Sender<()>>,
    pings: Vec<oneshot::Sender<()>>,
    marks: Vec<(String, u64)>,
    mark_waiters: Vec<oneshot::Sender<Result<(), JournalError>>>,
}

impl Batch {
    fn add(&mut self, op: Op) {
        match op {
            Op::Append(records, waiter) => {
                self.records.extend(records);
                if let Some(waiter) = waiter {
                    self.waiters.push((waiter, self.records.len()));
                }
            }
            Op::Cursor(name, seq) => {
                let at = self.cursors.entry(name).or_insert(seq);
                *at = (*at).max(seq);
            }
            Op::Flush(done) => self.flushes.push(done),
            Op::Ping(done) => self.pings.push(done),
            Op::Mark(name, at, done) => {
                self.marks.push((name, at));
                self.mark_waiters.push(done);
            }
        }
    }
}

impl JournalWriter {
    pub(super) fn new(setup: Setup) -> Self {
        JournalWriter {
            store: setup.store,
            ops: setup.ops,
            committed: setup.committed,
            last_seq: setup.opened.last_seq,
            stored_bytes: setup.opened.stored_bytes,
            max_bytes: setup.max_bytes,
            cursors: setup.opened.cursors,
            pruned_to: 0,
            shed: setup.shed,
            shed_to: 0,
            stats: setup.stats,
            outage: None,
            dedupe_window: crate::config::defaults::DEDUPE_WINDOW,
            last_forget: None,
        }
    }

    /// How long dedupe keys are remembered (`catch_up.dedupe_window`; default 24 h).
    pub fn dedupe_window(mut self, window: Duration) -> Self {
        self.dedupe_window = window;
        self
    }

    /// Commits until every handle is gone.
    pub async fn run(mut self) {
        let mut unsynced = false;
        loop {
            let first = if unsynced {
                tokio::select! {
                    op = self.ops.recv() => op,
                    () = tokio::time::sleep(CURSOR_SYNC_AFTER) => {
                        self.commit(Batch::default(), true).await;
                        unsynced = false;
                        continue;
                    }
                }
            } else {
                self.ops.recv().await
            };
            let Some(first) = first else { break };
            let mut batch = Batch::default();
            batch.add(first);
            while batch.records.len() < MAX_BATCH_RECORDS {
                match self.ops.try_recv() {
                    Ok(op) => batch.add(op),
                    Err(_) => break,
                }
            }
            let pings = std::mem::take(&mut batch.pings);
            if !(batch.records.is_empty()
                && batch.cursors.is_empty()
                && batch.flushes.is_empty()
                && batch.marks.is_empty())
            {
                let durable = !batch.records.is_empty()
                    || !batch.flushes.is_empty()
                    || !batch.marks.is_empty();
                self.commit(batch, durable).await;
                unsynced = !durable;
            }
            for ping in pings {
                let _ = ping.send(());
            }
        }
        if unsynced {
            self.commit(Batch::default(), true).await;
        }
        tracing::debug!(last_seq = self.last_seq, "journal writer stopped");
    }

    /// Over `max_bytes`: the sinks holding the journal back dead-letter their oldest records
    /// until it is back under 90 % of the limit.
    async fn shed_oldest(&mut self) {
        let min = self.min_cursor();
        let excess = self.stored_bytes - self.max_bytes / 10 * 9;
        let store = Arc::clone(&self.store);
        let target =
            match tokio::task::spawn_blocking(move || store.seq_covering(min, excess)).await {
                Ok(Ok(seq)) => seq,
                Ok(Err(err)) => return tracing::warn!(error = %err, "cannot size the journal"),
                Err(err) => return tracing::warn!(error = %err, "sizing the journal panicked"),
            };
        if target <= self.shed_to {
            return; // already under way
        }
        self.shed_to = target;
        let lagging: Vec<&str> = self
            .cursors
            .iter()
            .filter(|(_, at)| **at < target)
            .map(|(name, _)| name.as_str())
            .collect();
        tracing::error!(
            stored_bytes = self.stored_bytes,
            max_bytes = self.max_bytes,
            up_to_seq = target,
            sinks = ?lagging,
            "the journal is over state.max_bytes: the oldest records these sinks have not delivered go to their dead-letter files"
        );
        for name in lagging {
            if let Some(tx) = self.shed.get(name) {
                tx.send_replace(target);
            }
        }
    }

    /// Where the slowest sink stands (the last seq when there is no sink).
    fn min_cursor(&self) -> u64 {
        self.cursors
            .values()
            .copied()
            .min()
            .unwrap_or(self.last_seq)
    }

    fn prune_target(&self) -> Option<u64> {
        let min = self.min_cursor();
        (min > self.pruned_to).then_some(min)
    }

    async fn commit(&mut self, batch: Batch, durable: bool) {
        let Batch {
            records,
            waiters,
            cursors,
            flushes,
            pings: _,
            marks,
            mark_waiters,
        } = batch;
        for (name, seq) in &cursors {
            if let Some(at) = self.cursors.get_mut(name) {
                *at = (*at).max(*seq);
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let window = self.dedupe_window.as_secs().max(1);
        let forget = self
            .last_forget
            .is_none_or(|at| at.elapsed() >= FORGET_EVERY);
        let commit = Commit {
            entries: records,
            cursors: cursors.into_iter().collect(),
            prune_to: self.prune_target(),
            durable,
            marks,
            seen: Seen {
                now,
                window,
                forget_before: forget.then(|| now.saturating_sub(window)),
            },
        };
        let store = Arc::clone(&self.store);
        let at = (self.last_seq, self.stored_bytes);
        let work = move || {
            let result = store.commit(at, &commit);
            (result, commit)
        };
        // On the multi-threaded runtime the writer's own thread runs the commit (its other
        // tasks move to another thread meanwhile): no hand-off and wake-up on the way back.
        let result = if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            Ok(tokio::task::block_in_place(work))
        } else {
            tokio::task::spawn_blocking(work).await
        };
        let (result, commit) = match result {
            Ok(pair) => pair,
            Err(join) => {
                tracing::error!(error = %join, "journal commit panicked");
                return;
            }
        };
        let count = commit.entries.len() as u64;
        match result {
            Ok(Committed {
                seq,
                bytes,
                dropped,
            }) => {
                if forget {
                    self.last_forget = Some(std::time::Instant::now());
                }
                let count = count - dropped.len() as u64;
                if !dropped.is_empty() {
                    Stats::add(&self.stats.duplicates_dropped, dropped.len() as u64);
                    tracing::debug!(
                        records = dropped.len(),
                        "dropped records already journaled (live vs catch-up)"
                    );
                }
                self.stored_bytes = bytes;
                self.stats
                    .journal_bytes
                    .store(bytes, std::sync::atomic::Ordering::Relaxed);
                self.stats.committed(
                    commit
                        .entries
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| !dropped.contains(i))
                        .filter_map(|(_, entry)| match entry {
                            Entry::Record(r) => Some((&*r.property, r.kind.as_deref(), r.origin)),
                            Entry::Replay(_) => None,
                        }),
                );
                if let Some(outage) = self.outage.take() {
                    tracing::warn!(
                        path = %self.store.path().display(),
                        lost = outage.lost,
                        "journal writes work again"
                    );
                }
                self.last_seq = seq;
                if let Some(to) = commit.prune_to {
                    self.pruned_to = to;
                }
                Stats::add(&self.stats.records_committed, count);
                if count > 0 {
                    self.committed.send_replace(seq);
                }
                let first = seq - count;
                for (waiter, upto) in waiters {
                    let before = dropped.iter().filter(|&&i| i < upto).count();
                    let _ = waiter.send(Ok(first + (upto - before) as u64));
                }
                for done in mark_waiters {
                    let _ = done.send(Ok(()));
                }
                if self.stored_bytes > self.max_bytes {
                    self.shed_oldest().await;
                }
            }
            Err(err) => {
                let lost_total = Stats::add(&self.stats.records_lost, count);
                match &mut self.outage {
                    None => {
                        tracing::error!(
                            error = %err,
                            records = count,
                            lost_total,
                            "cannot write to the journal: these records are lost (counted); check free space on the state directory"
                        );
                        self.outage = Some(Outage {
                            lost: count,
                            last_report: std::time::Instant::now(),
                        });
                    }
                    Some(outage) => {
                        outage.lost += count;
                        if outage.last_report.elapsed() >= REPORT_EVERY {
                            tracing::error!(error = %err, lost = outage.lost, lost_total, "still cannot write to the journal");
                            outage.last_report = std::time::Instant::now();
                        } else {
                            tracing::debug!(error = %err, records = count, lost_total, "journal commit failed");
                        }
                    }
                }
                for (waiter, _) in waiters {
                    let _ = waiter.send(Err(JournalError::Write(err.to_string())));
                }
                for done in mark_waiters {
                    let _ = done.send(Err(JournalError::Write(err.to_string())));
                }
                // redb refuses every later write after an I/O error until the file is reopened.
                if matches!(
                    &err,
                    JournalError::Storage {
                        source: redb::Error::Io(_) | redb::Error::PreviousIo,
                        ..
                    }
                ) {
                    let store = Arc::clone(&self.store);
                    match tokio::task::spawn_blocking(move || store.reopen()).await {
                        Ok(Ok(())) => tracing::debug!("journal reopened after an I/O error"),
                        Ok(Err(err)) => {
                            tracing::debug!(error = %err, "cannot reopen the journal yet")
                        }
                        Err(err) => tracing::error!(error = %err, "reopening the journal panicked"),
                    }
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

//! Who runs a group commit, and when. One commit at a time runs under the lock around [`Core`].
//!
//! - A WebSocket reader that has read everything its socket holds commits the records queued
//!   at the head of the queue itself, on its own thread, if no commit is running
//!   ([`Shared::commit_queued`]). At a steady rate that is every event: no hand-off to another
//!   thread before the disk, and the sinks that keep up are woken on the reader's thread. It
//!   takes only WebSocket records (at most [`INLINE_RECORDS`]), only while commits work, and
//!   never waits: the first request of another kind, a failure, or a journal over `max_bytes`
//!   is left to the writer's thread.
//! - Everything else — and a reader's records while a commit runs or while its socket holds
//!   more (a burst) — is queued and the writer's own thread is woken ([`Shared::kick`]); it
//!   commits in groups while the readers go on decoding.
//!
//! Either way the requests go through one queue, in order, so a reader's records keep theirs.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::mpsc::error::TryRecvError;

use super::batch::Batch;
use super::{CHECK_EVERY, CURSOR_SYNC_AFTER, Core, MAX_BATCH_RECORDS, Op};

/// A reader commits at most this many records itself (one small direct write); a longer queue
/// is a burst, for the writer's thread.
const INLINE_RECORDS: usize = 256;

/// Where the writer is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Phase {
    /// Not running yet (its settings not applied): only its thread commits, once it runs.
    Waiting,
    /// Running: readers may commit their own records.
    Serving,
    /// Stopped, or a commit panicked: nothing more is written.
    Closed,
}

/// The writer's state behind its lock, and the writer thread's bell.
pub(crate) struct Shared {
    pub(super) core: Mutex<Core>,
    bell: Arc<Notify>,
}

impl Shared {
    pub(in crate::journal) fn new(core: Core) -> Arc<Shared> {
        Arc::new(Shared {
            core: Mutex::new(core),
            bell: Arc::new(Notify::new()),
        })
    }

    /// The writer's state, for one commit or check (a panic in an earlier one does not keep
    /// the journal from closing).
    fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bell on its own: the last handle rings it after letting go of the writer's state.
    pub(crate) fn bell(&self) -> Arc<Notify> {
        Arc::clone(&self.bell)
    }

    /// Wakes the writer's thread to commit what is queued (once, however often it is rung
    /// while the thread is busy).
    pub(crate) fn kick(&self) {
        self.bell.notify_one();
    }

    /// Commits the WebSocket records at the head of the queue on the calling thread if no
    /// commit is running and commits work; wakes the writer's thread for whatever is left.
    /// Never waits, so it is never cut short halfway.
    pub(crate) fn commit_queued(&self) {
        // Not taken: a commit runs (the writer's thread goes on after it), or one panicked
        // (the journal is closed).
        if let Ok(mut core) = self.core.try_lock()
            && core.takes_inline()
        {
            let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                core.commit_inline();
            }));
            if done.is_err() {
                tracing::error!("a journal commit panicked; nothing more is stored");
                core.close();
                drop(core);
                self.kick(); // the writer's thread stops
                return;
            }
            if !core.leaves_work() {
                return;
            }
        }
        self.kick();
    }
}

/// The writer of a journal. Run it with [`JournalWriter::run`]; it ends when every
/// [`crate::journal::Journal`] handle is dropped, after a last durable commit.
pub struct JournalWriter {
    shared: Arc<Shared>,
    track_commands: bool,
    dedupe_window: Duration,
}

impl JournalWriter {
    pub(in crate::journal) fn new(shared: Arc<Shared>) -> Self {
        JournalWriter {
            shared,
            track_commands: false,
            dedupe_window: crate::config::defaults::DEDUPE_WINDOW,
        }
    }

    /// Tracks every DeviceCommand record for the command loop (`[commands]`, `[api]`).
    pub fn track_commands(mut self, on: bool) -> Self {
        self.track_commands = on;
        self
    }

    /// How long dedupe keys are remembered (`catch_up.dedupe_window`; default 24 h).
    pub fn dedupe_window(mut self, window: Duration) -> Self {
        self.dedupe_window = window;
        self
    }

    /// Runs the writer's thread (it commits what readers leave to it, stores cursor moves
    /// and checks the journal file), until every handle is gone; the journal's files are
    /// closed when this returns.
    pub async fn run(self) {
        {
            let mut core = self.shared.core();
            core.track_commands = self.track_commands;
            core.dedupe_window = self.dedupe_window;
            core.phase = Phase::Serving;
        }
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let shared = self.shared;
        let on_error = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || {
                // Timers only: without an I/O driver the thread sleeps on a futex, not in
                // `epoll_wait`, and a hand-off wakes it without an eventfd write.
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            runtime.block_on(serve(&shared));
                        }));
                        if served.is_err() {
                            tracing::error!("the journal writer panicked; nothing more is stored");
                        }
                    }
                    Err(err) => tracing::error!(error = %err, "cannot start the journal writer"),
                }
                shared.core().close();
                // The thread's reference: the journal's files close with the last one (the
                // handles are gone, `run` lets go of its own when this is sent).
                drop(shared);
                let _ = done_tx.send(());
            });
        match thread {
            Ok(_) => {
                let _ = done_rx.await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot start the journal writer's thread");
                on_error.core().close();
            }
        }
    }
}

/// The writer thread's loop: commits what it is woken for, stores cursor moves, checks the
/// journal file.
async fn serve(shared: &Shared) {
    let mut sync = tokio::time::interval(CURSOR_SYNC_AFTER);
    sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sync.reset();
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check.reset();
    loop {
        // Queued requests are committed only when rung for: a missed bell shows in the tests
        // as records that never come, not as records a tick late.
        tokio::select! {
            () = shared.bell.notified() => {}
            _ = sync.tick() => {
                let mut core = shared.core();
                if core.phase != Phase::Closed && core.dirty() {
                    core.commit(Batch::default(), true);
                    core.shed_if_over();
                }
                continue;
            }
            _ = check.tick() => {
                let mut core = shared.core();
                if core.phase != Phase::Closed {
                    core.check();
                }
                continue;
            }
        }
        let mut core = shared.core();
        if core.phase == Phase::Closed {
            return; // a commit panicked: nothing more is written
        }
        match core.commit_once() {
            // More may be queued: back for it once the ticks had their turn (a flood must not
            // hold up cursor syncs, file checks and shedding).
            Ok(true) => shared.kick(),
            Ok(false) => {}
            Err(()) => {
                if core.dirty() {
                    core.commit(Batch::default(), true);
                }
                core.put_back_if_gone();
                tracing::debug!(last_seq = core.last_seq, "journal writer stopped");
                return;
            }
        }
        core.shed_if_over();
    }
}

impl Core {
    /// The next request: the one a reader's commit stopped at, else the queue's head.
    fn next_op(&mut self) -> Result<Op, TryRecvError> {
        match self.carry.take() {
            Some(op) => Ok(op),
            None => self.ops.try_recv(),
        }
    }

    /// One group commit of what is queued: `Ok(false)` if nothing was, `Err` once every
    /// handle is gone.
    pub(super) fn commit_once(&mut self) -> Result<bool, ()> {
        let first = match self.next_op() {
            Ok(op) => op,
            Err(TryRecvError::Empty) => return Ok(false),
            Err(TryRecvError::Disconnected) => return Err(()),
        };
        // As many slots as the last batch had records: a burst grows the vector once.
        let mut batch = Batch {
            records: Vec::with_capacity(self.last_batch),
            ..Batch::default()
        };
        batch.add(first);
        while batch.records.len() < MAX_BATCH_RECORDS && batch.claims.is_empty() {
            match self.ops.try_recv() {
                Ok(op) => batch.add(op),
                Err(_) => break,
            }
        }
        self.last_batch = batch.records.len();
        let pings = std::mem::take(&mut batch.pings);
        let claims = std::mem::take(&mut batch.claims);
        if batch.writes() {
            let sync = batch.sync();
            self.commit(batch, sync);
        }
        for op in claims {
            self.claim_or_release(op);
        }
        for ping in pings {
            let _ = ping.send(());
        }
        Ok(true)
    }

    /// Whether a reader may commit now: the writer runs, commits work, and nothing is left
    /// over for the writer's thread.
    fn takes_inline(&self) -> bool {
        self.phase == Phase::Serving && self.outage.is_none() && self.carry.is_none()
    }

    /// Whether the writer's thread has work after a reader's commit: requests left, a failure
    /// to recover from, or a journal over `max_bytes` with no shed under way.
    fn leaves_work(&mut self) -> bool {
        self.carry.is_some()
            || !self.ops.is_empty()
            || self.outage.is_some()
            || self.live_bytes() > self.max_bytes && self.min_cursor() >= self.shed_to
    }

    /// A reader's commit: the WebSocket records at the head of the queue, up to
    /// [`INLINE_RECORDS`]; the first request of another kind, or one that would go past the
    /// limit, is kept for the writer's thread.
    fn commit_inline(&mut self) {
        let mut batch = Batch {
            light: true,
            ..Batch::default()
        };
        loop {
            match self.ops.try_recv() {
                Ok(Op::Append(append))
                    if append.waiter.is_none()
                        && append.unheal.is_empty()
                        && batch.records.len() + append.entries.len() <= INLINE_RECORDS =>
                {
                    batch.add(Op::Append(append));
                }
                Ok(op) => {
                    self.carry = Some(op);
                    break;
                }
                Err(_) => break,
            }
        }
        if !batch.records.is_empty() {
            self.commit(batch, false);
        }
    }

    /// Nobody commits any more: whoever waits on a request still queued hears that the
    /// journal is closed, later requests are refused, and records nobody waits for are
    /// counted as lost.
    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.ops.close();
        let mut lost = 0;
        while let Ok(op) = self.next_op() {
            if let Op::Append(append) = op
                && append.waiter.is_none()
            {
                lost += append.entries.len() as u64;
            }
        }
        crate::stats::Stats::add(&self.stats.records_lost, lost);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use crate::journal::Journal;
    use crate::record::{Enrich, Record};
    use crate::stats::Stats;

    fn open(dir: &Path) -> (Journal, super::JournalWriter) {
        Journal::open(dir, &["s".to_owned()], 1 << 30, Arc::new(Stats::default())).unwrap()
    }

    fn records(from: usize, n: usize) -> Vec<Record> {
        (from..from + n)
            .map(|i| crate::journal::value::test_record(&format!("r{i}"), Enrich::None, None))
            .collect()
    }

    /// Waits (at most 10 s) until `seq` is committed and visible to readers.
    async fn committed(journal: &Journal, seq: u64) {
        let mut committed = journal.visible();
        tokio::time::timeout(Duration::from_secs(10), committed.wait_for(|at| *at >= seq))
            .await
            .expect("committed in time")
            .unwrap();
    }

    /// The ids of every record in the journal, in seq order.
    async fn ids(journal: &Journal) -> Vec<String> {
        let stored = journal.read_after(0, 100_000).await.unwrap();
        stored
            .iter()
            .map(|r| {
                let record = Record::from_json(&r.json).unwrap();
                record.id.unwrap().to_string()
            })
            .collect()
    }

    /// A reader whose socket is drained commits on its own thread: the records are committed
    /// when `commit_queued` returns. (The writer's thread is not even started here, so no
    /// other thread can have done it.) A request of another kind stops the reader's commit:
    /// it and what follows are the writer thread's, in order.
    #[tokio::test]
    async fn a_reader_with_nothing_more_to_read_commits_on_its_own_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, writer) = open(dir.path());
        writer.shared.core().phase = super::Phase::Serving;
        for round in 0..20 {
            journal.queue(records(round * 3, 3), false).await.unwrap();
            assert_eq!(
                *journal.committed().borrow(),
                round as u64 * 3,
                "queued only"
            );
            journal.commit_queued();
            assert_eq!(*journal.committed().borrow(), round as u64 * 3 + 3);
        }
        journal.queue(records(60, 1), false).await.unwrap();
        let (tx, mut pinged) = tokio::sync::oneshot::channel();
        journal.send(super::Op::Ping(tx)).await.unwrap();
        journal.queue(records(61, 1), false).await.unwrap();
        journal.commit_queued();
        assert_eq!(*journal.committed().borrow(), 61, "up to the ping");
        assert!(
            pinged.try_recv().is_err(),
            "the ping is the writer thread's"
        );
        let writer = tokio::spawn(writer.run());
        pinged.await.unwrap();
        committed(&journal, 62).await;
        assert_eq!(ids(&journal).await.last().unwrap(), "r61");
        drop(journal);
        writer.await.unwrap();
    }

    /// A message with more records than a reader commits itself is left to the writer's
    /// thread whole (a reader's worker is held up by small writes only).
    #[tokio::test]
    async fn a_message_over_the_inline_limit_is_the_writers() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, writer) = open(dir.path());
        writer.shared.core().phase = super::Phase::Serving;
        journal
            .queue(records(0, super::INLINE_RECORDS + 1), false)
            .await
            .unwrap();
        journal.commit_queued();
        assert_eq!(*journal.committed().borrow(), 0);
        let writer = tokio::spawn(writer.run());
        committed(&journal, super::INLINE_RECORDS as u64 + 1).await;
        drop(journal);
        writer.await.unwrap();
    }

    /// In a burst the reader does not commit: the writer's thread does, woken by the queue.
    /// A reader that stops with records queued leaves them to the writer the same way. (Both
    /// are queued before the writer runs, so nothing else can have woken it.)
    #[tokio::test]
    async fn a_burst_and_a_reader_that_stops_leave_the_commit_to_the_writer() {
        for burst in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let (journal, writer) = open(dir.path());
            journal.queue(records(0, 2), burst).await.unwrap();
            if !burst {
                journal.kick();
            }
            let writer = tokio::spawn(writer.run());
            committed(&journal, 2).await;
            assert_eq!(ids(&journal).await, ["r0", "r1"]);
            drop(journal);
            writer.await.unwrap();
        }
    }

    /// Before the writer runs (with its settings) a reader commits nothing itself; what it
    /// queued is committed once the writer runs.
    #[tokio::test]
    async fn records_queued_before_the_writer_runs_wait_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, writer) = open(dir.path());
        journal.queue(records(0, 1), false).await.unwrap();
        journal.commit_queued();
        assert_eq!(*journal.committed().borrow(), 0);
        let writer = tokio::spawn(writer.run());
        committed(&journal, 1).await;
        drop(journal);
        writer.await.unwrap();
    }

    /// Two readers on two threads, one committing its own records, the other leaving them to
    /// the writer's thread, while requests that always go to the writer's thread come in
    /// between: every record is committed once, and each reader's in the order it read them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_keep_each_readers_order_whoever_commits_them() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, writer) = open(dir.path());
        let writer = tokio::spawn(writer.run());
        journal.ping().await.unwrap();
        const N: usize = 400;
        let reader = |offset: usize, burst: bool| {
            let journal = journal.clone();
            tokio::spawn(async move {
                for i in 0..N {
                    journal
                        .queue(records(offset + i, 1), burst && i % 3 != 0)
                        .await
                        .unwrap();
                    if i % 2 == 0 {
                        journal.commit_queued();
                    }
                    if i % 50 == 0 {
                        journal.ping().await.unwrap();
                    }
                }
                journal.commit_queued();
            })
        };
        let (a, b) = (reader(0, false), reader(10_000, true));
        a.await.unwrap();
        b.await.unwrap();
        journal.flush().await.unwrap();
        let ids = ids(&journal).await;
        assert_eq!(ids.len(), 2 * N);
        for offset in [0, 10_000] {
            let mine: Vec<&String> = ids
                .iter()
                .filter(|id| {
                    let n: usize = id[1..].parse().unwrap();
                    (offset..offset + N).contains(&n)
                })
                .collect();
            let expected: Vec<String> = (offset..offset + N).map(|n| format!("r{n}")).collect();
            assert_eq!(mine, expected.iter().collect::<Vec<_>>());
        }
        drop(journal);
        writer.await.unwrap();
    }

    /// A flood that never lets the queue run empty still leaves the writer's thread time for
    /// its other work: past `max_bytes`, the sink holding the journal back is told to shed
    /// while the records keep coming.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_does_not_hold_up_shedding() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, writer) = Journal::open(
            dir.path(),
            &["s".to_owned()],
            64 << 10,
            Arc::new(Stats::default()),
        )
        .unwrap();
        let writer = tokio::spawn(writer.run());
        let mut shed = journal.shed_signal("s");
        let stop = tokio_util::sync::CancellationToken::new();
        let floods: Vec<_> = (0..4)
            .map(|task| {
                let (journal, stop) = (journal.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut i = 0;
                    while !stop.is_cancelled() {
                        journal
                            .queue(records(task * 1_000_000 + i, 50), true)
                            .await
                            .unwrap();
                        i += 50;
                    }
                })
            })
            .collect();
        let told = tokio::time::timeout(Duration::from_secs(10), shed.wait_for(|to| *to > 0))
            .await
            .is_ok();
        stop.cancel();
        for flood in floods {
            flood.await.unwrap();
        }
        assert!(told, "no shed signal while the flood went on");
        drop((journal, shed));
        writer.await.unwrap();
    }
}

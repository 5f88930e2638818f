//! The single journal writer: group commits, cursor updates, pruning; a batch is gathered in
//! [`batch`] and committed in [`commit`]; what to do when a write fails or the file is gone is
//! in [`trouble`].

mod batch;
mod commit;
mod sinks;
mod trouble;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::JournalError;
use super::claims::Claims;
use super::commands::{Ack, Answered, Outgoing, Request, RequestOutcome};
use super::store::{Opened, Store};
use super::value::Entry;
use crate::record::Record;
use crate::stats::Stats;
use batch::Batch;
use trouble::Outage;

/// Queue depth: how many appends may wait while a commit runs before producers wait too.
pub(super) const QUEUE: usize = 4096;
/// At most this many records in one transaction.
const MAX_BATCH_RECORDS: usize = 16_384;
/// Cursor moves (and the state of records appended without a state transaction) are stored
/// at the latest this long after they happened, in one durable transaction.
const CURSOR_SYNC_AFTER: Duration = Duration::from_secs(1);
/// This often the writer checks that the path still holds its journal file (one `stat`), and
/// while commits fail, whether one would be stored again (see [`Store::probe`]).
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(2);

type Waiter = oneshot::Sender<Result<u64, JournalError>>;

/// A record that waits for enrichment, as its enricher gets it.
#[derive(Debug)]
pub struct Note {
    /// Its seq: it is settled under this seq.
    pub seq: u64,
    /// The record as journaled.
    pub record: Record,
}

/// A settled record, from the enricher: `command` or `enrich_error` is now set.
#[derive(Debug)]
pub struct Settle {
    /// The seq it was journaled under.
    pub seq: u64,
    /// The record with its details (or its error).
    pub record: Record,
    /// It went out without details: remember its command state for healing under this key.
    pub heal: Option<String>,
}

/// An append: entries, heal keys done with (in the same transaction), and who waits.
pub(super) struct Append {
    pub entries: Vec<Entry>,
    pub unheal: Vec<String>,
    pub waiter: Option<Waiter>,
}

/// A request to the writer.
pub(super) enum Op {
    Append(Append),
    /// The Pending commands a sink delivered (for `received_after`); the sink moved its
    /// position (shared) before it sent them, so the commit that queues them stores it too.
    Acks(Vec<Ack>),
    /// A key system's request to change a command's state.
    Request(
        Request,
        oneshot::Sender<Result<RequestOutcome, JournalError>>,
    ),
    /// Mews answered an outgoing command update.
    Answered(Answered),
    /// An updater takes a property's outgoing updates.
    ClaimUpdates(String, oneshot::Sender<mpsc::UnboundedReceiver<Outgoing>>),
    /// Enriched (or failed) pending records.
    Settle(Vec<Settle>),
    /// An enricher takes the pending records of a property, those journaled so far and later.
    Claim(String, oneshot::Sender<mpsc::UnboundedReceiver<Note>>),
    /// Pending records nobody claimed are settled with this `enrich_error`.
    ReleaseUnclaimed(String, oneshot::Sender<()>),
    Flush(oneshot::Sender<Result<(), JournalError>>),
    /// Answered once everything queued before it is done: proof the writer is not stuck.
    Ping(oneshot::Sender<()>),
    /// Sets a catch-up mark, durably.
    Mark(String, u64, oneshot::Sender<Result<(), JournalError>>),
    /// These are the sinks from now on (a reload): new ones start after the last record.
    Sinks(Vec<String>, oneshot::Sender<SinksSet>),
}

/// Where each sink new to the journal starts, or why the sinks could not be set.
pub(super) type SinksSet = Result<HashMap<String, super::SinkStart>, JournalError>;

/// The task that owns all writes. Run it with [`JournalWriter::run`]; it ends when every
/// [`super::Journal`] handle is dropped, after a last durable commit.
pub struct JournalWriter {
    store: Arc<Store>,
    ops: mpsc::Receiver<Op>,
    committed: watch::Sender<u64>,
    /// The last seq sinks may read: before the oldest pending record.
    visible: watch::Sender<u64>,
    /// Pending records by seq, with their property.
    pending: std::collections::BTreeMap<u64, Arc<str>>,
    /// Pending records, by property, for the enrichers.
    notes: Claims<Note>,
    /// Outgoing command updates, by property, for the updaters.
    updates: Claims<Outgoing>,
    /// Whether DeviceCommand records are tracked for the command loop.
    track_commands: bool,
    last_seq: u64,
    /// Bytes in the log (what the disk holds, delivered records included until pruned).
    stored_bytes: u64,
    /// Bytes appended by each commit, with its last seq: what the slowest sink has not passed
    /// yet adds up to what `max_bytes` limits.
    appended: std::collections::VecDeque<(u64, u64)>,
    max_bytes: u64,
    /// Every sink's cursor as it moved it (shared: a sink moves its own without a message).
    positions: super::Positions,
    /// The cursors as last stored durably: records are removed only behind these.
    synced: HashMap<String, u64>,
    /// Records appended since the last durable state transaction (their `applied_seq`).
    unsynced: bool,
    /// The records just committed, for sinks that keep up (shared with every handle).
    tail: Arc<super::tail::Tail>,
    /// Where records were last pruned (shared: readers never see records up to it).
    pruned: Arc<std::sync::atomic::AtomicU64>,
    pruned_to: u64,
    shed: HashMap<String, watch::Sender<u64>>,
    shed_to: u64,
    stats: Arc<Stats>,
    outage: Option<Outage>,
    /// Settles refused while the journal file is gone: handed back if it comes back.
    parked: Vec<Note>,
    dedupe_window: Duration,
    last_forget: Option<std::time::Instant>,
}

/// What [`JournalWriter::new`] needs.
pub(super) struct Setup {
    pub store: Arc<Store>,
    pub ops: mpsc::Receiver<Op>,
    pub committed: watch::Sender<u64>,
    pub visible: watch::Sender<u64>,
    pub opened: Opened,
    pub max_bytes: u64,
    pub shed: HashMap<String, watch::Sender<u64>>,
    pub stats: Arc<Stats>,
    pub tail: Arc<super::tail::Tail>,
    pub pruned: Arc<std::sync::atomic::AtomicU64>,
    pub positions: super::Positions,
}

impl JournalWriter {
    pub(super) fn new(setup: Setup) -> Self {
        // A journal opened again (a reload, e.g. after its file was put back) starts healthy.
        setup.stats.journal.set_file(None);
        setup.stats.journal.set_writes(None);
        Stats::add(&setup.stats.records_lost, setup.opened.lost);
        setup.stats.command_updates_waiting.store(
            setup.opened.outbox.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let mut pending = std::collections::BTreeMap::new();
        let mut notes = Vec::new();
        for stored in setup.opened.pending {
            let property: Arc<str> = Arc::clone(&stored.property);
            pending.insert(stored.seq, property);
            match Record::from_json(&stored.json) {
                Some(record) => notes.push(Note {
                    seq: stored.seq,
                    record,
                }),
                None => tracing::error!(
                    seq = stored.seq,
                    "a pending journal record cannot be read back; it stays held back"
                ),
            }
        }
        JournalWriter {
            store: setup.store,
            ops: setup.ops,
            committed: setup.committed,
            visible: setup.visible,
            pending,
            notes: Claims::new(notes),
            updates: Claims::new(setup.opened.outbox),
            track_commands: false,
            last_seq: setup.opened.last_seq,
            stored_bytes: setup.opened.stored_bytes,
            appended: std::collections::VecDeque::from([(
                setup.opened.last_seq,
                setup.opened.stored_bytes,
            )]),
            max_bytes: setup.max_bytes,
            synced: setup.opened.cursors.clone(),
            positions: setup.positions,
            unsynced: false,
            tail: setup.tail,
            pruned_to: setup.pruned.load(std::sync::atomic::Ordering::Acquire),
            pruned: setup.pruned,
            shed: setup.shed,
            shed_to: 0,
            stats: setup.stats,
            outage: None,
            parked: Vec::new(),
            dedupe_window: crate::config::defaults::DEDUPE_WINDOW,
            last_forget: None,
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

    /// Commits until every handle is gone.
    /// Runs the writer on a thread of its own (commits block in `fdatasync`; on its own thread
    /// they hold up no other task and need no hand-off), until every handle is gone.
    pub async fn run(self) {
        let (done_tx, done_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || {
                // Timers only: without an I/O driver the thread sleeps on a futex, not in
                // `epoll_wait`, and a hand-off wakes it without an eventfd write.
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build();
                match runtime {
                    Ok(runtime) => runtime.block_on(self.serve()),
                    Err(err) => tracing::error!(error = %err, "cannot start the journal writer"),
                }
                let _ = done_tx.send(());
            });
        match thread {
            Ok(_) => {
                let _ = done_rx.await;
            }
            Err(err) => tracing::error!(error = %err, "cannot start the journal writer's thread"),
        }
    }

    /// The writer's loop: group commits, cursor syncs, checks of the journal file.
    async fn serve(mut self) {
        let mut sync = tokio::time::interval(CURSOR_SYNC_AFTER);
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sync.reset();
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.reset();
        let mut last_batch = 0;
        loop {
            let first = tokio::select! {
                op = self.ops.recv() => op,
                _ = sync.tick() => {
                    if self.dirty() {
                        self.commit(Batch::default(), true).await;
                    }
                    continue;
                }
                _ = check.tick() => {
                    self.check().await;
                    continue;
                }
            };
            let Some(first) = first else { break };
            // As many slots as the last batch had records: a burst grows the vector once.
            let mut batch = Batch {
                records: Vec::with_capacity(last_batch),
                ..Batch::default()
            };
            batch.add(first);
            while batch.records.len() < MAX_BATCH_RECORDS && batch.claims.is_empty() {
                match self.ops.try_recv() {
                    Ok(op) => batch.add(op),
                    Err(_) => break,
                }
            }
            last_batch = batch.records.len();
            let pings = std::mem::take(&mut batch.pings);
            let claims = std::mem::take(&mut batch.claims);
            if batch.writes() {
                let sync = batch.sync();
                self.commit(batch, sync).await;
            }
            for op in claims {
                self.claim_or_release(op).await;
            }
            for ping in pings {
                let _ = ping.send(());
            }
        }
        if self.dirty() {
            self.commit(Batch::default(), true).await;
        }
        self.put_back_if_gone().await;
        tracing::debug!(last_seq = self.last_seq, "journal writer stopped");
    }

    /// Every sink's cursor now.
    fn cursors(&self) -> HashMap<String, u64> {
        self.positions.snapshot()
    }

    /// Whether a durable state transaction is due: cursors moved, or records were appended
    /// without one.
    fn dirty(&self) -> bool {
        self.unsynced || self.cursors() != self.synced
    }

    /// An enricher claims a property's pending records, or the unclaimed ones are released.
    async fn claim_or_release(&mut self, op: Op) {
        match op {
            Op::Claim(property, reply) => {
                let _ = reply.send(self.notes.claim(property));
            }
            Op::ClaimUpdates(property, reply) => {
                let _ = reply.send(self.updates.claim(property));
            }
            Op::ReleaseUnclaimed(reason, done) => {
                if self.updates.unclaimed() > 0 {
                    tracing::warn!(
                        updates = self.updates.unclaimed(),
                        "command updates wait in the journal for a property without a Mews REST client; they are sent once it has one"
                    );
                }
                let notes = self.notes.take_unclaimed();
                if !notes.is_empty() {
                    tracing::warn!(
                        records = notes.len(),
                        "records journaled for enrichment go on without details: {reason}"
                    );
                    let settled = notes
                        .into_iter()
                        .map(|note| {
                            let mut record = note.record;
                            record.enrich_error = Some(reason.clone());
                            Settle {
                                seq: note.seq,
                                record,
                                heal: None,
                            }
                        })
                        .collect();
                    let batch = Batch {
                        settled,
                        ..Batch::default()
                    };
                    self.commit(batch, true).await;
                }
                let _ = done.send(());
            }
            Op::Sinks(names, reply) => {
                let _ = reply.send(self.set_sinks(names));
            }
            _ => {}
        }
    }

    /// The last seq sinks may read.
    fn visible_seq(&self) -> u64 {
        self.pending
            .first_key_value()
            .map_or(self.last_seq, |(seq, _)| seq - 1)
    }

    /// Over `max_bytes`: the sinks holding the journal back dead-letter their oldest records
    /// until it is back under 90 % of the limit.
    async fn shed_oldest(&mut self) {
        let min = self.min_cursor();
        let excess = self.live_bytes() - self.max_bytes / 10 * 9;
        let store = Arc::clone(&self.store);
        let target =
            match tokio::task::spawn_blocking(move || store.seq_covering(min, excess)).await {
                Ok(Ok(seq)) => seq,
                Ok(Err(err)) => return tracing::warn!(error = %err, "cannot size the journal"),
                Err(err) => return tracing::warn!(error = %err, "sizing the journal panicked"),
            };
        let target = target.min(self.visible_seq());
        if target <= self.shed_to {
            return; // already under way
        }
        self.shed_to = target;
        let live = self.live_bytes();
        let cursors = self.cursors();
        let lagging: Vec<&str> = cursors
            .iter()
            .filter(|(_, at)| **at < target)
            .map(|(name, _)| name.as_str())
            .collect();
        tracing::error!(
            stored_bytes = live,
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

    /// Bytes of the records the slowest sink has not passed (per commit, so a little more).
    fn live_bytes(&mut self) -> u64 {
        let min = self.min_cursor();
        while self.appended.front().is_some_and(|(last, _)| *last <= min) {
            self.appended.pop_front();
        }
        self.appended.iter().map(|(_, bytes)| bytes).sum()
    }

    /// Where the slowest sink stands (the last seq when there is no sink).
    fn min_cursor(&self) -> u64 {
        self.positions.min().unwrap_or(self.last_seq)
    }

    /// Records every sink has passed by its durably stored cursor may go.
    fn prune_target(&self) -> Option<u64> {
        let synced = self.synced.values().copied().min().unwrap_or(self.last_seq);
        let min = synced.min(self.visible_seq());
        (min > self.pruned_to).then_some(min)
    }

    /// Hands a pending record to its property's enricher, or keeps it until one claims it.
    fn route(&mut self, note: Note) {
        self.notes.route(note);
    }
}

//! The single journal writer: group commits, cursor updates, pruning; a batch is gathered in
//! [`batch`] and committed in [`commit`]; what to do when a write fails or the file is gone is
//! in [`trouble`].

mod batch;
mod commit;
mod serve;
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
pub use serve::JournalWriter;
use serve::Phase;
pub(super) use serve::Shared;
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

/// Everything the writer keeps: one group commit at a time runs under the lock around it
/// (see [`serve`]), on the writer's thread or on a WebSocket reader's that found it free.
pub(crate) struct Core {
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
    /// Whether the writer runs with its settings, and whether it has stopped.
    phase: Phase,
    /// How many records the last group commit took.
    last_batch: usize,
    /// The request a reader's commit stopped at: the writer's thread takes it first.
    carry: Option<Op>,
    last_forget: Option<std::time::Instant>,
}

/// What [`JournalWriter::new`] needs.
pub(in crate::journal) struct Setup {
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

impl Core {
    pub(in crate::journal) fn new(setup: Setup) -> Self {
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
        Core {
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
            phase: Phase::Waiting,
            last_batch: 0,
            carry: None,
            last_forget: None,
        }
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
    fn claim_or_release(&mut self, op: Op) {
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
                    self.commit(batch, true);
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
    fn shed_if_over(&mut self) {
        if self.live_bytes() <= self.max_bytes {
            return;
        }
        let min = self.min_cursor();
        let excess = self.live_bytes() - self.max_bytes / 10 * 9;
        let target = match self.store.seq_covering(min, excess) {
            Ok(seq) => seq,
            Err(err) => return tracing::warn!(error = %err, "cannot size the journal"),
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

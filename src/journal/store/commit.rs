//! One group commit: dedupe decisions, the records appended to the log (one write, one
//! `fdatasync`), then — only if there is state to change — one redb transaction with their
//! effects, cursors, settles, marks and the command loop's work.

use std::collections::HashSet;

use bytes::Bytes;
use redb::{Durability, ReadableTable, ReadableTableMetadata};

use super::super::JournalError;
use super::super::commands::{
    Ack, Answered, COMMANDS, CommandTables, OUTBOX, Outgoing, Request, RequestOutcome,
};
use super::super::log::segment::{self, Effects, Frame};
use super::super::value::{self, Entry, StoredRecord};
use super::{
    APPLIED_SEQ, CURSORS, HEAL, LAST_SEQ, MARKS, META, OUTBOX_KEY, PENDING, SEEN, SETTLED, Store,
    storage,
};
use crate::record::{Enrich, Record};

/// A mark (where a frame starts) every this many bytes of a commit's frames.
const MARK_EVERY: usize = 64 * 1024;

/// A record settled by the enricher: its new value, and whether its command must be healed.
pub(in crate::journal) struct Settled {
    pub seq: u64,
    /// The whole encoded entry (see [`value::encode`]).
    pub value: Vec<u8>,
    /// Went out without details: this dedupe key is forgotten and remembered for healing.
    pub heal: Option<String>,
}

/// What one commit does.
pub(in crate::journal) struct Commit {
    pub entries: Vec<Entry>,
    /// Every sink's cursor, written when `sync` is set or a transaction runs anyway.
    pub cursors: Vec<(String, u64)>,
    /// Remove records up to here (every sink's durably stored cursor is past them).
    pub prune_to: Option<u64>,
    /// Write the cursors durably now (a flush, the periodic cursor sync, acknowledgements).
    pub sync: bool,
    pub marks: Vec<(String, u64)>,
    /// Dedupe: keys first seen less than `window` seconds before `now` drop their record.
    pub seen: Seen,
    /// Pending records that got their final value.
    pub settled: Vec<Settled>,
    /// Heal keys done with (their command was forwarded again, or is no longer active).
    pub unheal: Vec<String>,
    /// The command loop: its work in this commit.
    pub commands: CommandWork,
}

/// What the command loop does in one commit.
#[derive(Default)]
pub(in crate::journal) struct CommandWork {
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
    fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.acks.is_empty() && self.answered.is_empty()
    }
}

/// The clock and window the dedupe keys are judged by, and an optional clean-up.
#[derive(Clone, Copy)]
pub(in crate::journal) struct Seen {
    pub now: u64,
    pub window: u64,
    /// Forget keys first seen before this (unix seconds).
    pub forget_before: Option<u64>,
}

/// What a commit did.
pub(in crate::journal) struct Committed {
    pub seq: u64,
    pub bytes: u64,
    /// Indexes of entries dropped as duplicates (no seq given).
    pub dropped: Vec<usize>,
    /// Command updates queued, for the updaters.
    pub queued: Vec<Outgoing>,
    /// What became of each request, in order.
    pub outcomes: Vec<RequestOutcome>,
    /// The records appended, as sinks read them.
    pub fresh: Vec<StoredRecord>,
    /// The cursors were stored durably.
    pub cursors_synced: bool,
    /// Updates waiting in the outbox after this commit, when it changed them.
    pub outbox: Option<u64>,
    /// The records are stored, but the state transaction after them failed: what it carried
    /// besides their effects (settles, marks, requests, acknowledgements, cursors) is not.
    pub state_error: Option<JournalError>,
}

impl Store {
    /// Runs one commit: entries get seqs after `last_seq`. The state transaction is prepared
    /// first, the records appended to the log (durably), then the transaction committed: a
    /// failed append leaves nothing behind; a failed state commit after it leaves records that
    /// are stored (their effects are applied with the next transaction, or replayed from the
    /// log at the next open) and reports the rest of the state as not stored.
    pub fn commit(&self, last_seq: u64, commit: &Commit) -> Result<Committed, JournalError> {
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
        let db = self.db_or_reopen()?;
        let err = |e: redb::Error| storage(&self.path, e);
        let mut unapplied = self.unapplied.lock().unwrap_or_else(|p| p.into_inner());
        let txn = if needs_state(commit) || !unapplied.is_empty() {
            let mut txn = db.begin_write().map_err(|e| err(e.into()))?;
            let durable = commit.sync || needs_durable_state(commit);
            if !durable {
                txn.set_durability(Durability::None)
                    .map_err(|e| err(e.into()))?;
            }
            Some((txn, durable))
        } else {
            None
        };
        let dropped = match &txn {
            Some((txn, _)) => duplicates(txn, commit).map_err(err)?,
            None => Vec::new(),
        };
        let encoded = encode(last_seq, commit, &dropped);
        let seq = last_seq + encoded.spans.len() as u64;
        let mut out = Committed {
            seq,
            bytes: 0,
            dropped,
            queued: Vec::new(),
            outcomes: Vec::new(),
            fresh: Vec::new(),
            cursors_synced: false,
            outbox: None,
            state_error: None,
        };
        if let Some((txn, _)) = &txn {
            let earlier = std::mem::take(&mut *unapplied);
            let frames: Vec<Frame> = earlier
                .into_iter()
                .chain(encoded.effects.iter().cloned())
                .collect();
            self.state(txn, seq, commit, &frames, &mut out)
                .map_err(err)?;
        }
        if !encoded.spans.is_empty() {
            // A failure here drops the prepared transaction: nothing of this commit remains.
            self.log
                .append(&encoded.buf, last_seq + 1, seq, &encoded.marks)
                .map_err(|io| self.io(io))?;
        }
        if let Some((txn, durable)) = txn {
            match txn.commit() {
                Ok(()) => out.cursors_synced = durable,
                Err(e) => {
                    // The records are stored; their effects go with the next transaction.
                    unapplied.extend(encoded.effects.iter().cloned());
                    out.state_error = Some(err(e.into()));
                }
            }
        }
        drop(unapplied);
        if let (Some(to), None) = (commit.prune_to, &out.state_error) {
            self.log.prune(to).map_err(|io| self.io(io))?;
        }
        let buf = Bytes::from(encoded.buf);
        out.fresh = encoded
            .spans
            .into_iter()
            .map(|span| {
                let json = buf.slice(span.json..span.end);
                span.named.stored(self.journal_id, span.seq, json)
            })
            .collect();
        out.bytes = self.log.bytes();
        Ok(out)
    }

    /// The state transaction's content: record effects, settles, heal keys, marks, cursors,
    /// the command loop, `applied_seq`, and the clean-ups.
    fn state(
        &self,
        txn: &redb::WriteTransaction,
        seq: u64,
        commit: &Commit,
        frames: &[Frame],
        out: &mut Committed,
    ) -> Result<(), redb::Error> {
        let now = commit.seen.now;
        apply(txn, frames, now)?;
        settle(txn, commit, now)?;
        let mut meta = txn.open_table(META)?;
        if commit.commands.track || !commit.commands.is_empty() {
            let dropped = std::mem::take(&mut out.dropped);
            let kept = commit
                .entries
                .iter()
                .enumerate()
                .filter(|(i, _)| !dropped.contains(i))
                .map(|(_, entry)| entry);
            let done = command_work(txn, &mut meta, commit, kept, out);
            out.dropped = dropped;
            done?;
        }
        meta.insert(LAST_SEQ, seq)?;
        meta.insert(APPLIED_SEQ, seq)?;
        let mut cursors = txn.open_table(CURSORS)?;
        for (name, at) in &commit.cursors {
            cursors.insert(name.as_str(), *at)?;
        }
        if !commit.marks.is_empty() {
            let mut marks = txn.open_table(MARKS)?;
            for (name, at) in &commit.marks {
                marks.insert(name.as_str(), *at)?;
            }
        }
        if let Some(before) = commit.seen.forget_before {
            txn.open_table(SEEN)?.retain(|_, first| first >= before)?;
            txn.open_table(HEAL)?.retain(|_, first| first >= before)?;
        }
        if let Some(to) = commit.prune_to {
            txn.open_table(SETTLED)?.retain(|seq, _| seq > to)?;
        }
        Ok(())
    }
}

/// A commit's frames, ready to append.
struct Encoded {
    buf: Vec<u8>,
    /// (seq, offset in `buf`) of some frames, for reads to start from.
    marks: Vec<(u64, u64)>,
    /// Each record, in seq order.
    spans: Vec<Span>,
    /// The frames with effects on the state (pending, dedupe key, heal key).
    effects: Vec<Frame>,
}

/// A record in a commit's frames: its seq, its value's header as a sink's record holds it
/// (taken while the entry is encoded: neither the entry nor the value is read again, and a
/// burst's commit is larger than the CPU's cache), where its JSON line is.
struct Span {
    seq: u64,
    named: value::Named,
    json: usize,
    end: usize,
}

/// Encodes the kept entries into frames.
fn encode(last_seq: u64, commit: &Commit, dropped: &[usize]) -> Encoded {
    let mut names = value::Names::default();
    let mut out = Encoded {
        buf: Vec::with_capacity(commit.entries.len() * 512),
        marks: Vec::new(),
        spans: Vec::with_capacity(commit.entries.len()),
        effects: Vec::new(),
    };
    let mut seq = last_seq;
    let mut since_mark = usize::MAX;
    for (i, entry) in commit.entries.iter().enumerate() {
        if dropped.contains(&i) {
            continue;
        }
        seq += 1;
        if since_mark >= MARK_EVERY {
            out.marks.push((seq, out.buf.len() as u64));
            since_mark = 0;
        }
        let start = out.buf.len();
        let effects = effects(entry);
        let (header, json) = segment::encode(&mut out.buf, seq, &effects, |buf| {
            value::encode(seq, entry, buf)
        });
        since_mark += out.buf.len() - start;
        out.spans.push(Span {
            seq,
            named: header.named(&mut names),
            json,
            end: out.buf.len(),
        });
        if effects.pending || effects.dedupe.is_some() || effects.heal.is_some() {
            out.effects.push(Frame {
                seq,
                flags: if effects.pending { segment::PENDING } else { 0 },
                dedupe: effects.dedupe.map(str::to_owned),
                heal: effects.heal.map(str::to_owned),
                value: Vec::new(),
                offset: 0,
                size: 0,
            });
        }
    }
    out
}

/// Indexes of entries whose dedupe key was journaled within the window (or earlier in this
/// commit).
fn duplicates(txn: &redb::WriteTransaction, commit: &Commit) -> Result<Vec<usize>, redb::Error> {
    let keyed: Vec<(usize, &str)> = commit
        .entries
        .iter()
        .enumerate()
        .filter_map(|(i, entry)| match entry {
            Entry::Record(Record {
                dedupe: Some(key), ..
            }) => Some((i, key.as_str())),
            _ => None,
        })
        .collect();
    if keyed.is_empty() {
        return Ok(Vec::new());
    }
    let seen = txn.open_table(SEEN)?;
    let Seen { now, window, .. } = commit.seen;
    let mut here = HashSet::new();
    let mut dropped = Vec::new();
    for (i, key) in keyed {
        let recent = seen
            .get(key)?
            .is_some_and(|first| now.saturating_sub(first.value()) < window);
        if recent || !here.insert(key) {
            dropped.push(i);
        }
    }
    Ok(dropped)
}

/// What a record's frame carries for its state: pending, its dedupe key, its heal key.
fn effects(entry: &Entry) -> Effects<'_> {
    match entry {
        Entry::Record(record) => Effects {
            pending: record.enrich == Enrich::Pending,
            dedupe: record.dedupe.as_deref(),
            heal: match &record.enrich {
                Enrich::Heal(key) => Some(key.as_str()),
                _ => None,
            },
        },
        Entry::Replay(_) => Effects::default(),
    }
}

/// Whether a commit changes any state (else the log append is all it does).
fn needs_state(commit: &Commit) -> bool {
    commit.entries.iter().any(|entry| {
        let effects = effects(entry);
        effects.pending || effects.dedupe.is_some() || effects.heal.is_some()
    }) || commit.sync
        || needs_durable_state(commit)
        || commit.prune_to.is_some()
        || commit.seen.forget_before.is_some()
        || commit.commands.track
            && commit.entries.iter().any(|e| {
                matches!(e, Entry::Record(r) if r.kind.as_deref() == Some(crate::mews::enrich::DEVICE_COMMAND))
            })
}

/// State that must be on disk before anyone is told (the log cannot replay it).
fn needs_durable_state(commit: &Commit) -> bool {
    !commit.settled.is_empty()
        || !commit.unheal.is_empty()
        || !commit.marks.is_empty()
        || !commit.commands.is_empty()
}

/// The effects frames carry: held back for enrichment, dedupe keys, heal keys. Also what
/// replays them after a crash between the log and the state.
fn apply(txn: &redb::WriteTransaction, frames: &[Frame], now: u64) -> Result<(), redb::Error> {
    if frames.is_empty() {
        return Ok(());
    }
    let mut pending = txn.open_table(PENDING)?;
    let mut seen = txn.open_table(SEEN)?;
    let mut heal = txn.open_table(HEAL)?;
    for frame in frames {
        if frame.flags & segment::PENDING != 0 {
            pending.insert(frame.seq, now)?;
        }
        if let Some(key) = &frame.dedupe
            && seen.get(key.as_str())?.is_none()
        {
            seen.insert(key.as_str(), now)?;
        }
        if let Some(key) = &frame.heal {
            heal.insert(key.as_str(), now)?;
        }
    }
    Ok(())
}

/// Replays the effects of frames that reached the log but not the state (a crash between).
pub(super) fn replay(txn: &redb::WriteTransaction, frames: &[Frame]) -> Result<(), redb::Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if !frames.is_empty() {
        tracing::info!(
            records = frames.len(),
            "replayed the effects of records the last run journaled just before it stopped"
        );
    }
    apply(txn, frames, now)
}

/// Settled records: their final value kept, no longer pending; a failed one's command
/// remembered for healing; heal keys done with forgotten.
fn settle(txn: &redb::WriteTransaction, commit: &Commit, now: u64) -> Result<(), redb::Error> {
    if commit.settled.is_empty() && commit.unheal.is_empty() {
        return Ok(());
    }
    let mut pending = txn.open_table(PENDING)?;
    let mut finals = txn.open_table(SETTLED)?;
    let mut seen = txn.open_table(SEEN)?;
    let mut heal = txn.open_table(HEAL)?;
    for settled in &commit.settled {
        if pending.remove(settled.seq)?.is_none() {
            continue; // settled already (a second answer after a restart)
        }
        finals.insert(settled.seq, settled.value.as_slice())?;
        if let Some(key) = &settled.heal {
            seen.remove(key.as_str())?;
            heal.insert(key.as_str(), now)?;
        }
    }
    for key in &commit.unheal {
        heal.remove(key.as_str())?;
    }
    Ok(())
}

/// The command loop's part of a commit: track journaled commands, queue requested and
/// acknowledged updates, record Mews's answers.
fn command_work<'a>(
    txn: &redb::WriteTransaction,
    meta: &mut redb::Table<&str, u64>,
    commit: &Commit,
    kept: impl Iterator<Item = &'a Entry>,
    out: &mut Committed,
) -> Result<(), redb::Error> {
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
    if !tables.queued.is_empty() || !work.answered.is_empty() {
        out.outbox = Some(tables.outbox.len()?);
    }
    out.queued = tables.queued;
    out.outcomes = outcomes;
    Ok(())
}

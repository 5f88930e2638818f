//! The commit path: a batch becomes one store commit, then what follows a successful one
//! (counters, waiters, pending records to their enrichers, the new committed and visible seqs).

use std::sync::Arc;
use std::time::Duration;

use super::batch::Batch;
use super::{Core, Note, Settle, Waiter};
use crate::journal::JournalError;
use crate::journal::commands::Request;
use crate::journal::store::{CommandWork, Commit, Committed, Seen, Settled};
use crate::journal::value::{self, Entry};
use crate::record::Record;
use crate::stats::Stats;

/// Dedupe keys older than the window are forgotten this often.
const FORGET_EVERY: Duration = Duration::from_secs(600);

impl Core {
    /// Stores a batch in one commit (`sync`: with the cursors, durably) and answers everyone
    /// waiting on it.
    pub(super) fn commit(&mut self, batch: Batch, sync: bool) {
        let Batch {
            records,
            unwaited,
            waiters,
            flushes,
            marks,
            mark_waiters,
            settled,
            unheal,
            acks,
            requests,
            answered,
            light,
            ..
        } = batch;
        let (requests, replies): (Vec<Request>, Vec<_>) = requests.into_iter().unzip();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let window = self.dedupe_window.as_secs().max(1);
        let forget = !light
            && self
                .last_forget
                .is_none_or(|at| at.elapsed() >= FORGET_EVERY);
        let prune_to = if light { None } else { self.prune_target() };
        let settled_values = settled
            .iter()
            .map(|settle| {
                let mut value = Vec::with_capacity(512);
                value::encode(
                    settle.seq,
                    &Entry::Record(settle.record.clone()),
                    &mut value,
                );
                Settled {
                    seq: settle.seq,
                    value,
                    heal: settle.heal.clone(),
                }
            })
            .collect();
        let commit = Commit {
            entries: records,
            cursors: self.cursors().into_iter().collect(),
            prune_to,
            sync,
            marks,
            seen: Seen {
                now,
                window,
                forget_before: forget.then(|| now.saturating_sub(window)),
            },
            settled: settled_values,
            unheal,
            commands: CommandWork {
                track: self.track_commands,
                requests,
                acks,
                answered,
            },
        };
        let Some((result, commit)) = self.run_commit(commit) else {
            for done in flushes {
                let _ = done.send(Err(JournalError::Write("journal commit panicked".into())));
            }
            return;
        };
        let outcome = match result {
            Ok(mut committed) if committed.state_error.is_some() => {
                // The records are stored; the rest of the commit is not.
                let err = committed.state_error.take().unwrap_or(JournalError::Closed);
                let message = err.to_string();
                tracing::error!(error = %err, "the journal's state could not be written after its records were: settles, marks, requests and acknowledgements of this commit go again; check free space on the state directory");
                self.stats.journal.set_writes(Some(message.clone()));
                for reply in replies {
                    let _ = reply.send(Err(JournalError::Write(message.clone())));
                }
                for done in mark_waiters {
                    let _ = done.send(Err(JournalError::Write(message.clone())));
                }
                let refused = std::mem::take(&mut committed.queued);
                drop(refused);
                for settle in settled.iter() {
                    self.route(Note {
                        seq: settle.seq,
                        record: Record {
                            command: None,
                            enrich_error: None,
                            ..settle.record.clone()
                        },
                    });
                }
                let mut commit = commit;
                commit.settled.clear();
                self.committed_ok(commit, committed, waiters, Vec::new());
                Err(message)
            }
            Ok(mut committed) => {
                for (reply, outcome) in replies.into_iter().zip(committed.outcomes.drain(..)) {
                    let _ = reply.send(Ok(outcome));
                }
                for outgoing in committed.queued.drain(..) {
                    self.updates.route(outgoing);
                }
                if forget {
                    self.last_forget = Some(std::time::Instant::now());
                }
                self.committed_ok(commit, committed, waiters, settled);
                for done in mark_waiters {
                    let _ = done.send(Ok(()));
                }
                // Records queued before a flush but lost in an earlier failed commit still
                // make the flush fail, until records are stored again.
                match &self.outage {
                    Some(outage) if outage.lost > 0 => {
                        Err(format!("{} ({} records lost)", outage.error, outage.lost))
                    }
                    _ => Ok(()),
                }
            }
            Err(err) => {
                let message = err.to_string();
                for reply in replies {
                    let _ = reply.send(Err(JournalError::Write(message.clone())));
                }
                self.failed(&err, &commit, unwaited, waiters, settled);
                for done in mark_waiters {
                    let _ = done.send(Err(JournalError::Write(message.clone())));
                }
                Err(message)
            }
        };
        for done in flushes {
            let _ = done.send(outcome.clone().map_err(JournalError::Write));
        }
    }

    /// Runs the transaction; `None` if it panicked (logged).
    fn run_commit(&self, commit: Commit) -> Option<(Result<Committed, JournalError>, Commit)> {
        // Nothing goes into a file that is no longer at the journal's path: after a restart it
        // would be gone (see `trouble`).
        if let Some(problem) = self.stats.journal.file_problem() {
            return Some((Err(JournalError::Gone(problem.to_string())), commit));
        }
        // The commit runs right here, blocking: on the writer's thread, or on a reader's that
        // found no commit running (see `serve`), where it is what the reader waits for anyway.
        let store = Arc::clone(&self.store);
        let at = self.last_seq;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let result = store.commit(at, &commit);
            (result, commit)
        }));
        match result {
            Ok(pair) => Some(pair),
            Err(_) => {
                tracing::error!("journal commit panicked");
                None
            }
        }
    }

    /// After a successful commit: counters, waiters, pending records to their enrichers, and
    /// the new committed and visible seqs.
    fn committed_ok(
        &mut self,
        commit: Commit,
        committed: Committed,
        waiters: Vec<(Waiter, usize)>,
        settled: Vec<Settle>,
    ) {
        let Committed {
            seq,
            bytes,
            dropped,
            fresh,
            cursors_synced,
            outbox,
            ..
        } = committed;
        if let Some(waiting) = outbox {
            self.stats
                .command_updates_waiting
                .store(waiting, std::sync::atomic::Ordering::Relaxed);
        }
        if cursors_synced {
            self.synced = commit.cursors.iter().cloned().collect();
            self.unsynced = false;
        } else if !fresh.is_empty() {
            self.unsynced = true; // their state (`applied_seq`) follows with the next sync
        }
        let count = commit.entries.len() as u64 - dropped.len() as u64;
        if !dropped.is_empty() {
            Stats::add(&self.stats.duplicates_dropped, dropped.len() as u64);
            tracing::debug!(
                records = dropped.len(),
                "dropped records already journaled (live vs catch-up)"
            );
        }
        if !fresh.is_empty() {
            let appended: usize = fresh.iter().map(|r| r.json.len() + 64).sum();
            self.appended.push_back((seq, appended as u64));
        }
        self.stored_bytes = bytes;
        self.stats
            .journal_bytes
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
        let kept = || {
            commit
                .entries
                .iter()
                .enumerate()
                .filter(|(i, _)| !dropped.contains(i))
                .map(|(_, entry)| entry)
        };
        self.stats.committed(kept().filter_map(|entry| match entry {
            Entry::Record(r) => Some((&*r.property, r.kind.as_deref(), r.origin)),
            Entry::Replay(_) => None,
        }));
        // A commit that fits is no proof of room (the last free blocks may take a small one):
        // during an outage the probe decides that writes work again.
        if !commit.entries.is_empty() {
            if self.outage.is_none() {
                self.writes_work();
            } else if self.store.probe().is_ok() {
                self.writes_work();
                self.outage = None;
            }
        }
        let first = seq - count;
        for (at, entry) in (first + 1..).zip(kept()) {
            if let Entry::Record(record) = entry
                && record.enrich == crate::record::Enrich::Pending
            {
                self.pending.insert(at, Arc::clone(&record.property));
                self.route(Note {
                    seq: at,
                    record: record.clone(),
                });
            }
        }
        for settle in &settled {
            self.pending.remove(&settle.seq);
        }
        self.tail.push(fresh);
        if !commit.settled.is_empty() {
            let journal_id = self.tail.journal_id();
            let mut names = value::Names::default();
            self.tail.replace(commit.settled.iter().map(|settled| {
                value::decode(
                    journal_id,
                    settled.seq,
                    settled.value.clone().into(),
                    &mut names,
                )
            }));
        }
        self.last_seq = seq;
        if let Some(to) = commit.prune_to {
            self.pruned_to = to;
            self.pruned.store(to, std::sync::atomic::Ordering::Release);
        }
        Stats::add(&self.stats.records_committed, count);
        if count > 0 {
            self.committed.send_replace(seq);
        }
        let visible = self.visible_seq();
        self.visible.send_if_modified(|at| {
            let changed = *at != visible;
            *at = visible;
            changed
        });
        for (waiter, upto) in waiters {
            let before = dropped.iter().filter(|&&i| i < upto).count();
            let _ = waiter.send(Ok(first + (upto - before) as u64));
        }
    }
}

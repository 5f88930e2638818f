//! A batch: the requests that arrived while the last commit ran, gathered into one group commit.

use tokio::sync::oneshot;

use super::{Op, Settle, Waiter};
use crate::journal::JournalError;
use crate::journal::commands::{Ack, Answered, Request, RequestOutcome};
use crate::journal::value::Entry;

/// The requests one group commit takes, gathered while the last one ran.
#[derive(Default)]
pub(super) struct Batch {
    pub records: Vec<Entry>,
    /// How many of `records` nobody waits for (WebSocket events): lost if the commit fails.
    /// The others' senders are told and send them again (a webhook is answered 503).
    pub unwaited: u64,
    pub waiters: Vec<(Waiter, usize)>,
    pub flushes: Vec<oneshot::Sender<Result<(), JournalError>>>,
    pub pings: Vec<oneshot::Sender<()>>,
    pub marks: Vec<(String, u64)>,
    pub mark_waiters: Vec<oneshot::Sender<Result<(), JournalError>>>,
    pub settled: Vec<Settle>,
    pub unheal: Vec<String>,
    pub acks: Vec<Ack>,
    pub requests: Vec<(
        Request,
        oneshot::Sender<Result<RequestOutcome, JournalError>>,
    )>,
    pub answered: Vec<Answered>,
    /// Claims and releases, handled after the commit (in order with the records before them).
    pub claims: Vec<Op>,
    /// A reader's commit: no housekeeping (forgetting old dedupe keys, pruning) rides on it.
    pub light: bool,
}

impl Batch {
    /// Takes one request into the batch.
    pub fn add(&mut self, op: Op) {
        match op {
            Op::Append(append) => {
                let count = append.entries.len() as u64;
                self.records.extend(append.entries);
                self.unheal.extend(append.unheal);
                match append.waiter {
                    Some(waiter) => self.waiters.push((waiter, self.records.len())),
                    None => self.unwaited += count,
                }
            }
            Op::Acks(acks) => self.acks.extend(acks),
            Op::Request(request, reply) => self.requests.push((request, reply)),
            Op::Answered(answered) => self.answered.push(answered),
            Op::Settle(settled) => self.settled.extend(settled),
            op @ (Op::Claim(..)
            | Op::ReleaseUnclaimed(..)
            | Op::ClaimUpdates(..)
            | Op::Sinks(..)) => self.claims.push(op),
            Op::Flush(done) => self.flushes.push(done),
            Op::Ping(done) => self.pings.push(done),
            Op::Mark(name, at, done) => {
                self.marks.push((name, at));
                self.mark_waiters.push(done);
            }
        }
    }

    /// Whether the batch writes anything (bare cursor moves wait for the next sync).
    pub fn writes(&self) -> bool {
        !(self.records.is_empty()
            && self.flushes.is_empty()
            && self.marks.is_empty()
            && self.settled.is_empty()
            && self.unheal.is_empty()
            && self.acks.is_empty()
            && self.requests.is_empty()
            && self.answered.is_empty())
    }

    /// Whether the cursors must be stored durably with this commit: a flush asks for it, and an
    /// acknowledged command must not be queued again after a crash.
    pub fn sync(&self) -> bool {
        !self.flushes.is_empty() || !self.acks.is_empty()
    }
}

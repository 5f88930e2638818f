//! What a journal handle asks of the writer: appends, settles, cursor moves, the command loop's
//! requests, flushes, marks and sink changes, each queued as an [`Op`].

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};

use super::writer::{Append, Op};
use super::{Entry, Journal, JournalError, Note, Settle, SinkStart, commands};
use crate::record::Record;

impl Journal {
    /// Queues records for the next group commit. Waits only when the writer is far behind.
    pub async fn append(&self, records: Vec<Record>) -> Result<(), JournalError> {
        if records.is_empty() {
            return Ok(());
        }
        let entries = records.into_iter().map(Entry::Record).collect();
        self.ops
            .send(Op::Append(Append {
                entries,
                unheal: Vec::new(),
                waiter: None,
            }))
            .await
            .map_err(|_| JournalError::Closed)
    }

    /// Appends and waits for the durable commit; returns the last seq given.
    pub async fn append_committed(&self, entries: Vec<Entry>) -> Result<u64, JournalError> {
        self.append_healed(entries, Vec::new()).await
    }

    /// Appends healed records and forgets the heal keys they settle, in one durable commit.
    pub async fn append_healed(
        &self,
        entries: Vec<Entry>,
        unheal: Vec<String>,
    ) -> Result<u64, JournalError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Append(Append {
                entries,
                unheal,
                waiter: Some(tx),
            }))
            .await
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// Takes the pending records of `property`: those journaled so far, then each new one as
    /// it is committed. Claim before records of the property are appended.
    pub async fn claim(
        &self,
        property: &str,
    ) -> Result<mpsc::UnboundedReceiver<Note>, JournalError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Claim(property.to_owned(), tx))
            .await
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)
    }

    /// Settles pending records nobody claimed (their property has no enrichment any more)
    /// with `reason` as their `enrich_error`.
    pub async fn release_unclaimed(&self, reason: &str) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::ReleaseUnclaimed(reason.to_owned(), tx))
            .await
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)
    }

    /// Gives pending records their final form; sinks may pass them after the commit.
    pub async fn settle(&self, settled: Vec<Settle>) -> Result<(), JournalError> {
        if settled.is_empty() {
            return Ok(());
        }
        self.ops
            .send(Op::Settle(settled))
            .await
            .map_err(|_| JournalError::Closed)
    }

    /// Records a sink's progress; persisted with the next commit (at the latest within a second).
    pub async fn advance(&self, sink: &str, seq: u64) -> Result<(), JournalError> {
        self.advance_acking(sink, seq, Vec::new()).await
    }

    /// The same, with the Pending commands this sink delivered (`[commands] received_after`):
    /// their `Received` is queued in the same, durable, transaction.
    pub async fn advance_acking(
        &self,
        sink: &str,
        seq: u64,
        acks: Vec<commands::Ack>,
    ) -> Result<(), JournalError> {
        self.positions.advance(sink, seq);
        if acks.is_empty() {
            // Stored with the next sync, within a second: no message, no wake-up.
            return Ok(());
        }
        self.ops
            .send(Op::Acks(acks))
            .await
            .map_err(|_| JournalError::Closed)
    }

    /// A key system's request to change a command's state: queued durably (the outcome says
    /// so) before this returns.
    pub async fn request(
        &self,
        request: commands::Request,
    ) -> Result<commands::RequestOutcome, JournalError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Request(request, tx))
            .await
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// Records Mews's answer to an outgoing update (it leaves the outbox).
    pub async fn answered(&self, answered: commands::Answered) -> Result<(), JournalError> {
        self.ops
            .send(Op::Answered(answered))
            .await
            .map_err(|_| JournalError::Closed)
    }

    /// Takes the outgoing command updates of `property`: those waiting, then each new one.
    pub async fn claim_updates(
        &self,
        property: &str,
    ) -> Result<mpsc::UnboundedReceiver<commands::Outgoing>, JournalError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::ClaimUpdates(property.to_owned(), tx))
            .await
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)
    }

    /// Commits everything queued so far, durably; an error if that commit failed.
    pub async fn flush(&self) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Flush(tx))
            .await
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// Returns once the writer has worked through everything queued before: a stuck writer
    /// never answers (the watchdog relies on this).
    pub async fn ping(&self) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Ping(tx))
            .await
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)
    }

    /// Makes `sinks` the journal's sinks while it is open (a reload that adds or removes
    /// sinks): as at open, a sink new to it starts after its last committed record (stored
    /// durably before this returns), and the position of one no longer listed is dropped, so
    /// it holds no record back. Returns where each new sink starts; the handles' own
    /// [`Journal::cursor`] and [`Journal::shed_signal`] still answer as at open.
    pub async fn set_sinks(
        &self,
        sinks: Vec<String>,
    ) -> Result<HashMap<String, SinkStart>, JournalError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Sinks(sinks, tx))
            .await
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// Sets a catch-up mark durably; call it after the records it covers are committed.
    pub async fn set_mark(&self, name: &str, at: u64) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Mark(name.to_owned(), at, tx))
            .await
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)?
    }
}

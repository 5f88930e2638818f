//! What a journal handle asks of the writer: appends, settles, cursor moves, the command loop's
//! requests, flushes, marks and sink changes, each queued as an [`Op`].

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Notify, mpsc, oneshot};

use super::writer::{Append, Op, Shared};
use super::{Entry, Journal, JournalError, Note, Settle, SinkStart, commands};
use crate::record::Record;

/// A handle's way to the writer: its queue, and the bell that wakes the writer's thread.
pub(super) struct Link {
    ops: Option<mpsc::Sender<Op>>,
    shared: Option<Arc<Shared>>,
    bell: Arc<Notify>,
}

impl Link {
    pub(super) fn new(ops: mpsc::Sender<Op>, shared: Arc<Shared>) -> Link {
        Link {
            ops: Some(ops),
            bell: shared.bell(),
            shared: Some(shared),
        }
    }

    fn shared(&self) -> &Shared {
        self.shared.as_deref().expect("set until dropped")
    }
}

impl Drop for Link {
    /// The last handle is gone: the writer's thread wakes to find its queue closed, and holds
    /// the last reference to the journal, which it closes before its `run` returns.
    fn drop(&mut self) {
        self.ops = None;
        self.shared = None;
        self.bell.notify_one();
    }
}

impl Journal {
    /// Queues a request and wakes the writer's thread. Waits only when the writer is far behind.
    pub(super) async fn send(&self, op: Op) -> Result<(), JournalError> {
        self.enqueue(op, true).await
    }

    /// Queues a request, waking the writer's thread if `wake` — and always before waiting for
    /// room in a full queue, which only the writer's thread empties.
    async fn enqueue(&self, op: Op, wake: bool) -> Result<(), JournalError> {
        let ops = self.link.ops.as_ref().ok_or(JournalError::Closed)?;
        match ops.try_send(op) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(op)) => {
                self.kick();
                ops.send(op).await.map_err(|_| JournalError::Closed)?;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(JournalError::Closed),
        }
        if wake {
            self.kick();
        }
        Ok(())
    }

    /// Queues records (a WebSocket's events: nobody waits for their commit) and leaves the
    /// commit to the caller's [`Journal::commit_queued`] (a WebSocket reader calls it once its
    /// socket holds nothing more) — unless `burst` (more came before it did): then the writer's
    /// thread commits them, in groups, while the reader goes on.
    pub async fn queue(&self, records: Vec<Record>, burst: bool) -> Result<(), JournalError> {
        if records.is_empty() {
            return Ok(());
        }
        self.enqueue(unwaited(records), burst).await
    }

    /// Commits the records queued on the calling thread if no commit is running, or else has
    /// the writer's thread commit them next (see `writer/serve.rs`). Never waits.
    pub fn commit_queued(&self) {
        self.link.shared().commit_queued();
    }

    /// Wakes the writer's thread to commit what is queued (a reader that stops before it
    /// called [`Journal::commit_queued`]).
    pub fn kick(&self) {
        self.link.shared().kick();
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
        self.send(Op::Append(Append {
            entries,
            unheal,
            waiter: Some(tx),
        }))
        .await?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// Takes the pending records of `property`: those journaled so far, then each new one as
    /// it is committed. Claim before records of the property are appended.
    pub async fn claim(
        &self,
        property: &str,
    ) -> Result<mpsc::UnboundedReceiver<Note>, JournalError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Claim(property.to_owned(), tx)).await?;
        rx.await.map_err(|_| JournalError::Closed)
    }

    /// Settles pending records nobody claimed (their property has no enrichment any more)
    /// with `reason` as their `enrich_error`.
    pub async fn release_unclaimed(&self, reason: &str) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::ReleaseUnclaimed(reason.to_owned(), tx))
            .await?;
        rx.await.map_err(|_| JournalError::Closed)
    }

    /// Gives pending records their final form; sinks may pass them after the commit.
    pub async fn settle(&self, settled: Vec<Settle>) -> Result<(), JournalError> {
        if settled.is_empty() {
            return Ok(());
        }
        self.send(Op::Settle(settled)).await
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
        self.send(Op::Acks(acks)).await
    }

    /// A key system's request to change a command's state: queued durably (the outcome says
    /// so) before this returns.
    pub async fn request(
        &self,
        request: commands::Request,
    ) -> Result<commands::RequestOutcome, JournalError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Request(request, tx)).await?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// Records Mews's answer to an outgoing update (it leaves the outbox).
    pub async fn answered(&self, answered: commands::Answered) -> Result<(), JournalError> {
        self.send(Op::Answered(answered)).await
    }

    /// Takes the outgoing command updates of `property`: those waiting, then each new one.
    pub async fn claim_updates(
        &self,
        property: &str,
    ) -> Result<mpsc::UnboundedReceiver<commands::Outgoing>, JournalError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::ClaimUpdates(property.to_owned(), tx)).await?;
        rx.await.map_err(|_| JournalError::Closed)
    }

    /// Commits everything queued so far, durably; an error if that commit failed.
    pub async fn flush(&self) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Flush(tx)).await?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// Returns once the writer has worked through everything queued before: a stuck writer
    /// never answers (the watchdog relies on this).
    pub async fn ping(&self) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Ping(tx)).await?;
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
        self.send(Op::Sinks(sinks, tx)).await?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// Sets a catch-up mark durably; call it after the records it covers are committed.
    pub async fn set_mark(&self, name: &str, at: u64) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Mark(name.to_owned(), at, tx)).await?;
        rx.await.map_err(|_| JournalError::Closed)?
    }
}

/// Records nobody waits for (a WebSocket's events).
fn unwaited(records: Vec<Record>) -> Op {
    Op::Append(Append {
        entries: records.into_iter().map(Entry::Record).collect(),
        unheal: Vec::new(),
        waiter: None,
    })
}

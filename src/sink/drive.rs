//! The loop every sink runs: wait for committed records, read them after the cursor, deliver,
//! move the cursor; retry failures; shed to dead letters when the journal is over its size.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::SinkSettings;
use super::dead_letter::{DeadLetters, Reason};
use super::{AnySink, Failure, Filter, Redactor, Sink};
use crate::failures::FailureLog;
use crate::journal::commands::Ack;
use crate::journal::{Journal, SinkStart, StoredRecord};
use crate::retry::{Backoff, schedules};
use crate::stats::{Stats, Trouble};

/// How the app steers a running sink.
#[derive(Clone)]
pub struct SinkControl {
    /// Sources have stopped: deliver what is committed, then end.
    pub drain: CancellationToken,
    /// The grace period is over: end now, leaving the rest in the journal.
    pub abort: CancellationToken,
    /// This sink alone stops (a reload changed or removed it): the write under way ends, the
    /// rest stays in the journal; the sink is closed.
    pub retire: CancellationToken,
    /// Where the sink stands: the last seq it passed (read when it is started again).
    pub position: Arc<AtomicU64>,
    /// Bumped on SIGUSR1 and SIGHUP: reopen outputs.
    pub reopen: watch::Receiver<u64>,
    /// Where dead letters go.
    pub state_dir: PathBuf,
    /// Where progress is counted.
    pub stats: Arc<Stats>,
    /// `[commands] received_after`: the sink whose deliveries set commands `Received`.
    pub received_after: Option<String>,
}

/// One sink's task state.
struct Driver {
    name: String,
    sink: AnySink,
    filter: Filter,
    journal: Journal,
    ctl: SinkControl,
    cursor: u64,
    shed: watch::Receiver<u64>,
    dead: DeadLetters,
    /// A run of failed reads or deliveries, logged once.
    failures: FailureLog,
    redact: Redactor,
    /// Retries of failed journal reads (the sinks' schedule).
    reading: Backoff,
    /// Retries of failed deliveries (the sink's own schedule).
    backoff: Backoff,
    /// The sink's housekeeping timer ([`Sink::due`]), kept between waits: one made per wait
    /// would be registered and removed again for every record.
    housekeeping: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// When `housekeeping` is set to go off.
    housekeeping_at: Option<Instant>,
}

/// Runs one sink from `start` until drained, retired or aborted.
pub async fn drive(
    settings: SinkSettings,
    sink: AnySink,
    journal: Journal,
    ctl: SinkControl,
    start: SinkStart,
) {
    let span = tracing::info_span!("sink", sink = %settings.name);
    ctl.position.store(start.cursor, Ordering::Release);
    // Trouble noted by a driver before this one (a reload) described its settings, not these:
    // the records it held may not even go to this sink any more.
    ctl.stats.sink(&settings.name, |s| s.trouble = None);
    let driver = Driver {
        filter: settings.filter(),
        cursor: start.cursor,
        shed: start.shed,
        dead: DeadLetters::new(&ctl.state_dir, &settings.name),
        name: settings.name,
        journal,
        ctl,
        failures: FailureLog::default(),
        redact: Redactor::new(&settings.redact),
        reading: schedules::SINK.backoff(),
        backoff: sink.retry_policy().backoff(),
        sink,
        housekeeping: Box::pin(sleep(Duration::ZERO)),
        housekeeping_at: None,
    };
    driver.run().instrument(span).await
}

/// What to do after a step of the loop.
enum Step {
    /// Go round again.
    Continue,
    /// Drained, or the journal is gone: close the sink and end.
    Stop,
    /// The grace period is over: end now.
    Abort,
}

impl Driver {
    async fn run(mut self) {
        // Only settled records are visible (enrichment holds the rest back, in order).
        let mut committed = self.journal.visible();
        tracing::debug!(cursor = self.cursor, "sink started");
        loop {
            match self.step(&mut committed).await {
                Step::Continue => {}
                Step::Stop => break,
                Step::Abort => return,
            }
        }
        if let Err(err) = self.sink.close().await {
            tracing::warn!(error = %err, "closing failed");
        }
        tracing::debug!(cursor = self.cursor, "sink stopped");
    }

    /// Reopens, sheds, waits, or delivers the next batch: whichever is due.
    async fn step(&mut self, committed: &mut watch::Receiver<u64>) -> Step {
        if self.ctl.retire.is_cancelled() {
            return Step::Stop;
        }
        if self.ctl.reopen.has_changed().unwrap_or(false) {
            self.ctl.reopen.borrow_and_update();
            self.reopen().await;
        }
        let shed_to = *self.shed.borrow_and_update();
        if shed_to > self.cursor {
            return self.shed_until(shed_to).await;
        }
        let last = *committed.borrow_and_update();
        self.note_lag(last);
        if last <= self.cursor {
            return self.wait(committed).await;
        }
        match self.read(last).await {
            Ok(batch) => self.deliver(batch).await,
            Err(step) => step,
        }
    }

    /// Nothing to deliver: waits for records, the drain, a reopen, a shed, or housekeeping.
    async fn wait(&mut self, committed: &mut watch::Receiver<u64>) -> Step {
        if self.ctl.drain.is_cancelled() {
            return Step::Stop;
        }
        let due = self.sink.due();
        if let Some(at) = due
            && self.housekeeping_at != due
        {
            self.housekeeping.as_mut().reset(at);
            self.housekeeping_at = due;
        }
        tokio::select! {
            () = self.ctl.abort.cancelled() => return Step::Stop,
            () = self.ctl.retire.cancelled() => return Step::Stop,
            () = self.ctl.drain.cancelled() => {}
            changed = committed.changed() => if changed.is_err() { return Step::Stop },
            Ok(()) = self.ctl.reopen.changed() => self.reopen().await,
            Ok(()) = self.shed.changed() => {}
            () = &mut self.housekeeping, if due.is_some() => {
                self.housekeeping_at = None;
                if let Err(err) = self.sink.on_due().await {
                    tracing::warn!(error = %err, "housekeeping failed");
                }
            }
        }
        Step::Continue
    }

    /// The next batch after the cursor, redacted for this sink; `last` is the last visible seq.
    async fn read(&mut self, last: u64) -> Result<Vec<StoredRecord>, Step> {
        match self
            .journal
            .read_after(self.cursor, self.sink.batch_limit())
            .await
        {
            Ok(batch) if !batch.is_empty() => Ok(self.redacted(batch)),
            Ok(_) => {
                tracing::error!(
                    cursor = self.cursor,
                    last,
                    "the journal holds no records after the cursor; skipping to the end"
                );
                self.cursor = last;
                self.ctl.position.store(last, Ordering::Release);
                Err(Step::Continue)
            }
            Err(err) => {
                let delay = self.reading.next_delay();
                self.failed("cannot read the journal", &err, delay);
                tokio::select! {
                    () = self.ctl.abort.cancelled() => Err(Step::Stop),
                    () = self.ctl.retire.cancelled() => Err(Step::Stop),
                    () = sleep(delay) => Err(Step::Continue),
                }
            }
        }
    }

    /// `batch` with this sink's `redact` paths masked.
    fn redacted(&self, mut batch: Vec<StoredRecord>) -> Vec<StoredRecord> {
        if !self.redact.is_empty() {
            for record in &mut batch {
                if let Some(masked) = self.redact.apply(record) {
                    *record = masked;
                }
            }
        }
        batch
    }

    /// Delivers the batch's records that pass the filter, then moves the cursor past it
    /// (unless the journal asked to shed meanwhile: shedding comes first).
    async fn deliver(&mut self, batch: Vec<StoredRecord>) -> Step {
        let records: Vec<&StoredRecord> = batch.iter().filter(|r| self.filter.matches(r)).collect();
        let acks = match self.write(&records).await {
            Ok(acks) => acks,
            Err(step) => return step,
        };
        if *self.shed.borrow() > self.cursor {
            return Step::Continue; // what was not delivered is dead-lettered there
        }
        let to = batch.last().map_or(self.cursor, |r| r.seq);
        self.cursor = to;
        self.ctl.position.store(to, Ordering::Release);
        match self.journal.advance_acking(&self.name, to, acks).await {
            Ok(()) => Step::Continue,
            Err(_) => Step::Stop,
        }
    }

    /// Writes `records` until the sink takes them, retrying on its schedule; returns what
    /// `received_after` acknowledges. Stops trying when the journal asks this sink to shed.
    async fn write(&mut self, records: &[&StoredRecord]) -> Result<Vec<Ack>, Step> {
        while !records.is_empty() {
            let result = tokio::select! {
                () = self.ctl.abort.cancelled() => return Err(Step::Abort),
                // The journal is full and wants this sink to shed: stop trying these.
                Ok(()) = self.shed.changed() => break,
                result = self.sink.write(records) => result,
            };
            let Err(err) = result else {
                let dead = self.sink.take_dead_lettered();
                let n = (records.len() - dead.len()) as u64;
                self.ctl.stats.sink(&self.name, |s| {
                    s.delivered += n;
                    s.trouble = None;
                });
                self.backoff.reset();
                self.reading.reset();
                self.recovered();
                if self.ctl.received_after.as_deref() == Some(self.name.as_str()) {
                    return Ok(pending_commands(records, &dead));
                }
                break;
            };
            let delay = self.sink.retry_delay(&mut self.backoff);
            self.delivery_failed(&err, delay);
            tokio::select! {
                () = self.ctl.abort.cancelled() => return Err(Step::Abort),
                // Retired while failing: the records stay in the journal for its successor.
                () = self.ctl.retire.cancelled() => return Err(Step::Stop),
                Ok(()) = self.shed.changed() => break,
                () = sleep(delay) => {}
            }
        }
        Ok(Vec::new())
    }

    /// A failed delivery: counted, noted for `/readyz` and `status` (paused or failing, and
    /// why), logged at error the first time and each time its kind changes.
    fn delivery_failed(&mut self, err: &std::io::Error, retry_in: Duration) {
        let (kind, paused) = Failure::of(err);
        let reason = err.to_string();
        self.ctl.stats.sink(&self.name, |s| {
            s.retries += 1;
            let since = s
                .trouble
                .as_ref()
                .map_or_else(std::time::Instant::now, |t| t.since);
            s.trouble = Some(Trouble {
                paused,
                kind: kind.clone(),
                reason: reason.clone(),
                since,
            });
        });
        if !self.failures.failed(&kind).is_news() {
            let failures = self.failures.count();
            return tracing::debug!(error = %err, ?retry_in, failures, "still cannot deliver");
        }
        if paused {
            tracing::error!(error = %err, ?retry_in, "cannot deliver: the endpoint or its credentials are wrong; the sink is paused, its records are kept and retried until it accepts them (other sinks and the WebSocket are not affected)");
        } else {
            tracing::error!(error = %err, ?retry_in, "cannot deliver; retrying (other sinks and the WebSocket are not affected)");
        }
    }

    /// Logs a failure: the first of a run, or of a new kind, as an error; the rest at debug.
    fn failed(&mut self, what: &str, err: &dyn std::fmt::Display, retry_in: Duration) {
        if self.failures.failed(what).is_news() {
            tracing::error!(error = %err, ?retry_in, "{what}");
        } else {
            let failures = self.failures.count();
            tracing::debug!(error = %err, ?retry_in, failures, "{what}");
        }
    }

    /// Logs the end of a run of failures.
    fn recovered(&mut self) {
        if let Some(failures) = self.failures.recovered() {
            tracing::info!(failures, "delivering again");
        }
    }

    /// How far behind the journal this sink is, for `/metrics` and `/readyz`.
    fn note_lag(&self, last: u64) {
        let lag = last.saturating_sub(self.cursor);
        self.ctl.stats.sink(&self.name, |s| {
            s.lag_records = lag;
            match (lag, s.behind_since) {
                (0, _) => s.behind_since = None,
                (_, None) => s.behind_since = Some(std::time::Instant::now()),
                _ => {}
            }
        });
    }

    async fn advance(&mut self, to: u64) -> Step {
        self.cursor = to;
        self.ctl.position.store(to, Ordering::Release);
        match self.journal.advance(&self.name, to).await {
            Ok(()) => Step::Continue,
            Err(_) => Step::Stop,
        }
    }

    /// Moves this sink's undelivered records up to `to` into its dead-letter file.
    async fn shed_until(&mut self, to: u64) -> Step {
        let mut moved = 0usize;
        while self.cursor < to {
            let batch = match self.journal.read_after(self.cursor, super::BATCH).await {
                Ok(batch) => batch,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the journal to shed records");
                    return Step::Continue;
                }
            };
            let in_range: Vec<&StoredRecord> = batch.iter().take_while(|r| r.seq <= to).collect();
            let Some(last) = in_range.last().map(|r| r.seq) else {
                return self.advance(to).await;
            };
            let records: Vec<&StoredRecord> = in_range
                .into_iter()
                .filter(|r| self.filter.matches(r))
                .collect();
            let reason = Reason {
                text: "the journal was over state.max_bytes while this sink was behind",
                status: None,
                response: None,
            };
            if let Err(err) = self.dead.write(&records, &reason).await {
                tracing::error!(error = %err, file = %self.dead.path().display(), "cannot write dead letters; keeping the records");
                return Step::Continue;
            }
            moved += records.len();
            let n = records.len() as u64;
            self.ctl.stats.sink(&self.name, |s| s.dead_lettered += n);
            if let Step::Stop = self.advance(last).await {
                return Step::Stop;
            }
        }
        tracing::error!(records = moved, up_to_seq = to, file = %self.dead.path().display(), "undelivered records moved to dead letters to keep the journal under state.max_bytes");
        Step::Continue
    }

    async fn reopen(&mut self) {
        match self.sink.reopen().await {
            Ok(()) => tracing::info!("reopened"),
            Err(err) => {
                tracing::error!(error = %err, "cannot reopen; will retry on the next write")
            }
        }
    }
}

/// The Pending DeviceCommands among delivered records (not those dead-lettered): what
/// `received_after` acknowledges to Mews.
fn pending_commands(records: &[&StoredRecord], dead: &[u64]) -> Vec<Ack> {
    #[derive(serde::Deserialize)]
    struct Head {
        id: Option<String>,
        state: Option<String>,
    }
    records
        .iter()
        .filter(|r| r.kind.as_deref() == Some(crate::mews::enrich::DEVICE_COMMAND))
        .filter(|r| !dead.contains(&r.seq))
        .filter_map(|r| {
            let head: Head = serde_json::from_slice(&r.json).ok()?;
            (head.state.as_deref() == Some("Pending")).then_some(Ack {
                property: r.property.to_string(),
                command: head.id?,
            })
        })
        .collect()
}

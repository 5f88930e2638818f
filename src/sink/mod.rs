//! Sinks: each runs its own task, reads committed records after its cursor, delivers them and
//! moves the cursor. A slow or failing sink only ever delays itself.

mod file;
mod stdout;

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::config::{SinkKind, SinkSettings};
use crate::journal::{Journal, StoredRecord};

pub use file::FileSink;
pub use stdout::WriterSink;

/// Records read from the journal per batch.
const BATCH: usize = 4096;
/// Retry delays of a failing sink.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What every sink does. `lines` are JSON records without their newline.
pub trait Sink {
    /// Delivers the lines; `Ok` means the cursor may move past them.
    fn write(&mut self, lines: &[&[u8]]) -> impl Future<Output = io::Result<()>> + Send;

    /// When the sink next has housekeeping to do (e.g. a delayed fsync).
    fn due(&self) -> Option<Instant> {
        None
    }

    /// Does the housekeeping announced by [`Sink::due`].
    fn on_due(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        async { Ok(()) }
    }

    /// Reopens its output (SIGHUP, for logrotate).
    fn reopen(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        async { Ok(()) }
    }

    /// Flushes everything before the process ends.
    fn close(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        async { Ok(()) }
    }
}

/// The closed set of sinks.
pub enum AnySink {
    /// `type = "stdout"`
    Stdout(WriterSink<tokio::io::Stdout>),
    /// `type = "file"`
    File(FileSink),
}

impl Sink for AnySink {
    async fn write(&mut self, lines: &[&[u8]]) -> io::Result<()> {
        match self {
            AnySink::Stdout(s) => s.write(lines).await,
            AnySink::File(s) => s.write(lines).await,
        }
    }
    fn due(&self) -> Option<Instant> {
        match self {
            AnySink::Stdout(s) => s.due(),
            AnySink::File(s) => s.due(),
        }
    }
    async fn on_due(&mut self) -> io::Result<()> {
        match self {
            AnySink::Stdout(s) => s.on_due().await,
            AnySink::File(s) => s.on_due().await,
        }
    }
    async fn reopen(&mut self) -> io::Result<()> {
        match self {
            AnySink::Stdout(s) => s.reopen().await,
            AnySink::File(s) => s.reopen().await,
        }
    }
    async fn close(&mut self) -> io::Result<()> {
        match self {
            AnySink::Stdout(s) => s.close().await,
            AnySink::File(s) => s.close().await,
        }
    }
}

/// A sink failed to start.
#[derive(Debug, thiserror::Error)]
#[error("sink \"{name}\": {source}")]
pub struct BuildError {
    name: String,
    source: io::Error,
}

impl SinkSettings {
    /// Opens the sink's output; the only way to get a running sink.
    pub async fn build(&self) -> Result<AnySink, BuildError> {
        let err = |source| BuildError {
            name: self.name.clone(),
            source,
        };
        Ok(match &self.kind {
            SinkKind::Stdout => AnySink::Stdout(WriterSink::new(tokio::io::stdout())),
            SinkKind::File {
                path,
                fsync,
                fsync_interval,
            } => AnySink::File(
                FileSink::open(path, *fsync, *fsync_interval)
                    .await
                    .map_err(err)?,
            ),
        })
    }

    fn filter(&self) -> Filter {
        Filter {
            events: self.events.iter().cloned().collect(),
            properties: self.properties.iter().cloned().collect(),
        }
    }
}

/// `events` and `properties` of a sink; empty sets let everything through.
struct Filter {
    events: HashSet<String>,
    properties: HashSet<String>,
}

impl Filter {
    fn matches(&self, record: &StoredRecord) -> bool {
        (self.events.is_empty()
            || record
                .kind
                .as_ref()
                .is_some_and(|k| self.events.contains(k)))
            && (self.properties.is_empty() || self.properties.contains(&record.property))
    }
}

/// How the app steers a running sink.
#[derive(Clone)]
pub struct SinkControl {
    /// Sources have stopped: deliver what is committed, then end.
    pub drain: CancellationToken,
    /// The grace period is over: end now, leaving the rest in the journal.
    pub abort: CancellationToken,
    /// Bumped on SIGHUP: reopen outputs.
    pub reopen: watch::Receiver<u64>,
}

/// Runs one sink until drained or aborted.
pub async fn drive(
    settings: SinkSettings,
    mut sink: AnySink,
    journal: Journal,
    mut ctl: SinkControl,
) {
    let span = tracing::info_span!("sink", sink = %settings.name);
    async move {
        let filter = settings.filter();
        let name = settings.name;
        let mut cursor = journal.cursor(&name);
        let mut committed = journal.committed();
        let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
        let mut trouble = Trouble::default();
        tracing::debug!(cursor, "sink started");
        loop {
            if ctl.reopen.has_changed().unwrap_or(false) {
                ctl.reopen.borrow_and_update();
                reopen(&mut sink).await;
            }
            let last = *committed.borrow_and_update();
            if last <= cursor {
                if ctl.drain.is_cancelled() {
                    break;
                }
                let due = sink.due();
                tokio::select! {
                    () = ctl.abort.cancelled() => break,
                    () = ctl.drain.cancelled() => {}
                    changed = committed.changed() => if changed.is_err() { break },
                    Ok(()) = ctl.reopen.changed() => reopen(&mut sink).await,
                    () = sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                        if let Err(err) = sink.on_due().await {
                            tracing::warn!(error = %err, "housekeeping failed");
                        }
                    }
                }
                continue;
            }
            let batch = match journal.read_after(cursor, BATCH).await {
                Ok(batch) if !batch.is_empty() => batch,
                Ok(_) => {
                    tracing::error!(cursor, last, "the journal holds no records after the cursor; skipping to the end");
                    cursor = last;
                    continue;
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    trouble.failed("cannot read the journal", &err, delay);
                    tokio::select! {
                        () = ctl.abort.cancelled() => break,
                        () = sleep(delay) => continue,
                    }
                }
            };
            let lines: Vec<&[u8]> = batch
                .iter()
                .filter(|r| filter.matches(r))
                .map(|r| r.json.as_slice())
                .collect();
            while !lines.is_empty() {
                let result = tokio::select! {
                    () = ctl.abort.cancelled() => return,
                    result = sink.write(&lines) => result,
                };
                match result {
                    Ok(()) => {
                        backoff.reset();
                        break;
                    }
                    Err(err) => {
                        let delay = backoff.next_delay();
                        trouble.failed("cannot deliver; retrying (other sinks and the WebSocket are not affected)", &err, delay);
                        tokio::select! {
                            () = ctl.abort.cancelled() => return,
                            () = sleep(delay) => {}
                        }
                    }
                }
            }
            trouble.recovered();
            cursor = batch.last().map_or(cursor, |r| r.seq);
            if journal.advance(&name, cursor).await.is_err() {
                break;
            }
        }
        if let Err(err) = sink.close().await {
            tracing::warn!(error = %err, "closing failed");
        }
        tracing::debug!(cursor, "sink stopped");
    }
    .instrument(span)
    .await
}

/// Logs a run of failures once at its start and once at its end.
#[derive(Default)]
struct Trouble {
    failures: u64,
}

impl Trouble {
    fn failed(&mut self, what: &str, err: &dyn std::fmt::Display, retry_in: Duration) {
        self.failures += 1;
        if self.failures == 1 {
            tracing::error!(error = %err, ?retry_in, "{what}");
        } else {
            tracing::debug!(error = %err, ?retry_in, failures = self.failures, "{what}");
        }
    }

    fn recovered(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "delivering again");
            self.failures = 0;
        }
    }
}

async fn reopen(sink: &mut AnySink) {
    match sink.reopen().await {
        Ok(()) => tracing::info!("reopened"),
        Err(err) => tracing::error!(error = %err, "cannot reopen; will retry on the next write"),
    }
}

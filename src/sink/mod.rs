//! Sinks: each runs its own task, reads committed records after its cursor, delivers them and
//! moves the cursor. A slow or failing sink only ever delays itself.

pub mod dead_letter;
mod drive;
mod file;
mod http;
mod nats;
mod redact;
mod stdout;

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::Arc;

use tokio::time::Instant;

use crate::config::{SinkKind, SinkSettings};
use crate::journal::StoredRecord;
use crate::stats::Stats;

pub use drive::{SinkControl, drive};
pub use file::FileSink;
pub use http::HttpSink;
pub use nats::NatsSink;
pub use redact::Redactor;
pub use stdout::WriterSink;

/// Records read from the journal per batch, unless a sink asks for fewer.
pub(crate) const BATCH: usize = 4096;

/// What every sink does.
pub trait Sink {
    /// Delivers the records (in order); `Ok` means the cursor may move past them.
    fn write(&mut self, records: &[&StoredRecord]) -> impl Future<Output = io::Result<()>> + Send;

    /// Seqs of the records the last [`Sink::write`] dead-lettered instead of delivering (they
    /// are not acknowledged to Mews as received).
    fn take_dead_lettered(&mut self) -> Vec<u64> {
        Vec::new()
    }

    /// At most this many records per [`Sink::write`]; the cursor moves after each.
    fn batch_limit(&self) -> usize {
        BATCH
    }

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
    /// `type = "http"`
    Http(Box<HttpSink>),
    /// `type = "nats"`
    Nats(Box<NatsSink>),
}

/// Runs `$body` with `$sink` bound to whichever sink `$any` holds.
macro_rules! each {
    ($any:expr, $sink:ident => $body:expr) => {
        match $any {
            AnySink::Stdout($sink) => $body,
            AnySink::File($sink) => $body,
            AnySink::Http($sink) => $body,
            AnySink::Nats($sink) => $body,
        }
    };
}

impl Sink for AnySink {
    async fn write(&mut self, records: &[&StoredRecord]) -> io::Result<()> {
        each!(self, s => s.write(records).await)
    }
    fn batch_limit(&self) -> usize {
        each!(self, s => s.batch_limit())
    }
    fn take_dead_lettered(&mut self) -> Vec<u64> {
        each!(self, s => s.take_dead_lettered())
    }
    fn due(&self) -> Option<Instant> {
        each!(self, s => s.due())
    }
    async fn on_due(&mut self) -> io::Result<()> {
        each!(self, s => s.on_due().await)
    }
    async fn reopen(&mut self) -> io::Result<()> {
        each!(self, s => s.reopen().await)
    }
    async fn close(&mut self) -> io::Result<()> {
        each!(self, s => s.close().await)
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
    /// Opens the sink's output; the only way to get a running sink. Dead letters go under
    /// `state_dir`.
    pub async fn build(&self, state_dir: &Path, stats: &Arc<Stats>) -> Result<AnySink, BuildError> {
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
            SinkKind::Http(http) => AnySink::Http(Box::new(
                HttpSink::new(&self.name, http, state_dir, Arc::clone(stats)).map_err(err)?,
            )),
            SinkKind::Nats(nats) => AnySink::Nats(Box::new(
                NatsSink::new(&self.name, nats).await.map_err(err)?,
            )),
        })
    }

    fn filter(&self) -> Filter {
        Filter {
            sink: self.name.clone(),
            events: self.events.iter().cloned().collect(),
            properties: self.properties.iter().cloned().collect(),
        }
    }
}

/// `events` and `properties` of a sink; empty sets let everything through. A replayed dead
/// letter passes only its own sink.
struct Filter {
    sink: String,
    events: HashSet<String>,
    properties: HashSet<String>,
}

impl Filter {
    fn matches(&self, record: &StoredRecord) -> bool {
        record
            .only_sink
            .as_ref()
            .is_none_or(|only| *only == self.sink)
            && (self.events.is_empty()
                || record
                    .kind
                    .as_ref()
                    .is_some_and(|k| self.events.contains(k)))
            && (self.properties.is_empty() || self.properties.contains(&record.property))
    }
}

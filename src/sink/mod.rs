//! Sinks: each runs its own task, reads committed records after its cursor, delivers them and
//! moves the cursor. A slow or failing sink only ever delays itself.
//!
//! A sink type is one folder: its settings (the `[[sink]]` keys of its type, as read and as
//! checked, with their defaults) and the sink itself. The keys every sink has (`name`, `type`,
//! `events`, `properties`, `redact`) are read once, in `settings`. A new type adds its folder,
//! a `mod` line and a line in the registry below (CONTRIBUTING.md, "Adding a sink").

pub mod dead_letter;
mod drive;
mod redact;
mod registry;
mod settings;

mod file;
mod http;
mod nats;
mod stdout;

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::time::Instant;

use crate::journal::StoredRecord;
use crate::retry::{Backoff, RetryPolicy, schedules};

pub(crate) use drive::{SinkControl, drive};
pub use file::{FileSettings, Fsync};
pub use http::HttpSettings;
pub use nats::{NatsAuth, NatsSettings};
pub(crate) use redact::Redactor;
pub use settings::SinkSettings;
pub(crate) use settings::validate;
pub use stdout::StdoutSettings;

use settings::Filter;

// The registry: one line per sink type, `"type" => Variant(its settings)`.
registry::sink_types! {
    "stdout" => Stdout(stdout::StdoutSettings),
    "file" => File(file::FileSettings),
    "http" => Http(http::HttpSettings),
    "nats" => Nats(nats::NatsSettings),
}

/// Records read from the journal per batch, unless a sink asks for fewer.
pub(crate) const BATCH: usize = 4096;

/// What every sink does.
pub(crate) trait Sink {
    /// Delivers the records (in order); `Ok` means the cursor may move past them.
    fn write(&mut self, records: &[&StoredRecord]) -> impl Future<Output = io::Result<()>> + Send;

    /// Seqs of the records the last [`Sink::write`] dead-lettered instead of delivering (they
    /// are not acknowledged to Mews as received).
    fn take_dead_lettered(&mut self) -> Vec<u64> {
        Vec::new()
    }

    /// The schedule on which a failed [`Sink::write`] is retried (by the drive loop, the one
    /// retry loop of every sink).
    fn retry_policy(&self) -> RetryPolicy {
        schedules::SINK
    }

    /// The wait before retrying a failed [`Sink::write`]: the schedule's next step, unless the
    /// sink knows better (a server's `Retry-After`, a deadline of its own).
    fn retry_delay(&mut self, backoff: &mut Backoff) -> Duration {
        backoff.next_delay()
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

/// A failed delivery as the sink explains it to the drive loop (carried inside the
/// `io::Error` that [`Sink::write`] returns): a coarse kind, logged once per change, and
/// whether the sink is paused — the endpoint or its credentials are wrong, not the record, so
/// the records are kept and retried and `/readyz`, `status` and `STATUS=` name the sink.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Failure {
    /// A coarse class for the failure log (`HTTP 401`, `TLS`, `cannot connect`).
    pub kind: String,
    /// Whether the failure pauses the sink rather than being a passing one.
    pub pause: bool,
    /// One line for people, with the fix when known.
    pub message: String,
}

impl Failure {
    /// As the `io::Error` a sink returns.
    pub fn into_io(self) -> io::Error {
        io::Error::other(self)
    }

    /// The kind and pause of any error a sink returned: a [`Failure`] says it; any other error
    /// is a passing one of its `io::ErrorKind`.
    pub fn of(err: &io::Error) -> (String, bool) {
        match err.get_ref().and_then(|e| e.downcast_ref::<Failure>()) {
            Some(failure) => (failure.kind.clone(), failure.pause),
            None => (err.kind().to_string(), false),
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

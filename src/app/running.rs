//! What one run started, supervised until shutdown, a reload that must start everything again,
//! or a task that ends on its own; reloads that keep the journal are applied in place
//! (`apply`). Then everything is stopped in order: sources and listeners, enrichers, sinks
//! (drained within the grace period), updaters, the journal.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::crew::{Crew, Unbidden};
use super::plan::Plan;
use super::reloads::Request;
use super::{AppError, Control, Ended};
use crate::config::Settings;
use crate::journal::{Journal, JournalError};
use crate::listener::BodyBudget;
use crate::mews::update::Unsent;
use crate::rejects::Rejects;
use crate::stats::Stats;

/// A running sink's place in the journal.
pub(super) struct SinkPlace {
    /// The last seq it passed (its successor starts there).
    pub position: Arc<AtomicU64>,
    /// How the journal tells it to shed.
    pub shed: watch::Receiver<u64>,
}

/// Everything one run started, to be stopped in order.
pub(super) struct Running {
    /// The config in force.
    pub settings: Arc<Settings>,
    /// The same, for the API (it reads the running config).
    pub current: watch::Sender<Arc<Settings>>,
    pub journal: Journal,
    pub writer: JoinHandle<()>,
    pub stats: Arc<Stats>,
    /// Bumped to reopen sink outputs.
    pub reopen: watch::Receiver<u64>,
    /// Where reload requests come from (the API hands them in too).
    pub reloads: super::Reloads,
    /// The TLS client config of the WebSockets and the REST API (`[connection]`).
    pub tls: Arc<rustls::ClientConfig>,
    /// Where undecodable messages go (shared by the sources).
    pub rejects: Arc<Rejects>,
    /// One WebSocket per property.
    pub sources: Crew<()>,
    /// Enrichers settle what is pending, then end (after the sources, before the drain).
    pub enrichers: Crew<()>,
    /// Updaters apply command states in Mews; stopped after the sinks (the outbox persists).
    pub updaters: Crew<Unsent>,
    pub sinks: Crew<()>,
    pub places: HashMap<String, SinkPlace>,
    /// Webhooks, metrics, API.
    pub listeners: Crew<()>,
    /// Bodies in flight, shared by all listeners.
    pub budget: BodyBudget,
    pub drain: CancellationToken,
    pub abort: CancellationToken,
    pub ops_stop: CancellationToken,
    pub supervisor: Option<JoinHandle<()>>,
}

/// What ended the wait of [`Running::supervise`].
enum Event {
    Stop,
    Unbidden(Unbidden),
    Reload(Request),
}

impl Running {
    /// Waits for shutdown, a reload that must start everything again, or a task that ends on
    /// its own (a bug: the relay stops so that systemd restarts it); applies other reloads in
    /// place. Then stops everything; returns how it ended and the config then in force.
    pub async fn supervise(
        mut self,
        control: &Control,
    ) -> Result<(Ended, Arc<Settings>), AppError> {
        let ended = loop {
            let event = tokio::select! {
                () = control.shutdown.cancelled() => Event::Stop,
                u = self.sources.ended() => Event::Unbidden(u),
                u = self.listeners.ended() => Event::Unbidden(u),
                u = self.sinks.ended() => Event::Unbidden(u),
                u = self.enrichers.ended() => Event::Unbidden(u),
                u = self.updaters.ended() => Event::Unbidden(u),
                Some(request) = control.reloads.next() => Event::Reload(request),
            };
            match event {
                Event::Stop => break Ok(Ended::Stopped),
                Event::Unbidden(unbidden) => break Err(ended(unbidden)),
                Event::Reload(request) => {
                    if let Some(restart) = self.reload(request).await {
                        break Ok(restart);
                    }
                }
            }
        };
        match &ended {
            Ok(Ended::Restart { .. }) => crate::ops::reloading(),
            _ => crate::ops::stopping(),
        }
        let settings = Arc::clone(&self.settings);
        let stopped = self.stop().await;
        match ended {
            Ok(Ended::Stopped) => {
                stopped?;
                tracing::info!("mews-relay stopped");
                Ok((Ended::Stopped, settings))
            }
            Ok(restart) => Ok((restart, settings)),
            Err(name) => Err(AppError::TaskEnded(name)),
        }
    }

    /// A reload request: refused, applied in place (what changed restarts), or, when the
    /// journal itself must open again, handed back to start everything again.
    async fn reload(&mut self, request: Request) -> Option<Ended> {
        let generation = request.generation;
        let next = match request.config {
            Ok(next) => next,
            Err(why) => {
                tracing::error!(error = %why, "the new configuration is invalid and was not applied; the running one stays");
                self.stats.reloaded(
                    generation,
                    Err(format!("the new configuration is refused: {why}")),
                );
                return None;
            }
        };
        let journal_lost = self.stats.journal.file_problem().is_some();
        let plan = Plan::between(&self.settings, &next, journal_lost);
        if let Some(why) = plan.restart_all {
            tracing::info!(config = %next.origin.display(), "reloading the configuration: {why}; everything starts again (WebSockets reconnect)");
            return Some(Ended::Restart {
                next,
                generation,
                why,
            });
        }
        crate::ops::reloading();
        let changes = plan.describe();
        let applied = self.apply(&next, &plan).await;
        crate::ops::ready();
        match applied {
            Ok(()) => {
                tracing::info!(config = %next.origin.display(), %changes, "configuration reloaded; what did not change kept running");
                self.stats.reloaded(generation, Ok(changes));
            }
            Err(err) => {
                tracing::error!(error = %err, "the new configuration could not start and was not applied; the running one stays");
                self.stats.reloaded(
                    generation,
                    Err(format!("the new configuration could not start: {err}")),
                );
            }
        }
        None
    }

    /// Sources and listeners first (nothing new arrives), then the enrichers settle what is
    /// pending, then the sinks drain within the grace period, then the journal closes. An
    /// error if the last journal commit failed (what the sources handed over may not be
    /// stored).
    pub async fn stop(mut self) -> Result<(), JournalError> {
        let grace = self.settings.shutdown.grace_period;
        self.sources.cancel_all();
        self.listeners.cancel_all();
        self.sources.join_all().await;
        self.listeners.join_all().await;
        let mut result = self.journal.flush().await;
        self.enrichers.cancel_all();
        let enrichers = &mut self.enrichers;
        if tokio::time::timeout(grace, enrichers.join_all())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "records still waiting for enrichment stay in the journal for the next start"
            );
            self.enrichers.abort_all().await;
        }
        if result.is_ok() {
            result = self.journal.flush().await;
        }
        if let Err(err) = &result {
            tracing::error!(error = %err, "the final journal commit failed");
        }
        self.drain_sinks(grace).await;
        self.updaters.cancel_all();
        self.updaters.join_all().await;
        self.ops_stop.cancel();
        if let Some(supervisor) = self.supervisor.take() {
            let _ = supervisor.await;
        }
        drop(self.current);
        drop(self.journal);
        if let Err(err) = self.writer.await {
            tracing::error!(error = %err, "journal writer failed");
        }
        result
    }

    /// Sinks deliver what is committed, within `grace`; then they are stopped.
    async fn drain_sinks(&mut self, grace: Duration) {
        self.drain.cancel();
        let sinks = &mut self.sinks;
        if tokio::time::timeout(grace, sinks.join_all()).await.is_err() {
            let last = *self.journal.committed().borrow();
            tracing::warn!(
                ?grace,
                last_seq = last,
                "grace period over: stopping sinks; what they did not deliver stays in the journal for the next start"
            );
            self.abort.cancel();
            self.sinks.join_all().await;
        }
    }
}

/// Logs a task that ended; its kind names the error.
fn ended(unbidden: Unbidden) -> &'static str {
    match unbidden.error {
        None => {
            tracing::error!(task = unbidden.kind, name = %unbidden.name, "a task ended unexpectedly; shutting down")
        }
        Some(err) => {
            tracing::error!(task = unbidden.kind, name = %unbidden.name, error = %err, "a task failed; shutting down")
        }
    }
    unbidden.kind
}

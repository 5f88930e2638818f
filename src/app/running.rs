//! What one run started, supervised until shutdown, a reload or a task that ends on its own,
//! then stopped in order: sources, enrichers, sinks (drained within the grace period),
//! updaters, the journal.

use std::time::Duration;

use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::{AppError, Control, Ended};
use crate::config::Settings;
use crate::journal::{Journal, JournalError};

/// Everything one run started, to be stopped in order.
pub(super) struct Running {
    pub journal: Journal,
    pub writer: JoinHandle<()>,
    pub sources_stop: CancellationToken,
    pub sources: JoinSet<()>,
    /// Enrichers settle what is pending, then end (after the sources, before the drain).
    pub enrich_stop: CancellationToken,
    pub enrichers: JoinSet<()>,
    /// Updaters apply command states in Mews; stopped after the sinks (the outbox persists).
    pub updaters_stop: CancellationToken,
    pub updaters: JoinSet<()>,
    pub drain: CancellationToken,
    pub abort: CancellationToken,
    pub sinks: JoinSet<()>,
    pub ops_stop: CancellationToken,
    pub supervisor: Option<JoinHandle<()>>,
}

impl Running {
    /// Nothing started yet but the journal and its writer.
    pub fn new(journal: Journal, writer: JoinHandle<()>) -> Running {
        Running {
            journal,
            writer,
            sources_stop: CancellationToken::new(),
            sources: JoinSet::new(),
            enrich_stop: CancellationToken::new(),
            enrichers: JoinSet::new(),
            updaters_stop: CancellationToken::new(),
            updaters: JoinSet::new(),
            drain: CancellationToken::new(),
            abort: CancellationToken::new(),
            sinks: JoinSet::new(),
            ops_stop: CancellationToken::new(),
            supervisor: None,
        }
    }

    /// Waits for shutdown, a reload, or a task that ends on its own (a bug: the relay stops so
    /// that systemd restarts it); then stops everything.
    pub async fn supervise(
        mut self,
        settings: &Settings,
        control: &mut Control,
    ) -> Result<Ended, AppError> {
        let ended = loop {
            tokio::select! {
                () = control.shutdown.cancelled() => break Ok(Ended::Stopped),
                Some(res) = self.sources.join_next() => break Err(ended("source", res)),
                Some(res) = self.sinks.join_next() => break Err(ended("sink", res)),
                Some(res) = self.enrichers.join_next() => break Err(ended("enricher", res)),
                Some(res) = self.updaters.join_next() => break Err(ended("updater", res)),
                Ok(()) = control.reload.changed() => {
                    if let Some(next) = control.reload.borrow_and_update().clone() {
                        break Ok(Ended::Reload(next));
                    }
                }
            }
        };
        match &ended {
            Ok(Ended::Reload(_)) => crate::ops::reloading(),
            _ => crate::ops::stopping(),
        }
        let stopped = self.stop(settings.shutdown.grace_period).await;
        match ended {
            Ok(Ended::Stopped) => {
                stopped?;
                tracing::info!("mews-relay stopped");
                Ok(Ended::Stopped)
            }
            Ok(reload) => Ok(reload),
            Err(name) => Err(AppError::TaskEnded(name)),
        }
    }

    /// Sources first (nothing new arrives), then the enrichers settle what is pending, then
    /// the sinks drain within `grace`, then the journal closes. An error if the last journal
    /// commit failed (what the sources handed over may not be stored).
    pub async fn stop(mut self, grace: Duration) -> Result<(), JournalError> {
        self.sources_stop.cancel();
        while self.sources.join_next().await.is_some() {}
        let mut result = self.journal.flush().await;
        self.enrich_stop.cancel();
        let enrichers = &mut self.enrichers;
        if tokio::time::timeout(grace, async {
            while enrichers.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!(
                ?grace,
                "records still waiting for enrichment stay in the journal for the next start"
            );
            self.enrichers.shutdown().await;
        }
        if result.is_ok() {
            result = self.journal.flush().await;
        }
        if let Err(err) = &result {
            tracing::error!(error = %err, "the final journal commit failed");
        }
        self.drain.cancel();
        let sinks = &mut self.sinks;
        let drained =
            tokio::time::timeout(grace, async { while sinks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            let last = *self.journal.committed().borrow();
            tracing::warn!(
                ?grace,
                last_seq = last,
                "grace period over: stopping sinks; what they did not deliver stays in the journal for the next start"
            );
            self.abort.cancel();
            while self.sinks.join_next().await.is_some() {}
        }
        self.updaters_stop.cancel();
        while self.updaters.join_next().await.is_some() {}
        self.ops_stop.cancel();
        if let Some(supervisor) = self.supervisor {
            let _ = supervisor.await;
        }
        drop(self.journal);
        if let Err(err) = self.writer.await {
            tracing::error!(error = %err, "journal writer failed");
        }
        result
    }
}

/// Logs a task that ended; its kind names the error.
fn ended(name: &'static str, result: Result<(), tokio::task::JoinError>) -> &'static str {
    match result {
        Ok(()) => tracing::error!(task = name, "a task ended unexpectedly; shutting down"),
        Err(err) => tracing::error!(task = name, error = %err, "a task failed; shutting down"),
    }
    name
}

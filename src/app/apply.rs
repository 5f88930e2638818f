//! A reload applied in place: what can fail comes first, while the running config is whole —
//! the new sinks' outputs are opened, the changed listeners bound (the old ones bound again
//! if that fails), the journal told of sinks that come and go — then the changed sinks and
//! properties are stopped and started again. What did not change keeps running: its
//! WebSocket stays connected, its sink keeps its place.
//!
//! A sink keeps its place in the journal across a restart (its successor starts where it
//! stopped); a sink new to the journal, a renamed one too, starts with the records that come
//! after the reload, as at start-up.

use std::collections::HashMap;
use std::sync::Arc;

use super::AppError;
use super::plan::{ListenerKind, Plan};
use super::running::Running;
use crate::config::Settings;
use crate::journal::SinkStart;
use crate::sink::AnySink;

impl Running {
    /// Switches to `next` as `plan` says; on an error nothing of `next` runs (a listener that
    /// could not be bound again is logged).
    pub(super) async fn apply(
        &mut self,
        next: &Arc<Settings>,
        plan: &Plan,
    ) -> Result<(), AppError> {
        let built = self.open_sinks(next, &plan.sinks.start).await?;
        let http = if plan.properties.start.is_empty() {
            None
        } else {
            let tls = crate::tls::client_config(&next.connection.extra_roots, None)?;
            let http = crate::mews::http_client(&tls, next.mews.request_timeout)
                .map_err(AppError::Rest)?;
            Some((tls, http))
        };
        self.swap_listeners(next, &plan.listeners).await?;
        let started = match self.set_journal_sinks(next).await {
            Ok(started) => started,
            Err(err) => {
                let old = Arc::clone(&self.settings);
                if let Err(again) = self.swap_listeners(&old, &plan.listeners).await {
                    tracing::error!(error = %again, "cannot bind the previous listeners again");
                }
                return Err(err);
            }
        };
        self.swap_sinks(next, plan, built, started).await;
        if let Some((tls, http)) = http {
            let unsent = self.stop_properties(&plan.properties.stop).await;
            for name in &plan.properties.stop {
                if !plan.properties.start.contains(name) {
                    self.enrichers.retire(name);
                }
            }
            self.tls = tls;
            self.start_properties(next, &plan.properties.start, &http, unsent)
                .await?;
        } else {
            self.stop_properties(&plan.properties.stop).await;
            for name in &plan.properties.stop {
                self.enrichers.retire(name);
            }
        }
        let names: Vec<&str> = next.properties.iter().map(|p| p.name.as_str()).collect();
        self.stats.keep_properties(&names);
        let sinks: Vec<String> = next.sinks.iter().map(|s| s.name.clone()).collect();
        self.stats.keep_sinks(&sinks);
        self.settings = Arc::clone(next);
        self.current.send_replace(Arc::clone(next));
        Ok(())
    }

    /// Opens the outputs of sinks `names` of `next` (nothing is stopped yet).
    async fn open_sinks(
        &self,
        next: &Settings,
        names: &[String],
    ) -> Result<Vec<(String, AnySink)>, AppError> {
        let mut built = Vec::new();
        for sink in next.sinks.iter().filter(|s| names.contains(&s.name)) {
            built.push((
                sink.name.clone(),
                sink.build(&next.state.dir, &self.stats).await?,
            ));
        }
        Ok(built)
    }

    /// Listeners `kinds` stopped and bound as `next` has them; if one cannot be bound, those
    /// of the running config are bound again and the error returned.
    async fn swap_listeners(
        &mut self,
        next: &Settings,
        kinds: &[ListenerKind],
    ) -> Result<(), AppError> {
        if kinds.is_empty() {
            return Ok(());
        }
        for kind in kinds {
            self.stop_listener(*kind).await;
        }
        let bounds = super::units::listener_bounds(next, &self.budget);
        for kind in kinds {
            if let Err(err) = self.bind_listener(*kind, next, bounds.clone()).await {
                for kind in kinds {
                    self.stop_listener(*kind).await;
                }
                let old = Arc::clone(&self.settings);
                let bounds = super::units::listener_bounds(&old, &self.budget);
                for kind in kinds {
                    if let Err(again) = self.bind_listener(*kind, &old, bounds.clone()).await {
                        tracing::error!(error = %again, "cannot bind the previous listener again");
                    }
                }
                return Err(err);
            }
        }
        Ok(())
    }

    /// Tells the journal the sinks of `next`, when names come or go: where each new one starts.
    async fn set_journal_sinks(
        &mut self,
        next: &Settings,
    ) -> Result<HashMap<String, SinkStart>, AppError> {
        let names =
            |s: &Settings| -> Vec<String> { s.sinks.iter().map(|k| k.name.clone()).collect() };
        let (old, new) = (names(&self.settings), names(next));
        let mut sorted = (old.clone(), new.clone());
        sorted.0.sort();
        sorted.1.sort();
        if sorted.0 == sorted.1 {
            return Ok(HashMap::new());
        }
        Ok(self.journal.set_sinks(new).await?)
    }

    /// Stops the sinks the plan stops and starts the `built` ones: a changed sink where its
    /// predecessor stopped, a new one where the journal says (`started`).
    async fn swap_sinks(
        &mut self,
        next: &Settings,
        plan: &Plan,
        built: Vec<(String, AnySink)>,
        mut started: HashMap<String, SinkStart>,
    ) {
        let mut stopped = HashMap::new();
        for name in &plan.sinks.stop {
            if let Some(place) = self.stop_sink(name).await {
                stopped.insert(name.clone(), place);
            }
        }
        for (name, sink) in built {
            let Some(settings) = next.sinks.iter().find(|s| s.name == name) else {
                continue;
            };
            let start = match started.remove(&name).or_else(|| stopped.remove(&name)) {
                Some(start) => start,
                // Stopped by a panic without a place: where it stood at the journal's open.
                None => SinkStart {
                    cursor: self.journal.cursor(&name),
                    shed: self.journal.shed_signal(&name),
                },
            };
            self.spawn_sink(next, settings, sink, start);
        }
    }
}

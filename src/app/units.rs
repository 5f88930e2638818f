//! The parts a run is made of, each started and stopped on its own (at start, and by a reload
//! that changed it): a sink, a property (its enricher and updater, then its WebSocket), a
//! listener.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::AppError;
use super::plan::ListenerKind;
use super::running::{Running, SinkPlace};
use crate::config::Settings;
use crate::journal::SinkStart;
use crate::mews::enrich::Health;
use crate::mews::update::{Unsent, Updater};
use crate::mews::{Enricher, Rest};
use crate::sink::{self, AnySink, SinkControl, SinkSettings};
use crate::source::Source;

impl Running {
    /// Drives `sink` from `start` in a task of its own.
    pub(super) fn spawn_sink(
        &mut self,
        settings: &Settings,
        sink_settings: &SinkSettings,
        sink: AnySink,
        start: SinkStart,
    ) {
        let position = Arc::new(AtomicU64::new(start.cursor));
        let retire = CancellationToken::new();
        let ctl = SinkControl {
            drain: self.drain.clone(),
            abort: self.abort.clone(),
            retire: retire.clone(),
            position: Arc::clone(&position),
            received_after: settings
                .commands
                .as_ref()
                .and_then(|c| c.received_after.clone()),
            reopen: self.reopen.clone(),
            state_dir: settings.state.dir.clone(),
            stats: Arc::clone(&self.stats),
        };
        self.places.insert(
            sink_settings.name.clone(),
            SinkPlace {
                position,
                shed: start.shed.clone(),
            },
        );
        self.sinks.spawn(
            &sink_settings.name,
            retire,
            sink::drive(
                sink_settings.clone(),
                sink,
                self.journal.clone(),
                ctl,
                start,
            ),
        );
    }

    /// Stops sink `name` (the write under way ends first, within the grace period): where it
    /// stood, for its successor.
    pub(super) async fn stop_sink(&mut self, name: &str) -> Option<SinkStart> {
        let grace = self.settings.shutdown.grace_period;
        self.sinks.stop(name, grace).await;
        let place = self.places.remove(name)?;
        Some(SinkStart {
            cursor: place.position.load(Ordering::Acquire),
            shed: place.shed,
        })
    }

    /// The HTTP client of the Mews REST API (`[connection] ca_file`, `mews.request_timeout`).
    pub(super) fn rest_http(&self, settings: &Settings) -> Result<reqwest::Client, AppError> {
        crate::mews::http_client(&self.tls, settings.mews.request_timeout).map_err(AppError::Rest)
    }

    /// Starts properties `names` of `settings`: each one's enricher and updater claim its share
    /// of the journal (an updater first sends what its predecessor left, `unsent`), then the
    /// WebSockets connect.
    pub(super) async fn start_properties(
        &mut self,
        settings: &Settings,
        names: &[String],
        http: &reqwest::Client,
        mut unsent: HashMap<String, Unsent>,
    ) -> Result<(), AppError> {
        let mut started = Vec::new();
        for property in settings
            .properties
            .iter()
            .filter(|p| names.contains(&p.name))
        {
            let rest = crate::mews::rest_for(settings, property, http, &self.stats);
            let health = self
                .start_enricher(settings, &property.name, rest.as_ref())
                .await?;
            let left = unsent.remove(&property.name);
            self.start_updater(settings, &property.name, rest.as_ref(), left)
                .await?;
            started.push((property, rest, health));
        }
        self.journal
            .release_unclaimed(
                "not enriched: enrichment is off for this property now (config changed)",
            )
            .await?;
        let shared = crate::source::Shared {
            tls: Arc::clone(&self.tls),
            journal: self.journal.clone(),
            rejects: Arc::clone(&self.rejects),
            stats: Arc::clone(&self.stats),
        };
        for (property, rest, health) in started {
            let source = Source::new(settings, property, &shared, rest, health);
            let stop = CancellationToken::new();
            self.sources
                .spawn(&property.name, stop.clone(), source.run(stop));
        }
        Ok(())
    }

    /// The property's enricher, when it enriches: it claims the property's pending records
    /// (a predecessor's inbox closes; it settles what it has, then ends). Its health, for the
    /// WebSocket reader.
    async fn start_enricher(
        &mut self,
        settings: &Settings,
        name: &str,
        rest: Option<&Arc<Rest>>,
    ) -> Result<Option<Arc<Health>>, AppError> {
        let Some(rest) = rest.filter(|_| settings.enrich.commands) else {
            self.enrichers.retire(name);
            return Ok(None);
        };
        let inbox = self.journal.claim(name).await?;
        self.enrichers.retire(name);
        let health = Arc::new(Health::default());
        let enricher = Enricher {
            rest: Arc::clone(rest),
            journal: self.journal.clone(),
            property: Arc::from(name),
            timeout: settings.enrich.timeout,
            stats: Arc::clone(&self.stats),
            health: Arc::clone(&health),
        };
        let finish = CancellationToken::new();
        let span = tracing::info_span!("property", property = %name);
        self.enrichers.spawn(
            name,
            finish.clone(),
            enricher.run(inbox, finish).instrument(span),
        );
        Ok(Some(health))
    }

    /// The property's updater, when the command loop runs: it claims the property's outgoing
    /// updates, after what its predecessor left.
    async fn start_updater(
        &mut self,
        settings: &Settings,
        name: &str,
        rest: Option<&Arc<Rest>>,
        left: Option<Unsent>,
    ) -> Result<(), AppError> {
        let Some(rest) = rest.filter(|_| settings.command_loop()) else {
            return Ok(());
        };
        let inbox = self.journal.claim_updates(name).await?;
        // The claim closed the predecessor's inbox: all it held is in it now.
        let first = left.map(Unsent::into_vec).unwrap_or_default();
        let updater = Updater {
            rest: Arc::clone(rest),
            journal: self.journal.clone(),
            stats: Arc::clone(&self.stats),
        };
        let stop = CancellationToken::new();
        let span = tracing::info_span!("property", property = %name);
        self.updaters.spawn(
            name,
            stop.clone(),
            updater.run(first, inbox, stop).instrument(span),
        );
        Ok(())
    }

    /// Stops the WebSockets and updaters of properties `names` (a Close frame is sent); what
    /// each updater had not sent, for its successor. Their enrichers go on until a successor
    /// claims their records ([`Running::start_properties`]) or they are retired.
    pub(super) async fn stop_properties(&mut self, names: &[String]) -> HashMap<String, Unsent> {
        let grace = self.settings.shutdown.grace_period;
        for name in names {
            self.sources.stop(name, grace).await;
        }
        let mut unsent = HashMap::new();
        for name in names {
            if let Some(left) = self.updaters.stop(name, grace).await {
                unsent.insert(name.clone(), left);
            }
        }
        unsent
    }

    /// Binds listener `kind` of `settings`, if configured, and serves it within `bounds`.
    pub(super) async fn bind_listener(
        &mut self,
        kind: ListenerKind,
        settings: &Settings,
        bounds: crate::listener::Bounds,
    ) -> Result<(), AppError> {
        let stop = CancellationToken::new();
        let name = kind.name();
        match kind {
            ListenerKind::Webhooks => {
                let Some(webhooks) = &settings.webhooks else {
                    return Ok(());
                };
                let ingress = crate::ingress::Ingress::bind(
                    settings,
                    webhooks,
                    bounds,
                    self.journal.clone(),
                    Arc::clone(&self.stats),
                )
                .await?;
                self.listeners.spawn(name, stop.clone(), ingress.run(stop));
            }
            ListenerKind::Metrics => {
                let Some(m) = &settings.metrics else {
                    return Ok(());
                };
                let metrics = crate::metrics::MetricsServer::bind(
                    m.listen,
                    m.ready_max_lag,
                    bounds,
                    Arc::clone(&self.stats),
                )
                .await?;
                self.listeners.spawn(name, stop.clone(), metrics.run(stop));
            }
            ListenerKind::Api => {
                let Some(api) = &settings.api else {
                    return Ok(());
                };
                let server = crate::api::ApiServer::bind(
                    api,
                    bounds,
                    crate::api::Context {
                        journal: self.journal.clone(),
                        stats: Arc::clone(&self.stats),
                        current: self.current.subscribe(),
                        reloads: self.reloads.clone(),
                    },
                )
                .await?;
                self.listeners.spawn(name, stop.clone(), server.run(stop));
            }
        }
        Ok(())
    }

    /// Stops listener `kind`, if it runs (requests in flight finish first).
    pub(super) async fn stop_listener(&mut self, kind: ListenerKind) {
        let grace = self.settings.shutdown.grace_period;
        self.listeners.stop(kind.name(), grace).await;
    }
}

/// `[listeners]`, with each listener's connection cap fitted to the descriptor limit so that
/// a flooded listener leaves descriptors for WebSockets, REST calls, sinks and the journal;
/// bodies in flight share `budget`.
pub(super) fn listener_bounds(
    settings: &Settings,
    budget: &crate::listener::BodyBudget,
) -> crate::listener::Bounds {
    use crate::listener::{Bounds, fds};
    let count = usize::from(settings.webhooks.is_some())
        + usize::from(settings.metrics.is_some())
        + usize::from(settings.api.is_some());
    let limit = fds::soft_limit();
    let reserve = fds::reserve(settings.properties.len(), settings.sinks.len());
    let cap = fds::per_listener(settings.listeners.max_connections, count, limit, reserve);
    if count > 0 && cap < settings.listeners.max_connections {
        tracing::warn!(
            max_connections = settings.listeners.max_connections,
            fitted = cap,
            descriptor_limit = limit,
            reserved = reserve,
            "listeners.max_connections lowered to fit the descriptor limit; raise LimitNOFILE (ulimit -n) to allow more"
        );
    } else if count > 0 {
        tracing::debug!(
            max_connections = cap,
            descriptor_limit = limit,
            reserved = reserve,
            "listener connection cap"
        );
    }
    Bounds::new(&settings.listeners, cap, budget.clone())
}

//! The running relay: open the journal, start the sinks and one source per property, supervise
//! them, and on shutdown stop the sources, drain the sinks within the grace period.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Settings;
use crate::ingress::Ingress;
use crate::journal::{Journal, JournalError};
use crate::metrics::MetricsServer;
use crate::rejects::Rejects;
use crate::sink::{self, BuildError, SinkControl};
use crate::source::Source;
use crate::stats::Stats;
use crate::tls;

/// How the outside (signals, a test) steers a running relay.
#[derive(Clone)]
pub struct Control {
    /// Cancel to shut down: sources stop, sinks drain, `run` returns.
    pub shutdown: CancellationToken,
    /// Bump to make file sinks reopen their files (SIGHUP).
    pub reopen: watch::Receiver<u64>,
    /// A new, validated config to switch to (SIGHUP).
    pub reload: watch::Receiver<Option<Arc<Settings>>>,
}

/// The sending side of [`Control`].
pub struct ControlHandle {
    /// Bump to reopen files.
    pub reopen: watch::Sender<u64>,
    /// Send a config to reload.
    pub reload: watch::Sender<Option<Arc<Settings>>>,
}

impl Control {
    /// A control and the handle that steers it.
    pub fn new() -> (Control, ControlHandle) {
        let (reopen_tx, reopen) = watch::channel(0);
        let (reload_tx, reload) = watch::channel(None);
        (
            Control {
                shutdown: CancellationToken::new(),
                reopen,
                reload,
            },
            ControlHandle {
                reopen: reopen_tx,
                reload: reload_tx,
            },
        )
    }
}

/// Why the relay could not start or did not end cleanly.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The journal could not be opened.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A sink could not open its output.
    #[error(transparent)]
    Sink(#[from] BuildError),
    /// The state directory could not be created.
    #[error("cannot create the state directory {path}: {source}; check state.dir and its permissions", path = .path.display())]
    StateDir {
        /// `state.dir`.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS configuration could not be built.
    #[error("TLS set-up failed: {0}; check connection.ca_file")]
    Tls(#[from] rustls::Error),
    /// The webhook listener could not start.
    #[error(transparent)]
    Ingress(#[from] crate::ingress::IngressError),
    /// The local API listener could not start.
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    /// The metrics listener could not start.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The Mews REST client could not be built.
    #[error("Mews REST client: {0}")]
    Rest(crate::mews::RestError),
    /// A listener handed over by the caller could not be used.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A task ended on its own (a bug); the relay stopped so that systemd restarts it.
    #[error("the {0} task stopped unexpectedly")]
    TaskEnded(&'static str),
}

/// Runs the relay until `control.shutdown` is cancelled.
pub async fn run(settings: Settings, control: Control) -> Result<(), AppError> {
    run_with_stats(settings, control, Arc::new(Stats::default())).await
}

/// How one run of the relay ended.
enum Ended {
    Stopped,
    Reload(Arc<Settings>),
}

/// [`run`], with counters the caller can read. A reload stops everything (sources first, sinks
/// drained) and starts again with the new config; a config that then fails to start gives way
/// to the previous one.
pub async fn run_with_stats(
    settings: Settings,
    mut control: Control,
    stats: Arc<Stats>,
) -> Result<(), AppError> {
    let mut current = Arc::new(settings);
    let mut previous: Option<Arc<Settings>> = None;
    loop {
        match run_once(&current, &mut control, Arc::clone(&stats)).await {
            Ok(Ended::Stopped) => return Ok(()),
            Ok(Ended::Reload(next)) => {
                previous = Some(std::mem::replace(&mut current, next));
                tracing::info!("configuration reloaded; starting again");
            }
            Err(err) => match previous.take() {
                Some(old) if !matches!(err, AppError::TaskEnded(_)) => {
                    tracing::error!(error = %err, "the reloaded configuration cannot start; going back to the previous one");
                    current = old;
                }
                _ => return Err(err),
            },
        }
    }
}

/// Everything one run started, to be stopped in order.
struct Running {
    journal: Journal,
    writer: tokio::task::JoinHandle<()>,
    sources_stop: CancellationToken,
    sources: JoinSet<()>,
    /// Enrichers settle what is pending, then end (after the sources, before the drain).
    enrich_stop: CancellationToken,
    enrichers: JoinSet<()>,
    /// Updaters apply command states in Mews; stopped after the sinks (the outbox persists).
    updaters_stop: CancellationToken,
    updaters: JoinSet<()>,
    drain: CancellationToken,
    abort: CancellationToken,
    sinks: JoinSet<()>,
    ops_stop: CancellationToken,
    supervisor: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Sources first (nothing new arrives), then the enrichers settle what is pending, then
    /// the sinks drain within `grace`, then the journal closes. An error if the last journal
    /// commit failed (what the sources handed over may not be stored).
    async fn stop(mut self, grace: std::time::Duration) -> Result<(), JournalError> {
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

async fn run_once(
    settings: &Settings,
    control: &mut Control,
    stats: Arc<Stats>,
) -> Result<Ended, AppError> {
    let tls = tls::client_config(&settings.connection.extra_roots, None)?;
    let sink_names: Vec<String> = settings.sinks.iter().map(|s| s.name.clone()).collect();
    // 0700 whatever the umask: the journal and rejected.jsonl hold guests' data.
    crate::files::create_private_dir(&settings.state.dir).map_err(|source| AppError::StateDir {
        path: settings.state.dir.clone(),
        source,
    })?;
    // rejected.jsonl has its share of state.max_bytes; the journal gets the rest.
    let (journal, writer) = Journal::open(
        &settings.state.dir,
        &sink_names,
        crate::rejects::journal_share(settings.state.max_bytes),
        Arc::clone(&stats),
    )?;
    let names: Vec<&str> = settings
        .properties
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    stats.keep_properties(&names);
    stats.keep_sinks(&sink_names);
    let mut running = Running {
        writer: tokio::spawn(
            writer
                .dedupe_window(settings.catch_up.dedupe_window)
                .track_commands(settings.command_loop())
                .run(),
        ),
        journal,
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
    };
    let grace = settings.shutdown.grace_period;
    let rejects = Arc::new(Rejects::new(&settings.state.dir, settings.state.max_bytes));

    for sink_settings in &settings.sinks {
        let sink = match sink_settings.build(&settings.state.dir, &stats).await {
            Ok(sink) => sink,
            Err(err) => {
                let _ = running.stop(grace).await;
                return Err(err.into());
            }
        };
        let ctl = SinkControl {
            drain: running.drain.clone(),
            abort: running.abort.clone(),
            received_after: settings
                .commands
                .as_ref()
                .and_then(|c| c.received_after.clone()),
            reopen: control.reopen.clone(),
            state_dir: settings.state.dir.clone(),
            stats: Arc::clone(&stats),
        };
        running.sinks.spawn(sink::drive(
            sink_settings.clone(),
            sink,
            running.journal.clone(),
            ctl,
        ));
    }
    let http = match crate::mews::http_client(&tls, settings.mews.request_timeout) {
        Ok(http) => http,
        Err(err) => {
            let _ = running.stop(grace).await;
            return Err(AppError::Rest(err));
        }
    };
    let rests: Vec<_> = settings
        .properties
        .iter()
        .map(|property| crate::mews::rest_for(settings, property, &http, &stats))
        .collect();
    // Enrichers claim their property's pending records before any source appends more.
    let mut healths = Vec::with_capacity(rests.len());
    for (property, rest) in settings.properties.iter().zip(&rests) {
        let Some(rest) = rest.as_ref().filter(|_| settings.enrich.commands) else {
            healths.push(None);
            continue;
        };
        let health = Arc::new(crate::mews::enrich::Health::default());
        healths.push(Some(Arc::clone(&health)));
        let inbox = match running.journal.claim(&property.name).await {
            Ok(inbox) => inbox,
            Err(err) => {
                let _ = running.stop(grace).await;
                return Err(err.into());
            }
        };
        let enricher = crate::mews::Enricher {
            rest: Arc::clone(rest),
            journal: running.journal.clone(),
            property: Arc::from(property.name.as_str()),
            timeout: settings.enrich.timeout,
            stats: Arc::clone(&stats),
            health,
        };
        let span = tracing::info_span!("property", property = %property.name);
        running.enrichers.spawn(
            enricher
                .run(inbox, running.enrich_stop.clone())
                .instrument(span),
        );
    }
    // Updaters take their property's outgoing command updates (queued before a restart too).
    for (property, rest) in settings.properties.iter().zip(&rests) {
        let Some(rest) = rest.as_ref().filter(|_| settings.command_loop()) else {
            continue;
        };
        let inbox = match running.journal.claim_updates(&property.name).await {
            Ok(inbox) => inbox,
            Err(err) => {
                let _ = running.stop(grace).await;
                return Err(err.into());
            }
        };
        let updater = crate::mews::update::Updater {
            rest: Arc::clone(rest),
            journal: running.journal.clone(),
            stats: Arc::clone(&stats),
        };
        let span = tracing::info_span!("property", property = %property.name);
        running.updaters.spawn(
            updater
                .run(inbox, running.updaters_stop.clone())
                .instrument(span),
        );
    }
    if let Err(err) = running
        .journal
        .release_unclaimed("not enriched: enrichment is off for this property now (config changed)")
        .await
    {
        let _ = running.stop(grace).await;
        return Err(err.into());
    }
    let shared = crate::source::Shared {
        tls: Arc::clone(&tls),
        journal: running.journal.clone(),
        rejects: Arc::clone(&rejects),
        stats: Arc::clone(&stats),
    };
    for ((property, rest), health) in settings.properties.iter().zip(rests).zip(healths) {
        let source = Source::new(settings, property, &shared, rest, health);
        running
            .sources
            .spawn(source.run(running.sources_stop.clone()));
    }
    // Its journal handle would keep the writer from ending at shutdown.
    drop(shared);
    // The listeners are bound before anything depends on them, with one way out on failure.
    let bounds = listener_bounds(settings);
    let listeners = async {
        let ingress = match &settings.webhooks {
            Some(webhooks) => Some(
                Ingress::bind(
                    settings,
                    webhooks,
                    bounds.clone(),
                    running.journal.clone(),
                    Arc::clone(&stats),
                )
                .await?,
            ),
            None => None,
        };
        let metrics = match &settings.metrics {
            Some(m) => Some(
                MetricsServer::bind(
                    m.listen,
                    m.ready_max_lag,
                    bounds.clone(),
                    Arc::clone(&stats),
                )
                .await?,
            ),
            None => None,
        };
        let api = match &settings.api {
            Some(api) => Some(
                crate::api::ApiServer::bind(
                    settings,
                    api,
                    bounds.clone(),
                    running.journal.clone(),
                    Arc::clone(&stats),
                )
                .await?,
            ),
            None => None,
        };
        Ok::<_, AppError>((ingress, metrics, api))
    }
    .await;
    match listeners {
        Ok((ingress, metrics, api)) => {
            if let Some(api) = api {
                running.sources.spawn(api.run(running.sources_stop.clone()));
            }
            if let Some(ingress) = ingress {
                running
                    .sources
                    .spawn(ingress.run(running.sources_stop.clone()));
            }
            if let Some(metrics) = metrics {
                running
                    .sources
                    .spawn(metrics.run(running.sources_stop.clone()));
            }
        }
        Err(err) => {
            let _ = running.stop(grace).await;
            return Err(err);
        }
    }
    running.supervisor = Some(tokio::spawn(crate::ops::supervise(
        running.journal.clone(),
        Arc::clone(&stats),
        running.ops_stop.clone(),
    )));
    crate::ops::ready();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        properties = settings.properties.len(),
        sinks = settings.sinks.len(),
        journal = %running.journal.path().display(),
        last_seq = *running.journal.committed().borrow(),
        "mews-relay started"
    );
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let wants_rest =
        settings.catch_up.commands || settings.catch_up.reservations || settings.enrich.commands;
    if wants_rest && !crate::mews::wanted(settings) {
        tracing::warn!(
            websocket_url = %crate::config::redact_url(&settings.mews.websocket_url),
            "no mews.api_url: no catch-up after reconnects and no enrichment of device commands; set api_url (or turn [catch_up] and [enrich] off to silence this)"
        );
    }

    let ended = loop {
        tokio::select! {
            () = control.shutdown.cancelled() => break Ok(Ended::Stopped),
            Some(res) = running.sources.join_next() => break Err(ended("source", res)),
            Some(res) = running.sinks.join_next() => break Err(ended("sink", res)),
            Some(res) = running.enrichers.join_next() => break Err(ended("enricher", res)),
            Some(res) = running.updaters.join_next() => break Err(ended("updater", res)),
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
    let stopped = running.stop(grace).await;
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

/// `[listeners]`, with each listener's connection cap fitted to the descriptor limit so that
/// a flooded listener leaves descriptors for WebSockets, REST calls, sinks and the journal.
fn listener_bounds(settings: &Settings) -> crate::listener::Bounds {
    use crate::listener::{BodyBudget, Bounds, fds};
    let count = usize::from(settings.webhooks.is_some())
        + usize::from(settings.metrics.is_some())
        + usize::from(settings.api.is_some());
    let limit = fds::soft_limit();
    let reserve = fds::reserve(settings.properties.len(), settings.sinks.len());
    let cap = fds::per_listener(settings.listeners.max_connections, count, limit, reserve);
    if count > 0 {
        if cap < settings.listeners.max_connections {
            tracing::warn!(
                max_connections = settings.listeners.max_connections,
                fitted = cap,
                descriptor_limit = limit,
                reserved = reserve,
                "listeners.max_connections lowered to fit the descriptor limit; raise LimitNOFILE (ulimit -n) to allow more"
            );
        } else {
            tracing::debug!(
                max_connections = cap,
                descriptor_limit = limit,
                reserved = reserve,
                "listener connection cap"
            );
        }
    }
    Bounds::new(
        &settings.listeners,
        cap,
        BodyBudget::new(settings.listeners.max_body_in_flight),
    )
}

fn ended(name: &'static str, result: Result<(), tokio::task::JoinError>) -> &'static str {
    match result {
        Ok(()) => tracing::error!(task = name, "a task ended unexpectedly; shutting down"),
        Err(err) => tracing::error!(task = name, error = %err, "a task failed; shutting down"),
    }
    name
}

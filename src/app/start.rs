//! Starting one run: the journal first, then the sinks, the REST tasks (enrichers, updaters),
//! one source per property and the listeners. Whatever fails on the way stops what already
//! started, in one place.

use std::sync::Arc;

use tracing::Instrument;

use super::running::Running;
use super::{AppError, Control};
use crate::config::Settings;
use crate::ingress::Ingress;
use crate::journal::Journal;
use crate::metrics::MetricsServer;
use crate::mews::Rest;
use crate::mews::enrich::Health;
use crate::rejects::Rejects;
use crate::sink::{self, SinkControl};
use crate::source::Source;
use crate::stats::Stats;
use crate::tls;

/// Opens the journal and starts everything; on an error, stops what started and returns it.
pub(super) async fn start(
    settings: &Settings,
    control: &Control,
    stats: Arc<Stats>,
) -> Result<Running, AppError> {
    let tls = tls::client_config(&settings.connection.extra_roots, None)?;
    let mut running = open_journal(settings, &stats)?;
    match spawn_all(&mut running, settings, control, &tls, &stats).await {
        Ok(()) => {
            announce(settings, &running);
            Ok(running)
        }
        Err(err) => {
            let _ = running.stop(settings.shutdown.grace_period).await;
            Err(err)
        }
    }
}

/// The state directory and the journal, its writer running.
fn open_journal(settings: &Settings, stats: &Arc<Stats>) -> Result<Running, AppError> {
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
        Arc::clone(stats),
    )?;
    let names: Vec<&str> = settings
        .properties
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    stats.keep_properties(&names);
    stats.keep_sinks(&sink_names);
    let writer = tokio::spawn(
        writer
            .dedupe_window(settings.catch_up.dedupe_window)
            .track_commands(settings.command_loop())
            .run(),
    );
    Ok(Running::new(journal, writer))
}

/// Sinks, REST tasks, sources, listeners and the systemd supervisor, in that order.
async fn spawn_all(
    running: &mut Running,
    settings: &Settings,
    control: &Control,
    tls: &Arc<rustls::ClientConfig>,
    stats: &Arc<Stats>,
) -> Result<(), AppError> {
    spawn_sinks(running, settings, control, stats).await?;
    let http =
        crate::mews::http_client(tls, settings.mews.request_timeout).map_err(AppError::Rest)?;
    let rests: Vec<Option<Arc<Rest>>> = settings
        .properties
        .iter()
        .map(|property| crate::mews::rest_for(settings, property, &http, stats))
        .collect();
    // Enrichers claim their property's pending records before any source appends more.
    let healths = spawn_enrichers(running, settings, &rests, stats).await?;
    spawn_updaters(running, settings, &rests, stats).await?;
    running
        .journal
        .release_unclaimed("not enriched: enrichment is off for this property now (config changed)")
        .await?;
    let shared = crate::source::Shared {
        tls: Arc::clone(tls),
        journal: running.journal.clone(),
        rejects: Arc::new(Rejects::new(&settings.state.dir, settings.state.max_bytes)),
        stats: Arc::clone(stats),
    };
    for ((property, rest), health) in settings.properties.iter().zip(rests).zip(healths) {
        let source = Source::new(settings, property, &shared, rest, health);
        running
            .sources
            .spawn(source.run(running.sources_stop.clone()));
    }
    // Its journal handle would keep the writer from ending at shutdown.
    drop(shared);
    spawn_listeners(running, settings, stats).await?;
    running.supervisor = Some(tokio::spawn(crate::ops::supervise(
        running.journal.clone(),
        Arc::clone(stats),
        running.ops_stop.clone(),
    )));
    Ok(())
}

/// One task per sink.
async fn spawn_sinks(
    running: &mut Running,
    settings: &Settings,
    control: &Control,
    stats: &Arc<Stats>,
) -> Result<(), AppError> {
    for sink_settings in &settings.sinks {
        let sink = sink_settings.build(&settings.state.dir, stats).await?;
        let ctl = SinkControl {
            drain: running.drain.clone(),
            abort: running.abort.clone(),
            received_after: settings
                .commands
                .as_ref()
                .and_then(|c| c.received_after.clone()),
            reopen: control.reopen.clone(),
            state_dir: settings.state.dir.clone(),
            stats: Arc::clone(stats),
        };
        running.sinks.spawn(sink::drive(
            sink_settings.clone(),
            sink,
            running.journal.clone(),
            ctl,
        ));
    }
    Ok(())
}

/// One enricher per property with a REST client, when `[enrich] commands`; returns each
/// property's enrichment health (for its source).
async fn spawn_enrichers(
    running: &mut Running,
    settings: &Settings,
    rests: &[Option<Arc<Rest>>],
    stats: &Arc<Stats>,
) -> Result<Vec<Option<Arc<Health>>>, AppError> {
    let mut healths = Vec::with_capacity(rests.len());
    for (property, rest) in settings.properties.iter().zip(rests) {
        let Some(rest) = rest.as_ref().filter(|_| settings.enrich.commands) else {
            healths.push(None);
            continue;
        };
        let health = Arc::new(Health::default());
        healths.push(Some(Arc::clone(&health)));
        let inbox = running.journal.claim(&property.name).await?;
        let enricher = crate::mews::Enricher {
            rest: Arc::clone(rest),
            journal: running.journal.clone(),
            property: Arc::from(property.name.as_str()),
            timeout: settings.enrich.timeout,
            stats: Arc::clone(stats),
            health,
        };
        let span = tracing::info_span!("property", property = %property.name);
        running.enrichers.spawn(
            enricher
                .run(inbox, running.enrich_stop.clone())
                .instrument(span),
        );
    }
    Ok(healths)
}

/// One updater per property with a REST client, when the command loop runs: it takes the
/// property's outgoing command updates (queued before a restart too).
async fn spawn_updaters(
    running: &mut Running,
    settings: &Settings,
    rests: &[Option<Arc<Rest>>],
    stats: &Arc<Stats>,
) -> Result<(), AppError> {
    for (property, rest) in settings.properties.iter().zip(rests) {
        let Some(rest) = rest.as_ref().filter(|_| settings.command_loop()) else {
            continue;
        };
        let inbox = running.journal.claim_updates(&property.name).await?;
        let updater = crate::mews::update::Updater {
            rest: Arc::clone(rest),
            journal: running.journal.clone(),
            stats: Arc::clone(stats),
        };
        let span = tracing::info_span!("property", property = %property.name);
        running.updaters.spawn(
            updater
                .run(inbox, running.updaters_stop.clone())
                .instrument(span),
        );
    }
    Ok(())
}

/// The webhook, metrics and API listeners: all bound before any is served.
async fn spawn_listeners(
    running: &mut Running,
    settings: &Settings,
    stats: &Arc<Stats>,
) -> Result<(), AppError> {
    let bounds = listener_bounds(settings);
    let ingress = match &settings.webhooks {
        Some(webhooks) => Some(
            Ingress::bind(
                settings,
                webhooks,
                bounds.clone(),
                running.journal.clone(),
                Arc::clone(stats),
            )
            .await?,
        ),
        None => None,
    };
    let metrics = match &settings.metrics {
        Some(m) => Some(
            MetricsServer::bind(m.listen, m.ready_max_lag, bounds.clone(), Arc::clone(stats))
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
                Arc::clone(stats),
            )
            .await?,
        ),
        None => None,
    };
    let stop = &running.sources_stop;
    if let Some(api) = api {
        running.sources.spawn(api.run(stop.clone()));
    }
    if let Some(ingress) = ingress {
        running.sources.spawn(ingress.run(stop.clone()));
    }
    if let Some(metrics) = metrics {
        running.sources.spawn(metrics.run(stop.clone()));
    }
    Ok(())
}

/// READY=1, the start logged, and the config's warnings.
fn announce(settings: &Settings, running: &Running) {
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

//! Starting one run: the journal first, then the sinks, each property (its enricher and
//! updater before its WebSocket) and the listeners. Whatever fails on the way stops what
//! already started, in one place.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::crew::Crew;
use super::plan::ListenerKind;
use super::running::Running;
use super::{AppError, Control};
use crate::config::Settings;
use crate::journal::{Journal, SinkStart};
use crate::listener::BodyBudget;
use crate::rejects::Rejects;
use crate::stats::Stats;
use crate::tls;

/// Opens the journal and starts everything; on an error, stops what started and returns it.
pub(super) async fn start(
    settings: Arc<Settings>,
    control: &Control,
    stats: Arc<Stats>,
) -> Result<Running, AppError> {
    let tls = tls::client_config(&settings.connection.extra_roots, None)?;
    let mut running = open_journal(settings, control, tls, stats)?;
    match start_all(&mut running).await {
        Ok(()) => {
            announce(&running);
            Ok(running)
        }
        Err(err) => {
            let _ = running.stop().await;
            Err(err)
        }
    }
}

/// The state directory and the journal, its writer running; nothing else yet.
fn open_journal(
    settings: Arc<Settings>,
    control: &Control,
    tls: Arc<rustls::ClientConfig>,
    stats: Arc<Stats>,
) -> Result<Running, AppError> {
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
    let writer = tokio::spawn(
        writer
            .dedupe_window(settings.catch_up.dedupe_window)
            .track_commands(settings.command_loop())
            .run(),
    );
    Ok(Running {
        current: watch::channel(Arc::clone(&settings)).0,
        rejects: Arc::new(Rejects::new(&settings.state.dir, settings.state.max_bytes)),
        budget: BodyBudget::new(settings.listeners.max_body_in_flight),
        settings,
        journal,
        writer,
        stats,
        reopen: control.reopen.clone(),
        reloads: control.reloads.clone(),
        tls,
        sources: Crew::new("source"),
        enrichers: Crew::new("enricher"),
        updaters: Crew::new("updater"),
        sinks: Crew::new("sink"),
        places: HashMap::new(),
        listeners: Crew::new("listener"),
        drain: CancellationToken::new(),
        abort: CancellationToken::new(),
        ops_stop: CancellationToken::new(),
        supervisor: None,
    })
}

/// Sinks, properties, listeners and the systemd supervisor, in that order.
async fn start_all(running: &mut Running) -> Result<(), AppError> {
    let settings = Arc::clone(&running.settings);
    for sink_settings in &settings.sinks {
        let sink = sink_settings
            .build(&settings.state.dir, &running.stats)
            .await?;
        let start = SinkStart {
            cursor: running.journal.cursor(&sink_settings.name),
            shed: running.journal.shed_signal(&sink_settings.name),
        };
        running.spawn_sink(&settings, sink_settings, sink, start);
    }
    let http = running.rest_http(&settings)?;
    let names: Vec<String> = settings.properties.iter().map(|p| p.name.clone()).collect();
    running
        .start_properties(&settings, &names, &http, HashMap::new())
        .await?;
    let bounds = super::units::listener_bounds(&settings, &running.budget);
    for kind in ListenerKind::ALL {
        running
            .bind_listener(kind, &settings, bounds.clone())
            .await?;
    }
    running.supervisor = Some(tokio::spawn(crate::ops::supervise(
        running.journal.clone(),
        Arc::clone(&running.stats),
        running.current.subscribe(),
        running.ops_stop.clone(),
    )));
    Ok(())
}

/// READY=1, the start logged, and the config's warnings.
fn announce(running: &Running) {
    let settings = &running.settings;
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

//! The running relay: open the journal, start the sinks and one source per property, supervise
//! them, and on shutdown stop the sources, drain the sinks within the grace period.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::ingress::Ingress;
use crate::journal::{Journal, JournalError};
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
}

impl Control {
    /// A control and the sender that triggers reopen.
    pub fn new() -> (Control, watch::Sender<u64>) {
        let (tx, rx) = watch::channel(0);
        (
            Control {
                shutdown: CancellationToken::new(),
                reopen: rx,
            },
            tx,
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
    /// The TLS configuration could not be built.
    #[error("TLS set-up failed: {0}; check connection.ca_file")]
    Tls(#[from] rustls::Error),
    /// The webhook listener could not start.
    #[error(transparent)]
    Ingress(#[from] crate::ingress::IngressError),
    /// A task ended on its own (a bug); the relay stopped so that systemd restarts it.
    #[error("the {0} task stopped unexpectedly")]
    TaskEnded(&'static str),
}

/// Runs the relay until `control.shutdown` is cancelled.
pub async fn run(settings: Settings, control: Control) -> Result<(), AppError> {
    run_with_stats(settings, control, Arc::new(Stats::default())).await
}

/// [`run`], with counters the caller can read.
pub async fn run_with_stats(
    settings: Settings,
    control: Control,
    stats: Arc<Stats>,
) -> Result<(), AppError> {
    let tls = tls::client_config(&settings.connection.extra_roots, None)?;
    let sink_names: Vec<String> = settings.sinks.iter().map(|s| s.name.clone()).collect();
    let (journal, writer) = Journal::open(
        &settings.state.dir,
        &sink_names,
        settings.state.max_bytes,
        Arc::clone(&stats),
    )?;
    let writer = tokio::spawn(writer.run());
    let rejects = Arc::new(Rejects::new(&settings.state.dir));

    let drain = CancellationToken::new();
    let abort = CancellationToken::new();
    let mut sinks = JoinSet::new();
    for sink_settings in &settings.sinks {
        let sink = match sink_settings.build(&settings.state.dir).await {
            Ok(sink) => sink,
            Err(err) => {
                abort.cancel();
                sinks.join_all().await;
                return Err(err.into());
            }
        };
        let ctl = SinkControl {
            drain: drain.clone(),
            abort: abort.clone(),
            reopen: control.reopen.clone(),
            state_dir: settings.state.dir.clone(),
        };
        sinks.spawn(sink::drive(
            sink_settings.clone(),
            sink,
            journal.clone(),
            ctl,
        ));
    }

    let sources_stop = CancellationToken::new();
    let mut sources = JoinSet::new();
    for property in &settings.properties {
        let source = Source::new(
            &settings,
            property,
            Arc::clone(&tls),
            journal.clone(),
            Arc::clone(&rejects),
            Arc::clone(&stats),
        );
        sources.spawn(source.run(sources_stop.clone()));
    }
    if let Some(webhooks) = &settings.webhooks {
        match Ingress::bind(&settings, webhooks, journal.clone(), Arc::clone(&stats)).await {
            Ok(ingress) => {
                sources.spawn(ingress.run(sources_stop.clone()));
            }
            Err(err) => {
                sources_stop.cancel();
                abort.cancel();
                while sources.join_next().await.is_some() {}
                while sinks.join_next().await.is_some() {}
                return Err(err.into());
            }
        }
    }
    let ops_stop = CancellationToken::new();
    let supervisor = tokio::spawn(crate::ops::supervise(
        journal.clone(),
        Arc::clone(&stats),
        ops_stop.clone(),
    ));
    crate::ops::ready();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        properties = settings.properties.len(),
        sinks = settings.sinks.len(),
        journal = %journal.path().display(),
        last_seq = *journal.committed().borrow(),
        "mews-relay started"
    );

    let failure = tokio::select! {
        () = control.shutdown.cancelled() => None,
        Some(res) = sources.join_next() => Some(ended("source", res)),
        Some(res) = sinks.join_next() => Some(ended("sink", res)),
    };

    crate::ops::stopping();
    // Sources first: nothing new arrives while the sinks drain.
    sources_stop.cancel();
    while sources.join_next().await.is_some() {}
    if let Err(err) = journal.flush().await {
        tracing::warn!(error = %err, "final journal commit failed");
    }
    drain.cancel();
    let grace = settings.shutdown.grace_period;
    let drained =
        tokio::time::timeout(grace, async { while sinks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        let last = *journal.committed().borrow();
        tracing::warn!(
            ?grace,
            last_seq = last,
            "grace period over: stopping sinks; what they did not deliver stays in the journal for the next start"
        );
        abort.cancel();
        while sinks.join_next().await.is_some() {}
    }
    ops_stop.cancel();
    let _ = supervisor.await;
    drop(journal);
    if let Err(err) = writer.await {
        tracing::error!(error = %err, "journal writer failed");
    }
    tracing::info!("mews-relay stopped");
    match failure {
        Some(name) => Err(AppError::TaskEnded(name)),
        None => Ok(()),
    }
}

fn ended(name: &'static str, result: Result<(), tokio::task::JoinError>) -> &'static str {
    match result {
        Ok(()) => tracing::error!(task = name, "a task ended unexpectedly; shutting down"),
        Err(err) => tracing::error!(task = name, error = %err, "a task failed; shutting down"),
    }
    name
}

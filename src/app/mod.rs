//! The running relay: open the journal, start the sinks and one source per property (`start`,
//! `units`), supervise them, apply reloads in place (`plan`, `apply`: what did not change keeps
//! running), and on shutdown stop the sources, drain the sinks within the grace period
//! (`running`). Signals (`signals`) and the API steer it through a [`Control`].

mod apply;
mod crew;
mod plan;
pub mod reloads;
mod running;
pub mod signals;
mod start;
mod units;

pub use reloads::Reloads;

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::journal::JournalError;
use crate::sink::BuildError;
use crate::stats::Stats;

/// How the outside (signals, the API, a test) steers a running relay.
#[derive(Clone)]
pub struct Control {
    /// Cancel to shut down: sources stop, sinks drain, `run` returns.
    pub shutdown: CancellationToken,
    /// Bump to make sinks reopen their outputs (SIGUSR1, SIGHUP).
    pub reopen: watch::Receiver<u64>,
    /// Reload requests (SIGHUP, `POST /v1/reload`).
    pub reloads: Reloads,
}

/// The sending side of [`Control`].
#[derive(Clone)]
pub struct ControlHandle {
    /// Bump to reopen files.
    pub reopen: watch::Sender<u64>,
    /// Hand over a config to reload.
    pub reloads: Reloads,
}

impl Control {
    /// A control and the handle that steers it.
    pub fn new() -> (Control, ControlHandle) {
        let (reopen_tx, reopen) = watch::channel(0);
        let reloads = Reloads::default();
        (
            Control {
                shutdown: CancellationToken::new(),
                reopen,
                reloads: reloads.clone(),
            },
            ControlHandle {
                reopen: reopen_tx,
                reloads,
            },
        )
    }
}

/// Raises the soft descriptor limit to the hard one (systemd's default soft limit is 1,024);
/// listeners fit their connection caps to what it is afterwards. Logged.
pub fn raise_descriptor_limit() {
    crate::listener::fds::raise_limit_logged();
}

impl Control {
    /// Shuts down after `after` (`demo --duration`).
    pub fn stop_after(&self, after: std::time::Duration) {
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            shutdown.cancel();
        });
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
pub(crate) enum Ended {
    /// `control.shutdown`: the relay stopped.
    Stopped,
    /// A reload that changes the journal's own settings: everything stopped, to start again
    /// with `next`.
    Restart {
        /// The new config.
        next: Arc<Settings>,
        /// The reload request's number.
        generation: u64,
        /// Why everything restarts.
        why: String,
    },
}

/// A full restart under way: the config it replaces (to go back to), and how to note it.
struct Restarting {
    previous: Arc<Settings>,
    generation: u64,
    why: String,
}

/// [`run`], with counters the caller can read. A reload applies what changed in place; one
/// that changes the journal's settings stops everything (sources first, sinks drained) and
/// starts again with the new config. A config that fails to start gives way to the one before.
pub async fn run_with_stats(
    settings: Settings,
    control: Control,
    stats: Arc<Stats>,
) -> Result<(), AppError> {
    let mut current = Arc::new(settings);
    let mut restarting: Option<Restarting> = None;
    loop {
        let running = match start::start(Arc::clone(&current), &control, Arc::clone(&stats)).await {
            Ok(running) => running,
            Err(err) => match restarting.take() {
                Some(r) if !matches!(err, AppError::TaskEnded(_)) => {
                    tracing::error!(error = %err, "the reloaded configuration cannot start; going back to the previous one");
                    stats.reloaded(
                        r.generation,
                        Err(format!("the new configuration could not start: {err}")),
                    );
                    current = r.previous;
                    continue;
                }
                _ => return Err(err),
            },
        };
        if let Some(r) = restarting.take() {
            tracing::info!("configuration reloaded; everything started again");
            stats.reloaded(
                r.generation,
                Ok(format!("everything restarted ({})", r.why)),
            );
        }
        match running.supervise(&control).await? {
            (Ended::Stopped, _) => return Ok(()),
            (
                Ended::Restart {
                    next,
                    generation,
                    why,
                },
                in_force,
            ) => {
                restarting = Some(Restarting {
                    previous: in_force,
                    generation,
                    why,
                });
                current = next;
            }
        }
    }
}

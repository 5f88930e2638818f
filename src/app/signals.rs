//! Signals: SIGTERM and SIGINT shut the relay down (a second one exits at once), SIGHUP
//! reopens files and, with a config file, reloads it (an invalid one is refused and the
//! running one stays). The process's signals arrive through a channel ([`os_signals`]), so a
//! test steers a relay in-process by sending its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ControlHandle;
use crate::config::{CredentialsDir, Settings};

/// Exit code after a second stop signal (128 + SIGINT, as a shell reports Ctrl-C).
pub const EXIT_AT_ONCE: i32 = 130;

/// A signal the relay reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: shut down.
    Terminate,
    /// SIGINT (Ctrl-C): shut down.
    Interrupt,
    /// SIGHUP: reopen files, reload the config.
    Hangup,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
            Signal::Hangup => "SIGHUP",
        }
    }
}

/// Why [`handle`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// A second stop signal during the shutdown: exit now, without waiting for the drain.
    ExitNow(Signal),
    /// No more signals will come.
    Closed,
}

/// Reacts to `signals` until a second stop signal or the end of the channel. A stop signal
/// cancels `shutdown`; SIGHUP bumps `steer.reopen` and, with `config`, sends its validated
/// settings to `steer.reload`.
pub async fn handle(
    mut signals: mpsc::Receiver<Signal>,
    shutdown: CancellationToken,
    steer: Option<ControlHandle>,
    config: Option<PathBuf>,
) -> Handled {
    while let Some(signal) = signals.recv().await {
        if signal == Signal::Hangup {
            if let Some(steer) = &steer {
                reload(steer, config.as_deref());
            }
            continue;
        }
        if shutdown.is_cancelled() {
            tracing::warn!(signal = signal.name(), "second signal: exiting now");
            return Handled::ExitNow(signal);
        }
        tracing::info!(
            signal = signal.name(),
            "shutting down; send it again to exit at once"
        );
        shutdown.cancel();
    }
    Handled::Closed
}

/// SIGHUP: files reopen; the config, if any, is read again and, when valid, sent.
fn reload(steer: &ControlHandle, config: Option<&Path>) {
    steer.reopen.send_modify(|n| *n += 1);
    let Some(path) = config else {
        return tracing::info!("SIGHUP: files reopened");
    };
    match Settings::load(path, &CredentialsDir::from_env()) {
        Ok(settings) => {
            tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration (WebSockets reconnect)");
            steer.reload.send_replace(Some(Arc::new(settings)));
        }
        Err(err) => {
            tracing::error!(error = %err, "SIGHUP: the new configuration is invalid and was not applied; the running one stays")
        }
    }
}

/// The process's SIGTERM, SIGINT and SIGHUP, as a channel.
pub fn os_signals() -> std::io::Result<mpsc::Receiver<Signal>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let signal = tokio::select! {
                Some(()) = term.recv() => Signal::Terminate,
                Some(()) = int.recv() => Signal::Interrupt,
                Some(()) = hup.recv() => Signal::Hangup,
                else => return,
            };
            if tx.send(signal).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// Handles the process's signals in a task: SIGHUP reopens files and reloads `reload`, the
/// config file, through `steer` (without a file SIGHUP is ignored; `steer` stays open all the
/// same); a second stop signal ends the process at once with [`EXIT_AT_ONCE`].
pub fn spawn(shutdown: CancellationToken, steer: ControlHandle, reload: Option<PathBuf>) {
    let signals = match os_signals() {
        Ok(signals) => signals,
        Err(err) => return tracing::error!(error = %err, "cannot install signal handlers"),
    };
    tokio::spawn(async move {
        let (steer, _idle) = match reload {
            Some(_) => (Some(steer), None),
            None => (None, Some(steer)),
        };
        if let Handled::ExitNow(_) = handle(signals, shutdown, steer, reload).await {
            std::process::exit(EXIT_AT_ONCE);
        }
    });
}

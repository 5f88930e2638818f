//! Signals: SIGTERM and SIGINT shut the relay down (a second one exits at once); SIGHUP, with
//! a config file, reloads it — what changed restarts, the rest keeps running, an invalid file
//! is refused and the running config stays — and reopens sink files; SIGUSR1 only reopens
//! sink files (logrotate). The process's signals arrive through a channel ([`os_signals`]), so
//! a test steers a relay in-process by sending its own.

use std::path::{Path, PathBuf};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ControlHandle;

/// Exit code after a second stop signal (128 + SIGINT, as a shell reports Ctrl-C).
pub const EXIT_AT_ONCE: i32 = 130;

/// A signal the relay reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: shut down.
    Terminate,
    /// SIGINT (Ctrl-C): shut down.
    Interrupt,
    /// SIGHUP: reload the config, reopen files.
    Hangup,
    /// SIGUSR1: reopen files (logrotate).
    User1,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
            Signal::Hangup => "SIGHUP",
            Signal::User1 => "SIGUSR1",
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
/// cancels `shutdown`; SIGUSR1 bumps `steer.reopen`; SIGHUP does too and, with `config`, hands
/// the file to `steer.reloads` (the relay logs how the reload went).
pub async fn handle(
    mut signals: mpsc::Receiver<Signal>,
    shutdown: CancellationToken,
    steer: Option<ControlHandle>,
    config: Option<PathBuf>,
) -> Handled {
    while let Some(signal) = signals.recv().await {
        match (signal, &steer) {
            (Signal::Hangup, Some(steer)) => {
                reload(steer, config.as_deref()).await;
                continue;
            }
            (Signal::User1, Some(steer)) => {
                steer.reopen.send_modify(|n| *n += 1);
                tracing::info!("SIGUSR1: sink files reopened");
                continue;
            }
            (Signal::Hangup | Signal::User1, None) => continue,
            _ => {}
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

/// SIGHUP: files reopen; the config, if any, is read again (on the blocking pool: a file on a
/// hung mount or a slow credential must not hold up an async worker) and handed to the relay.
async fn reload(steer: &ControlHandle, config: Option<&Path>) {
    steer.reopen.send_modify(|n| *n += 1);
    let Some(path) = config else {
        return tracing::info!("SIGHUP: files reopened");
    };
    tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration (what changed restarts)");
    let (reloads, path) = (steer.reloads.clone(), path.to_owned());
    if let Err(err) = tokio::task::spawn_blocking(move || reloads.reload_file(&path)).await {
        tracing::error!(error = %err, "reading the configuration failed");
    }
}

/// The process's SIGTERM, SIGINT, SIGHUP and SIGUSR1, as a channel.
pub fn os_signals() -> std::io::Result<mpsc::Receiver<Signal>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let signal = tokio::select! {
                Some(()) = term.recv() => Signal::Terminate,
                Some(()) = int.recv() => Signal::Interrupt,
                Some(()) = hup.recv() => Signal::Hangup,
                Some(()) = usr1.recv() => Signal::User1,
                else => return,
            };
            if tx.send(signal).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// Handles the process's signals in a task: SIGHUP reloads `reload`, the config file, and
/// reopens files, SIGUSR1 reopens files, through `steer` (without a file both are ignored;
/// `steer` stays open all the same); a second stop signal ends the process at once with
/// [`EXIT_AT_ONCE`].
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

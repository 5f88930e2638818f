//! Operations: systemd notifications — ready, status line, watchdog, stopping. All are no-ops
//! outside systemd (no `NOTIFY_SOCKET`).

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::journal::Journal;
use crate::stats::Stats;

/// How often the status line is refreshed (when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// How long a sink may be behind before it counts as not well (`/readyz`, `status`,
/// `STATUS=`): `metrics.ready_max_lag`, or its default without `[metrics]`.
pub fn max_lag(settings: &crate::config::Settings) -> Duration {
    settings
        .metrics
        .as_ref()
        .map_or(crate::config::defaults::READY_MAX_LAG, |m| m.ready_max_lag)
}

fn notify(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(err) = sd_notify::notify(states) {
        tracing::debug!(error = %err, "sd_notify failed");
    }
}

/// `READY=1`: config valid, journal open, sinks started (Mews may still be unreachable).
pub fn ready() {
    notify(&[NotifyState::Ready]);
}

/// `RELOADING=1` with `MONOTONIC_USEC` (systemd 253+ wants it); `READY=1` follows the restart.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// `STOPPING=1`.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// Keeps `STATUS=` current (sinks appear while paused, failing, or behind for longer than
/// [`max_lag`] of the config in force, which a reload may change) and, when systemd asked for a watchdog (`WATCHDOG_USEC`), sends `WATCHDOG=1` at
/// half its period — only after the journal writer answered a ping, so a stuck writer (or a
/// stuck runtime) lets the watchdog fire.
pub async fn supervise(
    journal: Journal,
    stats: Arc<Stats>,
    settings: tokio::sync::watch::Receiver<Arc<crate::config::Settings>>,
    shutdown: CancellationToken,
) {
    let watchdog = sd_notify::watchdog_enabled();
    let tick = watchdog.map_or(STATUS_EVERY, |period| (period / 2).min(STATUS_EVERY));
    if let Some(period) = watchdog {
        tracing::info!(?period, "systemd watchdog enabled");
    }
    let mut last_status = String::new();
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Some(period) = watchdog {
            match tokio::time::timeout(period / 2, journal.ping()).await {
                Ok(Ok(())) => notify(&[NotifyState::Watchdog]),
                Ok(Err(_)) => return,
                Err(_) => tracing::error!(
                    ?period,
                    "the journal writer did not answer; not telling the watchdog"
                ),
            }
        }
        let max_lag = max_lag(&settings.borrow());
        let status = stats.status_line(max_lag);
        if status != last_status {
            notify(&[NotifyState::Status(&status)]);
            last_status = status;
        }
    }
}

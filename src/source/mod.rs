//! One WebSocket per property, reconnected forever with backoff; records go to the journal only.

mod progress;
mod session;

use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{CatchUp, Connection, Property, Settings};
use crate::failures::FailureLog;
use crate::journal::Journal;
use crate::mews::{CatchUpJob, Rest};
use crate::rejects::Rejects;
use crate::secret::{Secret, SecretUrl};
use crate::stats::{Link, Stats};

use session::{SessionEnd, SessionError};

/// What every source shares.
#[derive(Clone)]
pub struct Shared {
    /// The TLS client config (system roots plus `connection.ca_file`).
    pub tls: Arc<rustls::ClientConfig>,
    /// Where records go.
    pub journal: Journal,
    /// Where undecodable messages go.
    pub rejects: Arc<Rejects>,
    /// Counters.
    pub stats: Arc<Stats>,
}

/// Everything one property's connection needs.
pub struct Source {
    name: Arc<str>,
    access_token: Secret,
    client_token: Secret,
    /// Prints without user info and query (`connected url=…`).
    url: SecretUrl,
    connection: Connection,
    tls: Arc<rustls::ClientConfig>,
    journal: Journal,
    rejects: Arc<Rejects>,
    stats: Arc<Stats>,
    /// The catch-up run after each connect, when a REST client is configured.
    catch_up: Option<Arc<CatchUpJob>>,
    /// With enrichment: DeviceCommand records are journaled pending, for the property's
    /// enricher to settle (or with `enrich_error` at once while its REST API is failing).
    enrich: Option<Arc<crate::mews::enrich::Health>>,
}

impl Source {
    /// Live DeviceCommand records get dedupe keys when REST may bring the same state again
    /// (the catch-up, or the healing after a failed enrichment).
    fn dedupe_commands(&self) -> bool {
        self.enrich.is_some()
            || self
                .catch_up
                .as_ref()
                .is_some_and(|job| job.settings.commands)
    }

    /// The source for one `[[property]]`; `rest` is its Mews REST client (catch-up), `enrich`
    /// its enricher's health when DeviceCommands are enriched.
    pub fn new(
        settings: &Settings,
        property: &Property,
        shared: &Shared,
        rest: Option<Arc<Rest>>,
        enrich: Option<Arc<crate::mews::enrich::Health>>,
    ) -> Self {
        let Shared {
            tls,
            journal,
            rejects,
            stats,
        } = shared.clone();
        let name: Arc<str> = Arc::from(property.name.as_str());
        let catch_up: &CatchUp = &settings.catch_up;
        let catch_up = rest
            .as_ref()
            .filter(|_| catch_up.commands || catch_up.reservations)
            .map(|rest| {
                Arc::new(CatchUpJob {
                    rest: Arc::clone(rest),
                    journal: journal.clone(),
                    property: Arc::clone(&name),
                    settings: catch_up.clone(),
                })
            });
        Source {
            catch_up,
            enrich,
            name,
            access_token: property.access_token.clone(),
            client_token: settings.mews.client_token.clone(),
            url: SecretUrl::new(settings.mews.websocket_url.clone()),
            connection: settings.connection.clone(),
            tls,
            journal,
            rejects,
            stats,
        }
    }

    /// Connects, reads, reconnects, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let span = tracing::info_span!("property", property = %self.name);
        self.reconnect_loop(shutdown).instrument(span).await;
    }

    async fn reconnect_loop(self, shutdown: CancellationToken) {
        let mut backoff = self.connection.backoff.backoff();
        let mut failures = FailureLog::default();
        self.stats.set_link(&self.name, Link::Connecting);
        loop {
            let outcome = self.session(&shutdown).await;
            match &outcome.result {
                Ok(SessionEnd::Closed(_)) => self
                    .stats
                    .set_link(&self.name, Link::Reconnecting("closed by server".into())),
                Err(err) => self
                    .stats
                    .set_link(&self.name, Link::Reconnecting(err.short())),
                Ok(SessionEnd::Shutdown) => {}
            }
            if outcome
                .connected_for
                .is_some_and(|up| up >= self.connection.healthy_after)
            {
                backoff.reset();
            }
            let delay = match outcome.result {
                Ok(SessionEnd::Shutdown) => {
                    tracing::info!("disconnected for shutdown");
                    return;
                }
                Err(SessionError::JournalClosed) => {
                    tracing::debug!("journal closed; stopping");
                    return;
                }
                Ok(SessionEnd::Closed(frame)) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1006, String::new()));
                    tracing::warn!(code, reason = %reason, up_for = ?outcome.connected_for, "connection closed by the server; reconnecting");
                    failures.recovered();
                    backoff.next_delay()
                }
                Err(SessionError::Rejected(status)) => {
                    let delay = backoff.at_cap();
                    if failures.failed(&format!("rejected {status}")).is_news() {
                        tracing::error!(
                            status = status.as_u16(),
                            url = %self.url,
                            retry_in = ?delay,
                            "Mews rejected the WebSocket upgrade (HTTP {}): {}; retrying at backoff_max",
                            status.as_u16(),
                            session::rejection_hint(status)
                        );
                    } else {
                        tracing::debug!(
                            status = status.as_u16(),
                            attempts = failures.count(),
                            "upgrade still rejected"
                        );
                    }
                    delay
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    if outcome.connected_for.is_some() {
                        tracing::warn!(error = %err, up_for = ?outcome.connected_for, retry_in = ?delay, "connection lost; reconnecting");
                        failures.recovered();
                    } else if failures.failed(&kind_of(&err)).is_news() {
                        tracing::warn!(error = %err, retry_in = ?delay, "cannot connect; retrying");
                    } else {
                        tracing::debug!(error = %err, attempts = failures.count(), retry_in = ?delay, "still cannot connect");
                    }
                    delay
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// A coarse kind of error: the log says a failure once, not once per attempt.
fn kind_of(err: &SessionError) -> String {
    match err {
        SessionError::Connect { source, .. } => format!("connect {:?}", source.kind()),
        other => {
            let text = other.to_string();
            text.split(':').next().unwrap_or_default().to_owned()
        }
    }
}

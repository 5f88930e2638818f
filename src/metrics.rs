//! `/metrics` (Prometheus text), `/healthz` and `/readyz` on a local listener (`[metrics]`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::listener::{Bounds, Listener};
use crate::stats::{Link, PropertyStats, SinkStats, Stats};

/// A bound metrics listener.
pub struct MetricsServer {
    listener: Listener,
    state: Arc<Shared>,
}

struct Shared {
    stats: Arc<Stats>,
    ready_max_lag: Duration,
}

/// The listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("metrics: cannot listen on {addr}: {source}; free the port or change metrics.listen")]
pub struct MetricsError {
    addr: SocketAddr,
    source: std::io::Error,
}

impl MetricsServer {
    /// Binds `listen`, bounded by `bounds`.
    pub async fn bind(
        listen: SocketAddr,
        ready_max_lag: Duration,
        bounds: Bounds,
        stats: Arc<Stats>,
    ) -> Result<Self, MetricsError> {
        let listener = Listener::bind("metrics", listen, None, bounds, Arc::clone(&stats))
            .await
            .map_err(|source| MetricsError {
                addr: listen,
                source,
            })?;
        Ok(MetricsServer {
            listener,
            state: Arc::new(Shared {
                stats,
                ready_max_lag,
            }),
        })
    }

    /// Serves until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(listen = ?self.listener.local_addr().ok(), "serving /metrics, /healthz and /readyz");
        let router = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .with_state(self.state);
        self.listener.serve(router, shutdown).await;
    }
}

async fn metrics(State(state): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&state.stats),
    )
}

/// 200 when the journal stores records, every property is connected, no sink is paused (its
/// endpoint or credentials are wrong) and none is further behind than `ready_max_lag`; else
/// 503 with a JSON body naming what is not, and why.
async fn readyz(State(state): State<Arc<Shared>>) -> impl IntoResponse {
    let mut properties = serde_json::Map::new();
    for (name, p) in state
        .stats
        .properties
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        match &p.link {
            Link::Connected(_) => {}
            Link::Connecting => {
                properties.insert(name.clone(), "connecting".into());
            }
            Link::Reconnecting(why) => {
                properties.insert(name.clone(), format!("reconnecting ({why})").into());
            }
        }
    }
    let mut sinks = serde_json::Map::new();
    for (name, s) in state
        .stats
        .sinks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        if let Some(problem) = s.problem(state.ready_max_lag) {
            let mut entry = serde_json::json!({
                "problem": problem,
                "lag_records": s.lag_records,
                "lag_seconds": s.lag().as_secs(),
            });
            if let Some(trouble) = s.trouble.as_ref().filter(|t| t.paused) {
                entry["paused"] = trouble.reason.clone().into();
            }
            sinks.insert(name.clone(), entry);
        }
    }
    let journal = state.stats.journal.problem();
    let ready = properties.is_empty() && sinks.is_empty() && journal.is_none();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = serde_json::json!({ "ready": ready, "properties": properties, "sinks": sinks });
    if let Some(problem) = journal {
        body["journal"] = problem.into();
    }
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

/// A Prometheus label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A gauge with one sample.
fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    family(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

/// A family of one figure per property or per sink: name, type, help, and how to read the
/// figure (none: no sample for that one).
type Family<T> = (
    &'static str,
    &'static str,
    &'static str,
    fn(&T, SystemTime) -> Option<String>,
);

/// Counters of the whole relay: name, help, and the counter.
fn counters(stats: &Stats) -> [(&'static str, &'static str, &AtomicU64); 13] {
    [
        (
            "mews_relay_records_lost_total",
            "WebSocket events received but not stored (journal write failed), or stored and then lost by the disk; Mews does not send them again.",
            &stats.records_lost,
        ),
        (
            "mews_relay_records_refused_total",
            "Records not stored whose sender was told and sends them again (webhooks answered 503, catch-up retried).",
            &stats.records_refused,
        ),
        (
            "mews_relay_messages_rejected_total",
            "Messages kept in rejected.jsonl instead of forwarded.",
            &stats.messages_rejected,
        ),
        (
            "mews_relay_messages_timed_out_total",
            "WebSocket messages not complete within message_timeout (the connection was closed).",
            &stats.messages_timed_out,
        ),
        (
            "mews_relay_webhooks_refused_total",
            "Webhook requests refused for a missing or wrong token.",
            &stats.webhooks_refused,
        ),
        (
            "mews_relay_webhooks_malformed_total",
            "Webhook bodies refused as malformed.",
            &stats.webhooks_malformed,
        ),
        (
            "mews_relay_duplicates_dropped_total",
            "Records not journaled again: live and catch-up saw the same state (dedupe_window).",
            &stats.duplicates_dropped,
        ),
        (
            "mews_relay_rest_requests_ok_total",
            "Mews REST requests (catch-up, enrichment) answered 2xx.",
            &stats.rest_ok,
        ),
        (
            "mews_relay_rest_requests_failed_total",
            "Mews REST requests that failed (each retry counts).",
            &stats.rest_failed,
        ),
        (
            "mews_relay_rest_requests_throttled_total",
            "Mews REST requests answered 429 Too Many Requests.",
            &stats.rest_throttled,
        ),
        (
            "mews_relay_enrich_failed_total",
            "DeviceCommand records forwarded without details (enrich_error set).",
            &stats.enrich_failed,
        ),
        (
            "mews_relay_command_updates_applied_total",
            "Command state updates Mews applied (commands/update).",
            &stats.command_updates_applied,
        ),
        (
            "mews_relay_command_updates_refused_total",
            "Command state updates Mews refused (GET /v1/commands/{id} shows why).",
            &stats.command_updates_refused,
        ),
    ]
}

/// The families with one sample per property.
const PER_PROPERTY: [Family<PropertyStats>; 3] = [
    (
        "mews_relay_connected",
        "gauge",
        "1 while the property's WebSocket is connected.",
        |p, _| Some(u8::from(matches!(p.link, Link::Connected(_))).to_string()),
    ),
    (
        "mews_relay_reconnects_total",
        "counter",
        "Connections lost or refused after having been up.",
        |p, _| Some(p.reconnects.to_string()),
    ),
    (
        "mews_relay_last_event_age_seconds",
        "gauge",
        "Seconds since the property's last WebSocket event was journaled.",
        |p, now| {
            let at = p.last_event?;
            let age = now.duration_since(at).unwrap_or_default().as_secs_f64();
            Some(format!("{age:.3}"))
        },
    ),
];

/// The families with one sample per sink.
const PER_SINK: [Family<SinkStats>; 6] = [
    (
        "mews_relay_sink_delivered_total",
        "counter",
        "Records the sink delivered.",
        |s, _| Some((s.delivered as f64).to_string()),
    ),
    (
        "mews_relay_sink_retries_total",
        "counter",
        "Failed delivery attempts that were retried.",
        |s, _| Some((s.retries as f64).to_string()),
    ),
    (
        "mews_relay_sink_dead_lettered_total",
        "counter",
        "Records moved to the sink's dead-letter file.",
        |s, _| Some((s.dead_lettered as f64).to_string()),
    ),
    (
        "mews_relay_sink_lag_records",
        "gauge",
        "Committed records the sink has not passed yet.",
        |s, _| Some((s.lag_records as f64).to_string()),
    ),
    (
        "mews_relay_sink_lag_seconds",
        "gauge",
        "How long the sink has been behind (0 when caught up).",
        |s, _| Some(s.lag().as_secs_f64().to_string()),
    ),
    (
        "mews_relay_sink_paused",
        "gauge",
        "1 while the sink is paused: its endpoint or credentials are wrong (/readyz says why).",
        |s, _| Some(u8::from(s.trouble.as_ref().is_some_and(|t| t.paused)).to_string()),
    ),
];

/// Everything in Prometheus text format. Its size is bounded whatever upstream sends: at most
/// `(properties + MAX_EXTRA_PROPERTIES + 1) × (MAX_TYPES_PER_PROPERTY + 1) × 3` lines of
/// `mews_relay_events_total`, with label values of at most `MAX_LABEL_BYTES` (see `stats`).
pub fn render(stats: &Stats) -> String {
    let mut out = String::new();
    let now = SystemTime::now();
    render_events(&mut out, stats);
    for (name, help, counter) in counters(stats) {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", Stats::get(counter));
    }
    family(
        &mut out,
        "mews_relay_listener_refusals_total",
        "counter",
        "Requests and connections a listener refused or closed, by reason.",
    );
    for ((listener, reason), n) in stats.listener_refusals() {
        let _ = writeln!(
            out,
            "mews_relay_listener_refusals_total{{listener=\"{listener}\",reason=\"{reason}\"}} {n}"
        );
    }
    gauge(
        &mut out,
        "mews_relay_journal_ok",
        "1 while the journal stores records; 0 while writes fail or its file was deleted or replaced (/readyz says why).",
        u64::from(stats.journal.is_ok()),
    );
    gauge(
        &mut out,
        "mews_relay_journal_bytes",
        "Bytes of records held in the journal.",
        Stats::get(&stats.journal_bytes),
    );
    gauge(
        &mut out,
        "mews_relay_command_updates_waiting",
        "Command state updates in the journal's outbox that Mews has not answered yet.",
        Stats::get(&stats.command_updates_waiting),
    );
    let properties = stats
        .properties
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    render_each(&mut out, "property", &properties, &PER_PROPERTY, now);
    let sinks = stats
        .sinks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    render_each(&mut out, "sink", &sinks, &PER_SINK, now);
    out
}

/// `mews_relay_events_total`, by property, type and origin.
fn render_events(out: &mut String, stats: &Stats) {
    family(
        out,
        "mews_relay_events_total",
        "counter",
        "Records committed to the journal.",
    );
    let events = stats.events.lock().unwrap_or_else(|p| p.into_inner());
    for (property, by_type) in events.iter() {
        for (kind, counts) in by_type {
            for (origin, n) in crate::record::Origin::ALL
                .iter()
                .zip(counts)
                .filter(|(_, n)| **n > 0)
            {
                let _ = writeln!(
                    out,
                    "mews_relay_events_total{{property=\"{}\",type=\"{}\",origin=\"{}\"}} {n}",
                    label(property),
                    label(kind),
                    origin.as_str()
                );
            }
        }
    }
}

/// Each family of `families`, with a sample per item of `items` labelled `key`.
fn render_each<T>(
    out: &mut String,
    key: &str,
    items: &BTreeMap<String, T>,
    families: &[Family<T>],
    now: SystemTime,
) {
    for (name, kind, help, value) in families {
        family(out, name, kind, help);
        for (item, stats) in items {
            if let Some(value) = value(stats, now) {
                let _ = writeln!(out, "{name}{{{key}=\"{}\"}} {value}", label(item));
            }
        }
    }
}

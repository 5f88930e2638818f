//! Webhook receiver: Mews General and Integration webhooks over HTTP(S), checked against the
//! shared `Token`, journaled durably, and only then answered 202.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::config::{Settings, Webhooks};
use crate::journal::{Entry, Journal};
use crate::listener::{Bounds, Gate, Listener, Refusals, read_body, refuse};
use crate::record::{MAX_DEPTH, Origin, Record, deeper_than, format_time};
use crate::rejects::sample;
use crate::stats::Stats;

/// Integration webhook actions that explain a coming 401 on the WebSocket.
const WARN_ACTIONS: [&str; 4] = [
    "IntegrationDisabled",
    "IntegrationDeleted",
    "IntegrationCanceled",
    "IntegrationApiKeyCreated",
];

/// A bound, not yet serving, webhook listener.
pub struct Ingress {
    listener: Listener,
    state: Arc<Shared>,
    path: String,
    tls: bool,
}

struct Shared {
    gate: Gate,
    /// Mews enterprise id -> `[[property]]` name.
    enterprises: HashMap<String, String>,
    journal: Journal,
    stats: Arc<Stats>,
    refusals: Arc<Refusals>,
    bounds: Bounds,
    max_body: usize,
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// The address is taken or not ours.
    #[error("webhooks: cannot listen on {addr}: {source}; free the port or change webhooks.listen")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate and key do not fit together.
    #[error("webhooks: TLS set-up failed: {0}; check webhooks.tls_cert and webhooks.tls_key")]
    Tls(#[from] rustls::Error),
}

impl Ingress {
    /// Binds `webhooks.listen`, bounded by `bounds`; fails at start-up, not later.
    pub async fn bind(
        settings: &Settings,
        webhooks: &Webhooks,
        bounds: Bounds,
        journal: Journal,
        stats: Arc<Stats>,
    ) -> Result<Ingress, IngressError> {
        let tls = match &webhooks.tls {
            Some(identity) => {
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ServerConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_no_client_auth()
                    .with_single_cert(identity.certs.clone(), identity.key.clone_key())?;
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
            }
            None => None,
        };
        let is_tls = tls.is_some();
        let listener = Listener::bind(
            "webhooks",
            webhooks.listen,
            tls,
            bounds.clone(),
            Arc::clone(&stats),
        )
        .await
        .map_err(|source| IngressError::Bind {
            addr: webhooks.listen,
            source,
        })?;
        let enterprises = settings
            .properties
            .iter()
            .filter_map(|p| {
                Some((
                    p.enterprise_id.clone()?.to_ascii_lowercase(),
                    p.name.clone(),
                ))
            })
            .collect();
        Ok(Ingress {
            state: Arc::new(Shared {
                gate: Gate::Query {
                    param: "Token",
                    secret: webhooks.token.clone(),
                },
                enterprises,
                journal,
                stats,
                refusals: listener.refusals(),
                bounds,
                max_body: usize::try_from(webhooks.max_body).unwrap_or(usize::MAX),
            }),
            listener,
            path: webhooks.path.clone(),
            tls: is_tls,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`; requests in flight finish first.
    pub async fn run(self, shutdown: CancellationToken) {
        let addr = self.local_addr().ok();
        let scheme = if self.tls { "https" } else { "http" };
        tracing::info!(listen = ?addr, path = %self.path, "receiving Mews webhooks on {scheme}");
        let router = Router::new()
            .route(&self.path, post(receive))
            .with_state(self.state);
        self.listener.serve(router, shutdown).await;
    }
}

/// The token is checked from the request line before a byte of the body is read.
async fn receive(State(state): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if !state.gate.admits(&parts.uri, &parts.headers) {
        drop(body);
        let refused = Stats::add(&state.stats.webhooks_refused, 1);
        state.refusals.refused(&state.stats, "unauthorized", || {
            tracing::warn!(
                refused_total = refused,
                "webhook refused (401): missing or wrong Token in the URL"
            )
        });
        return refuse(StatusCode::UNAUTHORIZED);
    }
    // While the journal stores nothing, Mews is asked to send again later; the body is not read.
    if !state.stats.journal.is_ok() {
        drop(body);
        let problem = state.stats.journal.problem().unwrap_or_default();
        state.refusals.refused(&state.stats, "journal", || {
            tracing::warn!(%problem, "webhook answered 503 (Mews sends it again): the journal stores nothing now")
        });
        return refuse(StatusCode::SERVICE_UNAVAILABLE);
    }
    let body = match read_body(
        body,
        &parts.headers,
        state.max_body,
        &state.bounds.budget,
        state.bounds.body_timeout,
    )
    .await
    {
        Ok(body) => body,
        Err(err) => {
            let status = err.status();
            state.refusals.refused(
                &state.stats,
                err.kind(),
                || tracing::warn!(error = %err, status = status.as_u16(), "webhook refused"),
            );
            return refuse(status);
        }
    };
    let text = String::from_utf8_lossy(&body.bytes);
    let records = match parse(&text, &state.enterprises, SystemTime::now()) {
        Ok(records) => records,
        Err(reason) => {
            let malformed = Stats::add(&state.stats.webhooks_malformed, 1);
            state.refusals.refused(&state.stats, "malformed", || {
                tracing::warn!(%reason, sample = %sample(&text), malformed_total = malformed, "webhook rejected (400)")
            });
            return StatusCode::BAD_REQUEST.into_response();
        }
    };
    drop(text);
    drop(body);
    for record in &records {
        if let Some(action) = record.kind.as_deref().filter(|a| WARN_ACTIONS.contains(a)) {
            tracing::warn!(
                action,
                integration = record.id.as_deref().unwrap_or("?"),
                "Mews integration webhook: {action}; the WebSocket will be refused (401) until the integration is enabled again or its new AccessToken is configured"
            );
        }
    }
    let count = records.len();
    if count == 0 {
        return StatusCode::ACCEPTED.into_response();
    }
    match state
        .journal
        .append_committed(records.into_iter().map(Entry::Record).collect())
        .await
    {
        Ok(_) => {
            tracing::debug!(records = count, "webhook journaled");
            StatusCode::ACCEPTED.into_response()
        }
        Err(err) => {
            // The journal writer logged the failure itself (once per outage).
            state.refusals.refused(&state.stats, "journal", || {
                tracing::warn!(error = %err, records = count, "cannot journal a webhook; answering 503 so Mews sends it again")
            });
            refuse(StatusCode::SERVICE_UNAVAILABLE)
        }
    }
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(rename = "EnterpriseId")]
    enterprise_id: Option<String>,
    #[serde(rename = "IntegrationId")]
    integration_id: Option<String>,
    #[serde(rename = "Events", borrow)]
    events: Option<Vec<&'a RawValue>>,
    #[serde(rename = "Action")]
    action: Option<String>,
    #[serde(rename = "Data", borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct GeneralEvent {
    #[serde(rename = "Discriminator")]
    discriminator: String,
    #[serde(rename = "Value")]
    value: IdOnly,
}

#[derive(Deserialize, Default)]
struct IdOnly {
    #[serde(rename = "Id")]
    id: Option<String>,
}

#[derive(Deserialize, Default)]
struct IntegrationData {
    #[serde(rename = "Enterprise", default)]
    enterprise: Option<IdOnly>,
    #[serde(rename = "Integration", default)]
    integration: Option<IdOnly>,
}

/// Turns a webhook body into records: one per General webhook event, one per Integration
/// webhook.
pub fn parse(
    body: &str,
    enterprises: &HashMap<String, String>,
    received_at: SystemTime,
) -> Result<Vec<Record>, String> {
    if deeper_than(body, MAX_DEPTH) {
        return Err(format!("nested more than {MAX_DEPTH} levels deep"));
    }
    let parsed: Body<'_> =
        serde_json::from_str(body).map_err(|err| format!("not valid JSON: {err}"))?;
    let received_at = format_time(received_at);
    let property = |enterprise: Option<&str>, fallback: &str| -> Arc<str> {
        match enterprise {
            Some(id) => enterprises
                .get(&id.to_ascii_lowercase())
                .map_or_else(|| Arc::from(id), |name| Arc::from(name.as_str())),
            None => Arc::from(fallback),
        }
    };
    match parsed {
        Body { enterprise_id: Some(enterprise), events: Some(events), .. } => {
            let property = property(Some(&enterprise), "");
            events
                .into_iter()
                .enumerate()
                .map(|(i, raw)| {
                    let event: GeneralEvent = serde_json::from_str(raw.get())
                        .map_err(|err| format!("Events[{i}] is not {{Discriminator, Value: {{Id}}}}: {err}"))?;
                    Ok(Record {
                        kind: Some(event.discriminator),
                        id: event.value.id,
                        enterprise_id: Some(enterprise.clone()),
                        integration_id: parsed.integration_id.clone(),
                        ..Record::new(
                            Arc::clone(&property),
                            Origin::Webhook,
                            received_at.clone(),
                            raw.to_owned(),
                        )
                    })
                })
                .collect()
        }
        Body { action: Some(action), data: Some(data), .. } => {
            let details: IntegrationData = serde_json::from_str(data.get()).unwrap_or_default();
            let enterprise = details.enterprise.and_then(|e| e.id);
            let integration = details.integration.and_then(|i| i.id);
            let event = RawValue::from_string(body.trim().to_owned()).map_err(|err| err.to_string())?;
            let property = property(enterprise.as_deref(), "integration");
            Ok(vec![Record {
                kind: Some(action),
                id: integration.clone(),
                enterprise_id: enterprise,
                integration_id: integration,
                ..Record::new(property, Origin::Webhook, received_at, event)
            }])
        }
        _ => Err("neither a General webhook {EnterpriseId, IntegrationId, Events} nor an Integration webhook {Action, Data}".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> SystemTime {
        SystemTime::UNIX_EPOCH
    }

    #[test]
    fn general_webhooks_become_one_record_per_event() {
        let body = r#"{"EnterpriseId":"851DF8C8-90f2","IntegrationId":"c8be","Events":[{"Discriminator":"ServiceOrderUpdated","Value":{"Id":"bfee"}},{"Discriminator":"CustomerAdded","Value":{"Id":"c2f1"}}]}"#;
        let names = HashMap::from([("851df8c8-90f2".to_owned(), "old-town".to_owned())]);
        let records = parse(body, &names, at()).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(&*records[0].property, "old-town");
        assert_eq!(records[0].kind.as_deref(), Some("ServiceOrderUpdated"));
        assert_eq!(records[1].id.as_deref(), Some("c2f1"));
        assert_eq!(
            records[1].event.get(),
            r#"{"Discriminator":"CustomerAdded","Value":{"Id":"c2f1"}}"#
        );
        assert_eq!(records[0].integration_id.as_deref(), Some("c8be"));
        let unknown = parse(body, &HashMap::new(), at()).unwrap();
        assert_eq!(
            &*unknown[0].property, "851DF8C8-90f2",
            "unmapped: the enterprise id itself"
        );
    }

    #[test]
    fn integration_webhooks_become_one_record() {
        let body =
            r#"{"Action":"IntegrationDisabled","Data":{"Integration":{"Id":"9e5e","Name":"X"}}}"#;
        let records = parse(body, &HashMap::new(), at()).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].kind.as_deref(), Some("IntegrationDisabled"));
        assert_eq!(records[0].id.as_deref(), Some("9e5e"));
        assert_eq!(records[0].event.get(), body);
        assert_eq!(&*records[0].property, "integration");
    }

    #[test]
    fn other_shapes_are_refused() {
        for body in [
            "",
            "{",
            "[]",
            "{}",
            r#"{"Events":[]}"#,
            r#"{"EnterpriseId":"e","Events":[{"Value":{}}]}"#,
            r#"{"Action":"X"}"#,
        ] {
            assert!(parse(body, &HashMap::new(), at()).is_err(), "{body}");
        }
    }

    #[test]
    fn events_nested_deeper_than_the_websocket_allows_are_refused() {
        let deep = |levels: usize| {
            format!(
                r#"{{"EnterpriseId":"e","Events":[{{"Discriminator":"X","Value":{{"Id":"1","N":{}1{}}}}}]}}"#,
                "[".repeat(levels),
                "]".repeat(levels)
            )
        };
        assert!(parse(&deep(10), &HashMap::new(), at()).is_ok());
        let err = parse(&deep(100_000), &HashMap::new(), at()).unwrap_err();
        assert!(err.contains("64 levels"), "{err}");
    }
}

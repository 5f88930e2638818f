//! The local API (`[api]`) for the key system behind the relay and for the admin's commands:
//! report a command's state (journaled, answered 202, then applied in Mews by the relay,
//! once), read it back with Mews's answer, the relay's status, a reload, a dead-letter replay.
//! Bearer token checked before the body is read; the listener is bounded like every other
//! (src/listener).
//!
//! ```text
//! POST /v1/commands/{id}[?property=NAME]  {"State":"Processing","Progress":0.5}  → 202 | 400 | 401 | 404 | 409
//! GET  /v1/commands/{id}                   → 200 {Id, Property, EventState, Requested, Mews, Waiting} | 404
//! GET  /v1/status                          → 200 {Version, Ready, Problems, Properties, Sinks, LastReload, …}
//! POST /v1/reload                          → 202 {Generation} | 422 {Message, Generation} (the file was refused)
//! POST /v1/dead-letters/{sink}/replay      → 200 {Sink, Replayed} | 404 | 503
//! ```

mod admin;
pub mod client;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::app::Reloads;
use crate::config::Settings;
use crate::journal::Journal;
use crate::journal::commands::{
    CommandEntry, FINAL, MewsAnswer, Request as CommandRequest, RequestOutcome, Requested,
    SETTABLE, Update,
};
use crate::listener::{Bounds, Gate, Listener, Refusals, read_body, refuse};
use crate::stats::Stats;

pub use status::status_of;

/// Largest request body (a state, a progress, notes).
const MAX_BODY: usize = 16 * 1024;
/// Longest `Notes`.
const MAX_NOTES: usize = 2000;

/// A bound, not yet serving, API listener.
pub struct ApiServer {
    listener: Listener,
    state: Arc<Shared>,
}

/// What the API works with besides its own table.
pub struct Context {
    /// Where command states are journaled and dead letters replayed.
    pub journal: Journal,
    /// What `status` reports.
    pub stats: Arc<Stats>,
    /// The config the relay runs now (its properties, sinks, config file).
    pub current: tokio::sync::watch::Receiver<Arc<Settings>>,
    /// Where `POST /v1/reload` hands the config file.
    pub reloads: Reloads,
}

struct Shared {
    gate: Gate,
    ctx: Context,
    refusals: Arc<Refusals>,
    bounds: Bounds,
}

impl Shared {
    /// The config the relay runs now.
    fn settings(&self) -> Arc<Settings> {
        Arc::clone(&self.ctx.current.borrow())
    }
}

/// The API listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("api: cannot listen on {addr}: {source}; free the port or change api.listen")]
pub struct ApiError {
    addr: SocketAddr,
    source: std::io::Error,
}

impl ApiServer {
    /// Binds `api.listen`; fails at start-up, not later.
    pub async fn bind(
        api: &crate::config::Api,
        bounds: Bounds,
        ctx: Context,
    ) -> Result<ApiServer, ApiError> {
        let listener = Listener::bind(
            "api",
            api.listen,
            None,
            bounds.clone(),
            Arc::clone(&ctx.stats),
        )
        .await
        .map_err(|source| ApiError {
            addr: api.listen,
            source,
        })?;
        Ok(ApiServer {
            state: Arc::new(Shared {
                gate: Gate::Bearer(api.token.clone()),
                ctx,
                refusals: listener.refusals(),
                bounds,
            }),
            listener,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(listen = ?self.local_addr().ok(), "serving the local API (/v1/commands, /v1/status, /v1/reload, /v1/dead-letters)");
        let router = Router::new()
            .route("/v1/commands/{id}", get(read_command).post(set_state))
            .route("/v1/status", get(status::status))
            .route("/v1/reload", post(admin::reload))
            .route("/v1/dead-letters/{sink}/replay", post(admin::replay))
            .with_state(self.state);
        self.listener.serve(router, shutdown).await;
    }
}

/// A JSON answer.
fn answer(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// An error answer, `{"Message": …}` as Mews words its own.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    answer(status, &json!({ "Message": message.into() }))
}

/// `None` when the bearer token is right; else the 401 (logged once per spell, not per
/// request).
fn refused(state: &Shared, parts: &axum::http::request::Parts) -> Option<Response> {
    if state.gate.admits(&parts.uri, &parts.headers) {
        return None;
    }
    state
        .refusals
        .refused(&state.ctx.stats, "unauthorized", || {
            tracing::warn!("API request refused (401): missing or wrong bearer token")
        });
    let mut response = refuse(StatusCode::UNAUTHORIZED);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    Some(response)
}

/// `POST /v1/commands/{id}` as the key system sends it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct SetState {
    state: String,
    progress: Option<f64>,
    notes: Option<String>,
}

/// Checks a request against Mews's rules for `commands/update`.
fn validate(body: SetState) -> Result<Update, String> {
    if !SETTABLE.contains(&body.state.as_str()) {
        return Err(format!(
            "State \"{}\" is not one a device integration sets; use one of {}",
            body.state,
            SETTABLE.join(", ")
        ));
    }
    if let Some(progress) = body.progress {
        if body.state != "Processing" {
            return Err("Progress goes with State \"Processing\" only".into());
        }
        if !(0.0..=1.0).contains(&progress) {
            return Err("Progress is a number from 0 to 1 (0.5 = half done)".into());
        }
    }
    if let Some(notes) = &body.notes {
        if !FINAL.contains(&body.state.as_str()) {
            return Err(format!(
                "Notes go with a final State ({}) only",
                FINAL.join(", ")
            ));
        }
        if notes.chars().count() > MAX_NOTES {
            return Err(format!("Notes are longer than {MAX_NOTES} characters"));
        }
    }
    Ok(Update {
        state: body.state,
        progress: body.progress,
        notes: body.notes,
    })
}

async fn set_state(
    State(state): State<Arc<Shared>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    if let Some(refusal) = refused(&state, &parts) {
        return refusal;
    }
    let property = parts.uri.query().and_then(|query| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == "property")
            .map(|(_, value)| value.into_owned())
    });
    let body = match read_body(
        body,
        &parts.headers,
        MAX_BODY,
        &state.bounds.budget,
        state.bounds.body_timeout,
    )
    .await
    {
        Ok(body) => body,
        Err(err) => return error(err.status(), err.to_string()),
    };
    let update = match serde_json::from_slice::<SetState>(&body.bytes) {
        Ok(body) => validate(body),
        Err(err) => Err(format!(
            "the body is not {{\"State\": …, \"Progress\": …, \"Notes\": …}}: {err}"
        )),
    };
    let update = match update {
        Ok(update) => update,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    if id.is_empty() || id.len() > 100 {
        return error(
            StatusCode::BAD_REQUEST,
            "the command id is empty or too long",
        );
    }
    let properties: Vec<String> = state
        .settings()
        .properties
        .iter()
        .map(|p| p.name.clone())
        .collect();
    if let Some(property) = &property
        && !properties.contains(property)
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "property \"{property}\" is not configured; use one of: {}",
                properties.join(", ")
            ),
        );
    }
    let request = CommandRequest {
        command: id.clone(),
        property,
        update,
    };
    match state.ctx.journal.request(request).await {
        Ok(RequestOutcome::Queued(entry)) => answer(StatusCode::ACCEPTED, &view(&id, &entry)),
        Ok(RequestOutcome::Unknown) => error(
            StatusCode::NOT_FOUND,
            format!(
                "the relay has not seen command {id}; if Mews has it, add ?property=<name> (one of: {}) to set it anyway",
                properties.join(", ")
            ),
        ),
        Ok(RequestOutcome::Conflict(reason)) => error(StatusCode::CONFLICT, reason),
        Err(err) => {
            tracing::error!(error = %err, command = %id, "cannot journal a command state request; answering 503");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the relay cannot store the request now (journal); try again",
            )
        }
    }
}

async fn read_command(
    State(state): State<Arc<Shared>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let (parts, _) = request.into_parts();
    if let Some(refusal) = refused(&state, &parts) {
        return refusal;
    }
    match state.ctx.journal.command(&id).await {
        Ok(Some(entry)) => answer(StatusCode::OK, &view(&id, &entry)),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!(
                "the relay has not seen command {id} (or forgot it: a week after its last change)"
            ),
        ),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
    }
}

/// A command as the API shows it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CommandView<'a> {
    id: &'a str,
    property: &'a str,
    /// The last state a Mews event said.
    event_state: Option<&'a str>,
    /// The last state asked for.
    requested: Option<RequestedView<'a>>,
    /// Mews's answer to the last update sent.
    mews: Option<MewsView<'a>>,
    /// Updates not answered by Mews yet.
    waiting: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RequestedView<'a> {
    state: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    notes: Option<&'a str>,
    by: crate::journal::commands::By,
    at: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct MewsView<'a> {
    state: &'a str,
    accepted: bool,
    status: Option<u16>,
    message: Option<&'a str>,
    request_id: Option<&'a str>,
    at: &'a str,
}

fn view(id: &str, entry: &CommandEntry) -> Value {
    let requested = entry.requested.as_ref().map(|r: &Requested| RequestedView {
        state: &r.update.state,
        progress: r.update.progress,
        notes: r.update.notes.as_deref(),
        by: r.by,
        at: &r.at,
    });
    let mews = entry.mews.as_ref().map(|m: &MewsAnswer| MewsView {
        state: &m.state,
        accepted: m.accepted,
        status: m.status,
        message: m.message.as_deref(),
        request_id: m.request_id.as_deref(),
        at: &m.at,
    });
    serde_json::to_value(CommandView {
        id,
        property: &entry.property,
        event_state: entry.event_state.as_deref(),
        requested,
        mews,
        waiting: entry.waiting,
    })
    .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(state: &str, progress: Option<f64>, notes: Option<&str>) -> SetState {
        SetState {
            state: state.into(),
            progress,
            notes: notes.map(str::to_owned),
        }
    }

    #[test]
    fn requests_follow_mews_rules_for_commands_update() {
        assert!(validate(body("Processing", Some(0.5), None)).is_ok());
        assert!(validate(body("Processed", None, Some("2 keys cut"))).is_ok());
        assert!(validate(body("Cancelled", None, None)).is_ok());
        assert!(validate(body("Received", None, None)).is_ok());
        for bad in [
            body("Pending", None, None),
            body("Done", None, None),
            body("Processing", Some(1.5), None),
            body("Processed", Some(0.5), None),
            body("Processing", None, Some("notes too early")),
        ] {
            assert!(validate(bad).is_err());
        }
        let long = "x".repeat(MAX_NOTES + 1);
        assert!(validate(body("Error", None, Some(&long))).is_err());
    }
}

//! The admin's requests: `POST /v1/reload` (the relay reads its config file again and applies
//! what changed; the outcome follows in `GET /v1/status` under the request's number) and
//! `POST /v1/dead-letters/{sink}/replay` (a sink's dead letters back into the running journal).

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::{Shared, answer, error, refused};
use crate::sink::dead_letter::{self, ReplayError};

/// `POST /v1/reload`: 202 with the request's number (the relay applies it in the background:
/// it may restart this very listener); 422 when the file is refused (the running config
/// stays). The relay notes the outcome under the number (`LastReload` in the status).
pub(super) async fn reload(State(state): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    if let Some(refusal) = refused(&state, &parts) {
        return refusal;
    }
    let origin = state.settings().origin.clone();
    let reloads = state.ctx.reloads.clone();
    let read = tokio::task::spawn_blocking(move || reloads.reload_file(&origin)).await;
    let config = state.settings().origin.display().to_string();
    match read {
        Ok((generation, None)) => answer(
            StatusCode::ACCEPTED,
            &json!({ "Generation": generation, "Config": config }),
        ),
        Ok((generation, Some(why))) => answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({
                "Message": format!("the new configuration is refused: {why}; the running one stays"),
                "Generation": generation,
                "Config": config,
            }),
        ),
        Err(err) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the configuration failed: {err}"),
        ),
    }
}

/// `POST /v1/dead-letters/{sink}/replay`: the sink's dead letters back into the journal, for
/// that sink only; 200 `{"Sink", "Replayed"}`.
pub(super) async fn replay(
    State(state): State<Arc<Shared>>,
    Path(sink): Path<String>,
    request: Request,
) -> Response {
    let (parts, _) = request.into_parts();
    if let Some(refusal) = refused(&state, &parts) {
        return refusal;
    }
    let settings = state.settings();
    let names: Vec<String> = settings.sinks.iter().map(|s| s.name.clone()).collect();
    match dead_letter::replay_into(&state.ctx.journal, &settings.state.dir, &names, &sink).await {
        Ok(count) => {
            tracing::info!(sink = %sink, records = count, "dead letters replayed through the API");
            answer(StatusCode::OK, &json!({ "Sink": sink, "Replayed": count }))
        }
        Err(err @ ReplayError::UnknownSink(..)) => error(StatusCode::NOT_FOUND, err.to_string()),
        Err(err @ ReplayError::Journal(_)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, err.to_string())
        }
        Err(err @ ReplayError::File(..)) => error(StatusCode::CONFLICT, err.to_string()),
    }
}

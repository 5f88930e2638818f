//! The simulator's HTTP answers: the Mews REST operations under `/api/connector/v1/` as Mews
//! answers them (a `Request-Id` header on every answer, error bodies `{"Message","RequestId"}`,
//! 401 for token problems), and `POST /sim/commands`, which makes a key command on demand.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Shared;
use super::events::uuid;
use super::hotel::{Call, NewKeyCommand, Refusal};

/// The header Mews puts on every answer ("Every response contains `Request-Id` header").
pub const REQUEST_ID: &str = "Request-Id";

/// An answer: JSON body, `Request-Id`, and `Retry-After` when given.
fn reply(status: u16, body: &Value, request_id: &str, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        [(CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, value);
    }
    if let Some(value) = retry_after.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
        headers.insert(RETRY_AFTER, value);
    }
    response
}

/// An error answer: `{"Message": …, "RequestId": …}` (`guidelines/responses.md`).
fn refuse(refusal: &Refusal, request_id: &str) -> Response {
    let body = json!({ "Message": refusal.message, "RequestId": request_id });
    reply(refusal.status, &body, request_id, refusal.retry_after)
}

/// `POST /api/connector/v1/<operation>` with the tokens in the JSON body.
pub(super) async fn rest(
    State(shared): State<Arc<Shared>>,
    Path(operation): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = std::time::Instant::now();
    let request_id = uuid(&mut fastrand::Rng::new());
    let parsed = serde_json::from_slice::<Value>(&body).ok();
    let answer = if method == Method::POST {
        answer(&shared, &operation, &headers, parsed.as_ref())
    } else {
        // Mews's 404: "Verify the URL and request method"; only POST is accepted.
        Err(Refusal::new(404, "The API accepts only POST requests."))
    };
    let count = parsed
        .as_ref()
        .and_then(|body| body["Limitation"]["Count"].as_u64());
    let updated_until = parsed
        .as_ref()
        .and_then(|body| body["UpdatedUtc"]["EndUtc"].as_str().map(str::to_owned));
    let items = answer.as_ref().ok().and_then(|value| {
        let object = value.as_object()?;
        object.values().find_map(|v| v.as_array().map(Vec::len))
    });
    let (status, response) = match answer {
        Ok(value) => (200, reply(200, &value, &request_id, None)),
        Err(refusal) => (refusal.status, refuse(&refusal, &request_id)),
    };
    shared.hotel.record(Call {
        at,
        operation,
        status,
        request_id,
        count,
        updated_until,
        items,
    });
    response
}

/// The checks Mews makes before an operation runs, then the operation.
fn answer(
    shared: &Shared,
    operation: &str,
    headers: &HeaderMap,
    body: Option<&Value>,
) -> Result<Value, Refusal> {
    if !super::hotel::OPERATIONS.contains(&operation) {
        // "If the address does not match the expected format, the server will return a
        // `404 Not Found` error" (case-sensitive, no trailing slash).
        return Err(Refusal::new(404, format!("Unknown operation {operation}.")));
    }
    // "The API accepts only `HTTP POST` requests with `Content-Type` set to
    // `application/json`"; the status for another type is not documented: 400, strictest.
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !json {
        return Err(Refusal::new(
            400,
            "Invalid Content-Type: the API accepts only application/json.",
        ));
    }
    let Some(body) = body.filter(|b| b.is_object()) else {
        return Err(Refusal::new(400, "Invalid JSON"));
    };
    let config = &shared.config;
    let token_ok = |name: &str, expected: &Option<String>| match (body[name].as_str(), expected) {
        (Some(value), Some(expected)) => value == expected,
        (Some(value), None) => !value.is_empty(),
        (None, _) => false,
    };
    if !token_ok("ClientToken", &config.client_token)
        || !token_ok("AccessToken", &config.access_token)
    {
        return Err(Refusal::new(
            401,
            "The provided ClientToken or AccessToken is invalid or has expired.",
        ));
    }
    // `Client` is required with the tokens; the status of a missing one is not documented:
    // `400 Invalid Client`, the documented form for a bad parameter.
    if body["Client"].as_str().is_none_or(|c| c.trim().is_empty()) {
        return Err(Refusal::invalid("Client"));
    }
    shared.hotel.rest(operation, body)
}

/// `POST /sim/commands`: a key-cutter command as a front desk would make it. The body is
/// empty or `{"AccessToken"?, "KeyCutterId"?, "ReservationId"?, "KeyCount"?}`; the answer is
/// `{"CommandId": "…"}` like Mews's `commands/addKeyCutter`, or 400 `{"Message": …}`. Connected
/// WebSockets of that property (of all, without AccessToken) get its Pending event.
pub(super) async fn sim_commands(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let request_id = uuid(&mut fastrand::Rng::new());
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        Ok(NewKeyCommand::default())
    } else {
        serde_json::from_slice::<NewKeyCommand>(&body)
            .map_err(|err| Refusal::new(400, format!("Invalid JSON: {err}")))
    };
    match request.and_then(|request| shared.hotel.add_key_command(request)) {
        Ok(id) => {
            tracing::info!(command = %id, "simulator: key command created (POST /sim/commands)");
            reply(200, &json!({ "CommandId": id }), &request_id, None)
        }
        Err(refusal) => refuse(&refusal, &request_id),
    }
}

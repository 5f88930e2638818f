//! The Mews REST client of one property: tokens in the body, a local rate limiter, and Mews's
//! answers read as `guidelines/responses.md` and `guidelines/requests.md` document them: 401
//! (tokens, disabled integration, no permission) is one clear error per property; 403 refuses
//! that one request on a business rule and leaves other operations alone; 408 to a request the
//! caller can make smaller (a page, or several `CommandIds`) asks for smaller batches (the
//! caller halves `Limitation.Count`, or splits the ids); 429 waits for
//! `Retry-After`, or backs off exponentially with jitter when it is missing; 5xx and transport
//! errors are retried with backoff. Every failure is logged with Mews's `Request-Id` (a 4xx
//! that its caller handles by the caller, which knows what it means; here at debug).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::Limiter;
use crate::failures::FailureLog;
use crate::httpx::{describe, retry_after};
use crate::retry::{Backoff, schedules};
use crate::secret::Secret;
use crate::stats::Stats;

/// Error bodies are quoted up to this many bytes.
const EXCERPT: usize = 300;
/// The header Mews puts on every answer, to quote when contacting its support.
const REQUEST_ID: &str = "request-id";

/// `; Request-Id …` after a message, when Mews sent one.
struct RequestIdNote<'a>(&'a Option<String>);

impl std::fmt::Display for RequestIdNote<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(id) => write!(f, "; Request-Id {id}"),
            None => Ok(()),
        }
    }
}

/// A successful answer: its body and `Request-Id`.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The JSON body.
    pub body: Vec<u8>,
    /// Mews's `Request-Id` header.
    pub request_id: Option<String>,
}

/// Why a REST call failed. Never holds a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RestError {
    /// 401: the tokens are wrong or expired, the enterprise or integration is disabled, or the
    /// integration may not use this operation.
    #[error(
        "Mews answered {operation} with HTTP 401 ({message}{rid}): check client_token and this property's access_token (demo and production tokens differ), that the integration is enabled for the enterprise, and that the integration may use {operation}",
        rid = RequestIdNote(.request_id)
    )]
    Unauthorized {
        /// The operation, e.g. `commands/getAllActive`.
        operation: String,
        /// Mews's `Message`.
        message: String,
        /// Mews's `Request-Id`.
        request_id: Option<String>,
    },
    /// 403: a business rule refused this request; other operations are not affected.
    #[error(
        "Mews refused {operation} (HTTP 403): {message}{rid}; show this message to the hotel, whose Mews settings decide it",
        rid = RequestIdNote(.request_id)
    )]
    Refused {
        /// The operation.
        operation: String,
        /// Mews's `Message`, to show to the hotel.
        message: String,
        /// Mews's `Request-Id`.
        request_id: Option<String>,
    },
    /// 408 to a page or to several `CommandIds`: Mews could not prepare that many items; ask
    /// for fewer.
    #[error(
        "Mews took too long to prepare {operation} (HTTP 408{rid}); ask for fewer items at once",
        rid = RequestIdNote(.request_id)
    )]
    TooHeavy {
        /// The operation.
        operation: String,
        /// Mews's `Request-Id`.
        request_id: Option<String>,
    },
    /// Any other status that is not worth retrying.
    #[error("HTTP {status}: {message}{rid}", rid = RequestIdNote(.request_id))]
    Status {
        /// The status.
        status: u16,
        /// Mews's `Message`, or the start of the body.
        message: String,
        /// Mews's `Request-Id`.
        request_id: Option<String>,
    },
    /// A status worth retrying (429, 408 to a request that cannot be made smaller, 5xx); `after`
    /// is `Retry-After`.
    #[error("HTTP {status}{rid} (will retry)", rid = RequestIdNote(.request_id))]
    Retryable {
        /// The status.
        status: u16,
        /// The server's `Retry-After`.
        after: Option<Duration>,
        /// Mews's `Request-Id`.
        request_id: Option<String>,
    },
    /// No answer: connect, TLS, timeout.
    #[error("{0}")]
    Transport(String),
    /// An answer that is not the documented JSON.
    #[error("unexpected response: {0}")]
    Decode(String),
}

impl RestError {
    fn retryable(&self) -> bool {
        matches!(self, RestError::Retryable { .. } | RestError::Transport(_))
    }

    /// Mews's `Request-Id` of the failed answer, if there was one.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            RestError::Unauthorized { request_id, .. }
            | RestError::Refused { request_id, .. }
            | RestError::TooHeavy { request_id, .. }
            | RestError::Status { request_id, .. }
            | RestError::Retryable { request_id, .. } => request_id.as_deref(),
            RestError::Transport(_) | RestError::Decode(_) => None,
        }
    }

    /// The HTTP status of the failed answer, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            RestError::Unauthorized { .. } => Some(401),
            RestError::Refused { .. } => Some(403),
            RestError::TooHeavy { .. } => Some(408),
            RestError::Status { status, .. } | RestError::Retryable { status, .. } => Some(*status),
            RestError::Transport(_) | RestError::Decode(_) => None,
        }
    }
}

/// What [`Rest::new`] needs.
pub struct RestSetup<'a> {
    /// `[mews] api_url`, without a trailing slash.
    pub api_url: &'a str,
    /// `[mews] client_token`
    pub client_token: Secret,
    /// The property's access token.
    pub access_token: Secret,
    /// `[mews] client`
    pub client: &'a str,
    /// `[mews] rate_limit` and `rate_window`
    pub limiter: Limiter,
    /// The HTTP client every property shares ([`http_client`]).
    pub http: reqwest::Client,
    /// Counters.
    pub stats: Arc<Stats>,
}

/// One property's REST client.
pub struct Rest {
    http: reqwest::Client,
    base: String,
    client_token: Secret,
    access_token: Secret,
    client: String,
    limiter: Limiter,
    stats: Arc<Stats>,
    /// Operations answered 401, until each succeeds: a wrong token refuses them all, a
    /// missing permission only its operation. One ERROR when the first is refused.
    unauthorized: Mutex<HashSet<String>>,
    /// Operations refused with 403: logged at WARN once, until that operation succeeds.
    refused_operations: Mutex<HashSet<String>>,
    /// Waits after 429s without `Retry-After`: growing while they come in a row.
    throttled: Mutex<Backoff>,
    /// A run of retried failures is logged at its start and when its kind changes.
    failing: Mutex<FailureLog>,
}

impl std::fmt::Debug for Rest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rest").field("base", &self.base).finish()
    }
}

/// The HTTP client for the Mews REST API, one for all properties: a few pooled connections
/// serve a thousand properties (each keeps its own tokens and rate limit).
pub fn http_client(
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<reqwest::Client, RestError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured((**tls).clone())
        .connect_timeout(timeout)
        .timeout(timeout)
        .pool_max_idle_per_host(8)
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(concat!("mews-relay/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| RestError::Transport(describe(&err)))
}

impl Rest {
    /// A client for one property.
    pub fn new(setup: RestSetup<'_>) -> Rest {
        Rest {
            http: setup.http,
            base: format!("{}/api/connector/v1/", setup.api_url),
            client_token: setup.client_token,
            access_token: setup.access_token,
            client: setup.client.to_owned(),
            limiter: setup.limiter,
            stats: setup.stats,
            unauthorized: Mutex::new(HashSet::new()),
            refused_operations: Mutex::new(HashSet::new()),
            throttled: Mutex::new(schedules::REST_THROTTLED.backoff()),
            failing: Mutex::default(),
        }
    }

    /// The earliest this property's next request could start (rate limit, `Retry-After`).
    pub fn next_start(&self) -> Instant {
        self.limiter.next_start()
    }

    /// Calls `operation` (e.g. `commands/getAllActive`) with `body` plus the tokens, retrying
    /// 429 (after `Retry-After`, or a growing jittered wait without it), 5xx, 408 to a request
    /// that cannot be made smaller and transport errors with backoff; other failures (401, 403,
    /// 408 to a page or to several `CommandIds`, 4xx) return at once. Callers bound the time
    /// with a timeout or by dropping the future.
    pub async fn call(
        &self,
        operation: &str,
        body: Map<String, Value>,
    ) -> Result<Vec<u8>, RestError> {
        self.call_answer(operation, body).await.map(|a| a.body)
    }

    /// [`Rest::call`], with the answer's `Request-Id` (kept with a command update's answer).
    pub async fn call_answer(
        &self,
        operation: &str,
        body: Map<String, Value>,
    ) -> Result<Answer, RestError> {
        let mut backoff = schedules::REST.backoff();
        // Mews's advice on 408 is "request data in smaller batches": for these the caller can.
        let shrinkable = body
            .get("Limitation")
            .is_some_and(|limitation| limitation.get("Count").is_some())
            || body
                .get("CommandIds")
                .and_then(Value::as_array)
                .is_some_and(|ids| ids.len() > 1);
        loop {
            match self.once(operation, &body, shrinkable).await {
                Ok(bytes) => {
                    self.succeeded(operation);
                    return Ok(bytes);
                }
                Err(err) if err.retryable() => {
                    let wait = match &err {
                        RestError::Retryable {
                            status: 429, after, ..
                        } => {
                            let after = after.unwrap_or_else(|| self.throttle_delay());
                            self.limiter.block_until(Instant::now() + after);
                            after
                        }
                        RestError::Retryable {
                            after: Some(after), ..
                        } => *after,
                        _ => backoff.next_delay(),
                    };
                    let request_id = err.request_id().unwrap_or("-");
                    let kind = err
                        .status()
                        .map_or("no answer".into(), |s| format!("HTTP {s}"));
                    if lock(&self.failing).failed(&kind).is_news() {
                        tracing::warn!(operation, error = %err, request_id, retry_in = ?wait, "Mews REST call failed; retrying");
                    } else {
                        tracing::debug!(operation, error = %err, request_id, retry_in = ?wait, "Mews REST call failed again");
                    }
                    tokio::time::sleep(wait).await;
                }
                Err(err) => {
                    self.report(operation, &err);
                    return Err(err);
                }
            }
        }
    }

    /// The wait after a 429 without `Retry-After`.
    fn throttle_delay(&self) -> Duration {
        lock(&self.throttled).next_growing()
    }

    /// A call of `operation` succeeded: what was failing is logged as answering again.
    fn succeeded(&self, operation: &str) {
        if lock(&self.failing).recovered().is_some() {
            tracing::info!(operation, "Mews REST API answers again");
        }
        if lock(&self.unauthorized).remove(operation) {
            tracing::info!(
                operation,
                "Mews accepts this property's calls of {operation} again"
            );
        }
        let was_refused = lock(&self.refused_operations).remove(operation);
        if was_refused {
            tracing::info!(operation, "Mews accepts this operation again");
        }
        lock(&self.throttled).reset();
    }

    /// Logs a failure that is not retried here, with Mews's `Request-Id`.
    fn report(&self, operation: &str, err: &RestError) {
        let request_id = err.request_id().unwrap_or("-");
        match err {
            RestError::Unauthorized { message, .. } => {
                // The first 401 while none is outstanding: a wrong token refuses every
                // operation (one ERROR, not one per operation), a missing permission one
                // operation, again on every connection (one ERROR until it succeeds).
                let first = {
                    let mut unauthorized = lock(&self.unauthorized);
                    let none_before = unauthorized.is_empty();
                    unauthorized.insert(operation.to_owned()) && none_before
                };
                if first {
                    tracing::error!(
                        operation,
                        status = 401,
                        mews_message = %message,
                        request_id,
                        "Mews refused {operation} for this property (401): check client_token and this property's access_token (demo and production tokens differ) and that the integration is enabled for the enterprise; if other operations work, the integration lacks permission for {operation} (Mews grants it through certification)"
                    );
                } else {
                    tracing::debug!(
                        operation,
                        status = 401,
                        request_id,
                        "Mews refused the tokens again"
                    );
                }
            }
            RestError::Refused { message, .. } => {
                let first = lock(&self.refused_operations).insert(operation.to_owned());
                if first {
                    tracing::warn!(
                        operation,
                        status = 403,
                        mews_message = %message,
                        request_id,
                        "Mews refused {operation} on a business rule; other operations go on. Show the message to the hotel: its Mews settings decide it"
                    );
                } else {
                    tracing::debug!(operation, status = 403, mews_message = %message, request_id, "Mews refused the operation again");
                }
            }
            RestError::TooHeavy { .. } => {
                tracing::warn!(
                    operation,
                    status = 408,
                    request_id,
                    "Mews took too long to prepare the answer (408); asking for fewer items at once"
                );
            }
            // What a refusal means is the caller's to say, and each logs it: the catch-up step
            // (retrying), a command update (Mews's message, for the key system), the
            // enrichment lookup (one line for the ids Mews refused while it split the request).
            RestError::Status { .. } => {
                tracing::debug!(operation, error = %err, request_id, "Mews refused the request")
            }
            _ => tracing::warn!(operation, error = %err, request_id, "Mews REST call failed"),
        }
    }

    /// One request, after waiting for the limiter.
    async fn once(
        &self,
        operation: &str,
        body: &Map<String, Value>,
        shrinkable: bool,
    ) -> Result<Answer, RestError> {
        self.limiter.acquire().await;
        let mut full = Map::with_capacity(body.len() + 3);
        full.insert("ClientToken".into(), self.client_token.expose().into());
        full.insert("AccessToken".into(), self.access_token.expose().into());
        full.insert("Client".into(), self.client.clone().into());
        full.extend(body.iter().map(|(k, v)| (k.clone(), v.clone())));
        let body = serde_json::to_vec(&full).map_err(|err| RestError::Decode(err.to_string()))?;
        let result = self
            .http
            .post(format!("{}{operation}", self.base))
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let response = match result {
            Ok(response) => response,
            Err(err) => {
                Stats::add(&self.stats.rest_failed, 1);
                return Err(RestError::Transport(describe(&err)));
            }
        };
        let status = response.status();
        let header_id = response
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty());
        if status.is_success() {
            let bytes = response.bytes().await.map_err(|err| {
                Stats::add(&self.stats.rest_failed, 1);
                RestError::Transport(describe(&err))
            })?;
            Stats::add(&self.stats.rest_ok, 1);
            return Ok(Answer {
                body: bytes.to_vec(),
                request_id: header_id,
            });
        }
        Stats::add(&self.stats.rest_failed, 1);
        if status == StatusCode::TOO_MANY_REQUESTS {
            Stats::add(&self.stats.rest_throttled, 1);
        }
        let after = retry_after(response.headers());
        let bytes = response.bytes().await.unwrap_or_default();
        let error = error_body(&bytes);
        let request_id = header_id.or(error.request_id);
        let message = self.scrub(error.message);
        let operation = operation.to_owned();
        Err(match status.as_u16() {
            401 => RestError::Unauthorized {
                operation,
                message,
                request_id,
            },
            403 => RestError::Refused {
                operation,
                message,
                request_id,
            },
            408 if shrinkable => RestError::TooHeavy {
                operation,
                request_id,
            },
            code @ (408 | 429 | 500..=599) => RestError::Retryable {
                status: code,
                after: if code == 429 || code == 503 {
                    after
                } else {
                    None
                },
                request_id,
            },
            code => RestError::Status {
                status: code,
                message,
                request_id,
            },
        })
    }

    /// A message from Mews with any token it quoted masked.
    fn scrub(&self, message: String) -> String {
        let mut message = message;
        for token in [self.client_token.expose(), self.access_token.expose()] {
            if !token.is_empty() && message.contains(token) {
                message = message.replace(token, "***");
            }
        }
        message
    }
}

/// The state behind `mutex`, also after a panic elsewhere (it stays consistent: counters).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// What an error body says (`{"Message": …, "RequestId": …}`), or the start of the body.
struct ErrorBody {
    message: String,
    request_id: Option<String>,
}

fn error_body(body: &[u8]) -> ErrorBody {
    #[derive(serde::Deserialize)]
    struct Error {
        #[serde(rename = "Message")]
        message: String,
        #[serde(rename = "RequestId", default)]
        request_id: Option<String>,
    }
    match serde_json::from_slice::<Error>(body) {
        Ok(err) => ErrorBody {
            message: err.message,
            request_id: err.request_id,
        },
        Err(_) => ErrorBody {
            message: message_of(body),
            request_id: None,
        },
    }
}

/// The start of a body that is not Mews's error JSON, cut at a character boundary.
fn message_of(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(EXCERPT)]);
    text.trim_end_matches('\u{fffd}').trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_and_request_ids_come_from_the_body() {
        let body = error_body(br#"{"Message":"Invalid CommandIds","RequestId":"r-1"}"#);
        assert_eq!(body.message, "Invalid CommandIds");
        assert_eq!(body.request_id.as_deref(), Some("r-1"));
        let body = error_body(b"<html>plain</html>");
        assert_eq!(
            (body.message.as_str(), body.request_id),
            ("<html>plain</html>", None)
        );
    }

    #[test]
    fn errors_name_the_operation_the_request_id_and_the_fix() {
        let err = RestError::Refused {
            operation: "reservations/getAll/2023-06-06".into(),
            message: "Not allowed.".into(),
            request_id: Some("abc".into()),
        };
        let text = err.to_string();
        assert!(text.contains("reservations/getAll/2023-06-06") && text.contains("Not allowed."));
        assert!(text.contains("Request-Id abc"), "{text}");
        assert_eq!((err.status(), err.request_id()), (Some(403), Some("abc")));
        let err = RestError::Unauthorized {
            operation: "commands/getAllActive".into(),
            message: "The provided ClientToken or AccessToken is invalid or has expired.".into(),
            request_id: None,
        };
        let text = err.to_string();
        assert!(
            text.contains("commands/getAllActive") && text.contains("access_token"),
            "{text}"
        );
        assert!(!text.contains("Request-Id"));
        assert!(!format!("{err:?} {err}").contains("Token="));
    }
}

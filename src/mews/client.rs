//! The Mews REST client of one property: tokens in the body, a local rate limiter, `Retry-After`
//! on 429, backoff on 5xx and timeouts, one clear error on 401.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Map, Value};
use tokio::time::{Instant, sleep_until};

use crate::backoff::Backoff;
use crate::httpx::{describe, retry_after};
use crate::secret::Secret;
use crate::stats::Stats;

/// Delays between retries of a failing request.
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// A 429 without `Retry-After` waits this long.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Error bodies are quoted up to this many bytes.
const EXCERPT: usize = 300;

/// Why a REST call failed. Never holds a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RestError {
    /// 401/403: the tokens are wrong, expired, or the integration is disabled.
    #[error(
        "Mews refused the tokens (HTTP {0}): check client_token and this property's access_token (demo and production tokens differ) and that the integration is enabled"
    )]
    Unauthorized(u16),
    /// Any other status that is not worth retrying.
    #[error("HTTP {status}: {message}")]
    Status {
        /// The status.
        status: u16,
        /// Mews's `Message`, or the start of the body.
        message: String,
    },
    /// A status worth retrying (429, 408, 5xx); `after` is `Retry-After`.
    #[error("HTTP {status} (will retry)")]
    Retryable {
        /// The status.
        status: u16,
        /// The server's `Retry-After`.
        after: Option<Duration>,
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
}

/// Keeps requests under `limit` per `window` (sliding): each request reserves a start time.
#[derive(Debug)]
pub struct Limiter {
    state: Mutex<LimiterState>,
}

#[derive(Debug)]
struct LimiterState {
    limit: usize,
    window: Duration,
    /// Start times of the last `limit` requests (some may be in the future), oldest first.
    starts: VecDeque<Instant>,
    /// Nothing starts before this (a 429's `Retry-After`).
    blocked_until: Option<Instant>,
}

impl Limiter {
    /// At most `limit` requests in any `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        Limiter {
            state: Mutex::new(LimiterState {
                limit: limit.max(1) as usize,
                window,
                starts: VecDeque::new(),
                blocked_until: None,
            }),
        }
    }

    /// Reserves the earliest start that keeps the budget; the caller waits until then.
    pub fn reserve(&self) -> Instant {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut at = Instant::now();
        if let Some(until) = s.blocked_until {
            at = at.max(until);
        }
        if let Some(last) = s.starts.back() {
            at = at.max(*last);
        }
        if s.starts.len() >= s.limit
            && let Some(oldest) = s.starts.pop_front()
        {
            at = at.max(oldest + s.window);
        }
        s.starts.push_back(at);
        at
    }

    /// The earliest a request could start now (budget and `Retry-After`), without reserving it.
    pub fn next_start(&self) -> Instant {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut at = Instant::now();
        if let Some(until) = s.blocked_until {
            at = at.max(until);
        }
        if let Some(last) = s.starts.back() {
            at = at.max(*last);
        }
        if s.starts.len() >= s.limit
            && let Some(oldest) = s.starts.front()
        {
            at = at.max(*oldest + s.window);
        }
        at
    }

    /// Nothing starts before `until` (Mews said 429 with `Retry-After`).
    pub fn block_until(&self, until: Instant) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.blocked_until = Some(s.blocked_until.map_or(until, |b| b.max(until)));
    }

    /// Waits for a slot.
    pub async fn acquire(&self) {
        sleep_until(self.reserve()).await;
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
    /// A 401 is logged once, until a request succeeds again.
    refused: AtomicBool,
    /// A run of failures is logged once at its start.
    failing: AtomicBool,
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
            refused: AtomicBool::new(false),
            failing: AtomicBool::new(false),
        }
    }

    /// The earliest this property's next request could start (rate limit, `Retry-After`).
    pub fn next_start(&self) -> Instant {
        self.limiter.next_start()
    }

    /// Calls `operation` (e.g. `commands/getAllActive`) with `body` plus the tokens, retrying
    /// 429 (after `Retry-After`), 408, 5xx and transport errors with backoff; other failures
    /// return at once. Callers bound the time with a timeout or by dropping the future.
    pub async fn call(
        &self,
        operation: &str,
        body: Map<String, Value>,
    ) -> Result<Vec<u8>, RestError> {
        let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
        loop {
            match self.once(operation, &body).await {
                Ok(bytes) => {
                    if self.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(operation, "Mews REST API answers again");
                    }
                    self.refused.store(false, Ordering::Relaxed);
                    return Ok(bytes);
                }
                Err(err) if err.retryable() => {
                    let wait = match &err {
                        RestError::Retryable { status: 429, after } => {
                            let after = after.unwrap_or(DEFAULT_RETRY_AFTER);
                            self.limiter.block_until(Instant::now() + after);
                            after
                        }
                        RestError::Retryable {
                            after: Some(after), ..
                        } => *after,
                        _ => backoff.next_delay(),
                    };
                    if !self.failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(operation, error = %err, retry_in = ?wait, "Mews REST call failed; retrying");
                    } else {
                        tracing::debug!(operation, error = %err, retry_in = ?wait, "Mews REST call failed again");
                    }
                    tokio::time::sleep(wait).await;
                }
                Err(err) => {
                    if matches!(err, RestError::Unauthorized(_)) {
                        if !self.refused.swap(true, Ordering::Relaxed) {
                            tracing::error!(operation, error = %err, "Mews REST API refused this property's tokens: no catch-up or enrichment until they work");
                        }
                    } else {
                        tracing::warn!(operation, error = %err, "Mews REST call failed");
                    }
                    return Err(err);
                }
            }
        }
    }

    /// One request, after waiting for the limiter.
    async fn once(&self, operation: &str, body: &Map<String, Value>) -> Result<Vec<u8>, RestError> {
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
        if status.is_success() {
            let bytes = response.bytes().await.map_err(|err| {
                Stats::add(&self.stats.rest_failed, 1);
                RestError::Transport(describe(&err))
            })?;
            Stats::add(&self.stats.rest_ok, 1);
            return Ok(bytes.to_vec());
        }
        Stats::add(&self.stats.rest_failed, 1);
        if status == StatusCode::TOO_MANY_REQUESTS {
            Stats::add(&self.stats.rest_throttled, 1);
        }
        let after = retry_after(response.headers());
        Err(match status.as_u16() {
            401 | 403 => RestError::Unauthorized(status.as_u16()),
            code @ (408 | 429 | 500..=599) => RestError::Retryable {
                status: code,
                after: if code == 429 || code == 503 {
                    after
                } else {
                    None
                },
            },
            code => {
                let body = response.bytes().await.unwrap_or_default();
                RestError::Status {
                    status: code,
                    message: message_of(&body),
                }
            }
        })
    }
}

/// Mews's `{"Message": …}`, or the start of the body.
fn message_of(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Error {
        #[serde(rename = "Message")]
        message: String,
    }
    match serde_json::from_slice::<Error>(body) {
        Ok(err) => err.message,
        Err(_) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(EXCERPT)]);
            text.into_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts starts in every window beginning at a start.
    fn max_in_window(starts: &[Instant], window: Duration) -> usize {
        starts
            .iter()
            .map(|a| {
                starts
                    .iter()
                    .filter(|b| **b >= *a && **b < *a + window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_stays_under_the_budget_in_every_window() {
        let limiter = Limiter::new(200, Duration::from_secs(30));
        let starts: Vec<Instant> = (0..500).map(|_| limiter.reserve()).collect();
        assert_eq!(max_in_window(&starts, Duration::from_secs(30)), 200);
        // The first 200 go at once; the rest wait for the window to move on.
        let t0 = starts[0];
        assert_eq!(starts[199], t0);
        assert_eq!(starts[200], t0 + Duration::from_secs(30));
        assert_eq!(starts[499], t0 + Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_blocks_every_later_start() {
        let limiter = Limiter::new(10, Duration::from_secs(1));
        let t0 = Instant::now();
        limiter.block_until(t0 + Duration::from_secs(7));
        assert_eq!(limiter.reserve(), t0 + Duration::from_secs(7));
        assert_eq!(limiter.reserve(), t0 + Duration::from_secs(7));
    }

    #[test]
    fn error_messages_come_from_the_body() {
        assert_eq!(
            message_of(br#"{"Message":"Invalid CommandIds"}"#),
            "Invalid CommandIds"
        );
        assert_eq!(message_of(b"plain"), "plain");
    }

    #[test]
    fn debug_output_has_no_tokens() {
        let err = RestError::Unauthorized(401);
        assert!(!format!("{err:?} {err}").contains("Token="));
    }
}

//! The HTTP sink: POSTs records to an endpoint. What an answer means:
//!
//! | answer | meaning | what happens |
//! | --- | --- | --- |
//! | 2xx | delivered | the cursor moves |
//! | `dead_letter_status` (400, 413, 415, 422) | the record is refused for what it is | dead-lettered, the sink goes on |
//! | 408, 429, 5xx, no answer | a passing failure | retried (`Retry-After`, else `retry_min`..`retry_max`); dead-lettered after `give_up_after` |
//! | any other status (401, 403, 404, 405, 407, 421, …), a TLS failure | the endpoint or its credentials are wrong | the sink pauses: records kept and retried on the same schedule, never dead-lettered for it |

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use tokio::time::Instant;

use super::HttpSettings;
use crate::httpx::{describe, retry_after};
use crate::journal::StoredRecord;
use crate::retry::{Backoff, RetryPolicy};
use crate::sink::Sink;
use crate::sink::dead_letter::{DeadLetters, Reason};
use crate::stats::Stats;

/// Bytes of a response body kept with a dead letter.
const EXCERPT_BYTES: usize = 512;

/// Delivers records to one endpoint, in order, one request at a time.
pub struct HttpSink {
    client: reqwest::Client,
    url: reqwest::Url,
    method: Method,
    headers: HeaderMap,
    settings: HttpSettings,
    dead: DeadLetters,
    name: String,
    stats: Arc<Stats>,
    /// Seqs dead-lettered by the current write.
    dead_lettered: Vec<u64>,
    /// The batch whose requests keep failing, while they do.
    failing: Option<Failing>,
}

/// A batch that failed and is being retried.
struct Failing {
    /// Its first record.
    first_seq: u64,
    /// When its first attempt started: `give_up_after` counts from here.
    since: Instant,
    /// Attempts so far.
    attempts: u32,
    /// The server's `Retry-After` on the last attempt.
    after: Option<Duration>,
}

/// What one request came to.
enum Outcome {
    Delivered,
    /// Worth another try; `after` is the server's `Retry-After`.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// The endpoint refused this record for good.
    Refused {
        status: StatusCode,
        excerpt: String,
    },
    /// The endpoint or its credentials are wrong: every record would fail the same way.
    Paused {
        kind: String,
        reason: String,
    },
}

impl HttpSink {
    /// A client for the endpoint; dead letters go under `state_dir`.
    pub fn new(
        name: &str,
        settings: &HttpSettings,
        state_dir: &Path,
        stats: Arc<Stats>,
    ) -> io::Result<Self> {
        let tls = settings.tls.client_config().map_err(io::Error::other)?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .connect_timeout(settings.timeout)
            .timeout(settings.timeout)
            .user_agent(concat!("mews-relay/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(|err| io::Error::other(err.without_url()))?;
        let url = reqwest::Url::parse(settings.url.as_str())
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
        let method = Method::from_bytes(settings.method.as_bytes())
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in &settings.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
            let mut value = HeaderValue::from_str(value.expose())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "invalid header value"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        Ok(HttpSink {
            client,
            url,
            method,
            headers,
            settings: settings.clone(),
            dead: DeadLetters::new(state_dir, name),
            name: name.to_owned(),
            stats,
            dead_lettered: Vec::new(),
            failing: None,
        })
    }

    /// Sends one request: delivered, dead-lettered, or an error to retry.
    async fn deliver(&mut self, records: &[&StoredRecord]) -> io::Result<()> {
        let body = body(records);
        let key = match records {
            [one] => one.key(),
            [first, .., last] => format!("{}..{}", first.key(), last.key()),
            [] => return Ok(()),
        };
        let started = Instant::now();
        let first_seq = records[0].seq;
        match self.send(&body, &key).await {
            Outcome::Delivered => {
                self.failing = None;
                Ok(())
            }
            Outcome::Refused { status, excerpt } => {
                self.failing = None;
                tracing::warn!(
                    status = status.as_u16(),
                    response = %crate::rejects::sample(&excerpt),
                    records = records.len(),
                    file = %self.dead.path().display(),
                    "the endpoint refused records; they are dead-lettered and the sink goes on"
                );
                let text = format!("HTTP {status}");
                let reason = Reason {
                    text: &text,
                    status: Some(status.as_u16()),
                    response: Some(&excerpt),
                };
                self.dead_letter(records, &reason).await
            }
            Outcome::Paused { kind, reason } => {
                // `give_up_after` is for records that keep failing, not for a broken endpoint.
                self.failing = None;
                Err(crate::sink::Failure {
                    kind,
                    pause: true,
                    message: reason,
                }
                .into_io())
            }
            Outcome::Retry { reason, after } => {
                let failing = match &mut self.failing {
                    Some(failing) if failing.first_seq == first_seq => failing,
                    _ => self.failing.insert(Failing {
                        first_seq,
                        since: started,
                        attempts: 0,
                        after: None,
                    }),
                };
                failing.attempts += 1;
                failing.after = after;
                if failing.since.elapsed() < self.settings.give_up_after {
                    return Err(crate::sink::Failure {
                        kind: reason.split(':').next().unwrap_or_default().to_owned(),
                        pause: false,
                        message: reason,
                    }
                    .into_io());
                }
                let attempts = failing.attempts;
                self.failing = None;
                tracing::error!(
                    error = %reason,
                    records = records.len(),
                    give_up_after = ?self.settings.give_up_after,
                    file = %self.dead.path().display(),
                    "still failing after give_up_after: records dead-lettered"
                );
                let text = format!("gave up after {attempts} attempts: {reason}");
                let reason = Reason {
                    text: &text,
                    status: None,
                    response: None,
                };
                self.dead_letter(records, &reason).await
            }
        }
    }

    async fn dead_letter(
        &mut self,
        records: &[&StoredRecord],
        reason: &Reason<'_>,
    ) -> io::Result<()> {
        self.dead.write(records, reason).await?;
        self.dead_lettered.extend(records.iter().map(|r| r.seq));
        let n = records.len() as u64;
        self.stats.sink(&self.name, |s| s.dead_lettered += n);
        Ok(())
    }

    async fn send(&self, body: &[u8], key: &str) -> Outcome {
        let request = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone())
            .header("Idempotency-Key", key)
            .body(body.to_vec());
        let response = match request.send().await {
            Ok(response) => response,
            // Without the URL: it may hold a token in its query.
            Err(err) => return transport_failure(&err),
        };
        let status = response.status();
        if status.is_success() {
            return Outcome::Delivered;
        }
        let after = match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                retry_after(response.headers())
            }
            _ => None,
        };
        let excerpt = excerpt(response).await;
        match answer_kind(status, &self.settings.dead_letter_status) {
            Answer::Refused => Outcome::Refused { status, excerpt },
            Answer::Passing => Outcome::Retry {
                reason: format!("HTTP {status}"),
                after,
            },
            Answer::Broken(fix) => {
                // The body stays out of the reason, which reaches `/readyz` and `status`: a
                // receiver may echo the credential it refused. Debug logs show it.
                tracing::debug!(
                    status = status.as_u16(),
                    response = %crate::rejects::sample(&excerpt),
                    "the endpoint's answer"
                );
                Outcome::Paused {
                    kind: format!("HTTP {}", status.as_u16()),
                    reason: format!("the endpoint answered HTTP {status}: {fix}"),
                }
            }
        }
    }
}

/// What a non-2xx answer says about the record or the endpoint.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// The record is refused for what it is: dead-letter it.
    Refused,
    /// A passing failure: retry.
    Passing,
    /// The endpoint or its credentials are wrong (the fix): pause.
    Broken(&'static str),
}

/// How an answer is taken: `dead_letter_status` first, then 408, 429 and 5xx as passing, any
/// other status as a broken endpoint.
fn answer_kind(status: StatusCode, dead_letter: &[u16]) -> Answer {
    let code = status.as_u16();
    if dead_letter.contains(&code) {
        return Answer::Refused;
    }
    match code {
        408 | 429 | 500..=599 => Answer::Passing,
        401 | 407 => Answer::Broken(
            "the credentials are refused; check this sink's headers (e.g. Authorization) against the receiver's key",
        ),
        403 => Answer::Broken(
            "access is refused; check this sink's credentials and the receiver's permissions",
        ),
        404 | 405 | 421 => Answer::Broken("check this sink's url and method"),
        _ => Answer::Broken(
            "the endpoint refuses every record this way; fix it, or list the status in this sink's dead_letter_status to dead-letter such records",
        ),
    }
}

/// A request that got no answer: a TLS failure (certificates, client authentication) pauses
/// the sink; anything else (refused, reset, timed out) is a passing failure.
fn transport_failure(err: &reqwest::Error) -> Outcome {
    let reason = describe(err);
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let tls = cause.downcast_ref::<rustls::Error>().is_some()
            || cause
                .downcast_ref::<io::Error>()
                .and_then(|e| e.get_ref())
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
        if tls {
            return Outcome::Paused {
                kind: "TLS".into(),
                reason: format!(
                    "{reason}; check this sink's ca_file, client_cert and client_key and the endpoint's certificate"
                ),
            };
        }
        source = cause.source();
    }
    Outcome::Retry {
        reason,
        after: None,
    }
}

/// One record as the body, or a JSON array of several.
fn body(records: &[&StoredRecord]) -> Vec<u8> {
    if let [one] = records {
        return one.json.to_vec();
    }
    let mut out = Vec::with_capacity(records.iter().map(|r| r.json.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&record.json);
    }
    out.push(b']');
    out
}

/// The first bytes of the body, as text.
async fn excerpt(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    bytes.truncate(EXCERPT_BYTES);
    String::from_utf8_lossy(&bytes).into_owned()
}

impl Sink for HttpSink {
    fn batch_limit(&self) -> usize {
        self.settings.batch_max
    }

    fn take_dead_lettered(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.dead_lettered)
    }

    fn retry_policy(&self) -> RetryPolicy {
        self.settings.retry
    }

    /// The server's `Retry-After`, else the schedule's next step; never past `give_up_after`.
    fn retry_delay(&mut self, backoff: &mut Backoff) -> Duration {
        let Some(failing) = &self.failing else {
            return backoff.next_delay();
        };
        let left = self
            .settings
            .give_up_after
            .saturating_sub(failing.since.elapsed());
        failing
            .after
            .unwrap_or_else(|| backoff.next_delay())
            .min(left)
    }

    async fn write(&mut self, records: &[&StoredRecord]) -> io::Result<()> {
        self.dead_lettered.clear();
        for chunk in records.chunks(self.settings.batch_max) {
            self.deliver(chunk).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_dead_letter_the_record_retry_or_pause_the_sink() {
        let default = super::super::config::defaults::HTTP_DEAD_LETTER_STATUS;
        let kind = |code: u16| answer_kind(StatusCode::from_u16(code).unwrap(), &default);
        for code in [400, 413, 415, 422] {
            assert_eq!(kind(code), Answer::Refused, "{code}");
        }
        for code in [408, 429, 500, 502, 503, 504] {
            assert_eq!(kind(code), Answer::Passing, "{code}");
        }
        for code in [401, 403, 404, 405, 407, 421, 409, 410, 301] {
            assert!(matches!(kind(code), Answer::Broken(_)), "{code}");
        }
        let own = [409, 503];
        assert_eq!(
            answer_kind(StatusCode::CONFLICT, &own),
            Answer::Refused,
            "dead_letter_status decides first"
        );
        assert_eq!(
            answer_kind(StatusCode::SERVICE_UNAVAILABLE, &own),
            Answer::Refused
        );
        assert!(matches!(
            answer_kind(StatusCode::BAD_REQUEST, &own),
            Answer::Broken(_)
        ));
    }

    #[test]
    fn bodies_are_one_record_or_an_array() {
        let record = |seq: u64| StoredRecord {
            seq,
            property: "p".into(),
            kind: None,
            journal_id: 0,
            replay_key: None,
            only_sink: None,
            json: format!(r#"{{"seq":{seq}}}"#).into_bytes().into(),
        };
        let (a, b) = (record(1), record(2));
        assert_eq!(body(&[&a]), br#"{"seq":1}"#);
        assert_eq!(body(&[&a, &b]), br#"[{"seq":1},{"seq":2}]"#);
    }
}

//! The HTTP sink: POSTs records to an endpoint. A failed request is an error the drive loop
//! retries (after the server's `Retry-After`, else on the sink's `retry_min`..`retry_max`
//! schedule); a non-retryable answer, or a batch still failing after `give_up_after`, is
//! dead-lettered.

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
        let url = reqwest::Url::parse(&settings.url)
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
                self.dead_letter(records, &reason)
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
                    return Err(io::Error::other(reason));
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
                self.dead_letter(records, &reason)
            }
        }
    }

    fn dead_letter(&mut self, records: &[&StoredRecord], reason: &Reason<'_>) -> io::Result<()> {
        self.dead.write(records, reason)?;
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
            Err(err) => {
                return Outcome::Retry {
                    reason: describe(&err),
                    after: None,
                };
            }
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
        if status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error()
        {
            Outcome::Retry {
                reason: format!("HTTP {status}"),
                after,
            }
        } else {
            Outcome::Refused { status, excerpt }
        }
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

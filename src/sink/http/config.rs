//! The keys of `type = "http"`: the endpoint, headers, timeouts, retries, which answers
//! dead-letter a record, batching and TLS.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use serde::{Deserialize, Serialize};

use super::HttpSink;
use crate::config::ConfigError;
use crate::config::shared::{ClientTls, is_cookie_safe, read_secret};
use crate::config::value::{Dur, human, pick, policy_keys};
use crate::retry::RetryPolicy;
use crate::secret::{Secret, SecretUrl};
use crate::sink::registry::{At, BuildEnv, SinkType};

/// Defaults of `type = "http"`.
pub mod defaults {
    use std::time::Duration;

    /// `timeout`
    pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
    /// `retry_min`
    pub const HTTP_RETRY_MIN: Duration = Duration::from_secs(1);
    /// `retry_max`: short, so that delivery resumes within a few seconds of a broken endpoint
    /// answering again (the retried request is the only probe that proves a fix: a receiver's
    /// new API key is invisible to a TCP or HEAD probe); one small request every few seconds
    /// to a broken endpoint is no load worth saving.
    pub const HTTP_RETRY_MAX: Duration = Duration::from_secs(3);
    /// `give_up_after`
    pub const HTTP_GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
    /// `batch_max`: one record per request.
    pub const HTTP_BATCH_MAX: u64 = 1;
    /// `dead_letter_status`: the answers that refuse a record for what it is (bad request,
    /// too large, unsupported media type, unprocessable); any other 4xx means the endpoint or
    /// its credentials are wrong, and the sink pauses instead.
    pub const HTTP_DEAD_LETTER_STATUS: [u16; 4] = [400, 413, 415, 422];
}

/// The table as serde reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkFile {
    url: String,
    method: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    headers_file: Option<PathBuf>,
    timeout: Option<Dur>,
    batch_max: Option<u64>,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    retry_min: Option<Dur>,
    retry_max: Option<Dur>,
    give_up_after: Option<Dur>,
    dead_letter_status: Option<Vec<u16>>,
}

/// `type = "http"`
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpSettings {
    /// The endpoint (`check` shows it without user info and query, which may hold secrets).
    pub url: SecretUrl,
    /// `POST`, `PUT` or `PATCH`.
    pub method: String,
    /// Extra request headers; values are secrets (they often hold bearer tokens).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Secret>,
    /// Limit for one request, connect to last byte.
    #[serde(with = "human")]
    pub timeout: Duration,
    /// 1: the body is one record; more: a JSON array of up to this many.
    pub batch_max: usize,
    /// Retry delays: `retry_min`, the first, to `retry_max`, the largest.
    #[serde(flatten, serialize_with = "retry_keys")]
    pub retry: RetryPolicy,
    /// A record still failing (5xx, 408, 429, no answer) after this long is dead-lettered;
    /// the clock does not run while the sink is paused.
    #[serde(with = "human")]
    pub give_up_after: Duration,
    /// Answers that dead-letter the record at once (it is the record, not the endpoint).
    pub dead_letter_status: Vec<u16>,
    /// Extra CA and client certificate.
    #[serde(flatten)]
    pub tls: ClientTls,
}

impl SinkType for HttpSettings {
    type File = HttpSinkFile;
    type Sink = HttpSink;

    fn validate(file: HttpSinkFile, at: &At<'_>) -> Result<Self, ConfigError> {
        url(at, &file.url)?;
        let method = file
            .method
            .unwrap_or_else(|| "POST".into())
            .to_ascii_uppercase();
        if !matches!(method.as_str(), "POST" | "PUT" | "PATCH") {
            return Err(at.err(
                "method",
                format!(r#""{method}" cannot carry a body; use "POST", "PUT" or "PATCH""#),
            ));
        }
        let headers = headers(at, file.headers, file.headers_file.as_deref())?;
        let timeout = pick(file.timeout, defaults::HTTP_TIMEOUT);
        let retry_min = pick(file.retry_min, defaults::HTTP_RETRY_MIN);
        let retry_max = pick(file.retry_max, defaults::HTTP_RETRY_MAX);
        let give_up_after = pick(file.give_up_after, defaults::HTTP_GIVE_UP_AFTER);
        for (key, value) in [
            ("timeout", timeout),
            ("retry_min", retry_min),
            ("retry_max", retry_max),
            ("give_up_after", give_up_after),
        ] {
            if value.is_zero() {
                return Err(at.err(key, "must be longer than zero"));
            }
        }
        let retry = RetryPolicy::try_new(retry_min, retry_max).map_err(|_| {
            at.err(
                "retry_min",
                "is larger than retry_max; make retry_min <= retry_max",
            )
        })?;
        let batch_max = file.batch_max.unwrap_or(defaults::HTTP_BATCH_MAX);
        if !(1..=10_000).contains(&batch_max) {
            return Err(at.err(
                "batch_max",
                "must be between 1 (one record per request) and 10000",
            ));
        }
        let dead_letter_status = file
            .dead_letter_status
            .unwrap_or_else(|| defaults::HTTP_DEAD_LETTER_STATUS.to_vec());
        if let Some(bad) = dead_letter_status
            .iter()
            .position(|status| !(400..=599).contains(status))
        {
            return Err(at.err(
                &format!("dead_letter_status[{bad}]"),
                format!(
                    "{} is not an error status; list 4xx or 5xx answers that refuse a record for what it is, like [400, 413, 415, 422]",
                    dead_letter_status[bad]
                ),
            ));
        }
        let tls = ClientTls::read(
            at.ctx,
            at.prefix,
            file.ca_file,
            file.client_cert,
            file.client_key,
        )?;
        Ok(HttpSettings {
            url: SecretUrl::new(file.url),
            method,
            headers,
            timeout,
            batch_max: batch_max as usize,
            retry,
            give_up_after,
            dead_letter_status,
            tls,
        })
    }

    /// `http:<host>/<path>`, without user info and query, which may hold secrets.
    fn default_name(&self) -> String {
        let Ok(uri) = self.url.as_str().parse::<Uri>() else {
            return "http".into();
        };
        format!(
            "http:{}{}",
            uri.authority()
                .map_or("", |a| a.as_str().rsplit('@').next().unwrap_or_default()),
            uri.path()
        )
    }

    async fn build(&self, env: &BuildEnv<'_>) -> io::Result<HttpSink> {
        HttpSink::new(
            env.name,
            self,
            env.state_dir,
            std::sync::Arc::clone(env.stats),
        )
    }
}

/// `retry` as the file writes it: `retry_min` and `retry_max`.
fn retry_keys<S: serde::Serializer>(policy: &RetryPolicy, s: S) -> Result<S::Ok, S::Error> {
    policy_keys(policy, ("retry_min", "retry_max"), s)
}

/// `url`: an http:// or https:// URL with a host.
fn url(at: &At<'_>, url: &str) -> Result<Uri, ConfigError> {
    let uri: Uri = url.parse().map_err(|err| {
        at.err(
            "url",
            format!(r#"is not a URL ({err}); write it like "https://keys.example.com/mews""#),
        )
    })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none_or(str::is_empty) {
        return Err(at.err(
            "url",
            r#"must be an http:// or https:// URL with a host, like "https://keys.example.com/mews""#,
        ));
    }
    Ok(uri)
}

/// `headers` and the lines of `headers_file` ("Name: value"), values kept as secrets.
fn headers(
    at: &At<'_>,
    inline: Option<BTreeMap<String, String>>,
    file: Option<&std::path::Path>,
) -> Result<BTreeMap<String, Secret>, ConfigError> {
    let mut headers: BTreeMap<String, Secret> = inline
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| (name, Secret::new(value)))
        .collect();
    if let Some(path) = file {
        let text = read_secret(at.ctx, &at.key("headers_file"), path)?;
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        {
            let Some((name, value)) = line.split_once(':') else {
                return Err(at.err(
                    "headers_file",
                    format!(
                        "line {} of {} is not \"Name: value\"; write one header per line",
                        n + 1,
                        path.display()
                    ),
                ));
            };
            headers.insert(name.trim().to_owned(), Secret::new(value.trim()));
        }
    }
    for (name, value) in &headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(at.err("headers", format!(r#""{name}" is not a valid header name"#)));
        }
        if value
            .expose()
            .chars()
            .any(|c| !(is_cookie_safe(c) || c == ' ' || c == ',' || c == ';' || c == '"'))
        {
            return Err(at.err(
                "headers",
                format!(r#"the value of "{name}" holds characters a header cannot carry"#),
            ));
        }
        if matches!(
            name.to_ascii_lowercase().as_str(),
            "idempotency-key" | "content-type" | "content-length" | "host"
        ) {
            return Err(at.err(
                "headers",
                format!(r#""{name}" is set by mews-relay; remove it"#),
            ));
        }
    }
    Ok(headers)
}

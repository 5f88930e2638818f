//! `[[sink]]` tables: `type` picks the struct, then names, filters and per-type settings.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use serde::{Deserialize, Serialize};

use super::shared::{ClientTls, ConfigError, Ctx, check_name, is_cookie_safe, read_secret};
use super::value::{Dur, human, pick, redacted_url};
use crate::secret::Secret;

/// Defaults of `[[sink]]`, by type.
pub mod defaults {
    use std::time::Duration;

    /// `[[sink]] fsync_interval` for file sinks
    pub const FSYNC_INTERVAL: Duration = Duration::from_secs(1);
    /// `[[sink]] timeout` for HTTP sinks
    pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
    /// `[[sink]] retry_min` for HTTP sinks
    pub const HTTP_RETRY_MIN: Duration = Duration::from_secs(1);
    /// `[[sink]] retry_max` for HTTP sinks
    pub const HTTP_RETRY_MAX: Duration = Duration::from_secs(60);
    /// `[[sink]] give_up_after` for HTTP sinks
    pub const HTTP_GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
    /// `[[sink]] subject` for NATS sinks
    pub const NATS_SUBJECT: &str = "mews.{property}.{type}";
    /// `[[sink]] ack_timeout` for NATS sinks
    pub const NATS_ACK_TIMEOUT: Duration = Duration::from_secs(5);
    /// `[[sink]] max_in_flight` for NATS sinks
    pub const NATS_MAX_IN_FLIGHT: usize = 64;
    /// `[[sink]] max_age` for a stream the NATS sink creates
    pub const NATS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
    /// `[[sink]] duplicate_window` for a stream the NATS sink creates
    pub const NATS_DUPLICATE_WINDOW: Duration = Duration::from_secs(24 * 3600);
}

/// One `[[sink]]`.
#[derive(Debug, Clone, Serialize)]
pub struct SinkSettings {
    /// Unique name; it keys the sink's cursor in the journal.
    pub name: String,
    /// What kind of sink, with its own settings.
    #[serde(flatten)]
    pub kind: SinkKind,
    /// Only these event types (`Type`); empty means all.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// Only these properties; empty means all.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<String>,
    /// JSON paths in the record (`command.Data.Email`) replaced by `"***"` for this sink.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
}

/// The sink types.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkKind {
    /// One JSON line per record on standard output.
    Stdout,
    /// JSON lines appended to a file.
    File {
        /// The file; parent directories are created.
        path: PathBuf,
        /// When written lines are forced to disk.
        fsync: Fsync,
        /// With `fsync = "interval"`: the longest a written line waits for fsync.
        #[serde(with = "human")]
        fsync_interval: Duration,
    },
    /// Records POSTed to an HTTP endpoint, retried until delivered or dead-lettered.
    Http(Box<HttpSettings>),
    /// Records published into a NATS JetStream stream.
    Nats(Box<NatsSettings>),
}

/// How a NATS sink authenticates.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NatsAuth {
    /// No credentials.
    None,
    /// `user` + `password`.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: Secret,
    },
    /// `token`.
    Token(Secret),
    /// An nkey seed (read from `nkey_seed_file`).
    Nkey(Secret),
    /// A `.creds` file (JWT + seed).
    CredsFile(PathBuf),
}

/// `[[sink]] type = "nats"`
#[derive(Debug, Clone, Serialize)]
pub struct NatsSettings {
    /// `nats://` or `tls://` URLs.
    pub servers: Vec<String>,
    /// Subject template: `{property}` and `{type}` are replaced.
    pub subject: String,
    /// The JetStream stream that covers the subjects.
    pub stream: String,
    /// Create the stream (subjects: the template's fixed leading tokens, then `>`) when missing.
    pub create_stream: bool,
    /// Retention of a created stream.
    #[serde(with = "human")]
    pub max_age: Duration,
    /// Duplicate window of a created stream: must cover the longest outage.
    #[serde(with = "human")]
    pub duplicate_window: Duration,
    /// Credentials.
    pub auth: NatsAuth,
    /// Extra CA and client certificate.
    #[serde(flatten)]
    pub tls: ClientTls,
    /// How long a publish may wait for its acknowledgement.
    #[serde(with = "human")]
    pub ack_timeout: Duration,
    /// Publishes awaiting acknowledgement at once.
    pub max_in_flight: usize,
}

/// `[[sink]] type = "http"`
#[derive(Debug, Clone, Serialize)]
pub struct HttpSettings {
    /// The endpoint (`check` shows it without user info and query, which may hold secrets).
    #[serde(serialize_with = "redacted_url")]
    pub url: String,
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
    /// First retry delay.
    #[serde(with = "human")]
    pub retry_min: Duration,
    /// Largest retry delay.
    #[serde(with = "human")]
    pub retry_max: Duration,
    /// A record still failing after this long is dead-lettered.
    #[serde(with = "human")]
    pub give_up_after: Duration,
    /// Extra CA and client certificate.
    #[serde(flatten)]
    pub tls: ClientTls,
}

/// When a file sink calls fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// After every batch, before the cursor moves.
    Always,
    /// At most `fsync_interval` after a write.
    Interval,
    /// Never; the OS decides.
    Never,
}

/// `[[sink]] type = "stdout"`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StdoutSinkFile {
    name: Option<String>,
    events: Option<Vec<String>>,
    properties: Option<Vec<String>>,
}

/// `[[sink]] type = "file"`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSinkFile {
    name: Option<String>,
    path: PathBuf,
    fsync: Option<FsyncFile>,
    fsync_interval: Option<Dur>,
    events: Option<Vec<String>>,
    properties: Option<Vec<String>>,
}

/// `[[sink]] type = "http"`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSinkFile {
    name: Option<String>,
    url: String,
    method: Option<String>,
    headers: Option<std::collections::BTreeMap<String, String>>,
    headers_file: Option<PathBuf>,
    timeout: Option<Dur>,
    batch_max: Option<u64>,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    retry_min: Option<Dur>,
    retry_max: Option<Dur>,
    give_up_after: Option<Dur>,
    events: Option<Vec<String>>,
    properties: Option<Vec<String>>,
}

/// `[[sink]] type = "nats"`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NatsSinkFile {
    name: Option<String>,
    servers: Vec<String>,
    subject: Option<String>,
    stream: String,
    create_stream: Option<bool>,
    max_age: Option<Dur>,
    duplicate_window: Option<Dur>,
    user: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    nkey_seed_file: Option<PathBuf>,
    creds_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    ack_timeout: Option<Dur>,
    max_in_flight: Option<u64>,
    events: Option<Vec<String>>,
    properties: Option<Vec<String>>,
}

/// `fsync = "always" | "interval" | "never"`
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FsyncFile {
    Always,
    Interval,
    Never,
}

/// Validates the `[[sink]]` tables; `properties` are the configured property names.
pub(crate) fn validate(
    ctx: &Ctx<'_>,
    raw: Vec<toml::Table>,
    properties: &HashSet<&str>,
) -> Result<Vec<SinkSettings>, ConfigError> {
    if raw.is_empty() {
        return Err(ctx.err(
            "sink",
            r#"no [[sink]] is configured; add one, e.g. [[sink]] type = "stdout""#,
        ));
    }
    let mut out: Vec<SinkSettings> = Vec::with_capacity(raw.len());
    for (i, mut table) in raw.into_iter().enumerate() {
        let prefix = format!("sink[{i}]");
        let kind = match table.remove("type") {
            Some(toml::Value::String(kind)) => kind,
            Some(_) => {
                return Err(ctx.err(
                    format!("{prefix}.type"),
                    r#"must be a string: "stdout", "file", "http" or "nats""#,
                ));
            }
            None => {
                return Err(ctx.err(
                    format!("{prefix}.type"),
                    r#"missing; set type = "stdout", "file", "http" or "nats""#,
                ));
            }
        };
        let redact = redact_paths(ctx, &prefix, table.remove("redact"))?;
        let value = toml::Value::Table(table);
        let (name, kind, events, props) = match kind.as_str() {
            "stdout" => {
                let s: StdoutSinkFile = ctx.deserialize(value, &prefix)?;
                if let Some(name) = &s.name {
                    check_name(ctx, &format!("{prefix}.name"), name)?;
                }
                let name = s.name.unwrap_or_else(|| "stdout".into());
                (name, SinkKind::Stdout, s.events, s.properties)
            }
            "file" => {
                let s: FileSinkFile = ctx.deserialize(value, &prefix)?;
                file_sink(ctx, &prefix, s)?
            }
            "http" => {
                let s: HttpSinkFile = ctx.deserialize(value, &prefix)?;
                http_sink(ctx, &prefix, s)?
            }
            "nats" => {
                let s: NatsSinkFile = ctx.deserialize(value, &prefix)?;
                nats_sink(ctx, &prefix, s)?
            }
            other => {
                return Err(ctx.err(
                    format!("{prefix}.type"),
                    format!(
                        r#"unknown sink type "{other}"; use "stdout", "file", "http" or "nats""#
                    ),
                ));
            }
        };
        if out.iter().any(|s| s.name == name) {
            return Err(ctx.err(
                format!("{prefix}.name"),
                format!(r#"two sinks are named "{name}"; set name = "…" to tell them apart (it keys the sink's position in the journal)"#),
            ));
        }
        let events = events.unwrap_or_default();
        if let Some(bad) = events.iter().position(String::is_empty) {
            return Err(ctx.err(
                format!("{prefix}.events[{bad}]"),
                "is empty; write an event Type like \"DeviceCommand\"",
            ));
        }
        let props = props.unwrap_or_default();
        if let Some(unknown) = props.iter().find(|p| !properties.contains(p.as_str())) {
            return Err(ctx.err(
                format!("{prefix}.properties"),
                format!(r#"names "{unknown}", which is no [[property]]; use one of the configured property names"#),
            ));
        }
        out.push(SinkSettings {
            name,
            kind,
            events,
            properties: props,
            redact,
        });
    }
    Ok(out)
}

/// `redact = ["command.Data.Email", …]`: dot-separated paths from the record's top level.
fn redact_paths(
    ctx: &Ctx<'_>,
    prefix: &str,
    value: Option<toml::Value>,
) -> Result<Vec<String>, ConfigError> {
    let key = format!("{prefix}.redact");
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let toml::Value::Array(items) = value else {
        return Err(ctx.err(
            key,
            r#"must be a list of JSON paths, like ["command.Data.Email", "command.Data.Telephone"]"#,
        ));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            toml::Value::String(path)
                if !path.is_empty() && path.split('.').all(|part| !part.is_empty()) =>
            {
                Ok(path)
            }
            _ => Err(ctx.err(
                format!("{key}[{i}]"),
                r#"must be a dot-separated path into the record, like "command.Data.Email""#,
            )),
        })
        .collect()
}

type SinkParts = (String, SinkKind, Option<Vec<String>>, Option<Vec<String>>);

fn file_sink(ctx: &Ctx<'_>, prefix: &str, s: FileSinkFile) -> Result<SinkParts, ConfigError> {
    if s.path.as_os_str().is_empty() {
        return Err(ctx.err(
            format!("{prefix}.path"),
            "is empty; set the file to append to",
        ));
    }
    if let Some(name) = &s.name {
        check_name(ctx, &format!("{prefix}.name"), name)?;
    }
    let fsync = match s.fsync.unwrap_or(FsyncFile::Interval) {
        FsyncFile::Always => Fsync::Always,
        FsyncFile::Interval => Fsync::Interval,
        FsyncFile::Never => Fsync::Never,
    };
    let fsync_interval = s.fsync_interval.map_or(defaults::FSYNC_INTERVAL, |d| d.0);
    if fsync_interval.is_zero() {
        return Err(ctx.err(
            format!("{prefix}.fsync_interval"),
            "must be longer than zero; for a sync after every write use fsync = \"always\"",
        ));
    }
    let name = s
        .name
        .unwrap_or_else(|| format!("file:{}", s.path.display()));
    Ok((
        name,
        SinkKind::File {
            path: s.path,
            fsync,
            fsync_interval,
        },
        s.events,
        s.properties,
    ))
}

fn http_sink(ctx: &Ctx<'_>, prefix: &str, s: HttpSinkFile) -> Result<SinkParts, ConfigError> {
    let key = |k: &str| format!("{prefix}.{k}");
    if let Some(name) = &s.name {
        check_name(ctx, &key("name"), name)?;
    }
    let uri: Uri = s.url.parse().map_err(|err| {
        ctx.err(
            key("url"),
            format!(r#"is not a URL ({err}); write it like "https://keys.example.com/mews""#),
        )
    })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none_or(str::is_empty) {
        return Err(ctx.err(key("url"), r#"must be an http:// or https:// URL with a host, like "https://keys.example.com/mews""#));
    }
    let method = s
        .method
        .unwrap_or_else(|| "POST".into())
        .to_ascii_uppercase();
    if !matches!(method.as_str(), "POST" | "PUT" | "PATCH") {
        return Err(ctx.err(
            key("method"),
            format!(r#""{method}" cannot carry a body; use "POST", "PUT" or "PATCH""#),
        ));
    }
    let mut headers = BTreeMap::new();
    for (name, value) in s.headers.unwrap_or_default() {
        headers.insert(name, Secret::new(value));
    }
    if let Some(path) = &s.headers_file {
        let text = read_secret(ctx, &key("headers_file"), path)?;
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        {
            let Some((name, value)) = line.split_once(':') else {
                return Err(ctx.err(
                    key("headers_file"),
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
            return Err(ctx.err(
                key("headers"),
                format!(r#""{name}" is not a valid header name"#),
            ));
        }
        if value
            .expose()
            .chars()
            .any(|c| !(is_cookie_safe(c) || c == ' ' || c == ',' || c == ';' || c == '"'))
        {
            return Err(ctx.err(
                key("headers"),
                format!(r#"the value of "{name}" holds characters a header cannot carry"#),
            ));
        }
        if matches!(
            name.to_ascii_lowercase().as_str(),
            "idempotency-key" | "content-type" | "content-length" | "host"
        ) {
            return Err(ctx.err(
                key("headers"),
                format!(r#""{name}" is set by mews-relay; remove it"#),
            ));
        }
    }
    let timeout = pick(s.timeout, defaults::HTTP_TIMEOUT);
    let retry_min = pick(s.retry_min, defaults::HTTP_RETRY_MIN);
    let retry_max = pick(s.retry_max, defaults::HTTP_RETRY_MAX);
    let give_up_after = pick(s.give_up_after, defaults::HTTP_GIVE_UP_AFTER);
    for (k, v) in [
        ("timeout", timeout),
        ("retry_min", retry_min),
        ("retry_max", retry_max),
        ("give_up_after", give_up_after),
    ] {
        if v.is_zero() {
            return Err(ctx.err(key(k), "must be longer than zero"));
        }
    }
    if retry_min > retry_max {
        return Err(ctx.err(
            key("retry_min"),
            "is larger than retry_max; make retry_min <= retry_max",
        ));
    }
    let batch_max = s.batch_max.unwrap_or(1);
    if !(1..=10_000).contains(&batch_max) {
        return Err(ctx.err(
            key("batch_max"),
            "must be between 1 (one record per request) and 10000",
        ));
    }
    let tls = ClientTls::read(
        ctx,
        prefix,
        s.ca_file.clone(),
        s.client_cert.clone(),
        s.client_key.clone(),
    )?;
    // The default name leaves out user info and query, which may hold secrets.
    let name = s.name.unwrap_or_else(|| {
        format!(
            "http:{}{}",
            uri.authority()
                .map_or("", |a| a.as_str().rsplit('@').next().unwrap_or_default()),
            uri.path()
        )
    });
    Ok((
        name,
        SinkKind::Http(Box::new(HttpSettings {
            url: s.url,
            method,
            headers,
            timeout,
            batch_max: batch_max as usize,
            retry_min,
            retry_max,
            give_up_after,
            tls,
        })),
        s.events,
        s.properties,
    ))
}

fn nats_sink(ctx: &Ctx<'_>, prefix: &str, s: NatsSinkFile) -> Result<SinkParts, ConfigError> {
    let key = |k: &str| format!("{prefix}.{k}");
    if let Some(name) = &s.name {
        check_name(ctx, &key("name"), name)?;
    }
    if s.servers.is_empty() {
        return Err(ctx.err(
            key("servers"),
            r#"is empty; list at least one, like ["nats://127.0.0.1:4222"]"#,
        ));
    }
    for server in &s.servers {
        let ok = ["nats://", "tls://"].iter().any(|scheme| {
            server
                .strip_prefix(scheme)
                .is_some_and(|rest| !rest.is_empty())
        });
        if !ok {
            return Err(ctx.err(
                key("servers"),
                format!(r#""{server}" is not a nats:// or tls:// URL"#),
            ));
        }
    }
    let auth = auth(ctx, prefix, &s)?;
    let subject = s
        .subject
        .unwrap_or_else(|| defaults::NATS_SUBJECT.to_owned());
    let sample = subject.replace("{property}", "p").replace("{type}", "t");
    let token_ok = |t: &str| !t.is_empty() && !t.contains(['*', '>', ' ', '\t', '{', '}']);
    if !sample.split('.').all(token_ok) {
        return Err(ctx.err(
            key("subject"),
            format!(r#""{subject}" is not a subject template: dot-separated tokens, no wildcards, placeholders {{property}} and {{type}}"#),
        ));
    }
    if s.create_stream == Some(true) && subject.starts_with('{') {
        return Err(ctx.err(
            key("create_stream"),
            "cannot cover a subject that starts with a placeholder; start it with a fixed token (\"mews.{property}.{type}\") or create the stream yourself",
        ));
    }
    if s.stream.is_empty() || s.stream.contains(['.', '*', '>', ' ', '/', '\\']) {
        return Err(ctx.err(
            key("stream"),
            format!(
                r#""{}" is not a stream name; use letters, digits, '-' or '_'"#,
                s.stream
            ),
        ));
    }
    let ack_timeout = pick(s.ack_timeout, defaults::NATS_ACK_TIMEOUT);
    if ack_timeout.is_zero() {
        return Err(ctx.err(key("ack_timeout"), "must be longer than zero"));
    }
    let max_in_flight = s
        .max_in_flight
        .map_or(defaults::NATS_MAX_IN_FLIGHT as u64, |n| n);
    if !(1..=4096).contains(&max_in_flight) {
        return Err(ctx.err(key("max_in_flight"), "must be between 1 and 4096"));
    }
    let tls = ClientTls::read(
        ctx,
        prefix,
        s.ca_file.clone(),
        s.client_cert.clone(),
        s.client_key.clone(),
    )?;
    let name = s.name.unwrap_or_else(|| format!("nats:{}", s.stream));
    Ok((
        name,
        SinkKind::Nats(Box::new(NatsSettings {
            servers: s.servers,
            subject,
            stream: s.stream,
            create_stream: s.create_stream.unwrap_or(false),
            max_age: pick(s.max_age, defaults::NATS_MAX_AGE),
            duplicate_window: pick(s.duplicate_window, defaults::NATS_DUPLICATE_WINDOW),
            auth,
            tls,
            ack_timeout,
            max_in_flight: max_in_flight as usize,
        })),
        s.events,
        s.properties,
    ))
}

/// One way to authenticate, secrets read from their files.
fn auth(ctx: &Ctx<'_>, prefix: &str, s: &NatsSinkFile) -> Result<NatsAuth, ConfigError> {
    let key = |k: &str| format!("{prefix}.{k}");
    let secret = |inline: &Option<String>,
                  file: &Option<std::path::PathBuf>,
                  name: &str|
     -> Result<Option<Secret>, ConfigError> {
        match (inline, file) {
            (Some(_), Some(_)) => Err(ctx.err(
                key(name),
                format!("is set twice; keep either {name} or {name}_file"),
            )),
            (Some(value), None) => Ok(Some(Secret::new(value.clone()))),
            (None, Some(path)) => Ok(Some(Secret::new(read_secret(
                ctx,
                &key(&format!("{name}_file")),
                path,
            )?))),
            (None, None) => Ok(None),
        }
    };
    let password = secret(&s.password, &s.password_file, "password")?;
    let token = secret(&s.token, &s.token_file, "token")?;
    let nkey = match &s.nkey_seed_file {
        Some(path) => Some(Secret::new(read_secret(ctx, &key("nkey_seed_file"), path)?)),
        None => None,
    };
    let chosen = [
        s.user.is_some() || password.is_some(),
        token.is_some(),
        nkey.is_some(),
        s.creds_file.is_some(),
    ]
    .iter()
    .filter(|set| **set)
    .count();
    if chosen > 1 {
        return Err(ctx.err(key("user"), "more than one way to authenticate; use one of user + password, token, nkey_seed_file or creds_file"));
    }
    Ok(match (&s.user, password, token, nkey, &s.creds_file) {
        (Some(user), Some(password), ..) => NatsAuth::UserPassword {
            user: user.clone(),
            password,
        },
        (Some(_), None, ..) => {
            return Err(ctx.err(
                key("password"),
                "missing; user needs password or password_file",
            ));
        }
        (None, Some(_), ..) => return Err(ctx.err(key("user"), "missing; password needs a user")),
        (_, _, Some(token), ..) => NatsAuth::Token(token),
        (_, _, _, Some(seed), _) => NatsAuth::Nkey(seed),
        (_, _, _, _, Some(path)) => {
            if !path.is_file() {
                return Err(ctx.err(
                    key("creds_file"),
                    format!("{} is not a readable file", path.display()),
                ));
            }
            NatsAuth::CredsFile(path.clone())
        }
        _ => NatsAuth::None,
    })
}

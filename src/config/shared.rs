//! From TOML text to [`Settings`]: strict parsing, defaults, checks, secrets resolved.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::file::ConfigFile;
use super::{ConfigError, Connection, Property, Settings, Shutdown, State, defaults};
use crate::secret::Secret;

/// systemd's `$CREDENTIALS_DIRECTORY` (set by `LoadCredential=`), if any.
#[derive(Debug, Clone, Default)]
pub struct CredentialsDir(pub Option<PathBuf>);

impl CredentialsDir {
    /// Reads `$CREDENTIALS_DIRECTORY`.
    pub fn from_env() -> Self {
        Self(std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from))
    }
}

/// Errors for one file.
pub(super) struct Ctx<'a> {
    origin: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    pub(super) fn err(&self, key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.origin.to_owned(),
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// A warning line for `key`, naming the file like an error does.
    pub(super) fn warning(&self, key: &str, advice: impl std::fmt::Display) -> String {
        format!("{}: {key}: {advice}", self.origin.display())
    }

    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    /// Deserializes with the failing key's path in the error.
    pub(super) fn deserialize<'de, T, D>(&self, de: D, prefix: &str) -> Result<T, ConfigError>
    where
        T: DeserializeOwned,
        D: serde::Deserializer<'de, Error = toml::de::Error>,
    {
        serde_path_to_error::deserialize(de).map_err(|err| {
            let mut key = err.path().to_string();
            let inner = err.into_inner();
            let message = inner.message().to_owned();
            if let Some(field) = message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next())
            {
                // The path points at the table; name the key itself.
                key = join(&key, field);
            } else if let Some(field) = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
            {
                key = join(&key, field);
            }
            key = join(prefix, &key);
            if key.is_empty() || key == "." {
                key = "(file)".into();
            }
            if let Some(span) = inner.span() {
                key = format!("{key} (line {})", self.line_of(span.start));
            }
            self.err(key, fix_for(&message))
        })
    }
}

fn join(prefix: &str, key: &str) -> String {
    match (
        prefix.is_empty() || prefix == ".",
        key.is_empty() || key == ".",
    ) {
        (true, _) => key.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) => format!("{prefix}.{key}"),
    }
}

/// Adds the fix to serde's own message where it does not say it.
fn fix_for(message: &str) -> String {
    let message = message.trim();
    if message.starts_with("unknown field") {
        format!("{message}; remove it or fix its spelling")
    } else if message.starts_with("missing field") {
        format!("{message}; add it")
    } else {
        message.to_owned()
    }
}

pub(super) fn parse(
    text: &str,
    origin: &Path,
    credentials: &CredentialsDir,
) -> Result<Settings, ConfigError> {
    let ctx = Ctx { origin, text };
    let de = toml::Deserializer::parse(text).map_err(|err| {
        let key = match err.span() {
            Some(span) => format!("(syntax, line {})", ctx.line_of(span.start)),
            None => "(syntax)".into(),
        };
        ctx.err(
            key,
            format!("{}; fix the TOML syntax", err.message().trim()),
        )
    })?;
    let raw: ConfigFile = ctx.deserialize(de, "")?;

    let mews = super::mews::mews(&ctx, raw.mews, credentials)?;
    let properties = properties(&ctx, raw.properties, credentials)?;
    let connection = connection(&ctx, raw.connection)?;
    let state = State {
        dir: raw
            .state
            .dir
            .unwrap_or_else(|| PathBuf::from(defaults::STATE_DIR)),
        max_bytes: raw
            .state
            .max_bytes
            .map_or(defaults::STATE_MAX_BYTES, |b| b.0),
    };
    if state.max_bytes < 1 << 20 {
        return Err(ctx.err(
            "state.max_bytes",
            "is below 1MiB; give the journal room for an outage, e.g. \"1GiB\"",
        ));
    }
    if state.dir.as_os_str().is_empty() {
        return Err(ctx.err("state.dir", "is empty; set a directory for the journal"));
    }
    let shutdown = Shutdown {
        grace_period: raw
            .shutdown
            .grace_period
            .map_or(defaults::GRACE_PERIOD, |d| d.0),
    };
    let webhooks = match raw.webhooks {
        Some(w) => Some(webhooks(&ctx, w, credentials)?),
        None => None,
    };
    let metrics = match raw.metrics {
        Some(m) => Some(super::Metrics {
            listen: match m.listen {
                Some(addr) => addr,
                None => defaults::METRICS_LISTEN
                    .parse()
                    .map_err(|_| ctx.err("metrics.listen", "bad default"))?,
            },
            ready_max_lag: m.ready_max_lag.map_or(defaults::READY_MAX_LAG, |d| d.0),
        }),
        None => None,
    };
    let listeners = listeners(&ctx, raw.listeners)?;
    let catch_up = super::mews::catch_up(&ctx, raw.catch_up)?;
    let enrich = super::mews::enrich(&ctx, raw.enrich)?;
    let names: HashSet<&str> = properties.iter().map(|p| p.name.as_str()).collect();
    let sinks = super::sinks::validate(&ctx, raw.sinks, &names)?;
    let commands = super::commands::commands(&ctx, raw.commands, &sinks, &mews)?;
    let api = super::commands::api(&ctx, raw.api, &mews, credentials)?;
    let warnings = super::mews::client_warning(&ctx, &mews)
        .into_iter()
        .collect();
    Ok(Settings {
        origin: origin.to_owned(),
        mews,
        properties,
        connection,
        state,
        shutdown,
        webhooks,
        metrics,
        listeners,
        catch_up,
        enrich,
        commands,
        api,
        sinks,
        warnings,
    })
}

fn listeners(
    ctx: &Ctx<'_>,
    raw: super::file::ListenersFile,
) -> Result<super::Listeners, ConfigError> {
    use super::file::pick;
    let l = super::Listeners {
        header_timeout: pick(raw.header_timeout, defaults::HEADER_TIMEOUT),
        body_timeout: pick(raw.body_timeout, defaults::BODY_TIMEOUT),
        idle_timeout: pick(raw.idle_timeout, defaults::IDLE_TIMEOUT),
        max_connections: raw.max_connections.map_or(defaults::MAX_CONNECTIONS, |n| {
            usize::try_from(n).unwrap_or(usize::MAX)
        }),
        max_body_in_flight: raw
            .max_body_in_flight
            .map_or(defaults::MAX_BODY_IN_FLIGHT, |b| b.0),
    };
    for (key, value) in [
        ("header_timeout", l.header_timeout),
        ("body_timeout", l.body_timeout),
        ("idle_timeout", l.idle_timeout),
    ] {
        if value.is_zero() {
            return Err(ctx.err(
                format!("listeners.{key}"),
                "must be longer than zero; e.g. \"10s\"",
            ));
        }
    }
    if l.max_connections == 0 {
        return Err(ctx.err("listeners.max_connections", "must be at least 1; e.g. 256"));
    }
    if l.max_body_in_flight < 1024 {
        return Err(ctx.err(
            "listeners.max_body_in_flight",
            "is below 1KiB; allow a few request bodies at once, e.g. \"32MiB\"",
        ));
    }
    Ok(l)
}

fn webhooks(
    ctx: &Ctx<'_>,
    raw: super::file::WebhooksFile,
    credentials: &CredentialsDir,
) -> Result<super::Webhooks, ConfigError> {
    let listen = match raw.listen {
        Some(addr) => addr,
        None => defaults::WEBHOOKS_LISTEN
            .parse()
            .map_err(|_| ctx.err("webhooks.listen", "bad default"))?,
    };
    let path = raw
        .path
        .unwrap_or_else(|| defaults::WEBHOOKS_PATH.to_owned());
    if !path.starts_with('/') || path.contains('?') {
        return Err(ctx.err(
            "webhooks.path",
            r#"must be a path starting with '/', like "/mews/webhooks""#,
        ));
    }
    let token = secret(
        ctx,
        "webhooks.token",
        raw.token,
        raw.token_file,
        "webhook_token",
        credentials,
    )?;
    if token.expose().len() < 16 {
        return Err(ctx.err("webhooks.token", "is shorter than 16 characters; use a long random string (e.g. `openssl rand -hex 24`) and give the same to Mews support"));
    }
    let max_body = raw.max_body.map_or(defaults::WEBHOOKS_MAX_BODY, |b| b.0);
    if max_body < 1024 {
        return Err(ctx.err(
            "webhooks.max_body",
            "is below 1KiB; Mews sends batches of hundreds of events, use \"1MiB\"",
        ));
    }
    let tls = identity(
        ctx,
        ("webhooks.tls_cert", raw.tls_cert.as_deref()),
        ("webhooks.tls_key", raw.tls_key.as_deref()),
    )?;
    Ok(super::Webhooks {
        listen,
        path,
        token,
        max_body,
        tls_cert: raw.tls_cert,
        tls_key: raw.tls_key,
        tls,
    })
}

fn properties(
    ctx: &Ctx<'_>,
    raw: Vec<super::file::PropertyFile>,
    credentials: &CredentialsDir,
) -> Result<Vec<Property>, ConfigError> {
    if raw.is_empty() {
        return Err(ctx.err(
            "property",
            r#"no [[property]] is configured; add one with name = "…" and access_token = "…""#,
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, p) in raw.into_iter().enumerate() {
        let key = format!("property[{i}].name");
        check_name(ctx, &key, &p.name)?;
        if !seen.insert(p.name.clone()) {
            return Err(ctx.err(
                key,
                format!(
                    r#""{}" is used twice; give each property its own name"#,
                    p.name
                ),
            ));
        }
        let access_token = secret(
            ctx,
            &format!("property[{i}].access_token"),
            p.access_token,
            p.access_token_file,
            &format!("{}.access_token", p.name),
            credentials,
        )?;
        if p.enterprise_id
            .as_deref()
            .is_some_and(|id| id.trim().is_empty())
        {
            return Err(ctx.err(
                format!("property[{i}].enterprise_id"),
                "is empty; write the enterprise's Mews id or leave it out",
            ));
        }
        // One token is one enterprise: two properties with it would hold two WebSockets for
        // it (every event twice) and split one rate limit between them.
        if let Some(twin) = out
            .iter()
            .position(|q: &Property| q.access_token.expose() == access_token.expose())
        {
            let (first, second) = (&out[twin].name, &p.name);
            return Err(ctx.err(
                format!("property[{i}].access_token"),
                format!(
                    r#"is the AccessToken of property[{twin}] "{first}" too: "{first}" and "{second}" would open two WebSockets for one enterprise (every event twice) and share one Mews rate limit; give each property the AccessToken of its own enterprise, or remove one of them"#
                ),
            ));
        }
        out.push(Property {
            name: p.name,
            enterprise_id: p.enterprise_id,
            access_token,
        });
    }
    Ok(out)
}

/// Names end up in records, file names and credential names: keep them plain.
pub(super) fn check_name(ctx: &Ctx<'_>, key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ctx.err(
            key,
            format!(
                r#""{name}" is not a valid name; use 1 to 64 letters, digits, '-', '_' or '.'"#
            ),
        ))
    }
}

/// Resolves a token given inline, in a file, or as a systemd credential.
pub(super) fn secret(
    ctx: &Ctx<'_>,
    key: &str,
    inline: Option<String>,
    file: Option<PathBuf>,
    credential: &str,
    credentials: &CredentialsDir,
) -> Result<Secret, ConfigError> {
    let file_key = format!("{key}_file");
    let (value, used_key) = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(ctx.err(
                key,
                format!("is set twice; keep either {key} or {file_key}"),
            ));
        }
        (Some(value), None) => (value, key.to_owned()),
        (None, Some(path)) => (read_secret(ctx, &file_key, &path)?, file_key),
        (None, None) => match credentials.0.as_deref().map(|dir| dir.join(credential)) {
            Some(path) if path.exists() => (
                read_secret(ctx, &format!("{key} (credential {credential})"), &path)?,
                format!("{key} (credential {credential})"),
            ),
            _ => {
                return Err(ctx.err(
                    key,
                    format!(
                        r#"missing; set {key} = "…", {file_key} = "/path/to/file", or pass the systemd credential "{credential}" with LoadCredential="#
                    ),
                ));
            }
        },
    };
    if value.is_empty() {
        return Err(ctx.err(used_key, "is empty; paste the token Mews gave you"));
    }
    if let Some(bad) = value.chars().find(|c| !is_cookie_safe(*c)) {
        let what = if bad.is_whitespace() {
            "whitespace".to_owned()
        } else {
            format!("'{}'", bad.escape_default())
        };
        return Err(ctx.err(
            used_key,
            format!("contains {what}, which a cookie cannot carry; check that the whole token and nothing else was copied"),
        ));
    }
    Ok(Secret::new(value))
}

/// Characters allowed in a cookie value (RFC 6265 `cookie-octet`).
pub(super) fn is_cookie_safe(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '"' | ',' | ';' | '\\')
}

pub(super) fn read_secret(ctx: &Ctx<'_>, key: &str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|err| {
            ctx.err(
                key,
                format!(
                    "cannot read {}: {err}; check the path and that the mews-relay user may read it",
                    path.display()
                ),
            )
        })
}

fn connection(ctx: &Ctx<'_>, raw: super::file::ConnectionFile) -> Result<Connection, ConfigError> {
    use super::file::pick;
    let c = Connection {
        ping_interval: pick(raw.ping_interval, defaults::PING_INTERVAL),
        pong_timeout: pick(raw.pong_timeout, defaults::PONG_TIMEOUT),
        connect_timeout: pick(raw.connect_timeout, defaults::CONNECT_TIMEOUT),
        backoff_min: pick(raw.backoff_min, defaults::BACKOFF_MIN),
        backoff_max: pick(raw.backoff_max, defaults::BACKOFF_MAX),
        healthy_after: pick(raw.healthy_after, defaults::HEALTHY_AFTER),
        tcp_keepalive: pick(raw.tcp_keepalive, defaults::TCP_KEEPALIVE),
        max_message_size: raw
            .max_message_size
            .map_or(defaults::MAX_MESSAGE_SIZE, |s| s.0),
        message_timeout: pick(raw.message_timeout, defaults::MESSAGE_TIMEOUT),
        ca_file: raw.ca_file,
        extra_roots: Vec::new(),
    };
    for (key, value) in [
        ("ping_interval", c.ping_interval),
        ("pong_timeout", c.pong_timeout),
        ("connect_timeout", c.connect_timeout),
        ("backoff_min", c.backoff_min),
        ("backoff_max", c.backoff_max),
        ("tcp_keepalive", c.tcp_keepalive),
        ("message_timeout", c.message_timeout),
    ] {
        if value.is_zero() {
            return Err(ctx.err(format!("connection.{key}"), "must be longer than zero"));
        }
    }
    if c.backoff_min > c.backoff_max {
        return Err(ctx.err(
            "connection.backoff_min",
            "is larger than backoff_max; make backoff_min <= backoff_max",
        ));
    }
    if c.max_message_size < 1024 {
        return Err(ctx.err(
            "connection.max_message_size",
            "is below 1KiB; Mews messages carry many events, use \"1MiB\"",
        ));
    }
    let extra_roots = match &c.ca_file {
        Some(path) => read_certs(ctx, "connection.ca_file", path)?,
        None => Vec::new(),
    };
    Ok(Connection { extra_roots, ..c })
}

/// Reads PEM certificates (a CA bundle or a client chain) for `key`.
pub(super) fn read_certs(
    ctx: &Ctx<'_>,
    key: &str,
    path: &Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, ConfigError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|err| {
            ctx.err(
                key,
                format!("cannot read PEM certificates from {}: {err}; point it at a PEM file of certificates", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(ctx.err(
            key,
            format!("{} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\"); point it at a PEM file of certificates", path.display()),
        ));
    }
    Ok(certs)
}

/// A certificate and its key given as a pair of keys (both or neither).
pub(super) fn identity(
    ctx: &Ctx<'_>,
    (cert_key, cert): (&str, Option<&Path>),
    (key_key, key): (&str, Option<&Path>),
) -> Result<Option<crate::tls::Identity>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(crate::tls::Identity {
            certs: read_certs(ctx, cert_key, cert)?,
            key: read_key(ctx, key_key, key)?,
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ctx.err(key_key, "missing; the certificate needs its key")),
        (None, Some(_)) => Err(ctx.err(cert_key, "missing; the key needs its certificate")),
    }
}

/// `ca_file`, `client_cert` and `client_key` of a sink.
pub(super) fn client_tls(
    ctx: &Ctx<'_>,
    prefix: &str,
    ca_file: Option<std::path::PathBuf>,
    client_cert: Option<std::path::PathBuf>,
    client_key: Option<std::path::PathBuf>,
) -> Result<super::ClientTls, ConfigError> {
    let key = |k: &str| format!("{prefix}.{k}");
    let extra_roots = match &ca_file {
        Some(path) => read_certs(ctx, &key("ca_file"), path)?,
        None => Vec::new(),
    };
    let client_auth = identity(
        ctx,
        (&key("client_cert"), client_cert.as_deref()),
        (&key("client_key"), client_key.as_deref()),
    )?;
    Ok(super::ClientTls {
        ca_file,
        client_cert,
        client_key,
        extra_roots,
        client_auth,
    })
}

/// Reads a PEM private key for `key`.
pub(super) fn read_key(
    ctx: &Ctx<'_>,
    key: &str,
    path: &Path,
) -> Result<rustls_pki_types::PrivateKeyDer<'static>, ConfigError> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_file(path).map_err(|err| {
        ctx.err(
            key,
            format!("cannot read a PEM private key from {}: {err}; point it at the key of the client certificate", path.display()),
        )
    })
}

//! The keys of `type = "nats"`: servers, subject template, stream, credentials, TLS.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::NatsSink;
use crate::config::ConfigError;
use crate::config::shared::{ClientTls, read_secret};
use crate::config::value::{Dur, human, pick};
use crate::secret::{Secret, SecretUrl};
use crate::sink::registry::{At, BuildEnv, SinkType};

/// Defaults of `type = "nats"`.
pub mod defaults {
    use std::time::Duration;

    /// `subject`
    pub const NATS_SUBJECT: &str = "mews.{property}.{type}";
    /// `ack_timeout`
    pub const NATS_ACK_TIMEOUT: Duration = Duration::from_secs(5);
    /// `max_in_flight`
    pub const NATS_MAX_IN_FLIGHT: usize = 64;
    /// `max_age` of a stream the sink creates
    pub const NATS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
    /// `duplicate_window` of a stream the sink creates
    pub const NATS_DUPLICATE_WINDOW: Duration = Duration::from_secs(24 * 3600);
}

/// The table as serde reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkFile {
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
}

/// How a NATS sink authenticates.
#[derive(Debug, Clone, PartialEq, Serialize)]
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

/// `type = "nats"`
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NatsSettings {
    /// `nats://` or `tls://` URLs (user info and query masked in `Debug` and `check`).
    pub servers: Vec<SecretUrl>,
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

impl SinkType for NatsSettings {
    type File = NatsSinkFile;
    type Sink = NatsSink;

    fn validate(file: NatsSinkFile, at: &At<'_>) -> Result<Self, ConfigError> {
        servers(at, &file.servers)?;
        let auth = auth(at, &file)?;
        let subject = subject(at, &file)?;
        if file.stream.is_empty() || file.stream.contains(['.', '*', '>', ' ', '/', '\\']) {
            return Err(at.err(
                "stream",
                format!(
                    r#""{}" is not a stream name; use letters, digits, '-' or '_'"#,
                    file.stream
                ),
            ));
        }
        let ack_timeout = pick(file.ack_timeout, defaults::NATS_ACK_TIMEOUT);
        if ack_timeout.is_zero() {
            return Err(at.err("ack_timeout", "must be longer than zero"));
        }
        let max_in_flight = file
            .max_in_flight
            .unwrap_or(defaults::NATS_MAX_IN_FLIGHT as u64);
        if !(1..=4096).contains(&max_in_flight) {
            return Err(at.err("max_in_flight", "must be between 1 and 4096"));
        }
        let tls = ClientTls::read(
            at.ctx,
            at.prefix,
            file.ca_file,
            file.client_cert,
            file.client_key,
        )?;
        Ok(NatsSettings {
            servers: file.servers.into_iter().map(SecretUrl::new).collect(),
            subject,
            stream: file.stream,
            create_stream: file.create_stream.unwrap_or(false),
            max_age: pick(file.max_age, defaults::NATS_MAX_AGE),
            duplicate_window: pick(file.duplicate_window, defaults::NATS_DUPLICATE_WINDOW),
            auth,
            tls,
            ack_timeout,
            max_in_flight: max_in_flight as usize,
        })
    }

    fn default_name(&self) -> String {
        format!("nats:{}", self.stream)
    }

    async fn build(&self, env: &BuildEnv<'_>) -> io::Result<NatsSink> {
        NatsSink::new(env.name, self).await
    }
}

/// `servers`: at least one, each `nats://` or `tls://`.
fn servers(at: &At<'_>, servers: &[String]) -> Result<(), ConfigError> {
    if servers.is_empty() {
        return Err(at.err(
            "servers",
            r#"is empty; list at least one, like ["nats://127.0.0.1:4222"]"#,
        ));
    }
    for server in servers {
        let ok = ["nats://", "tls://"].iter().any(|scheme| {
            server
                .strip_prefix(scheme)
                .is_some_and(|rest| !rest.is_empty())
        });
        if !ok {
            return Err(at.err(
                "servers",
                format!(r#""{server}" is not a nats:// or tls:// URL"#),
            ));
        }
    }
    Ok(())
}

/// `subject`: a template of plain tokens; a created stream needs a fixed first token.
fn subject(at: &At<'_>, file: &NatsSinkFile) -> Result<String, ConfigError> {
    let subject = file
        .subject
        .clone()
        .unwrap_or_else(|| defaults::NATS_SUBJECT.to_owned());
    let sample = subject.replace("{property}", "p").replace("{type}", "t");
    let token_ok = |t: &str| !t.is_empty() && !t.contains(['*', '>', ' ', '\t', '{', '}']);
    if !sample.split('.').all(token_ok) {
        return Err(at.err(
            "subject",
            format!(r#""{subject}" is not a subject template: dot-separated tokens, no wildcards, placeholders {{property}} and {{type}}"#),
        ));
    }
    if file.create_stream == Some(true) && subject.starts_with('{') {
        return Err(at.err(
            "create_stream",
            "cannot cover a subject that starts with a placeholder; start it with a fixed token (\"mews.{property}.{type}\") or create the stream yourself",
        ));
    }
    Ok(subject)
}

/// A secret given inline or in a file (`name` or `name_file`), or neither.
fn optional_secret(
    at: &At<'_>,
    name: &str,
    inline: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<Option<Secret>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(at.err(
            name,
            format!("is set twice; keep either {name} or {name}_file"),
        )),
        (Some(value), None) => Ok(Some(Secret::new(value.clone()))),
        (None, Some(path)) => Ok(Some(Secret::new(read_secret(
            at.ctx,
            &at.key(&format!("{name}_file")),
            path,
        )?))),
        (None, None) => Ok(None),
    }
}

/// One way to authenticate, secrets read from their files.
fn auth(at: &At<'_>, s: &NatsSinkFile) -> Result<NatsAuth, ConfigError> {
    let password = optional_secret(at, "password", &s.password, &s.password_file)?;
    let token = optional_secret(at, "token", &s.token, &s.token_file)?;
    let nkey = match &s.nkey_seed_file {
        Some(path) => Some(Secret::new(read_secret(
            at.ctx,
            &at.key("nkey_seed_file"),
            path,
        )?)),
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
        return Err(at.err("user", "more than one way to authenticate; use one of user + password, token, nkey_seed_file or creds_file"));
    }
    Ok(match (&s.user, password, token, nkey, &s.creds_file) {
        (Some(user), Some(password), ..) => NatsAuth::UserPassword {
            user: user.clone(),
            password,
        },
        (Some(_), None, ..) => {
            return Err(at.err("password", "missing; user needs password or password_file"));
        }
        (None, Some(_), ..) => return Err(at.err("user", "missing; password needs a user")),
        (_, _, Some(token), ..) => NatsAuth::Token(token),
        (_, _, _, Some(seed), _) => NatsAuth::Nkey(seed),
        (_, _, _, _, Some(path)) => {
            if !path.is_file() {
                return Err(at.err(
                    "creds_file",
                    format!("{} is not a readable file", path.display()),
                ));
            }
            NatsAuth::CredsFile(path.clone())
        }
        _ => NatsAuth::None,
    })
}

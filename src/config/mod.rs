//! Config: read the TOML, validate it, resolve secrets, and hand out [`Settings`] with no gaps.

mod commands;
mod file;
mod mews;
mod nats;
mod sinks;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use serde::Serialize;

use crate::secret::Secret;
use crate::tls::Identity;

pub use validate::CredentialsDir;

/// Defaults, in one place; the documented example config repeats them.
pub mod defaults {
    use std::time::Duration;

    /// `[connection] ping_interval`
    pub const PING_INTERVAL: Duration = Duration::from_secs(20);
    /// `[connection] pong_timeout`
    pub const PONG_TIMEOUT: Duration = Duration::from_secs(10);
    /// `[connection] connect_timeout`
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// `[connection] backoff_min`
    pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
    /// `[connection] backoff_max`
    pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
    /// `[connection] healthy_after`
    pub const HEALTHY_AFTER: Duration = Duration::from_secs(30);
    /// `[connection] tcp_keepalive`
    pub const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
    /// `[connection] max_message_size`
    pub const MAX_MESSAGE_SIZE: u64 = 1 << 20;
    /// `[connection] message_timeout`
    pub const MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);
    /// `[listeners] header_timeout`
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// `[listeners] body_timeout`
    pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
    /// `[listeners] idle_timeout`
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// `[listeners] max_connections`
    pub const MAX_CONNECTIONS: usize = 256;
    /// `[listeners] max_body_in_flight`
    pub const MAX_BODY_IN_FLIGHT: u64 = 32 << 20;
    /// `[state] dir`
    pub const STATE_DIR: &str = "/var/lib/mews-relay";
    /// `[state] max_bytes`
    pub const STATE_MAX_BYTES: u64 = 1 << 30;
    /// `[shutdown] grace_period`
    pub const GRACE_PERIOD: Duration = Duration::from_secs(10);
    /// `[metrics] listen`
    pub const METRICS_LISTEN: &str = "127.0.0.1:9187";
    /// `[metrics] ready_max_lag`
    pub const READY_MAX_LAG: Duration = Duration::from_secs(300);
    /// `[webhooks] listen`
    pub const WEBHOOKS_LISTEN: &str = "127.0.0.1:8088";
    /// `[webhooks] path`
    pub const WEBHOOKS_PATH: &str = "/mews/webhooks";
    /// `[webhooks] max_body`
    pub const WEBHOOKS_MAX_BODY: u64 = 1 << 20;
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
    /// `[mews] client`: the name and version sent as `Client` when the config names none.
    pub const CLIENT: &str = concat!("mews-relay ", env!("CARGO_PKG_VERSION"));
    /// `[mews] request_timeout`
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    /// `[mews] rate_limit`: Mews allows 200 requests per AccessToken per 30 s.
    pub const RATE_LIMIT: u32 = 200;
    /// `[mews] rate_window`
    pub const RATE_WINDOW: Duration = Duration::from_secs(30);
    /// `[catch_up] reservations_since`
    pub const RESERVATIONS_SINCE: Duration = Duration::from_secs(3600);
    /// `[catch_up] margin`
    pub const CATCH_UP_MARGIN: Duration = Duration::from_secs(300);
    /// `[catch_up] dedupe_window`
    pub const DEDUPE_WINDOW: Duration = Duration::from_secs(24 * 3600);
    /// `[enrich] timeout`
    pub const ENRICH_TIMEOUT: Duration = Duration::from_secs(2);
    /// `[api] listen`
    pub const API_LISTEN: &str = "127.0.0.1:9188";
}

/// A config that failed to load: one line naming the file, the key and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {problem}", file = .file.display())]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// The key, as a TOML path (`connection.ping_interval`, `sink[1].type`).
    pub key: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

/// The validated config the daemon runs with.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Where this config came from (for messages).
    #[serde(skip)]
    pub origin: PathBuf,
    /// `[mews]`
    pub mews: Mews,
    /// `[[property]]`, at least one.
    #[serde(rename = "property")]
    pub properties: Vec<Property>,
    /// `[connection]`
    pub connection: Connection,
    /// `[state]`
    pub state: State,
    /// `[shutdown]`
    pub shutdown: Shutdown,
    /// `[webhooks]`, when Mews webhooks are received too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<Webhooks>,
    /// `[metrics]`, when /metrics, /healthz and /readyz are served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// `[listeners]`: bounds of every HTTP listener (webhooks, metrics).
    pub listeners: Listeners,
    /// `[catch_up]`
    pub catch_up: CatchUp,
    /// `[enrich]`
    pub enrich: Enrich,
    /// `[commands]`, when the relay acknowledges delivered commands in Mews.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commands: Option<Commands>,
    /// `[api]`, when the key system reports command states through the local API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<Api>,
    /// `[[sink]]`, at least one.
    #[serde(rename = "sink")]
    pub sinks: Vec<SinkSettings>,
    /// What validation found questionable but not wrong, one line each (file, key, advice):
    /// `check` prints them, `run` logs them at WARN.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// `[mews]` (`Debug` and `check` show the URLs without user info and query).
#[derive(Clone, Serialize)]
pub struct Mews {
    /// `ws://` or `wss://` URL of the WebSocket endpoint.
    #[serde(serialize_with = "redacted_url")]
    pub websocket_url: String,
    /// REST base URL (catch-up and enrichment); none: neither runs.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "redacted_optional_url"
    )]
    pub api_url: Option<String>,
    /// The integration's ClientToken.
    pub client_token: Secret,
    /// `Client` sent with every REST request (name and version).
    pub client: String,
    /// Limit for one REST request.
    #[serde(with = "human")]
    pub request_timeout: Duration,
    /// At most this many REST requests per AccessToken per `rate_window`.
    pub rate_limit: u32,
    /// The window of `rate_limit`.
    #[serde(with = "human")]
    pub rate_window: Duration,
}

impl std::fmt::Debug for Mews {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mews")
            .field("websocket_url", &redact_url(&self.websocket_url))
            .field("api_url", &self.api_url.as_deref().map(redact_url))
            .field("client_token", &self.client_token)
            .field("client", &self.client)
            .field("request_timeout", &self.request_timeout)
            .field("rate_limit", &self.rate_limit)
            .field("rate_window", &self.rate_window)
            .finish()
    }
}

/// `[catch_up]`: what is fetched over REST after every (re)connect.
#[derive(Debug, Clone, Serialize)]
pub struct CatchUp {
    /// Active (Pending/Received) device commands, via `commands/getAllActive`.
    pub commands: bool,
    /// Reservations updated since the last sync, via `reservations/getAll/2023-06-06`.
    pub reservations: bool,
    /// With no sync mark yet, reservations updated this long ago are fetched.
    #[serde(with = "human")]
    pub reservations_since: Duration,
    /// Each reservation window starts this much before the last sync mark.
    #[serde(with = "human")]
    pub margin: Duration,
    /// How long journaled keys keep live and catch-up records from duplicating each other.
    #[serde(with = "human")]
    pub dedupe_window: Duration,
}

/// `[enrich]`: details fetched for live events.
#[derive(Debug, Clone, Serialize)]
pub struct Enrich {
    /// DeviceCommand records get `command` from `commands/getAllByIds`.
    pub commands: bool,
    /// A record waits at most this long for its details, then goes on with `enrich_error`.
    #[serde(with = "human")]
    pub timeout: Duration,
}

/// `[commands]`: the relay's own part in the command loop.
#[derive(Debug, Clone, Serialize)]
pub struct Commands {
    /// When this sink has delivered a Pending DeviceCommand, the command is set `Received`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_after: Option<String>,
}

/// `[api]`: the local API of the key system.
#[derive(Debug, Clone, Serialize)]
pub struct Api {
    /// Address of the listener (loopback by default).
    pub listen: std::net::SocketAddr,
    /// Bearer token the key system sends.
    pub token: Secret,
}

impl Settings {
    /// Whether the command loop runs (commands are tracked and updates sent to Mews).
    pub fn command_loop(&self) -> bool {
        self.commands.is_some() || self.api.is_some()
    }
}

/// One `[[property]]`: one WebSocket connection.
#[derive(Debug, Clone, Serialize)]
pub struct Property {
    /// Label used in records, logs and file names.
    pub name: String,
    /// The Mews enterprise id, to label webhook events with this property's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enterprise_id: Option<String>,
    /// The enterprise's AccessToken.
    pub access_token: Secret,
}

/// `[connection]`
#[derive(Debug, Clone, Serialize)]
pub struct Connection {
    /// A WebSocket ping is sent this often.
    #[serde(with = "human")]
    pub ping_interval: Duration,
    /// No frame at all this long after a ping: the connection is dead.
    #[serde(with = "human")]
    pub pong_timeout: Duration,
    /// Limit for TCP connect, TLS and the upgrade together.
    #[serde(with = "human")]
    pub connect_timeout: Duration,
    /// First reconnect delay.
    #[serde(with = "human")]
    pub backoff_min: Duration,
    /// Largest reconnect delay; also the delay after a rejected upgrade.
    #[serde(with = "human")]
    pub backoff_max: Duration,
    /// A session up this long resets the backoff.
    #[serde(with = "human")]
    pub healthy_after: Duration,
    /// Idle time before TCP keepalive probes start.
    #[serde(with = "human")]
    pub tcp_keepalive: Duration,
    /// Larger messages are rejected (kept in `rejected.jsonl`), not forwarded.
    pub max_message_size: u64,
    /// A message whose frames keep arriving without completing it for this long breaks the
    /// connection (a fragmented message without its final frame).
    #[serde(with = "human")]
    pub message_timeout: Duration,
    /// Extra CA certificates (PEM) trusted besides the system roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The certificates read from `ca_file`.
    #[serde(skip)]
    pub extra_roots: Vec<CertificateDer<'static>>,
}

/// `[state]`
#[derive(Debug, Clone, Serialize)]
pub struct State {
    /// Journal, rejected messages and dead letters live here.
    pub dir: PathBuf,
    /// Past this many bytes of journaled records, the oldest undelivered ones are dead-lettered.
    pub max_bytes: u64,
}

/// `[metrics]`
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    /// Address of the metrics listener.
    pub listen: std::net::SocketAddr,
    /// `/readyz` fails when a sink has been behind longer than this.
    #[serde(with = "human")]
    pub ready_max_lag: Duration,
}

/// `[listeners]`: what bounds each HTTP listener, so that no client can hold memory,
/// descriptors or a core.
#[derive(Debug, Clone, Serialize)]
pub struct Listeners {
    /// A request line and headers must arrive within this, counted from the connect (or from
    /// the first byte of a later request on a kept-alive connection).
    #[serde(with = "human")]
    pub header_timeout: Duration,
    /// An accepted request's body must arrive within this (else 408).
    #[serde(with = "human")]
    pub body_timeout: Duration,
    /// A kept-alive connection with no request for this long is closed.
    #[serde(with = "human")]
    pub idle_timeout: Duration,
    /// Open connections per listener (lowered at start to fit the descriptor limit).
    pub max_connections: usize,
    /// Request bodies being read, all listeners together (more: 503).
    pub max_body_in_flight: u64,
}

/// `[webhooks]`
#[derive(Debug, Clone, Serialize)]
pub struct Webhooks {
    /// Address of the HTTP listener.
    pub listen: std::net::SocketAddr,
    /// Path Mews POSTs to.
    pub path: String,
    /// The shared secret Mews sends as `?Token=`.
    pub token: Secret,
    /// Larger bodies get 413.
    pub max_body: u64,
    /// Server certificate (PEM) for built-in TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// Its key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Read from `tls_cert` and `tls_key`.
    #[serde(skip)]
    pub tls: Option<Identity>,
}

/// `[shutdown]`
#[derive(Debug, Clone, Serialize)]
pub struct Shutdown {
    /// How long sinks may drain after SIGTERM.
    #[serde(with = "human")]
    pub grace_period: Duration,
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

/// TLS of a sink's client: an extra CA and an optional client certificate (mTLS).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClientTls {
    /// Extra CA certificates (PEM) besides the system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// Its key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// Certificates read from `ca_file`.
    #[serde(skip)]
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Read from `client_cert` and `client_key`.
    #[serde(skip)]
    pub client_auth: Option<Identity>,
}

impl ClientTls {
    /// The rustls config for this client.
    pub fn client_config(&self) -> Result<std::sync::Arc<rustls::ClientConfig>, rustls::Error> {
        crate::tls::client_config(&self.extra_roots, self.client_auth.as_ref())
    }
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

impl Settings {
    /// Reads and validates a config file. `credentials` is systemd's `$CREDENTIALS_DIRECTORY`.
    pub fn load(path: &Path, credentials: &CredentialsDir) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
            file: path.to_owned(),
            key: "(file)".into(),
            problem: format!(
                "cannot read the config file: {err}; check the path given to --config"
            ),
        })?;
        Self::from_toml(&text, path, credentials)
    }

    /// Validates config text; `origin` names it in errors.
    pub fn from_toml(
        text: &str,
        origin: &Path,
        credentials: &CredentialsDir,
    ) -> Result<Settings, ConfigError> {
        validate::parse(text, origin, credentials)
    }

    /// The effective config as TOML, secrets masked (what `check` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|err| format!("# cannot render the config: {err}\n"))
    }
}

/// A URL with any user info and query replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, _)) => (base, "?***"),
        None => (url, ""),
    };
    match base.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((authority, path)) if authority.contains('@') => {
                format!(
                    "{scheme}://***@{}/{path}{query}",
                    authority.rsplit('@').next().unwrap_or_default()
                )
            }
            None if rest.contains('@') => format!(
                "{scheme}://***@{}{query}",
                rest.rsplit('@').next().unwrap_or_default()
            ),
            _ => format!("{base}{query}"),
        },
        None => format!("{base}{query}"),
    }
}

fn redacted_url<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url))
}

fn redacted_optional_url<S: serde::Serializer>(
    url: &Option<String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => s.serialize_str(&redact_url(url)),
        None => s.serialize_none(),
    }
}

/// Durations written back the way they are read: `"20s"`.
mod human {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn urls_lose_user_info_and_query() {
        assert_eq!(redact_url("https://h.example/x"), "https://h.example/x");
        assert_eq!(
            redact_url("https://u:p@h.example/x?token=1"),
            "https://***@h.example/x?***"
        );
        assert_eq!(redact_url("http://u:p@h.example"), "http://***@h.example");
    }
}

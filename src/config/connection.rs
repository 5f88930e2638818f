//! `[connection]`: how each property's WebSocket is kept alive and reconnected.

use std::path::PathBuf;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use super::shared::{ConfigError, Ctx, read_certs};
use super::value::{ByteSize, Dur, human, pick};
use crate::retry::RetryPolicy;

/// Defaults of `[connection]`.
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
}

/// `[connection]` as the file has it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConnectionFile {
    ping_interval: Option<Dur>,
    pong_timeout: Option<Dur>,
    connect_timeout: Option<Dur>,
    backoff_min: Option<Dur>,
    backoff_max: Option<Dur>,
    healthy_after: Option<Dur>,
    tcp_keepalive: Option<Dur>,
    max_message_size: Option<ByteSize>,
    message_timeout: Option<Dur>,
    ca_file: Option<PathBuf>,
}

/// `[connection]`
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// Reconnect delays: `backoff_min`, the first, to `backoff_max`, the largest (also the
    /// delay after a rejected upgrade).
    #[serde(flatten, serialize_with = "backoff_keys")]
    pub backoff: RetryPolicy,
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

impl ConnectionFile {
    /// Defaults filled in, durations checked, `ca_file` read.
    pub(crate) fn validate(self, ctx: &Ctx<'_>) -> Result<Connection, ConfigError> {
        use defaults::*;
        let (backoff_min, backoff_max) = (
            pick(self.backoff_min, BACKOFF_MIN),
            pick(self.backoff_max, BACKOFF_MAX),
        );
        let (ping_interval, pong_timeout, connect_timeout, tcp_keepalive, message_timeout) = (
            pick(self.ping_interval, PING_INTERVAL),
            pick(self.pong_timeout, PONG_TIMEOUT),
            pick(self.connect_timeout, CONNECT_TIMEOUT),
            pick(self.tcp_keepalive, TCP_KEEPALIVE),
            pick(self.message_timeout, MESSAGE_TIMEOUT),
        );
        for (key, value) in [
            ("ping_interval", ping_interval),
            ("pong_timeout", pong_timeout),
            ("connect_timeout", connect_timeout),
            ("backoff_min", backoff_min),
            ("backoff_max", backoff_max),
            ("tcp_keepalive", tcp_keepalive),
            ("message_timeout", message_timeout),
        ] {
            if value.is_zero() {
                return Err(ctx.err(format!("connection.{key}"), "must be longer than zero"));
            }
        }
        let backoff = RetryPolicy::try_new(backoff_min, backoff_max).map_err(|_| {
            ctx.err(
                "connection.backoff_min",
                "is larger than backoff_max; make backoff_min <= backoff_max",
            )
        })?;
        let c = Connection {
            ping_interval,
            pong_timeout,
            connect_timeout,
            backoff,
            healthy_after: pick(self.healthy_after, HEALTHY_AFTER),
            tcp_keepalive,
            max_message_size: self.max_message_size.map_or(MAX_MESSAGE_SIZE, |s| s.0),
            message_timeout,
            ca_file: self.ca_file,
            extra_roots: Vec::new(),
        };
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
}

/// `backoff` as the file writes it: `backoff_min` and `backoff_max`.
fn backoff_keys<S: serde::Serializer>(policy: &RetryPolicy, s: S) -> Result<S::Ok, S::Error> {
    crate::config::value::policy_keys(policy, ("backoff_min", "backoff_max"), s)
}

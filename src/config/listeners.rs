//! `[listeners]`: the bounds of every HTTP listener (webhooks, metrics, the local API), so that
//! no client can hold memory, descriptors or a core.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::shared::{ConfigError, Ctx};
use super::value::{ByteSize, Dur, human, pick};

/// Defaults of `[listeners]`.
pub mod defaults {
    use std::time::Duration;

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
}

/// `[listeners]` as the file has it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenersFile {
    header_timeout: Option<Dur>,
    body_timeout: Option<Dur>,
    idle_timeout: Option<Dur>,
    max_connections: Option<u64>,
    max_body_in_flight: Option<ByteSize>,
}

/// `[listeners]`: what bounds each HTTP listener.
#[derive(Debug, Clone, PartialEq, Serialize)]
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

impl ListenersFile {
    /// Defaults filled in; every bound above zero.
    pub(crate) fn validate(self, ctx: &Ctx<'_>) -> Result<Listeners, ConfigError> {
        use defaults::*;
        let l = Listeners {
            header_timeout: pick(self.header_timeout, HEADER_TIMEOUT),
            body_timeout: pick(self.body_timeout, BODY_TIMEOUT),
            idle_timeout: pick(self.idle_timeout, IDLE_TIMEOUT),
            max_connections: self.max_connections.map_or(MAX_CONNECTIONS, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            }),
            max_body_in_flight: self.max_body_in_flight.map_or(MAX_BODY_IN_FLIGHT, |b| b.0),
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
}

//! `[enrich]`: details fetched over REST for live events.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::shared::{ConfigError, Ctx};
use super::value::{Dur, human, pick};

/// Defaults of `[enrich]`.
pub mod defaults {
    use std::time::Duration;

    /// `[enrich] timeout`
    pub const ENRICH_TIMEOUT: Duration = Duration::from_secs(2);
}

/// `[enrich]` as the file has it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnrichFile {
    commands: Option<bool>,
    timeout: Option<Dur>,
}

/// `[enrich]`: details fetched for live events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Enrich {
    /// DeviceCommand records get `command` from `commands/getAllByIds`.
    pub commands: bool,
    /// A record waits at most this long for its details, then goes on with `enrich_error`.
    #[serde(with = "human")]
    pub timeout: Duration,
}

impl EnrichFile {
    /// Defaults filled in.
    pub(crate) fn validate(self, ctx: &Ctx<'_>) -> Result<Enrich, ConfigError> {
        let enrich = Enrich {
            commands: self.commands.unwrap_or(true),
            timeout: pick(self.timeout, defaults::ENRICH_TIMEOUT),
        };
        if enrich.timeout.is_zero() {
            return Err(ctx.err("enrich.timeout", "must be longer than zero, e.g. \"2s\""));
        }
        Ok(enrich)
    }
}

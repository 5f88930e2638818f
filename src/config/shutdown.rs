//! `[shutdown]`: how long sinks may drain after SIGTERM.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::value::{Dur, human, pick};

/// Defaults of `[shutdown]`.
pub mod defaults {
    use std::time::Duration;

    /// `[shutdown] grace_period`
    pub const GRACE_PERIOD: Duration = Duration::from_secs(10);
}

/// `[shutdown]` as the file has it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShutdownFile {
    grace_period: Option<Dur>,
}

/// `[shutdown]`
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Shutdown {
    /// How long sinks may drain after SIGTERM.
    #[serde(with = "human")]
    pub grace_period: Duration,
}

impl ShutdownFile {
    /// Defaults filled in (any grace period is valid, zero too).
    pub(crate) fn validate(self) -> Shutdown {
        Shutdown {
            grace_period: pick(self.grace_period, defaults::GRACE_PERIOD),
        }
    }
}

//! `[catch_up]`: what is fetched over REST after every (re)connect.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::shared::{ConfigError, Ctx};
use super::value::{Dur, human, pick};

/// Defaults of `[catch_up]`.
pub mod defaults {
    use std::time::Duration;

    /// `[catch_up] reservations_since`
    pub const RESERVATIONS_SINCE: Duration = Duration::from_secs(3600);
    /// `[catch_up] margin`
    pub const CATCH_UP_MARGIN: Duration = Duration::from_secs(300);
    /// `[catch_up] dedupe_window`
    pub const DEDUPE_WINDOW: Duration = Duration::from_secs(24 * 3600);
}

/// The longest `UpdatedUtc` interval Mews accepts (3 months; 90 days stays inside it).
const MAX_REST_WINDOW: Duration = Duration::from_secs(90 * 24 * 3600);

/// `[catch_up]` as the file has it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CatchUpFile {
    commands: Option<bool>,
    reservations: Option<bool>,
    reservations_since: Option<Dur>,
    margin: Option<Dur>,
    dedupe_window: Option<Dur>,
}

/// `[catch_up]`: what is fetched over REST after every (re)connect.
#[derive(Debug, Clone, PartialEq, Serialize)]
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

impl CatchUpFile {
    /// Defaults filled in; windows Mews accepts.
    pub(crate) fn validate(self, ctx: &Ctx<'_>) -> Result<CatchUp, ConfigError> {
        let catch_up = CatchUp {
            commands: self.commands.unwrap_or(true),
            reservations: self.reservations.unwrap_or(false),
            reservations_since: pick(self.reservations_since, defaults::RESERVATIONS_SINCE),
            margin: pick(self.margin, defaults::CATCH_UP_MARGIN),
            dedupe_window: pick(self.dedupe_window, defaults::DEDUPE_WINDOW),
        };
        if catch_up.reservations_since > MAX_REST_WINDOW {
            return Err(ctx.err(
                "catch_up.reservations_since",
                "is longer than 90 days, the longest UpdatedUtc window Mews allows; use e.g. \"1h\"",
            ));
        }
        if catch_up.dedupe_window.is_zero() {
            return Err(ctx.err(
                "catch_up.dedupe_window",
                "must be longer than zero; it should cover the longest outage, e.g. \"24h\"",
            ));
        }
        Ok(catch_up)
    }
}

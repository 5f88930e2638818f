//! `[metrics]`: the local listener of `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::shared::{ConfigError, Ctx};
use super::value::{Dur, human, pick, resolve_listen};

/// Defaults of `[metrics]`.
pub mod defaults {
    use std::time::Duration;

    /// `[metrics] listen`
    pub const METRICS_LISTEN: &str = "127.0.0.1:9187";
    /// `[metrics] ready_max_lag`
    pub const READY_MAX_LAG: Duration = Duration::from_secs(300);
}

/// `[metrics]` as the file has it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricsFile {
    listen: Option<String>,
    ready_max_lag: Option<Dur>,
}

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    /// Address of the metrics listener.
    pub listen: SocketAddr,
    /// `/readyz` fails when a sink has been behind longer than this.
    #[serde(with = "human")]
    pub ready_max_lag: Duration,
}

impl MetricsFile {
    /// Defaults filled in.
    pub(crate) fn validate(self, ctx: &Ctx<'_>) -> Result<Metrics, ConfigError> {
        Ok(Metrics {
            listen: resolve_listen(self.listen.as_deref().unwrap_or(defaults::METRICS_LISTEN))
                .map_err(|problem| ctx.err("metrics.listen", problem))?,
            ready_max_lag: pick(self.ready_max_lag, defaults::READY_MAX_LAG),
        })
    }
}

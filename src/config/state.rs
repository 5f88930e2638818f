//! `[state]`: where the journal, rejected messages and dead letters live, and how much of the
//! disk they may take.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::shared::{ConfigError, Ctx};
use super::value::ByteSize;

/// Defaults of `[state]`.
pub mod defaults {
    /// `[state] dir`
    pub const STATE_DIR: &str = "/var/lib/mews-relay";
    /// `[state] max_bytes`
    pub const STATE_MAX_BYTES: u64 = 1 << 30;
}

/// `[state]` as the file has it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StateFile {
    dir: Option<PathBuf>,
    max_bytes: Option<ByteSize>,
}

/// `[state]`
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct State {
    /// Journal, rejected messages and dead letters live here.
    pub dir: PathBuf,
    /// Past this many bytes of journaled records, the oldest undelivered ones are dead-lettered.
    pub max_bytes: u64,
}

impl StateFile {
    /// Defaults filled in; room for an outage.
    pub(crate) fn validate(self, ctx: &Ctx<'_>) -> Result<State, ConfigError> {
        let state = State {
            dir: self
                .dir
                .unwrap_or_else(|| PathBuf::from(defaults::STATE_DIR)),
            max_bytes: self.max_bytes.map_or(defaults::STATE_MAX_BYTES, |b| b.0),
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
        if !state.dir.is_absolute() {
            return Err(ctx.err(
                "state.dir",
                format!(
                    r#""{}" is relative, so it would depend on the directory the relay is started in (/ under systemd); write an absolute path, like "{}""#,
                    state.dir.display(),
                    defaults::STATE_DIR
                ),
            ));
        }
        Ok(state)
    }
}

//! Config: read the TOML, validate it, resolve secrets, and hand out [`Settings`] with no gaps.
//!
//! Each section is one file: its raw form (what serde reads, every value optional), its
//! settings, its defaults and its checks. `settings` reads the whole file and runs them in
//! order; `shared` (errors naming file and key, names, secrets, TLS material) and `value`
//! (durations, sizes, URLs) are leaves every section uses.

mod catch_up;
mod commands;
mod connection;
mod enrich;
mod listeners;
mod metrics;
mod mews;
mod property;
mod settings;
pub(crate) mod shared;
mod shutdown;
mod state;
pub(crate) mod suggest;
pub(crate) mod value;
mod webhooks;

pub use catch_up::CatchUp;
pub use commands::{Api, Commands};
pub use connection::Connection;
pub use enrich::Enrich;
pub use listeners::Listeners;
pub use metrics::Metrics;
pub use mews::Mews;
pub use property::Property;
pub use settings::Settings;
pub use shared::{ClientTls, ConfigError, CredentialsDir};
pub use shutdown::Shutdown;
pub use state::State;
pub use value::redact_url;
pub use webhooks::Webhooks;

/// Every default, gathered from the sections that own them; the documented example config
/// repeats them.
pub mod defaults {
    pub use super::catch_up::defaults::*;
    pub use super::commands::defaults::*;
    pub use super::connection::defaults::*;
    pub use super::enrich::defaults::*;
    pub use super::listeners::defaults::*;
    pub use super::metrics::defaults::*;
    pub use super::mews::defaults::*;
    pub use super::shutdown::defaults::*;
    pub use super::state::defaults::*;
    pub use super::webhooks::defaults::*;
}

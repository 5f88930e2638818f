//! The sink types: what a type brings ([`SinkType`]), and the macro that turns the one-line
//! registry in `sink/mod.rs` into the closed enums (`SinkKind`, `AnySink`) and their dispatch.

use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Sink;
use crate::config::shared::{ConfigError, Ctx};
use crate::stats::Stats;

/// A sink type: its own `[[sink]]` keys (besides the shared `name`, `type`, `events`,
/// `properties` and `redact`), how they are checked, and the sink they build. Implemented by
/// the type's settings; registered with one line in `sink/mod.rs`.
pub trait SinkType: std::fmt::Debug + Clone + PartialEq + Serialize + Sized {
    /// This type's keys as serde reads them (`deny_unknown_fields`, values still optional).
    type File: DeserializeOwned;
    /// The running sink.
    type Sink: Sink;

    /// Checks the keys and fills in the defaults.
    fn validate(file: Self::File, at: &At<'_>) -> Result<Self, ConfigError>;

    /// The sink's name when its table gives none (it keys the cursor: stable across restarts).
    fn default_name(&self) -> String;

    /// Opens the sink; the only way to get one running.
    fn build(&self, env: &BuildEnv<'_>) -> impl Future<Output = io::Result<Self::Sink>> + Send;
}

/// Where in the config file a sink's table is: errors name its keys (`sink[1].url`).
pub struct At<'a> {
    /// The file's errors.
    pub ctx: &'a Ctx<'a>,
    /// `sink[i]`
    pub prefix: &'a str,
}

impl At<'_> {
    /// The full key of `key` in this table.
    pub fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.prefix)
    }

    /// An error for `key` of this table.
    pub fn err(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        self.ctx.err(self.key(key), problem)
    }
}

/// What building a sink may need besides its settings.
pub struct BuildEnv<'a> {
    /// The sink's name.
    pub name: &'a str,
    /// `[state] dir`: dead letters go under it.
    pub state_dir: &'a Path,
    /// Counters.
    pub stats: &'a Arc<Stats>,
}

/// Declares the sink types, one line each: `"type" => Variant(module::Settings)`. Generates
/// [`SinkKind`](super::SinkKind) (each type's settings, tagged by `type`),
/// [`AnySink`](super::AnySink) (the running sinks) and the `match`es between them.
macro_rules! sink_types {
    ($($name:literal => $variant:ident($settings:ty)),+ $(,)?) => {
        /// The sink types, each with its own settings; `type = "…"` picks one.
        #[derive(Debug, Clone, PartialEq, serde::Serialize)]
        #[serde(tag = "type")]
        pub enum SinkKind {
            $(
                #[doc = concat!("`type = \"", $name, "\"`")]
                #[serde(rename = $name)]
                $variant(Box<$settings>),
            )+
        }

        /// The closed set of running sinks.
        pub(crate) enum AnySink {
            $(
                #[doc = concat!("`type = \"", $name, "\"`")]
                $variant(Box<<$settings as $crate::sink::registry::SinkType>::Sink>),
            )+
        }

        /// Every `type`, for messages.
        pub(crate) const TYPES: &[&str] = &[$($name),+];

        impl SinkKind {
            /// Reads a table of type `name` (shared keys included); `None` for an unknown type.
            pub(crate) fn read(
                name: &str,
                table: toml::Table,
                at: &$crate::sink::registry::At<'_>,
            ) -> Option<Result<(settings::SharedKeys, SinkKind), $crate::config::ConfigError>> {
                match name {
                    $($name => Some(
                        settings::read::<$settings>(table, at)
                            .map(|(shared, s)| (shared, SinkKind::$variant(Box::new(s)))),
                    ),)+
                    _ => None,
                }
            }

            /// The name of a sink whose table gives none.
            pub(crate) fn default_name(&self) -> String {
                use $crate::sink::registry::SinkType;
                match self {
                    $(SinkKind::$variant(s) => s.default_name(),)+
                }
            }

            /// Opens the sink.
            pub(crate) async fn build(
                &self,
                env: &$crate::sink::registry::BuildEnv<'_>,
            ) -> std::io::Result<AnySink> {
                use $crate::sink::registry::SinkType;
                Ok(match self {
                    $(SinkKind::$variant(s) => AnySink::$variant(Box::new(s.build(env).await?)),)+
                })
            }
        }

        impl Sink for AnySink {
            async fn write(&mut self, records: &[&StoredRecord]) -> std::io::Result<()> {
                match self { $(AnySink::$variant(s) => s.write(records).await,)+ }
            }
            fn batch_limit(&self) -> usize {
                match self { $(AnySink::$variant(s) => s.batch_limit(),)+ }
            }
            fn take_dead_lettered(&mut self) -> Vec<u64> {
                match self { $(AnySink::$variant(s) => s.take_dead_lettered(),)+ }
            }
            fn retry_policy(&self) -> $crate::retry::RetryPolicy {
                match self { $(AnySink::$variant(s) => s.retry_policy(),)+ }
            }
            fn retry_delay(&mut self, backoff: &mut $crate::retry::Backoff) -> std::time::Duration {
                match self { $(AnySink::$variant(s) => s.retry_delay(backoff),)+ }
            }
            fn due(&self) -> Option<tokio::time::Instant> {
                match self { $(AnySink::$variant(s) => s.due(),)+ }
            }
            async fn on_due(&mut self) -> std::io::Result<()> {
                match self { $(AnySink::$variant(s) => s.on_due().await,)+ }
            }
            async fn reopen(&mut self) -> std::io::Result<()> {
                match self { $(AnySink::$variant(s) => s.reopen().await,)+ }
            }
            async fn close(&mut self) -> std::io::Result<()> {
                match self { $(AnySink::$variant(s) => s.close().await,)+ }
            }
        }
    };
}

pub(crate) use sink_types;

//! The TOML file as serde reads it: every struct strict, every value still optional.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

/// The whole config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    pub mews: MewsFile,
    #[serde(default, rename = "property")]
    pub properties: Vec<PropertyFile>,
    #[serde(default)]
    pub connection: ConnectionFile,
    #[serde(default)]
    pub state: StateFile,
    #[serde(default)]
    pub shutdown: ShutdownFile,
    pub webhooks: Option<WebhooksFile>,
    pub metrics: Option<MetricsFile>,
    #[serde(default)]
    pub listeners: ListenersFile,
    #[serde(default)]
    pub catch_up: CatchUpFile,
    #[serde(default)]
    pub enrich: EnrichFile,
    pub commands: Option<CommandsFile>,
    pub api: Option<ApiFile>,
    /// Sinks stay tables here: `type` picks the struct they are read into, so errors name it.
    #[serde(default, rename = "sink")]
    pub sinks: Vec<toml::Table>,
}

/// `[mews]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MewsFile {
    pub websocket_url: Option<String>,
    pub api_url: Option<String>,
    pub client_token: Option<String>,
    pub client_token_file: Option<PathBuf>,
    pub client: Option<String>,
    pub request_timeout: Option<Dur>,
    pub rate_limit: Option<u32>,
    pub rate_window: Option<Dur>,
}

/// `[catch_up]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CatchUpFile {
    pub commands: Option<bool>,
    pub reservations: Option<bool>,
    pub reservations_since: Option<Dur>,
    pub margin: Option<Dur>,
    pub dedupe_window: Option<Dur>,
}

/// `[enrich]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnrichFile {
    pub commands: Option<bool>,
    pub timeout: Option<Dur>,
}

/// `[commands]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommandsFile {
    pub received_after: Option<String>,
}

/// `[api]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiFile {
    pub listen: Option<std::net::SocketAddr>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
}

/// `[[property]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PropertyFile {
    pub name: String,
    pub enterprise_id: Option<String>,
    pub access_token: Option<String>,
    pub access_token_file: Option<PathBuf>,
}

/// `[connection]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConnectionFile {
    pub ping_interval: Option<Dur>,
    pub pong_timeout: Option<Dur>,
    pub connect_timeout: Option<Dur>,
    pub backoff_min: Option<Dur>,
    pub backoff_max: Option<Dur>,
    pub healthy_after: Option<Dur>,
    pub tcp_keepalive: Option<Dur>,
    pub max_message_size: Option<ByteSize>,
    pub message_timeout: Option<Dur>,
    pub ca_file: Option<PathBuf>,
}

/// `[state]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StateFile {
    pub dir: Option<PathBuf>,
    pub max_bytes: Option<ByteSize>,
}

/// `[webhooks]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhooksFile {
    pub listen: Option<std::net::SocketAddr>,
    pub path: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub max_body: Option<ByteSize>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// `[metrics]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricsFile {
    pub listen: Option<std::net::SocketAddr>,
    pub ready_max_lag: Option<Dur>,
}

/// `[listeners]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenersFile {
    pub header_timeout: Option<Dur>,
    pub body_timeout: Option<Dur>,
    pub idle_timeout: Option<Dur>,
    pub max_connections: Option<u64>,
    pub max_body_in_flight: Option<ByteSize>,
}

/// `[shutdown]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShutdownFile {
    pub grace_period: Option<Dur>,
}

/// `[[sink]] type = "stdout"`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StdoutSinkFile {
    pub name: Option<String>,
    pub events: Option<Vec<String>>,
    pub properties: Option<Vec<String>>,
}

/// `[[sink]] type = "file"`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileSinkFile {
    pub name: Option<String>,
    pub path: PathBuf,
    pub fsync: Option<FsyncFile>,
    pub fsync_interval: Option<Dur>,
    pub events: Option<Vec<String>>,
    pub properties: Option<Vec<String>>,
}

/// `[[sink]] type = "http"`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpSinkFile {
    pub name: Option<String>,
    pub url: String,
    pub method: Option<String>,
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    pub headers_file: Option<PathBuf>,
    pub timeout: Option<Dur>,
    pub batch_max: Option<u64>,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub retry_min: Option<Dur>,
    pub retry_max: Option<Dur>,
    pub give_up_after: Option<Dur>,
    pub events: Option<Vec<String>>,
    pub properties: Option<Vec<String>>,
}

/// `[[sink]] type = "nats"`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NatsSinkFile {
    pub name: Option<String>,
    pub servers: Vec<String>,
    pub subject: Option<String>,
    pub stream: String,
    pub create_stream: Option<bool>,
    pub max_age: Option<Dur>,
    pub duplicate_window: Option<Dur>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub nkey_seed_file: Option<PathBuf>,
    pub creds_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub ack_timeout: Option<Dur>,
    pub max_in_flight: Option<u64>,
    pub events: Option<Vec<String>>,
    pub properties: Option<Vec<String>>,
}

/// `fsync = "always" | "interval" | "never"`
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FsyncFile {
    Always,
    Interval,
    Never,
}

/// A duration written as a string with a unit: `"500ms"`, `"20s"`, `"5m"`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dur(pub Duration);

/// The configured duration, or `default` when the key is absent.
pub(crate) fn pick(value: Option<Dur>, default: Duration) -> Duration {
    value.map_or(default, |v| v.0)
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a duration string like "500ms", "20s" or "5m""#)
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Dur, E> {
                parse_duration(text).map(Dur).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    r#"durations are strings with a unit: write "{n}s" or "{n}ms", not {n}"#
                )))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Dur, E> {
                self.visit_i64(n as i64)
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    r#"durations are strings with a unit: write "{n}s", not {n}"#
                )))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Parses `"500ms"`, `"20s"`, `"1m 30s"`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|err| {
        format!(r#"invalid duration "{text}" ({err}); write a number and a unit, like "500ms", "20s" or "5m""#)
    })
}

/// A size in bytes: an integer, or a string like `"1MiB"`, `"512KiB"`, `"2MB"`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a size like 1048576, "1MiB" or "512KiB""#)
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<ByteSize, E> {
                parse_byte_size(text).map(ByteSize).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(n))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Parses `"1MiB"`, `"512 KiB"`, `"2MB"`, `"100"` (bytes).
pub(crate) fn parse_byte_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        _ => u64::MAX,
    };
    match number.parse::<u64>() {
        Ok(n) if multiplier != u64::MAX => n
            .checked_mul(multiplier)
            .ok_or_else(|| format!(r#"size "{text}" is too large"#)),
        _ => Err(format!(
            r#"invalid size "{text}"; write bytes or a number and a unit, like "1MiB" or "512KiB""#
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_and_without_units() {
        assert_eq!(parse_byte_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_byte_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_byte_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_byte_size("100"), Ok(100));
        assert!(parse_byte_size("1 parsec").is_err());
        assert!(parse_byte_size("MiB").is_err());
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert!(parse_duration("20").is_err());
        assert!(parse_duration("soon").is_err());
    }
}

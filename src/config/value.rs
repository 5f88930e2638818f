//! Values as the config writes them: durations with a unit, byte sizes, listen addresses, URLs
//! shown without their secrets. A leaf: it uses nothing else of `config`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

/// A duration written as a string with a unit: `"500ms"`, `"20s"`, `"5m"`.
#[derive(Debug, Clone, Copy)]
pub struct Dur(pub Duration);

/// The configured duration, or `default` when the key is absent.
pub fn pick(value: Option<Dur>, default: Duration) -> Duration {
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
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|err| {
        format!(r#"invalid duration "{text}" ({err}); write a number and a unit, like "500ms", "20s" or "5m""#)
    })
}

/// A size in bytes: an integer, or a string like `"1MiB"`, `"512KiB"`, `"2MB"`.
#[derive(Debug, Clone, Copy)]
pub struct ByteSize(pub u64);

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
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
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

/// Resolves a listen address as written: an IP address and port (`"127.0.0.1:9187"`,
/// `"[::1]:9187"`) as it is; `localhost` (and `*.localhost`) as 127.0.0.1 without a lookup
/// (RFC 6761: such names are loopback); any other host name through the system resolver
/// (/etc/hosts, DNS), taking its first IPv4 address, else its first address. This runs at
/// validation, so `check` prints, and the relay binds, the address the name had then.
pub fn resolve_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let example = r#"write host:port, like "127.0.0.1:9187" or "localhost:9187""#;
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(r#""{text}" has no port; {example}"#));
    };
    let Ok(port) = port.parse::<u16>() else {
        return Err(format!(r#""{text}" has no valid port; {example}"#));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!(r#""{text}" has no host; {example}"#));
    }
    let lower = host.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|err| {
            format!(r#"host "{host}" cannot be resolved ({err}); write an IP address, like "127.0.0.1:{port}""#)
        })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| {
            format!(r#"host "{host}" has no address; write an IP address, like "127.0.0.1:{port}""#)
        })
}

/// Durations written back the way they are read: `"20s"`.
pub mod human {
    use std::time::Duration;

    /// Serializes `d` as `"20s"`.
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// A retry policy written back as the two keys it is read from (`"500ms"`, `"60s"`).
pub fn policy_keys<S: serde::Serializer>(
    policy: &crate::retry::RetryPolicy,
    (min_key, max_key): (&'static str, &'static str),
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let format = |d: Duration| humantime::format_duration(d).to_string();
    let mut map = s.serialize_map(Some(2))?;
    map.serialize_entry(min_key, &format(policy.min()))?;
    map.serialize_entry(max_key, &format(policy.max()))?;
    map.end()
}

/// A URL with any user info and query replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, _)) => (base, "?***"),
        None => (url, ""),
    };
    match base.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((authority, path)) if authority.contains('@') => {
                format!(
                    "{scheme}://***@{}/{path}{query}",
                    authority.rsplit('@').next().unwrap_or_default()
                )
            }
            None if rest.contains('@') => format!(
                "{scheme}://***@{}{query}",
                rest.rsplit('@').next().unwrap_or_default()
            ),
            _ => format!("{base}{query}"),
        },
        None => format!("{base}{query}"),
    }
}

/// Serializes a URL through [`redact_url`].
pub fn redacted_url<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url))
}

/// Serializes an optional URL through [`redact_url`].
pub fn redacted_optional_url<S: serde::Serializer>(
    url: &Option<String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => s.serialize_str(&redact_url(url)),
        None => s.serialize_none(),
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

    #[test]
    fn listen_addresses_take_ips_and_localhost() {
        assert_eq!(
            resolve_listen("127.0.0.1:9187"),
            Ok("127.0.0.1:9187".parse().unwrap())
        );
        assert_eq!(
            resolve_listen("[::1]:9187"),
            Ok("[::1]:9187".parse().unwrap())
        );
        assert_eq!(
            resolve_listen("localhost:9187"),
            Ok("127.0.0.1:9187".parse().unwrap())
        );
        assert_eq!(
            resolve_listen("LocalHost:1"),
            Ok("127.0.0.1:1".parse().unwrap())
        );
        assert!(resolve_listen("localhost").unwrap_err().contains("no port"));
        assert!(
            resolve_listen("localhost:http")
                .unwrap_err()
                .contains("port")
        );
        assert!(resolve_listen(":9187").unwrap_err().contains("no host"));
    }

    #[test]
    fn urls_lose_user_info_and_query() {
        assert_eq!(redact_url("https://h.example/x"), "https://h.example/x");
        assert_eq!(
            redact_url("https://u:p@h.example/x?token=1"),
            "https://***@h.example/x?***"
        );
        assert_eq!(redact_url("http://u:p@h.example"), "http://***@h.example");
    }
}

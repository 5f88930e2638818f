//! A token that never prints: `Debug`, `Display` and `Serialize` all show `***`.

use std::fmt;

/// A secret string (a Mews token). Only [`Secret::expose`] reveals it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

/// A URL that may carry credentials in its user info or query: `Display` and `Debug` show it
/// with both masked (`config::redact_url`); [`SecretUrl::as_str`] gives the whole URL to
/// connect with.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The whole URL, credentials included, for the one place that connects with it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Serialized masked, as `Display` shows it (`check` prints settings this way).
impl serde::Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::config::redact_url(&self.0))
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_print_without_user_info_and_query() {
        let url = SecretUrl::new("wss://user:pa55@ws.example/ws/connector?AccessToken=abc");
        assert_eq!(url.to_string(), "wss://***@ws.example/ws/connector?***");
        assert_eq!(format!("{url:?}"), "wss://***@ws.example/ws/connector?***");
        assert!(url.as_str().contains("pa55"));
    }

    #[test]
    fn debug_display_and_serialize_mask_the_value() {
        let secret = Secret::new("C66EF7B239D24632943D115EDE9CB810");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(secret.to_string(), "***");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"***\"");
        assert_eq!(secret.expose(), "C66EF7B239D24632943D115EDE9CB810");
    }
}

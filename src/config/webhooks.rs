//! `[webhooks]`: the optional listener Mews POSTs its General and Integration webhooks to.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::shared::{ConfigError, CredentialsDir, Ctx, identity, secret};
use super::value::{ByteSize, resolve_listen};
use crate::secret::Secret;
use crate::tls::Identity;

/// Defaults of `[webhooks]`.
pub mod defaults {
    /// `[webhooks] listen`
    pub const WEBHOOKS_LISTEN: &str = "127.0.0.1:8088";
    /// `[webhooks] path`
    pub const WEBHOOKS_PATH: &str = "/mews/webhooks";
    /// `[webhooks] max_body`
    pub const WEBHOOKS_MAX_BODY: u64 = 1 << 20;
}

/// `[webhooks]` as the file has it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhooksFile {
    listen: Option<String>,
    path: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    max_body: Option<ByteSize>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

/// `[webhooks]`
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Webhooks {
    /// Address of the HTTP listener.
    pub listen: SocketAddr,
    /// Path Mews POSTs to.
    pub path: String,
    /// The shared secret Mews sends as `?Token=`.
    pub token: Secret,
    /// Larger bodies get 413.
    pub max_body: u64,
    /// Server certificate (PEM) for built-in TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// Its key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Read from `tls_cert` and `tls_key`.
    #[serde(skip)]
    pub tls: Option<Identity>,
}

impl WebhooksFile {
    /// Defaults filled in, the token resolved, the TLS identity read.
    pub(crate) fn validate(
        self,
        ctx: &Ctx<'_>,
        credentials: &CredentialsDir,
    ) -> Result<Webhooks, ConfigError> {
        let listen = resolve_listen(self.listen.as_deref().unwrap_or(defaults::WEBHOOKS_LISTEN))
            .map_err(|problem| ctx.err("webhooks.listen", problem))?;
        let path = self
            .path
            .unwrap_or_else(|| defaults::WEBHOOKS_PATH.to_owned());
        if !path.starts_with('/') || path.contains('?') {
            return Err(ctx.err(
                "webhooks.path",
                r#"must be a path starting with '/', like "/mews/webhooks""#,
            ));
        }
        let token = secret(
            ctx,
            "webhooks.token",
            self.token,
            self.token_file,
            "webhook_token",
            credentials,
        )?;
        if token.expose().len() < 16 {
            return Err(ctx.err("webhooks.token", "is shorter than 16 characters; use a long random string (e.g. `openssl rand -hex 24`) and give the same to Mews support"));
        }
        let max_body = self.max_body.map_or(defaults::WEBHOOKS_MAX_BODY, |b| b.0);
        if max_body < 1024 {
            return Err(ctx.err(
                "webhooks.max_body",
                "is below 1KiB; Mews sends batches of hundreds of events, use \"1MiB\"",
            ));
        }
        let tls = identity(
            ctx,
            ("webhooks.tls_cert", self.tls_cert.as_deref()),
            ("webhooks.tls_key", self.tls_key.as_deref()),
        )?;
        Ok(Webhooks {
            listen,
            path,
            token,
            max_body,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            tls,
        })
    }
}

//! `[commands]` and `[api]`: the device-command loop with Mews — which sink's deliveries set a
//! command `Received`, and the local API through which the key system reports its progress.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::mews::Mews;
use super::shared::{ConfigError, CredentialsDir, Ctx, secret};
use super::value::resolve_listen;
use crate::secret::Secret;

/// Defaults of `[api]`.
pub mod defaults {
    /// `[api] listen`
    pub const API_LISTEN: &str = "127.0.0.1:9188";
}

/// `[commands]` as the file has it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommandsFile {
    received_after: Option<String>,
}

/// `[api]` as the file has it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiFile {
    listen: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
}

/// `[commands]`: the relay's own part in the command loop.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Commands {
    /// When this sink has delivered a Pending DeviceCommand, the command is set `Received`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_after: Option<String>,
}

/// `[api]`: the local API of the key system.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Api {
    /// Address of the listener (loopback by default).
    pub listen: SocketAddr,
    /// Bearer token the key system sends.
    pub token: Secret,
}

impl CommandsFile {
    /// Checked against the configured sink names and the REST API it needs.
    pub(crate) fn validate(
        self,
        ctx: &Ctx<'_>,
        sink_names: &[&str],
        mews: &Mews,
    ) -> Result<Commands, ConfigError> {
        if let Some(name) = &self.received_after
            && !sink_names.contains(&name.as_str())
        {
            return Err(ctx.err(
                "commands.received_after",
                format!(
                    r#"names "{name}", which is no sink; use one of the sink names ({}), or give the sink that reaches the key system name = "{name}""#,
                    sink_names.join(", ")
                ),
            ));
        }
        mews.needs_rest(ctx, "commands")?;
        Ok(Commands {
            received_after: self.received_after,
        })
    }
}

impl ApiFile {
    /// A loopback listener by default, and a bearer token.
    pub(crate) fn validate(
        self,
        ctx: &Ctx<'_>,
        mews: &Mews,
        credentials: &CredentialsDir,
    ) -> Result<Api, ConfigError> {
        let listen = resolve_listen(self.listen.as_deref().unwrap_or(defaults::API_LISTEN))
            .map_err(|problem| ctx.err("api.listen", problem))?;
        let token = secret(
            ctx,
            "api.token",
            self.token,
            self.token_file,
            "api_token",
            credentials,
        )?;
        if token.expose().len() < 16 {
            return Err(ctx.err(
                "api.token",
                "is shorter than 16 characters; use a long random string (e.g. `openssl rand -hex 24`) and give the same to the key system",
            ));
        }
        mews.needs_rest(ctx, "api")?;
        if !listen.ip().is_loopback() {
            ctx.warn(
                "api.listen",
                format!(
                    "{listen} is not a loopback address, and the local API speaks plain HTTP: its bearer token and every command state cross the network unencrypted; keep it on 127.0.0.1 with the key system on this host, or reach it through a TLS proxy or tunnel"
                ),
            );
        }
        Ok(Api { listen, token })
    }
}

//! `[commands]` and `[api]`: the device-command loop with Mews — which sink's deliveries set a
//! command `Received`, and the local API through which the key system reports its progress.

use super::file::{ApiFile, CommandsFile};
use super::validate::{CredentialsDir, Ctx, secret};
use super::{Api, Commands, ConfigError, Mews, SinkSettings, defaults};

/// `[commands]`, checked against the sinks and the REST API it needs.
pub(super) fn commands(
    ctx: &Ctx<'_>,
    raw: Option<CommandsFile>,
    sinks: &[SinkSettings],
    mews: &Mews,
) -> Result<Option<Commands>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    if let Some(name) = &raw.received_after
        && !sinks.iter().any(|s| &s.name == name)
    {
        let names: Vec<&str> = sinks.iter().map(|s| s.name.as_str()).collect();
        return Err(ctx.err(
            "commands.received_after",
            format!(
                r#"names "{name}", which is no sink; use one of the sink names ({}), or give the sink that reaches the key system name = "{name}""#,
                names.join(", ")
            ),
        ));
    }
    needs_rest(ctx, "commands", mews)?;
    Ok(Some(Commands {
        received_after: raw.received_after,
    }))
}

/// `[api]`: a loopback listener by default, and a bearer token.
pub(super) fn api(
    ctx: &Ctx<'_>,
    raw: Option<ApiFile>,
    mews: &Mews,
    credentials: &CredentialsDir,
) -> Result<Option<Api>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let listen = match raw.listen {
        Some(addr) => addr,
        None => defaults::API_LISTEN
            .parse()
            .map_err(|_| ctx.err("api.listen", "bad default"))?,
    };
    let token = secret(
        ctx,
        "api.token",
        raw.token,
        raw.token_file,
        "api_token",
        credentials,
    )?;
    if token.expose().len() < 16 {
        return Err(ctx.err(
            "api.token",
            "is shorter than 16 characters; use a long random string (e.g. `openssl rand -hex 24`) and give the same to the key system",
        ));
    }
    needs_rest(ctx, "api", mews)?;
    Ok(Some(Api { listen, token }))
}

/// The command loop sets states through the Mews REST API.
fn needs_rest(ctx: &Ctx<'_>, section: &str, mews: &Mews) -> Result<(), ConfigError> {
    if mews.api_url.is_none() {
        return Err(ctx.err(
            "mews.api_url",
            format!(
                "is needed by [{section}]: command states are set through the Mews REST API; set api_url = \"https://api.mews.com\" (or the demo's)"
            ),
        ));
    }
    Ok(())
}

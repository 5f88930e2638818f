//! `[mews]`, `[catch_up]` and `[enrich]`: the Mews endpoints and tokens, and what the relay
//! asks the REST API for.

use http::Uri;

use super::file::{CatchUpFile, EnrichFile, MewsFile, pick};
use super::validate::{CredentialsDir, Ctx, secret};
use super::{CatchUp, ConfigError, Enrich, Mews, defaults};

/// The longest `UpdatedUtc` interval Mews accepts (3 months; 90 days stays inside it).
pub(super) const MAX_REST_WINDOW: std::time::Duration =
    std::time::Duration::from_secs(90 * 24 * 3600);

/// `[catch_up]`, with its defaults.
pub(super) fn catch_up(ctx: &Ctx<'_>, raw: CatchUpFile) -> Result<CatchUp, ConfigError> {
    let catch_up = CatchUp {
        commands: raw.commands.unwrap_or(true),
        reservations: raw.reservations.unwrap_or(false),
        reservations_since: pick(raw.reservations_since, defaults::RESERVATIONS_SINCE),
        margin: pick(raw.margin, defaults::CATCH_UP_MARGIN),
        dedupe_window: pick(raw.dedupe_window, defaults::DEDUPE_WINDOW),
    };
    if catch_up.reservations_since > MAX_REST_WINDOW {
        return Err(ctx.err(
            "catch_up.reservations_since",
            "is longer than 90 days, the longest UpdatedUtc window Mews allows; use e.g. \"1h\"",
        ));
    }
    if catch_up.dedupe_window.is_zero() {
        return Err(ctx.err(
            "catch_up.dedupe_window",
            "must be longer than zero; it should cover the longest outage, e.g. \"24h\"",
        ));
    }
    Ok(catch_up)
}

/// `[enrich]`, with its defaults.
pub(super) fn enrich(ctx: &Ctx<'_>, raw: EnrichFile) -> Result<Enrich, ConfigError> {
    let enrich = Enrich {
        commands: raw.commands.unwrap_or(true),
        timeout: pick(raw.timeout, defaults::ENRICH_TIMEOUT),
    };
    if enrich.timeout.is_zero() {
        return Err(ctx.err("enrich.timeout", "must be longer than zero, e.g. \"2s\""));
    }
    Ok(enrich)
}

pub(super) fn mews(
    ctx: &Ctx<'_>,
    raw: MewsFile,
    credentials: &CredentialsDir,
) -> Result<Mews, ConfigError> {
    let Some(websocket_url) = raw.websocket_url else {
        return Err(ctx.err(
            "mews.websocket_url",
            r#"missing; set it to "wss://ws.mews.com/ws/connector" (production) or "wss://ws.mews-demo.com/ws/connector" (demo)"#,
        ));
    };
    let uri: Uri = websocket_url.parse().map_err(|err| {
        ctx.err(
            "mews.websocket_url",
            format!(r#"is not a URL ({err}); write it like "wss://ws.mews.com/ws/connector""#),
        )
    })?;
    match uri.scheme_str() {
        Some("ws" | "wss") => {}
        Some("http" | "https") => {
            return Err(ctx.err(
                "mews.websocket_url",
                r#"must start with wss:// (Mews WebSockets live on their own host: "wss://ws.mews.com/ws/connector", not the API address)"#,
            ));
        }
        _ => {
            return Err(ctx.err(
                "mews.websocket_url",
                r#"must start with wss:// or ws://, like "wss://ws.mews.com/ws/connector""#,
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(ctx.err(
            "mews.websocket_url",
            "has no host; write it like \"wss://ws.mews.com/ws/connector\"",
        ));
    }
    if let Some(api) = &raw.api_url {
        let ok = api.parse::<Uri>().ok().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
        });
        if !ok {
            return Err(ctx.err(
                "mews.api_url",
                r#"must be an http(s) URL, like "https://api.mews.com""#,
            ));
        }
    }
    let client_token = secret(
        ctx,
        "mews.client_token",
        raw.client_token,
        raw.client_token_file,
        "client_token",
        credentials,
    )?;
    let client = raw.client.unwrap_or_else(|| defaults::CLIENT.to_owned());
    if client.trim().is_empty() {
        return Err(ctx.err(
            "mews.client",
            "is empty; Mews wants the name and version of the client, e.g. \"mews-relay 0.1.0\"",
        ));
    }
    let rate_limit = raw.rate_limit.unwrap_or(defaults::RATE_LIMIT);
    if rate_limit == 0 {
        return Err(ctx.err(
            "mews.rate_limit",
            "must be at least 1; Mews allows 200 requests per AccessToken per 30s",
        ));
    }
    let request_timeout = raw
        .request_timeout
        .map_or(defaults::REQUEST_TIMEOUT, |d| d.0);
    let rate_window = raw.rate_window.map_or(defaults::RATE_WINDOW, |d| d.0);
    for (key, value) in [
        ("mews.request_timeout", request_timeout),
        ("mews.rate_window", rate_window),
    ] {
        if value.is_zero() {
            return Err(ctx.err(key, "must be longer than zero"));
        }
    }
    Ok(Mews {
        api_url: raw
            .api_url
            .map(|u| u.trim_end_matches('/').to_owned())
            .or_else(|| derived_api_url(&websocket_url)),
        websocket_url,
        client_token,
        client,
        request_timeout,
        rate_limit,
        rate_window,
    })
}

/// A warning when `[mews] client` is the default every installation sends.
pub(super) fn client_warning(ctx: &Ctx<'_>, mews: &Mews) -> Option<String> {
    (mews.client == defaults::CLIENT).then(|| {
        ctx.warning(
            "mews.client",
            format!(
                r#"is left at the default "{}", which every mews-relay installation sends; Mews (guidelines/requests.md): "All API operations require the inclusion of `ClientToken`, `AccessToken` and `Client` in the request. These parameters authenticate incoming requests.", `Client` being the "Name and version of the client application"; name your integration in [mews], e.g. client = "Hotel Chain Keys 2.1""#,
                defaults::CLIENT
            ),
        )
    })
}

/// Mews's own WebSocket hosts imply their REST address.
fn derived_api_url(websocket_url: &str) -> Option<String> {
    let host = websocket_url.parse::<Uri>().ok()?.host()?.to_owned();
    match host.as_str() {
        "ws.mews.com" => Some("https://api.mews.com".into()),
        "ws.mews-demo.com" => Some("https://api.mews-demo.com".into()),
        _ => None,
    }
}

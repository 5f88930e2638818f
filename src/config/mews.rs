//! `[mews]`: the Mews endpoints, the integration's ClientToken, and how the REST API is
//! called (client name, timeout, rate limit).

use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use serde::{Deserialize, Serialize};

use super::shared::{ConfigError, CredentialsDir, Ctx, secret};
use super::value::{Dur, human, pick, redact_url, redacted_optional_url, redacted_url};
use crate::secret::Secret;

/// Defaults of `[mews]`.
pub mod defaults {
    use std::time::Duration;

    /// `[mews] client`: the name and version sent as `Client` when the config names none.
    pub const CLIENT: &str = concat!("mews-relay ", env!("CARGO_PKG_VERSION"));
    /// `[mews] request_timeout`
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    /// `[mews] rate_limit`: Mews allows 200 requests per AccessToken per 30 s.
    pub const RATE_LIMIT: u32 = 200;
    /// `[mews] rate_window`
    pub const RATE_WINDOW: Duration = Duration::from_secs(30);
}

/// `[mews]` as the file has it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MewsFile {
    websocket_url: Option<String>,
    api_url: Option<String>,
    client_token: Option<String>,
    client_token_file: Option<PathBuf>,
    client: Option<String>,
    request_timeout: Option<Dur>,
    rate_limit: Option<u32>,
    rate_window: Option<Dur>,
}

/// `[mews]` (`Debug` and `check` show the URLs without user info and query).
#[derive(Clone, PartialEq, Serialize)]
pub struct Mews {
    /// `ws://` or `wss://` URL of the WebSocket endpoint.
    #[serde(serialize_with = "redacted_url")]
    pub websocket_url: String,
    /// REST base URL (catch-up and enrichment); none: neither runs.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "redacted_optional_url"
    )]
    pub api_url: Option<String>,
    /// The integration's ClientToken.
    pub client_token: Secret,
    /// `Client` sent with every REST request (name and version).
    pub client: String,
    /// Limit for one REST request.
    #[serde(with = "human")]
    pub request_timeout: Duration,
    /// At most this many REST requests per AccessToken per `rate_window`.
    pub rate_limit: u32,
    /// The window of `rate_limit`.
    #[serde(with = "human")]
    pub rate_window: Duration,
}

impl std::fmt::Debug for Mews {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mews")
            .field("websocket_url", &redact_url(&self.websocket_url))
            .field("api_url", &self.api_url.as_deref().map(redact_url))
            .field("client_token", &self.client_token)
            .field("client", &self.client)
            .field("request_timeout", &self.request_timeout)
            .field("rate_limit", &self.rate_limit)
            .field("rate_window", &self.rate_window)
            .finish()
    }
}

impl MewsFile {
    /// The URLs checked (the REST one derived from Mews's own WebSocket hosts), the
    /// ClientToken resolved, defaults filled in.
    pub(crate) fn validate(
        self,
        ctx: &Ctx<'_>,
        credentials: &CredentialsDir,
    ) -> Result<Mews, ConfigError> {
        let websocket_url = websocket_url(ctx, self.websocket_url)?;
        if let Some(api) = &self.api_url {
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
        mews_addresses(ctx, &websocket_url, self.api_url.as_deref())?;
        let client_token = secret(
            ctx,
            "mews.client_token",
            self.client_token,
            self.client_token_file,
            "client_token",
            credentials,
        )?;
        let client = self.client.unwrap_or_else(|| defaults::CLIENT.to_owned());
        if client.trim().is_empty() {
            return Err(ctx.err(
                "mews.client",
                "is empty; Mews wants the name and version of the client, e.g. \"mews-relay 0.1.0\"",
            ));
        }
        let rate_limit = self.rate_limit.unwrap_or(defaults::RATE_LIMIT);
        if rate_limit == 0 {
            return Err(ctx.err(
                "mews.rate_limit",
                "must be at least 1; Mews allows 200 requests per AccessToken per 30s",
            ));
        }
        let request_timeout = pick(self.request_timeout, defaults::REQUEST_TIMEOUT);
        let rate_window = pick(self.rate_window, defaults::RATE_WINDOW);
        for (key, value) in [
            ("mews.request_timeout", request_timeout),
            ("mews.rate_window", rate_window),
        ] {
            if value.is_zero() {
                return Err(ctx.err(key, "must be longer than zero"));
            }
        }
        Ok(Mews {
            api_url: self
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
}

/// `websocket_url`: present, `ws://` or `wss://`, with a host.
fn websocket_url(ctx: &Ctx<'_>, url: Option<String>) -> Result<String, ConfigError> {
    let Some(url) = url else {
        return Err(ctx.err(
            "mews.websocket_url",
            r#"missing; set it to "wss://ws.mews.com/ws/connector" (production) or "wss://ws.mews-demo.com/ws/connector" (demo)"#,
        ));
    };
    let uri: Uri = url.parse().map_err(|err| {
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
    Ok(url)
}

impl Mews {
    /// A warning when `client` is the default every installation sends.
    pub(crate) fn client_warning(&self, ctx: &Ctx<'_>) -> Option<String> {
        (self.client == defaults::CLIENT).then(|| {
            ctx.warning(
                "mews.client",
                format!(
                    r#"is left at the default "{}", which every mews-relay installation sends; Mews (guidelines/requests.md): "All API operations require the inclusion of `ClientToken`, `AccessToken` and `Client` in the request. These parameters authenticate incoming requests.", `Client` being the "Name and version of the client application"; name your integration in [mews], e.g. client = "Hotel Chain Keys 2.1""#,
                    defaults::CLIENT
                ),
            )
        })
    }

    /// The command loop sets states through the REST API: an error for `section` without it.
    pub(crate) fn needs_rest(&self, ctx: &Ctx<'_>, section: &str) -> Result<(), ConfigError> {
        if self.api_url.is_none() {
            return Err(ctx.err(
                "mews.api_url",
                format!(
                    "is needed by [{section}]: command states are set through the Mews REST API; set api_url = \"https://api.mews.com\" (or the demo's)"
                ),
            ));
        }
        Ok(())
    }
}

/// Mews's environments: what each calls its WebSocket and its REST hosts (mews-api.md §1.1).
const ENVIRONMENTS: [(&str, &str, &str); 2] = [
    ("production", "ws.mews.com", "api.mews.com"),
    ("demo", "ws.mews-demo.com", "api.mews-demo.com"),
];

/// The path of Mews's WebSocket endpoint on its WebSocket host.
const WS_PATH: &str = "/ws/connector";

/// The environment whose WebSocket host (`ws`) or REST host (`!ws`) is `host`.
fn environment(host: &str, ws: bool) -> Option<(&'static str, &'static str, &'static str)> {
    ENVIRONMENTS
        .into_iter()
        .find(|(_, w, a)| host.eq_ignore_ascii_case(if ws { w } else { a }))
}

/// The URLs checked against what Mews serves where: the WebSocket on its own host at
/// `/ws/connector` over TLS, the REST API on the other host, both of one environment (tokens
/// are per environment). Mews's own hosts are held to that; another host (a proxy, the
/// simulator) only draws a warning for a path other than `/ws/connector`.
fn mews_addresses(
    ctx: &Ctx<'_>,
    websocket_url: &str,
    api_url: Option<&str>,
) -> Result<(), ConfigError> {
    let ws: Uri = websocket_url
        .parse()
        .map_err(|_| ctx.err("mews.websocket_url", "is not a URL"))?;
    let ws_host = ws.host().unwrap_or_default();
    let ws_env = environment(ws_host, true);
    let example = r#"use "wss://ws.mews.com/ws/connector" (production) or "wss://ws.mews-demo.com/ws/connector" (demo)"#;
    if ws_host.to_ascii_lowercase().ends_with("mews.li") {
        return Err(ctx.err(
            "mews.websocket_url",
            format!("\"{ws_host}\" is an address Mews retired in 2021; {example}"),
        ));
    }
    if let Some((env, ws_right, _)) = environment(ws_host, false) {
        return Err(ctx.err(
            "mews.websocket_url",
            format!(
                r#""{ws_host}" is the {env} REST API's host, and Mews does not serve WebSockets there ("WebSockets use a different domain than the rest of the Connector API"); use "wss://{ws_right}{WS_PATH}""#
            ),
        ));
    }
    if ws.path() != WS_PATH {
        let problem = format!(
            r#"the path is "{}", and Mews's WebSocket is at {WS_PATH} (anything else is answered 404)"#,
            ws.path()
        );
        match ws_env {
            Some((_, host, _)) => {
                return Err(ctx.err(
                    "mews.websocket_url",
                    format!(r#"{problem}; use "wss://{host}{WS_PATH}""#),
                ));
            }
            None => ctx.warn(
                "mews.websocket_url",
                format!("{problem}; fine only for a proxy that forwards it there, else {example}"),
            ),
        }
    }
    if let Some((_, host, _)) = ws_env
        && ws.scheme_str() != Some("wss")
    {
        return Err(ctx.err(
            "mews.websocket_url",
            format!(r#"Mews serves WebSockets over TLS only; use "wss://{host}{WS_PATH}""#),
        ));
    }
    let Some(api) = api_url.and_then(|u| u.parse::<Uri>().ok()) else {
        return Ok(());
    };
    let api_host = api.host().unwrap_or_default();
    if let Some((env, _, api_right)) = environment(api_host, true) {
        return Err(ctx.err(
            "mews.api_url",
            format!(
                r#""{api_host}" is the {env} WebSocket host; the REST API is "https://{api_right}""#
            ),
        ));
    }
    if api.path().contains("/api/connector") {
        return Err(ctx.err(
            "mews.api_url",
            r#"holds the operations' path; write the base address only, like "https://api.mews.com" (the relay adds /api/connector/v1/…)"#,
        ));
    }
    if let (Some((ws_env, ws_host, api_wanted)), Some((api_env, ..))) =
        (ws_env, environment(api_host, false))
        && ws_env != api_env
    {
        return Err(ctx.err(
            "mews.api_url",
            format!(
                r#"is Mews {api_env} ("{api_host}") while websocket_url is Mews {ws_env} ("{ws_host}"): tokens are per environment, so one of the two would refuse them; use both of one environment, e.g. api_url = "https://{api_wanted}""#
            ),
        ));
    }
    Ok(())
}

/// Mews's own WebSocket hosts imply their REST address.
fn derived_api_url(websocket_url: &str) -> Option<String> {
    let host = websocket_url.parse::<Uri>().ok()?.host()?.to_owned();
    environment(&host, true).map(|(_, _, api)| format!("https://{api}"))
}

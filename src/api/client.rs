//! The command line's side of the local API: `mews-relay command set-state`, `command show`,
//! `status`, `reload` and `dead-letters replay` talk to the running relay through `[api]`,
//! with its token.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::config::Settings;
use crate::journal::commands::Update;

/// How long the command line waits for the relay.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why the relay did not take the request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The config has no `[api]`.
    #[error(
        "{0}: no [api] section: the local API is off; add [api] with listen and token (see README \"Device integration\")"
    )]
    NotConfigured(String),
    /// Nothing answers on the address.
    #[error(
        "no mews-relay answers on {addr} ([api] listen): {cause}; is the relay running with this config? (systemctl status mews-relay)"
    )]
    Unreachable {
        /// The API address.
        addr: SocketAddr,
        /// Why.
        cause: String,
    },
    /// The relay answered with an error.
    #[error("the relay answered {status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Its `Message`.
        message: String,
    },
}

/// A client for the running relay's API.
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    addr: SocketAddr,
    token: crate::secret::Secret,
}

impl ApiClient {
    /// For the relay running with `settings`.
    pub fn new(settings: &Settings) -> Result<ApiClient, ClientError> {
        let api = settings
            .api
            .as_ref()
            .ok_or_else(|| ClientError::NotConfigured(settings.origin.display().to_string()))?;
        // A relay listening on every address answers on loopback too.
        let mut addr = api.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let unreachable = |cause: String| ClientError::Unreachable { addr, cause };
        let tls =
            crate::tls::client_config(&[], None).map_err(|err| unreachable(err.to_string()))?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .timeout(TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|err| unreachable(crate::httpx::describe(&err)))?;
        Ok(ApiClient {
            http,
            base: format!("http://{addr}"),
            addr,
            token: api.token.clone(),
        })
    }

    /// `POST /v1/commands/{id}`: the command as the relay knows it now.
    pub async fn set_state(
        &self,
        id: &str,
        update: &Update,
        property: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut url = format!("{}/v1/commands/{}", self.base, encode(id));
        if let Some(property) = property {
            url.push_str(&format!("?property={}", encode(property)));
        }
        let body = serde_json::to_vec(update).unwrap_or_default();
        let request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.send(request).await
    }

    /// `GET /v1/commands/{id}`.
    pub async fn command(&self, id: &str) -> Result<Value, ClientError> {
        let url = format!("{}/v1/commands/{}", self.base, encode(id));
        self.send(self.http.get(url)).await
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Value, ClientError> {
        self.send(self.http.get(format!("{}/v1/status", self.base)))
            .await
    }

    /// `POST /v1/reload`: `{"Generation": n}` once the relay took the request (its outcome
    /// follows in the status); a refused file is [`ClientError::Refused`] (422).
    pub async fn reload(&self) -> Result<Value, ClientError> {
        self.send(self.http.post(format!("{}/v1/reload", self.base)))
            .await
    }

    /// `POST /v1/dead-letters/{sink}/replay`: `{"Sink", "Replayed"}`.
    pub async fn replay(&self, sink: &str) -> Result<Value, ClientError> {
        let url = format!("{}/v1/dead-letters/{}/replay", self.base, encode(sink));
        self.send(self.http.post(url)).await
    }

    /// The address it talks to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let response = request
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(|err| ClientError::Unreachable {
                addr: self.addr,
                cause: crate::httpx::describe(&err),
            })?;
        let status = response.status();
        let bytes = response.bytes().await.unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let message = body["Message"]
            .as_str()
            .map_or_else(|| status.to_string(), str::to_owned);
        Err(ClientError::Refused {
            status: status.as_u16(),
            message,
        })
    }
}

/// A path or query segment, percent-encoded.
fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

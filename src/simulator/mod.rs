//! A Mews-compatible server for `simulate`, `demo` and tests: the WebSocket (cookie auth,
//! realistic events of the four documented types at a chosen rate), the REST operations the
//! relay uses over an in-memory hotel ([`Hotel`]) answered as Mews answers them, General
//! webhooks, `POST /sim/commands` to make a key command on demand, and faults on demand.

mod api;
mod events;
mod hotel;
mod webhooks;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get, post};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use api::REQUEST_ID;
pub use events::EventFactory;
pub use hotel::{
    Call, CommandState, CommandUpdate, Hotel, Live, NewKeyCommand, OPERATIONS, Refusal,
};
pub use webhooks::WebhookRetry;

/// How a dropped connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DropMode {
    /// A TCP reset, no Close frame (the socket is closed with SO_LINGER 0).
    #[default]
    Reset,
    /// A Close frame (1012, service restart), then the TCP close.
    Close,
}

/// The path Mews serves its WebSocket on.
pub const WS_PATH: &str = "/ws/connector";

/// The REST operations live under this path (`api_url` is the server's root).
pub const REST_PATH: &str = "/api/connector/v1";

/// `POST` here makes a key command (see [`NewKeyCommand`]); not a Mews address.
pub const SIM_COMMANDS_PATH: &str = "/sim/commands";

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Events per second on each connection.
    pub rate: f64,
    /// Events in one `{"Events":[…]}` message.
    pub events_per_message: usize,
    /// When set, the `ClientToken` cookie must equal it; otherwise any value is accepted.
    pub client_token: Option<String>,
    /// When set, the `AccessToken` cookie must equal it; otherwise any value is accepted.
    pub access_token: Option<String>,
    /// When set, General webhooks are POSTed here (include `?Token=…`), one every 2 seconds.
    pub webhook_url: Option<String>,
    /// How webhooks that were not accepted are sent again (see [`WebhookRetry`]).
    pub webhook_retry: WebhookRetry,
    /// Fault: each connection is dropped this long after it opened.
    pub drop_every: Option<Duration>,
    /// Fault: how connections are dropped.
    pub drop_mode: DropMode,
    /// Fault: this long after it opened, a connection goes silent (no events, no pongs).
    pub silent_after: Option<Duration>,
    /// Fault: every upgrade is refused with this status (e.g. 401 or 503).
    pub reject_status: Option<u16>,
    /// Fault: every n-th message is malformed (0: never).
    pub malformed_every: u32,
    /// Fault: every n-th REST call is answered 429 (0: never).
    pub rest_429_every: u32,
    /// Fault: those 429s come without `Retry-After` (else `Retry-After: 1`).
    pub rest_429_without_retry_after: bool,
    /// Fault: these REST operations are answered 403 (a business rule refuses them).
    pub rest_403: Vec<String>,
    /// Fault: REST requests asking for more than this many items (a page, or `CommandIds`) get
    /// 408.
    pub rest_408_above: Option<u64>,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            rate: 2.0,
            events_per_message: 1,
            client_token: None,
            access_token: None,
            webhook_url: None,
            webhook_retry: WebhookRetry::default(),
            drop_every: None,
            drop_mode: DropMode::Reset,
            silent_after: None,
            reject_status: None,
            malformed_every: 0,
            rest_429_every: 0,
            rest_429_without_retry_after: false,
            rest_403: Vec::new(),
            rest_408_above: None,
        }
    }
}

struct Shared {
    config: SimulatorConfig,
    shutdown: CancellationToken,
    hotel: Arc<Hotel>,
}

/// Serves a new hotel until `shutdown`, then closes every connection with 1001. Two key
/// commands are already pending, as if made before the relay connected: its catch-up finds them.
pub async fn serve(
    listener: TcpListener,
    config: SimulatorConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let hotel = Arc::new(Hotel::new());
    for _ in 0..2 {
        hotel.create_key_command(false);
    }
    serve_hotel(listener, config, hotel, shutdown).await
}

/// Why `mews-relay simulate` stopped.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// The address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// `--listen`
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("simulator failed: {0}")]
    Serve(std::io::Error),
}

/// `mews-relay simulate`: binds `listen`, says where everything is, and [`serve`]s until
/// `shutdown`.
pub async fn serve_on(
    listen: std::net::SocketAddr,
    config: SimulatorConfig,
    shutdown: CancellationToken,
) -> Result<(), SimulateError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| SimulateError::Listen {
            addr: listen,
            source,
        })?;
    tracing::info!(
        "simulator listening on ws://{listen}{WS_PATH} (REST API: api_url = \"http://{listen}\"; new key commands: POST http://{listen}{SIM_COMMANDS_PATH})"
    );
    serve(listener, config, shutdown)
        .await
        .map_err(SimulateError::Serve)
}

/// [`serve_hotel`] on a fresh loopback port, in a task of its own, until the returned token is
/// cancelled; returns the port's address (tests and benchmarks that drive the hotel).
pub async fn serve_hotel_locally(
    hotel: Arc<Hotel>,
    config: SimulatorConfig,
) -> std::io::Result<(SocketAddr, CancellationToken)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    tokio::spawn(serve_hotel(listener, config, hotel, stop.clone()));
    Ok((addr, stop))
}

/// The same with a hotel the caller holds (tests create commands and reservations in it).
pub async fn serve_hotel(
    listener: TcpListener,
    config: SimulatorConfig,
    hotel: Arc<Hotel>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Some(url) = config.webhook_url.clone() {
        tokio::spawn(webhooks::send(url, config.webhook_retry, shutdown.clone()));
    }
    if config.rest_429_every > 0 {
        let retry_after = (!config.rest_429_without_retry_after).then_some(1);
        hotel.throttle_every(config.rest_429_every, retry_after);
    }
    for operation in &config.rest_403 {
        hotel.refuse(operation);
    }
    if config.rest_408_above.is_some() {
        hotel.too_heavy_above(config.rest_408_above);
    }
    let reset = config.drop_mode == DropMode::Reset && config.drop_every.is_some();
    let shared = Arc::new(Shared {
        config,
        shutdown: shutdown.clone(),
        hotel,
    });
    let app = Router::new()
        .route(WS_PATH, get(ws::upgrade))
        .route(&format!("{REST_PATH}/{{*operation}}"), any(api::rest))
        .route(SIM_COMMANDS_PATH, post(api::sim_commands))
        .with_state(shared);
    let listener = listener.tap_io(move |tcp| {
        let _ = tcp.set_nodelay(true);
        if reset {
            // Closing then sends a reset instead of a FIN: the "RST" fault.
            let _ = socket2::SockRef::from(&*tcp).set_linger(Some(Duration::ZERO));
        }
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
}

//! `mews-relay demo`: the simulator (Mews), the relay and a small key system in one process,
//! records printed on stdout. The whole device-command loop shows: a key command is created in
//! Mews, journaled, enriched and printed; the key system (fed by an HTTP sink) receives it, the
//! relay sets it `Received` in Mews; the key system reports `Processing` and `Processed`
//! through the local API, the relay applies them in Mews, and Mews's events for each new state
//! come back and print too.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::api::client::ApiClient;
use crate::app::{self, AppError, Control};
use crate::config::{ConfigError, CredentialsDir, Settings};
use crate::journal::commands::Update;
use crate::simulator::{self, SimulatorConfig};

/// The built-in demo config: the shipped `config/demo.toml`.
pub const CONFIG: &str = include_str!("../config/demo.toml");
/// How long the demo key system takes per step (cutting a key is not instant).
const STEP: Duration = Duration::from_millis(1500);

/// How busy the demo's hotel is, and how long the demo runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Events per second.
    pub rate: f64,
    /// Events per WebSocket message.
    pub events_per_message: usize,
    /// Stop after this long; none: until a signal.
    pub duration: Option<Duration>,
}

/// Why the demo cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The built-in config is broken (a bug).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A temporary directory or a loopback port is not available.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A demo ready to run: its settings (pointed at the in-process parts) and their listeners.
pub struct Demo {
    /// The relay's settings.
    pub settings: Settings,
    simulator: std::net::TcpListener,
    simulator_config: SimulatorConfig,
    duration: Option<Duration>,
    key_system: std::net::TcpListener,
    state: tempfile::TempDir,
}

/// A loopback listener on a free port, ready for tokio.
fn loopback() -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

impl Demo {
    /// `config/demo.toml` with the simulator, the key system, the webhook listener and the API
    /// on free loopback ports and a temporary state directory.
    pub fn prepare(options: Options) -> Result<Demo, DemoError> {
        let state = tempfile::Builder::new()
            .prefix("mews-relay-demo-")
            .tempdir()?;
        let simulator = loopback()?;
        let addr = simulator.local_addr()?;
        let key_system = loopback()?;
        // The key system gets the DeviceCommand records over HTTP, as a real one would.
        let text = format!(
            "{CONFIG}\n[[sink]]\ntype = \"http\"\nname = \"key-system\"\nurl = \"http://{}/keys\"\nevents = [\"DeviceCommand\"]\nretry_min = \"200ms\"\nretry_max = \"2s\"\n",
            key_system.local_addr()?
        );
        let mut settings = Settings::from_toml(
            &text,
            Path::new("config/demo.toml (built in)"),
            &CredentialsDir::default(),
        )?;
        settings.mews.websocket_url = format!("ws://{addr}{}", simulator::WS_PATH);
        settings.mews.api_url = Some(format!("http://{addr}"));
        settings.state.dir = state.path().to_owned();
        if let Some(commands) = settings.commands.as_mut() {
            commands.received_after = Some("key-system".into());
        }
        if let Some(api) = settings.api.as_mut() {
            api.listen = free_port()?;
        }
        // The webhook listener gets a free port, and the simulator posts to it.
        let mut webhook_url = None;
        if let Some(webhooks) = settings.webhooks.as_mut() {
            webhooks.listen = free_port()?;
            webhook_url = Some(format!(
                "http://{}{}?Token={}",
                webhooks.listen,
                webhooks.path,
                webhooks.token.expose()
            ));
        }
        let simulator_config = SimulatorConfig {
            rate: options.rate,
            events_per_message: options.events_per_message,
            webhook_url,
            ..SimulatorConfig::default()
        };
        Ok(Demo {
            settings,
            simulator,
            simulator_config,
            duration: options.duration,
            key_system,
            state,
        })
    }

    /// What the demo is: where the simulator listens (`ws://…/ws/connector`), where the
    /// journal lives, and what to expect.
    pub fn describe(&self) -> String {
        format!(
            "simulator on {}, journal in {}; records print below, one JSON line each. A small key system takes the key commands and reports Processing and Processed through the relay's API. Ctrl-C stops.",
            self.settings.mews.websocket_url,
            self.state.path().display()
        )
    }

    /// Runs the simulator, the key system and the relay until `control.shutdown` (or the
    /// demo's duration).
    pub async fn run(self, control: Control) -> Result<(), AppError> {
        if let Some(after) = self.duration {
            control.stop_after(after);
        }
        let stop = CancellationToken::new();
        let simulator = tokio::net::TcpListener::from_std(self.simulator)?;
        let sim = tokio::spawn(simulator::serve(
            simulator,
            self.simulator_config,
            stop.clone(),
        ));
        let keys = match ApiClient::new(&self.settings) {
            Ok(client) => {
                let listener = tokio::net::TcpListener::from_std(self.key_system)?;
                Some(tokio::spawn(key_system(
                    listener,
                    Arc::new(client),
                    stop.clone(),
                )))
            }
            Err(err) => {
                tracing::warn!(error = %err, "the demo key system is off");
                None
            }
        };
        let result = app::run(self.settings, control).await;
        stop.cancel();
        let _ = sim.await;
        if let Some(keys) = keys {
            let _ = keys.await;
        }
        drop(self.state);
        result
    }
}

/// The demo key system: takes DeviceCommand records over HTTP and, for each new command,
/// reports `Processing` then `Processed` through the relay's API.
async fn key_system(
    listener: tokio::net::TcpListener,
    client: Arc<ApiClient>,
    stop: CancellationToken,
) {
    let router = Router::new()
        .route("/keys", post(take_record))
        .with_state(client);
    if let Err(err) = axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(error = %err, "the demo key system stopped");
    }
}

async fn take_record(State(client): State<Arc<ApiClient>>, body: Bytes) -> StatusCode {
    let Ok(record) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let pending = record["type"] == "DeviceCommand" && record["state"] == "Pending";
    if let (true, Some(id)) = (pending, record["id"].as_str()) {
        let id = id.to_owned();
        let notes = match &record["command"]["Data"] {
            data if data["LockIds"].is_array() => format!(
                "{} key(s) cut for {}",
                data["KeyCount"].as_u64().unwrap_or(1),
                data["LockIds"]
                    .as_array()
                    .map(|rooms| rooms
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default()
            ),
            _ => "done".to_owned(),
        };
        tokio::spawn(async move {
            let steps = [
                Update {
                    state: "Processing".into(),
                    progress: Some(0.5),
                    notes: None,
                },
                Update {
                    state: "Processed".into(),
                    progress: None,
                    notes: Some(notes),
                },
            ];
            for step in steps {
                tokio::time::sleep(STEP).await;
                if let Err(err) = client.set_state(&id, &step, None).await {
                    tracing::debug!(error = %err, command = %id, "demo key system: update refused");
                    return;
                }
            }
        });
    }
    StatusCode::OK
}

//! The command line: what `mews-relay --help` shows. The doc comments below are the help
//! text, so items the help does not describe carry `//` comments instead.
// So `[api]` names a config table and `<sink>` a placeholder: not rustdoc links or HTML.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::logging::LogFormat;
use crate::simulator::{DropMode, SimulatorConfig};

/// Relays Mews WebSocket events, durably, to stdout, files and more.
#[derive(Parser)]
#[command(name = "mews-relay", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format: text lines, JSON lines (for log shippers), or native journald fields. The
    /// default picks journald under systemd (JOURNAL_STREAM set), else text.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
    /// Log level or filter (e.g. "debug", "info,mews_relay::sink=debug"); default: RUST_LOG, else
    /// "info".
    #[arg(long, global = true)]
    pub log_level: Option<String>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon.
    Run(ConfigArg),
    /// Validate a config and try what `run` would need, then print it with secrets masked.
    ///
    /// Tries state.dir and every file sink's directory for writing and every listen address
    /// for binding, leaving nothing behind. Exit 0 when all is well, 64 naming the bad key
    /// (and, on a read-only file system, the directory for systemd's ReadWritePaths=), 75 when
    /// a listen address is in use. Warnings go to stderr and keep exit 0 unless --strict.
    Check(CheckArgs),
    /// Serve a Mews-compatible WebSocket and REST API over a simulated hotel, with faults on demand.
    ///
    /// The WebSocket is at /ws/connector (cookie ClientToken=…;AccessToken=…); the REST
    /// operations commands/getAllActive, commands/getAllByIds, commands/update and
    /// reservations/getAll/2023-06-06 are under /api/connector/v1/ (api_url = "http://<listen>"),
    /// answered as Mews answers: a Request-Id header on every answer, errors as
    /// {"Message": …, "RequestId": …}, 401 for bad tokens, 403 for a refused operation, commands
    /// changed only by commands/update (a final state refuses further updates).
    ///
    /// POST /sim/commands makes a key-cutter command as a front desk would, for trying a key
    /// system: the body is empty or {"AccessToken": "…", "KeyCutterId": "…", "ReservationId":
    /// "…", "KeyCount": 1} (all optional: without AccessToken every property sees the command);
    /// the answer is {"CommandId": "…"} (400 {"Message": …} for an unknown reservation or key
    /// cutter), and connected WebSockets get its Pending DeviceCommand event. Example:
    /// curl -X POST http://127.0.0.1:8765/sim/commands -d '{"KeyCount": 2}'
    #[command(verbatim_doc_comment)]
    Simulate(SimulateArgs),
    /// Run the simulator and the relay together and print events to stdout.
    Demo(DemoArgs),
    /// Show the running relay at a glance (through [api]): each property's connection, each
    /// sink's lag, dead letters and trouble, the last reload. Exit 0 when all is well, 1 when
    /// not (the problems are listed), 64 for a bad config or no [api], 69 when no relay
    /// answers, 77 when it refuses the token.
    Status(StatusArgs),
    /// Have the running relay read its config again and apply what changed (for ExecReload=);
    /// waits for the outcome through [api]. Exit 0 when applied, 1 when the relay refused it
    /// or it could not start (the reason on stderr), 64 when the file is invalid, 69 when no
    /// relay answers. Without [api] it sends SIGHUP to --pid and cannot learn the outcome.
    Reload(ReloadArgs),
    /// Work with the records sinks gave up on (<state.dir>/dead-letter/<sink>.jsonl).
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Report a device command's state to Mews through the running relay ([api]).
    #[command(name = "command")]
    Commands {
        #[command(subcommand)]
        action: CommandAction,
    },
    /// Print a shell completion script.
    ///
    /// E.g. `mews-relay completions bash > /usr/share/bash-completion/completions/mews-relay`,
    /// `mews-relay completions zsh > /usr/local/share/zsh/site-functions/_mews-relay`,
    /// `mews-relay completions fish > /usr/share/fish/vendor_completions.d/mews-relay.fish`.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
pub enum CommandAction {
    /// Set a command's state (Received, Processing, Processed, Cancelled, Error): the relay
    /// journals it and applies it in Mews. Prints the command as the relay knows it.
    SetState {
        /// The command's id (the record's `id`).
        id: String,
        /// The new state.
        #[arg(value_parser = ["Received", "Processing", "Processed", "Cancelled", "Error"])]
        state: String,
        /// Notes, with Processed, Cancelled or Error.
        #[arg(long)]
        notes: Option<String>,
        /// Progress from 0 to 1, with Processing.
        #[arg(long)]
        progress: Option<f64>,
        /// The property, for a command the relay never saw.
        #[arg(long)]
        property: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show a command: its last event state, the last state asked for and Mews's answer.
    Show {
        /// The command's id.
        id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
pub enum DeadLetterAction {
    /// Put a sink's dead letters back into the journal for another try, for that sink only:
    /// through the running relay's API ([api]), or, when no relay runs, on the journal itself.
    Replay {
        /// The sink's name.
        #[arg(long)]
        sink: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List a sink's dead letters (oldest first) with why each was given up on.
    List {
        /// The sink's name.
        #[arg(long)]
        sink: String,
        /// One JSON object per line, as the dead-letter file holds them.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Args)]
pub struct StatusArgs {
    /// The status document as JSON (what GET /v1/status answers).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Args)]
pub struct ReloadArgs {
    /// Without [api]: the relay's process to send SIGHUP (systemd sets MAINPID for ExecReload=).
    #[arg(long, env = "MAINPID")]
    pub pid: Option<i32>,
    /// How long to wait for the outcome (a reload that restarts everything drains the sinks
    /// first, within shutdown.grace_period).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Args)]
pub struct ConfigArg {
    /// The config file (TOML).
    #[arg(
        long,
        short,
        env = "MEWS_RELAY_CONFIG",
        default_value = "/etc/mews-relay/mews-relay.toml"
    )]
    pub config: PathBuf,
}

#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Print errors only: no config, no warnings (for ExecStartPre=).
    #[arg(long, short)]
    pub quiet: bool,
    /// Treat warnings as errors (exit 64).
    #[arg(long)]
    pub strict: bool,
}

#[derive(Args)]
pub struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8765")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub events: EventArgs,
    /// Accept only this ClientToken (default: any non-empty one).
    #[arg(long)]
    pub client_token: Option<String>,
    /// Accept only this AccessToken (default: any non-empty one).
    #[arg(long)]
    pub access_token: Option<String>,
    /// Also POST Mews General webhooks here every 2 s (include ?Token=…); one not accepted
    /// (an error status, or no answer within 5 s) is sent again 2 minutes after each failure,
    /// 3 deliveries in all.
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// Fault: drop every connection this long after it opened (e.g. "30s").
    #[arg(long, value_parser = humantime::parse_duration)]
    pub drop_every: Option<Duration>,
    /// Fault: how --drop-every drops a connection.
    #[arg(long, value_enum, default_value_t = DropArg::Rst)]
    pub drop_mode: DropArg,
    /// Fault: this long after it opened, a connection goes silent (no events, no pongs).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub silent_after: Option<Duration>,
    /// Fault: refuse every WebSocket upgrade with this HTTP status (e.g. 401 or 503).
    #[arg(long)]
    pub reject: Option<u16>,
    /// Fault: every N-th WebSocket message is malformed JSON.
    #[arg(long, default_value_t = 0)]
    pub malformed_every: u32,
    /// Fault: every N-th REST call is answered 429 with Retry-After: 1 (on top of Mews's own
    /// limit, always on: 200 calls per AccessToken in any 30 s).
    #[arg(long, default_value_t = 0)]
    rest_429_every: u32,
    /// Fault: the 429s of --rest-429-every come without Retry-After (Mews: "In some cases the
    /// header may not be present").
    #[arg(long)]
    rest_429_no_retry_after: bool,
    /// Fault: answer this REST operation 403, a business-rule refusal (e.g.
    /// "reservations/getAll/2023-06-06"); may be given more than once.
    #[arg(long, value_name = "OPERATION")]
    rest_403: Vec<String>,
    /// Fault: answer 408 Request Timeout to REST requests asking for more than N items (a page's
    /// Limitation.Count, or the CommandIds of commands/getAllByIds).
    #[arg(long, value_name = "N")]
    rest_408_above: Option<u64>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum DropArg {
    /// TCP reset, no Close frame.
    Rst,
    /// Close frame 1012, then TCP close.
    Close,
}

#[derive(Args)]
pub struct EventArgs {
    /// Events per second on each connection.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Events in each WebSocket message.
    #[arg(long, default_value_t = 1)]
    pub events_per_message: usize,
}

#[derive(Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub events: EventArgs,
    /// Stop after this long (e.g. "10s"); default: run until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
}

impl CommandAction {
    /// The config the command reads (to find the relay's API).
    pub fn config(&self) -> &std::path::Path {
        match self {
            CommandAction::SetState { config, .. } | CommandAction::Show { config, .. } => {
                &config.config
            }
        }
    }

    /// Asks the running relay through `client`; its answer.
    pub async fn run(
        &self,
        client: &crate::api::client::ApiClient,
    ) -> Result<serde_json::Value, crate::api::client::ClientError> {
        match self {
            CommandAction::SetState {
                id,
                state,
                notes,
                progress,
                property,
                ..
            } => {
                let update = crate::journal::commands::Update {
                    state: state.clone(),
                    progress: *progress,
                    notes: notes.clone(),
                };
                client.set_state(id, &update, property.as_deref()).await
            }
            CommandAction::Show { id, .. } => client.command(id).await,
        }
    }
}

impl DemoArgs {
    /// How busy the demo's hotel is, and how long the demo runs.
    pub fn options(&self) -> crate::demo::Options {
        crate::demo::Options {
            rate: self.events.rate,
            events_per_message: self.events.events_per_message,
            duration: self.duration,
        }
    }
}

impl SimulateArgs {
    /// The simulator's settings from the flags.
    pub fn simulator_config(self) -> SimulatorConfig {
        SimulatorConfig {
            rate: self.events.rate,
            events_per_message: self.events.events_per_message,
            client_token: self.client_token,
            access_token: self.access_token,
            webhook_url: self.webhook_url,
            drop_every: self.drop_every,
            drop_mode: match self.drop_mode {
                DropArg::Rst => DropMode::Reset,
                DropArg::Close => DropMode::Close,
            },
            silent_after: self.silent_after,
            reject_status: self.reject,
            malformed_every: self.malformed_every,
            rest_429_every: self.rest_429_every,
            rest_429_without_retry_after: self.rest_429_no_retry_after,
            rest_403: self.rest_403,
            rest_408_above: self.rest_408_above,
            ..SimulatorConfig::default()
        }
    }
}

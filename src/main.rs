//! The `mews-relay` command: CLI, logging, signals, exit codes. The daemon is `app::run`.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mews_relay::app::{self, AppError, Control, ControlHandle};
use mews_relay::config::{CredentialsDir, Settings};
use mews_relay::simulator::{self, SimulatorConfig};
use tokio_util::sync::CancellationToken;

/// Exit code for a bad config (sysexits' EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit code when the journal cannot be opened (sysexits' EX_IOERR).
const EXIT_JOURNAL: u8 = 74;
/// Exit code when no relay answers on its API (sysexits' EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

/// Relays Mews WebSocket events, durably, to stdout, files and more.
#[derive(Parser)]
#[command(name = "mews-relay", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format: text lines, JSON lines (for log shippers), or native journald fields. The
    /// default picks journald under systemd (JOURNAL_STREAM set), else text.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    /// Log level or filter (e.g. "debug", "info,mews_relay::sink=debug"); default: RUST_LOG, else
    /// "info".
    #[arg(long, global = true)]
    log_level: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Auto,
    Text,
    Json,
    Journald,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run(ConfigArg),
    /// Validate a config and print it with secrets masked (exit 0), or name the bad key (exit 64).
    Check(ConfigArg),
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
}

#[derive(Subcommand)]
enum CommandAction {
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
enum DeadLetterAction {
    /// Put a sink's dead letters back into the journal for another try (stop the daemon first).
    Replay {
        /// The sink's name.
        #[arg(long)]
        sink: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Args)]
struct ConfigArg {
    /// The config file (TOML).
    #[arg(
        long,
        short,
        env = "MEWS_RELAY_CONFIG",
        default_value = "/etc/mews-relay/mews-relay.toml"
    )]
    config: PathBuf,
}

#[derive(Args)]
struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8765")]
    listen: SocketAddr,
    #[command(flatten)]
    events: EventArgs,
    /// Accept only this ClientToken (default: any non-empty one).
    #[arg(long)]
    client_token: Option<String>,
    /// Accept only this AccessToken (default: any non-empty one).
    #[arg(long)]
    access_token: Option<String>,
    /// Also POST Mews General webhooks here every 2 s (include ?Token=…).
    #[arg(long)]
    webhook_url: Option<String>,
    /// Fault: drop every connection this long after it opened (e.g. "30s").
    #[arg(long, value_parser = humantime::parse_duration)]
    drop_every: Option<Duration>,
    /// Fault: how --drop-every drops a connection.
    #[arg(long, value_enum, default_value_t = DropArg::Rst)]
    drop_mode: DropArg,
    /// Fault: this long after it opened, a connection goes silent (no events, no pongs).
    #[arg(long, value_parser = humantime::parse_duration)]
    silent_after: Option<Duration>,
    /// Fault: refuse every WebSocket upgrade with this HTTP status (e.g. 401 or 503).
    #[arg(long)]
    reject: Option<u16>,
    /// Fault: every N-th WebSocket message is malformed JSON.
    #[arg(long, default_value_t = 0)]
    malformed_every: u32,
    /// Fault: every N-th REST call is answered 429 with Retry-After: 1.
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
    /// Fault: answer 408 Request Timeout to paged REST requests whose Limitation.Count is above N.
    #[arg(long, value_name = "N")]
    rest_408_above: Option<u64>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DropArg {
    /// TCP reset, no Close frame.
    Rst,
    /// Close frame 1012, then TCP close.
    Close,
}

#[derive(Args)]
struct EventArgs {
    /// Events per second on each connection.
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// Events in each WebSocket message.
    #[arg(long, default_value_t = 1)]
    events_per_message: usize,
}

#[derive(Args)]
struct DemoArgs {
    #[command(flatten)]
    events: EventArgs,
    /// Stop after this long (e.g. "10s"); default: run until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.log_level.as_deref());
    // One crypto provider for every TLS client and server in the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Check(args) => check(&args.config),
        Command::Run(args) => match load(&args.config) {
            Ok(settings) => {
                raise_descriptor_limit();
                let rt = runtime();
                let code = run_daemon(&rt, settings, Some(args.config.clone()), None);
                // A sink stuck in a blocking write (a full stdout pipe) must not hold the exit.
                rt.shutdown_timeout(Duration::from_secs(1));
                code
            }
            Err(code) => code,
        },
        Command::Simulate(args) => simulate(args),
        Command::Demo(args) => demo(args),
        Command::DeadLetters {
            action: DeadLetterAction::Replay { sink, config },
        } => match load(&config.config) {
            Ok(settings) => replay(&settings, &sink),
            Err(code) => code,
        },
        Command::Commands { action } => command(action),
    }
}

/// `mews-relay command …`: through the running relay's API; the answer on stdout as JSON.
fn command(action: CommandAction) -> ExitCode {
    use mews_relay::api::client::{ApiClient, ClientError};
    let config = match &action {
        CommandAction::SetState { config, .. } | CommandAction::Show { config, .. } => {
            &config.config
        }
    };
    let settings = match load(config) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let client = match ApiClient::new(&settings) {
        Ok(client) => client,
        Err(err) => {
            eprintln!("mews-relay: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = runtime().block_on(async {
        match &action {
            CommandAction::SetState {
                id,
                state,
                notes,
                progress,
                property,
                ..
            } => {
                let update = mews_relay::journal::commands::Update {
                    state: state.clone(),
                    progress: *progress,
                    notes: notes.clone(),
                };
                client.set_state(id, &update, property.as_deref()).await
            }
            CommandAction::Show { id, .. } => client.command(id).await,
        }
    });
    match result {
        Ok(answer) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err(err @ ClientError::Unreachable { .. }) => {
            eprintln!("mews-relay: {err}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
        Err(err) => {
            eprintln!("mews-relay: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Libraries whose trace level prints raw requests and bytes on the wire: tungstenite the
/// upgrade request with its `Cookie: ClientToken=…; AccessToken=…`, reqwest and hyper REST
/// bodies (which carry the tokens) and sink headers. Their trace events are dropped at any log
/// level; their debug events say nothing secret.
const WIRE_TARGETS: [&str; 9] = [
    "tungstenite",
    "tokio_tungstenite",
    "hyper",
    "h2",
    "reqwest",
    "rustls",
    "tokio_rustls",
    "async_nats",
    "axum",
];

/// Whether an event or span may be logged: not a trace of a [`WIRE_TARGETS`] library.
fn not_wire_trace(meta: &tracing::Metadata<'_>) -> bool {
    *meta.level() != tracing::Level::TRACE
        || !WIRE_TARGETS.iter().any(|t| {
            meta.target().strip_prefix(t).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with("::") || rest.starts_with('_')
            })
        })
}

/// Logs to stderr; plain under journald (it adds its own timestamps), coloured on a terminal.
/// Logs go to stderr (or journald), never stdout.
fn init_logging(format: LogFormat, level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // async-nats logs every failed reconnect itself; the NATS sink reports changes once.
    let default = "info,async_nats=off";
    let filter = match level {
        Some(level) => EnvFilter::try_new(level).unwrap_or_else(|err| {
            eprintln!(
                "mews-relay: --log-level {level:?} is not a level or filter ({err}); using \"info\""
            );
            EnvFilter::new(default)
        }),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
    };
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    let format = match format {
        LogFormat::Auto if under_systemd => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        other => other,
    };
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::filter::filter_fn(not_wire_trace));
    match format {
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(journald) => {
                return registry
                    .with(journald.with_syslog_identifier("mews-relay".into()))
                    .init();
            }
            Err(err) => {
                eprintln!("mews-relay: journald is not reachable ({err}); logging text to stderr")
            }
        },
        LogFormat::Json => {
            let json = tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr);
            return registry.with(json).init();
        }
        _ => {}
    }
    let text = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if under_systemd {
        registry.with(text.without_time()).init();
    } else {
        registry.with(text).init();
    }
}

/// Raises the soft descriptor limit to the hard one (systemd's default soft limit is 1,024);
/// listeners fit their connection caps to what it is afterwards.
fn raise_descriptor_limit() {
    match mews_relay::listener::fds::raise_limit() {
        Ok((before, after)) if before != after => {
            tracing::debug!(
                before,
                after,
                "raised the soft descriptor limit (RLIMIT_NOFILE)"
            )
        }
        Ok(_) => {}
        Err(err) => {
            tracing::warn!(error = %err, "cannot raise the descriptor limit (RLIMIT_NOFILE); listeners keep within the current one")
        }
    }
}

fn load(path: &Path) -> Result<Settings, ExitCode> {
    Settings::load(path, &CredentialsDir::from_env()).map_err(|err| {
        eprintln!("mews-relay: config error: {err}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn check(path: &Path) -> ExitCode {
    match load(path) {
        Ok(settings) => {
            for warning in &settings.warnings {
                eprintln!("warning: {warning}");
            }
            println!(
                "# {}: valid (secrets masked)\n{}",
                path.display(),
                settings.to_toml()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn replay(settings: &Settings, sink: &str) -> ExitCode {
    match runtime().block_on(mews_relay::sink::dead_letter::replay(settings, sink)) {
        Ok(count) => {
            eprintln!(
                "mews-relay: {count} dead letters of \"{sink}\" are back in the journal; they are delivered when the relay runs"
            );
            ExitCode::SUCCESS
        }
        Err(err @ mews_relay::sink::dead_letter::ReplayError::Journal(_)) => {
            eprintln!("mews-relay: {err}");
            ExitCode::from(EXIT_JOURNAL)
        }
        Err(err) => {
            eprintln!("mews-relay: {err}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|err| {
            eprintln!("mews-relay: cannot start the async runtime: {err}");
            std::process::exit(1)
        })
}

/// Runs the relay with signal handling, optionally stopping after a while. With `config`,
/// SIGHUP reloads it.
fn run_daemon(
    rt: &tokio::runtime::Runtime,
    settings: Settings,
    config: Option<PathBuf>,
    stop_after: Option<Duration>,
) -> ExitCode {
    rt.block_on(async {
        let (control, handle) = Control::new();
        tokio::spawn(handle_signals(
            control.shutdown.clone(),
            Some(handle),
            config,
        ));
        if let Some(after) = stop_after {
            let shutdown = control.shutdown.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                shutdown.cancel();
            });
        }
        exit_code(app::run(settings, control).await)
    })
}

fn exit_code(result: Result<(), AppError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err @ AppError::Journal(_)) => {
            eprintln!("mews-relay: {err}");
            ExitCode::from(EXIT_JOURNAL)
        }
        Err(err) => {
            eprintln!("mews-relay: {err}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM/SIGINT: shut down, and at once on the second one. SIGHUP: reopen files, and with a
/// config file, reload it (an invalid one is refused and the running config stays).
async fn handle_signals(
    shutdown: CancellationToken,
    handle: Option<ControlHandle>,
    config: Option<PathBuf>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hup.recv() => {
                if let Some(handle) = &handle {
                    reload(handle, config.as_deref());
                }
                continue;
            }
        };
        if shutdown.is_cancelled() {
            tracing::warn!(signal = name, "second signal: exiting now");
            std::process::exit(130);
        }
        tracing::info!(
            signal = name,
            "shutting down; send it again to exit at once"
        );
        shutdown.cancel();
    }
}

fn reload(handle: &ControlHandle, config: Option<&Path>) {
    handle.reopen.send_modify(|n| *n += 1);
    let Some(path) = config else {
        return tracing::info!("SIGHUP: files reopened");
    };
    match Settings::load(path, &CredentialsDir::from_env()) {
        Ok(settings) => {
            tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration (WebSockets reconnect)");
            handle.reload.send_replace(Some(Arc::new(settings)));
        }
        Err(err) => {
            tracing::error!(error = %err, "SIGHUP: the new configuration is invalid and was not applied; the running one stays")
        }
    }
}

fn simulate(args: SimulateArgs) -> ExitCode {
    runtime().block_on(async {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(listener) => listener,
            Err(err) => {
                eprintln!("mews-relay: cannot listen on {}: {err}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let config = SimulatorConfig {
            rate: args.events.rate,
            events_per_message: args.events.events_per_message,
            client_token: args.client_token,
            access_token: args.access_token,
            webhook_url: args.webhook_url,
            drop_every: args.drop_every,
            drop_mode: match args.drop_mode {
                DropArg::Rst => simulator::DropMode::Reset,
                DropArg::Close => simulator::DropMode::Close,
            },
            silent_after: args.silent_after,
            reject_status: args.reject,
            malformed_every: args.malformed_every,
            rest_429_every: args.rest_429_every,
            rest_429_without_retry_after: args.rest_429_no_retry_after,
            rest_403: args.rest_403,
            rest_408_above: args.rest_408_above,
        };
        tracing::info!(
            "simulator listening on ws://{}{} (REST API: api_url = \"http://{}\"; new key commands: POST http://{}{})",
            args.listen,
            simulator::WS_PATH,
            args.listen,
            args.listen,
            simulator::SIM_COMMANDS_PATH
        );
        let (control, _handle) = Control::new();
        tokio::spawn(handle_signals(control.shutdown.clone(), None, None));
        match simulator::serve(listener, config, control.shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("mews-relay: simulator failed: {err}");
                ExitCode::FAILURE
            }
        }
    })
}

fn demo(args: DemoArgs) -> ExitCode {
    raise_descriptor_limit();
    let options = mews_relay::demo::Options {
        rate: args.events.rate,
        events_per_message: args.events.events_per_message,
    };
    let demo = match mews_relay::demo::Demo::prepare(options) {
        Ok(demo) => demo,
        Err(err) => {
            eprintln!("mews-relay: cannot start the demo: {err}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "mews-relay demo: {}; records print below, one JSON line each. A small key system takes the key commands and reports Processing and Processed through the relay's API. Ctrl-C stops.",
        demo.describe()
    );
    let rt = runtime();
    let code = rt.block_on(async {
        let (control, _handle) = Control::new();
        tokio::spawn(handle_signals(control.shutdown.clone(), None, None));
        if let Some(after) = args.duration {
            let shutdown = control.shutdown.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                shutdown.cancel();
            });
        }
        exit_code(demo.run(control).await)
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

//! The `mews-relay` command: parse the command line, set up logging and TLS, run the chosen
//! command, map its outcome to an exit code. The daemon is `app::run`; the CLI is `cli`.

#![forbid(unsafe_code)]

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use mews_relay::api::client::{ApiClient, ClientError};
use mews_relay::app::{self, AppError, Control, signals};
use mews_relay::cli::{
    CheckArgs, Cli, Command, CommandAction, DeadLetterAction, DemoArgs, SimulateArgs,
};
use mews_relay::config::{CredentialsDir, Settings};
use mews_relay::ctl;
use mews_relay::preflight::{Preflight, PreflightError, preflight};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a bad config (sysexits' EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit code when the journal cannot be opened (sysexits' EX_IOERR).
const EXIT_JOURNAL: u8 = 74;
/// Exit code when no relay answers on its API (sysexits' EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code when a listen address is in use now (sysexits' EX_TEMPFAIL: systemd's
/// Restart= tries again, where 64 and 74 are not retried).
const EXIT_TEMPFAIL: u8 = 75;

fn main() -> ExitCode {
    let cli = Cli::parse();
    mews_relay::logging::init(cli.log_format, cli.log_level.as_deref());
    // One crypto provider for every TLS client and server in the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Check(args) => check(&args),
        Command::Run(args) => {
            let settings = load(&args.config);
            // The same checks as `check`: what would fail later fails now, naming the key.
            try_start(&settings);
            app::raise_descriptor_limit();
            let run = |control| async { exit_code(app::run(settings, control).await) };
            daemon(run, Some(args.config))
        }
        Command::Simulate(args) => simulate(args),
        Command::Demo(args) => demo(args),
        Command::DeadLetters {
            action: DeadLetterAction::Replay { sink, config },
        } => {
            let settings = load(&config.config);
            ExitCode::from(runtime().block_on(ctl::replay(&settings, &sink)))
        }
        Command::DeadLetters {
            action: DeadLetterAction::List { sink, json, config },
        } => ExitCode::from(ctl::list_dead_letters(&load(&config.config), &sink, json)),
        Command::Status(args) => {
            let settings = load(&args.config.config);
            ExitCode::from(runtime().block_on(ctl::status(&settings, args.json)))
        }
        Command::Reload(args) => ExitCode::from(runtime().block_on(ctl::reload(
            &args.config.config,
            args.pid,
            args.wait,
        ))),
        Command::Commands { action } => command(action),
        Command::Completions { shell } => completions(shell),
    }
}

/// The preflight of `check` and `run`, or the process ends naming the key (exit 64, or 75 for
/// a listen address in use).
fn try_start(settings: &Settings) -> Preflight {
    preflight(settings).unwrap_or_else(|err| match err {
        PreflightError::Config(err) => exit(EXIT_CONFIG, format!("config error: {err}")),
        PreflightError::Busy(err) => exit(EXIT_TEMPFAIL, format!("cannot start: {err}")),
    })
}

/// The validated config, or the process ends with the error naming the key (exit 64).
fn load(path: &Path) -> Settings {
    Settings::load(path, &CredentialsDir::from_env())
        .unwrap_or_else(|err| exit(EXIT_CONFIG, format!("config error: {err}")))
}

/// Prints `err` as `mews-relay: …` and ends the process with `code`.
fn exit(code: u8, err: impl Display) -> ! {
    eprintln!("mews-relay: {err}");
    std::process::exit(code.into())
}

/// Prints `err` as `mews-relay: …` and gives `code`.
fn fail(code: u8, err: impl Display) -> ExitCode {
    eprintln!("mews-relay: {err}");
    ExitCode::from(code)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|err| exit(1, format!("cannot start the async runtime: {err}")))
}

/// Runs `run` until it ends or a signal stops it; SIGHUP reloads `reload`, the config file of
/// `run`, when given, and is ignored otherwise.
fn daemon<F, Fut>(run: F, reload: Option<PathBuf>) -> ExitCode
where
    F: FnOnce(Control) -> Fut,
    Fut: Future<Output = ExitCode>,
{
    let rt = runtime();
    let code = rt.block_on(async {
        let (control, steer) = Control::new();
        signals::spawn(control.shutdown.clone(), steer, reload);
        run(control).await
    });
    // A sink stuck in a blocking write (a full stdout pipe) must not hold the exit.
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

fn exit_code(result: Result<(), AppError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err @ AppError::Journal(_)) => fail(EXIT_JOURNAL, err),
        Err(err) => fail(1, err),
    }
}

/// `check`: validation and the preflight `run` does; the config with secrets masked on
/// stdout, its warnings on stderr (none of either with `--quiet`); with `--strict` a warning
/// is an error (exit 64).
fn check(args: &CheckArgs) -> ExitCode {
    let path = &args.config.config;
    let settings = load(path);
    let preflight = try_start(&settings);
    if args.strict && !settings.warnings.is_empty() {
        for warning in &settings.warnings {
            eprintln!("mews-relay: config error (--strict): {warning}");
        }
        return ExitCode::from(EXIT_CONFIG);
    }
    if args.quiet {
        return ExitCode::SUCCESS;
    }
    for warning in &settings.warnings {
        eprintln!("warning: {warning}");
    }
    for note in &preflight.notes {
        eprintln!("note: {note}");
    }
    println!(
        "# {}: valid (secrets masked)\n{}",
        path.display(),
        settings.to_toml()
    );
    ExitCode::SUCCESS
}

/// `completions SHELL`: the script on stdout.
fn completions(shell: clap_complete::Shell) -> ExitCode {
    use clap_complete::Generator;
    use std::io::Write;
    let mut cli = Cli::command();
    cli.set_bin_name("mews-relay");
    cli.build();
    let mut script = Vec::new();
    if let Err(err) = shell.try_generate(&cli, &mut script) {
        return fail(1, format!("cannot write the {shell} completions: {err}"));
    }
    match std::io::stdout().lock().write_all(&script) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(1, format!("cannot write the {shell} completions: {err}")),
    }
}

/// `command …`: through the running relay's API; the answer on stdout as JSON.
fn command(action: CommandAction) -> ExitCode {
    let client =
        ApiClient::new(&load(action.config())).unwrap_or_else(|err| exit(EXIT_CONFIG, err));
    match runtime().block_on(action.run(&client)) {
        Ok(answer) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err(err @ ClientError::Unreachable { .. }) => fail(EXIT_UNAVAILABLE, err),
        Err(err) => fail(1, err),
    }
}

/// `simulate`: the Mews simulator until a signal.
fn simulate(args: SimulateArgs) -> ExitCode {
    let (listen, config) = (args.listen, args.simulator_config());
    daemon(
        |control| async move {
            match mews_relay::simulator::serve_on(listen, config, control.shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => fail(1, err),
            }
        },
        None,
    )
}

/// `demo`: simulator, relay and key system in one process, records on stdout.
fn demo(args: DemoArgs) -> ExitCode {
    app::raise_descriptor_limit();
    let demo = mews_relay::demo::Demo::prepare(args.options())
        .unwrap_or_else(|err| exit(1, format!("cannot start the demo: {err}")));
    eprintln!("mews-relay demo: {}", demo.describe());
    daemon(|control| async { exit_code(demo.run(control).await) }, None)
}

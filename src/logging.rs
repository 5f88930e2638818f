//! Logging set-up, once, first in `main`: stderr (text or JSON lines) or journald, never
//! stdout, and never the trace events in which libraries print tokens on the wire.

use std::io::IsTerminal;

// The help of `--log-format` lists these values (doc comments would add to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
    Journald,
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
pub fn init(format: LogFormat, level: Option<&str>) {
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

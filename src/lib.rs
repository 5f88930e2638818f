//! mews-relay: holds one Mews WebSocket per property, journals every event durably, and
//! delivers it at least once to each configured sink.
//!
//! ```text
//!  Mews WS ──▶ source::Source (one per property: connect, ping, reconnect with backoff)
//!                 │ record::decode: {"Events":[…]} → one Record per event, raw JSON kept
//!                 │ (anything undecodable → rejects: rejected.jsonl, counted, logged)
//!  Mews REST ─▶ mews::catch_up after every connect (getAllActive, reservations since the mark)
//!  Webhooks ─▶ ingress::Ingress (token, shape; 202 only after the commit)
//!                 ▼
//!            journal::Journal (redb; group commit, one fsync per batch; seq numbers)
//!                 │   ▲ mews::enrich: DeviceCommands journaled pending, settled with `command`
//!                 │   │ (commands/getAllByIds); sinks see only what is settled, in order
//!                 │           │
//!        cursor "stdout"   cursor "file:…"     (each sink its own task and cursor)
//!                 ▼           ▼
//!            sink::StdoutSink  sink::FileSink  sink::HttpSink (→ dead letters)
//! ```
//!
//! The WebSocket reader never waits on a sink: the journal is the only hand-off. `app::run`
//! wires it all and drains on shutdown.

#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod demo;
pub(crate) mod failures;
pub(crate) mod files;
pub(crate) mod httpx;
pub mod ingress;
pub mod journal;
pub(crate) mod listener;
pub mod logging;
pub(crate) mod metrics;
pub(crate) mod mews;
pub(crate) mod ops;
pub mod preflight;
pub mod record;
pub mod rejects;
pub(crate) mod retry;
pub mod secret;
pub mod simulator;
pub mod sink;
pub(crate) mod source;
pub mod stats;
pub mod tls;

pub use app::{Control, run};
pub use config::{ConfigError, Settings};
pub use metrics::MetricsError;
pub use mews::RestError;
pub use record::Record;

//! `type = "nats"`: records published into a NATS JetStream stream, each with `Nats-Msg-Id` set
//! to the record key so the stream drops a redelivery.

mod config;
mod sink;

pub use config::{NatsAuth, NatsSettings};
pub use sink::NatsSink;

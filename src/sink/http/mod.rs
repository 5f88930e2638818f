//! `type = "http"`: records POSTed to an HTTP endpoint, retried with backoff (and
//! `Retry-After`) until delivered, dead-lettered on a refusal or after `give_up_after`.

mod config;
mod sink;

pub use config::HttpSettings;
pub use sink::HttpSink;

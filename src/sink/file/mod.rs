//! `type = "file"`: JSON lines appended to a file, with a chosen fsync policy and reopen for
//! logrotate.

mod config;
mod sink;

pub use config::{FileSettings, Fsync};
pub use sink::FileSink;

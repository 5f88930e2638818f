//! The keys of `type = "file"`: the file and when written lines are forced to disk.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::FileSink;
use crate::config::ConfigError;
use crate::config::value::{Dur, human, pick};
use crate::sink::registry::{At, BuildEnv, SinkType};

/// `fsync_interval` when the table gives none.
pub const FSYNC_INTERVAL: Duration = Duration::from_secs(1);

/// The table as serde reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkFile {
    path: PathBuf,
    fsync: Option<Fsync>,
    fsync_interval: Option<Dur>,
}

/// `type = "file"`
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileSettings {
    /// The file; parent directories are created.
    pub path: PathBuf,
    /// When written lines are forced to disk.
    pub fsync: Fsync,
    /// With `fsync = "interval"`: the longest a written line waits for fsync.
    #[serde(with = "human")]
    pub fsync_interval: Duration,
}

/// When a file sink calls fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// After every batch, before the cursor moves.
    Always,
    /// At most `fsync_interval` after a write.
    Interval,
    /// Never; the OS decides.
    Never,
}

impl SinkType for FileSettings {
    type File = FileSinkFile;
    type Sink = FileSink;

    fn validate(file: FileSinkFile, at: &At<'_>) -> Result<Self, ConfigError> {
        if file.path.as_os_str().is_empty() {
            return Err(at.err("path", "is empty; set the file to append to"));
        }
        if !file.path.is_absolute() {
            return Err(at.err(
                "path",
                format!(
                    r#""{}" is relative, so it would depend on the directory the relay is started in (/ under systemd); write an absolute path, like "/var/log/mews-relay/events.jsonl""#,
                    file.path.display()
                ),
            ));
        }
        let fsync_interval = pick(file.fsync_interval, FSYNC_INTERVAL);
        if fsync_interval.is_zero() {
            return Err(at.err(
                "fsync_interval",
                "must be longer than zero; for a sync after every write use fsync = \"always\"",
            ));
        }
        Ok(FileSettings {
            path: file.path,
            fsync: file.fsync.unwrap_or(Fsync::Interval),
            fsync_interval,
        })
    }

    fn default_name(&self) -> String {
        format!("file:{}", self.path.display())
    }

    async fn build(&self, _env: &BuildEnv<'_>) -> io::Result<FileSink> {
        FileSink::open(&self.path, self.fsync, self.fsync_interval).await
    }
}

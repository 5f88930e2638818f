//! The file sink: appends JSON lines, with a chosen fsync policy and reopen for logrotate. The
//! file is never opened through a symbolic link, is created 0600 (directories 0700), and
//! only what this sink wrote is ever cut back.

use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Fsync;
use crate::journal::StoredRecord;
use crate::sink::Sink;
use crate::sink::stdout::join_lines;

/// Writes up to this size go straight to the page cache from the sink's task (microseconds);
/// larger ones, fsync and opening run on the blocking pool.
const INLINE_WRITE: usize = 64 * 1024;

/// Appends to `path`; a failed write is cut back so the file never holds half a line.
pub struct FileSink {
    path: PathBuf,
    fsync: Fsync,
    interval: Duration,
    file: Option<Arc<std::fs::File>>,
    /// Length of the file after the last complete write.
    len: u64,
    /// A write started and did not finish (its future was dropped): cut back before the next.
    dirty: bool,
    unsynced_since: Option<Instant>,
    buf: Vec<u8>,
}

/// Runs blocking file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| io::Error::other(format!("file task failed: {err}")))?
}

impl FileSink {
    /// Opens (creating it and its parent directories) the file for appending.
    pub async fn open(path: &Path, fsync: Fsync, interval: Duration) -> io::Result<Self> {
        let mut sink = FileSink {
            path: path.to_owned(),
            fsync,
            interval,
            file: None,
            len: 0,
            dirty: false,
            unsynced_since: None,
            buf: Vec::with_capacity(64 * 1024),
        };
        sink.ensure_open().await?;
        Ok(sink)
    }

    async fn ensure_open(&mut self) -> io::Result<Arc<std::fs::File>> {
        if self.file.is_none() {
            let path = self.path.clone();
            let (file, len) = blocking(move || {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    crate::files::create_private_dir(dir)
                        .map_err(|e| with_path(e, "cannot create the directory of", &path))?;
                }
                let mut file = crate::files::open_append(&path, true).map_err(|e| {
                    if e.kind() == io::ErrorKind::InvalidInput {
                        e
                    } else {
                        with_path(e, "cannot open", &path)
                    }
                })?;
                let len = whole_lines(&mut file, &path)?;
                Ok((file, len))
            })
            .await?;
            self.len = len;
            self.dirty = false;
            self.file = Some(Arc::new(file));
        }
        self.file
            .clone()
            .ok_or_else(|| io::Error::other("file not open"))
    }

    async fn sync(&mut self) -> io::Result<()> {
        if let Some(file) = self.file.clone() {
            blocking(move || file.sync_data()).await?;
        }
        self.unsynced_since = None;
        Ok(())
    }
}

/// How every record line starts (`Record::encode` writes `seq` first).
const RECORD_START: &[u8] = b"{\"seq\":";

/// Whether an incomplete last line is the start of a record line, i.e. this sink's own write
/// that a crash interrupted.
fn is_own_partial(line: &[u8]) -> bool {
    if line.len() <= RECORD_START.len() {
        RECORD_START.starts_with(line)
    } else {
        line.starts_with(RECORD_START)
    }
}

/// The file's length once the next write starts on a line of its own. An incomplete last line
/// left by an interrupted write of a record is cut; any other incomplete last line was not
/// written by the relay and is kept whole, ended with a newline.
fn whole_lines(file: &mut std::fs::File, path: &Path) -> io::Result<u64> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    let start = len.saturating_sub(64 * 1024);
    file.seek(std::io::SeekFrom::Start(start))?;
    let mut tail = Vec::with_capacity((len - start) as usize);
    file.read_to_end(&mut tail)?;
    if tail.last() == Some(&b'\n') {
        return Ok(len);
    }
    let line_start = match tail.iter().rposition(|b| *b == b'\n') {
        Some(at) => Some(at + 1),
        None if start == 0 => Some(0),
        None => None, // a line longer than 64 KiB: not one of ours to judge
    };
    if let Some(at) = line_start.filter(|at| is_own_partial(&tail[*at..])) {
        let keep = start + at as u64;
        tracing::warn!(file = %path.display(), bytes = len - keep, "cutting an incomplete record line left by an interrupted write");
        file.set_len(keep)?;
        return Ok(keep);
    }
    tracing::warn!(
        file = %path.display(),
        "the file's last line has no newline and was not written by the relay; it is kept, and a newline is added so records start on their own line"
    );
    file.write_all(b"\n")?;
    Ok(len + 1)
}

fn with_path(err: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{what} {}: {err}", path.display()))
}

impl Sink for FileSink {
    async fn write(&mut self, records: &[&StoredRecord]) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        join_lines(records, &mut buf);
        let len = self.len;
        let dirty = std::mem::replace(&mut self.dirty, true);
        let result = match self.ensure_open().await {
            Err(err) => Err(err),
            Ok(file) if buf.len() <= INLINE_WRITE => {
                // Small: into the page cache right here, no hop to another thread.
                let result = (|| {
                    if dirty {
                        file.set_len(len)?;
                    }
                    (&*file).write_all(&buf)
                })();
                result.map(|()| buf)
            }
            Ok(file) => {
                blocking(move || {
                    if dirty {
                        file.set_len(len)?;
                    }
                    (&*file).write_all(&buf)?;
                    Ok(buf)
                })
                .await
            }
        };
        let buf = match result {
            Ok(buf) => buf,
            Err(err) => {
                // Cut back to the last whole line; reopen on the next try.
                if let Some(file) = self.file.take() {
                    let _ = file.set_len(self.len);
                }
                return Err(with_path(err, "cannot write to", &self.path));
            }
        };
        let written = buf.len() as u64;
        self.buf = buf;
        self.len += written;
        self.dirty = false;
        match self.fsync {
            Fsync::Always => self.sync().await?,
            Fsync::Interval => {
                self.unsynced_since.get_or_insert_with(Instant::now);
            }
            Fsync::Never => {}
        }
        Ok(())
    }

    fn due(&self) -> Option<Instant> {
        self.unsynced_since.map(|since| since + self.interval)
    }

    async fn on_due(&mut self) -> io::Result<()> {
        self.sync().await
    }

    async fn reopen(&mut self) -> io::Result<()> {
        self.sync().await?;
        self.file = None;
        self.ensure_open().await.map(|_| ())
    }

    async fn close(&mut self) -> io::Result<()> {
        if self.fsync != Fsync::Never {
            self.sync().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::stdout::test_record;

    #[tokio::test]
    async fn appends_lines_and_reopens_a_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/events.jsonl");
        let mut sink = FileSink::open(&path, Fsync::Always, Duration::from_secs(1))
            .await
            .unwrap();
        sink.write(&[&test_record("{\"seq\":1}")]).await.unwrap();
        std::fs::rename(&path, dir.path().join("events.jsonl.1")).unwrap();
        sink.reopen().await.unwrap();
        sink.write(&[&test_record("{\"seq\":2}")]).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"seq\":2}\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("events.jsonl.1")).unwrap(),
            "{\"seq\":1}\n"
        );
    }

    #[tokio::test]
    async fn interval_fsync_is_due_after_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::open(
            &dir.path().join("e"),
            Fsync::Interval,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert!(sink.due().is_none());
        sink.write(&[&test_record("{}")]).await.unwrap();
        assert!(sink.due().is_some());
        sink.on_due().await.unwrap();
        assert!(sink.due().is_none());
    }
}

#[cfg(test)]
mod repair_tests {
    use super::*;
    use crate::sink::stdout::test_record;

    #[tokio::test]
    async fn a_last_line_the_relay_did_not_write_is_never_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        std::fs::write(
            &path,
            "root:x:0:0:root:/root:/bin/bash\nlast line, no newline",
        )
        .unwrap();
        let mut sink = FileSink::open(&path, Fsync::Never, Duration::from_secs(1))
            .await
            .unwrap();
        sink.write(&[&test_record("{\"seq\":1}")]).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "root:x:0:0:root:/root:/bin/bash\nlast line, no newline\n{\"seq\":1}\n"
        );
    }

    #[tokio::test]
    async fn an_incomplete_last_line_is_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        std::fs::write(&path, "{\"seq\":1}\n{\"seq\":2,\"ev").unwrap();
        let mut sink = FileSink::open(&path, Fsync::Never, Duration::from_secs(1))
            .await
            .unwrap();
        sink.write(&[&test_record("{\"seq\":2}")]).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"seq\":1}\n{\"seq\":2}\n"
        );
    }
}

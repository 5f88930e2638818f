//! `type = "stdout"`: one JSON line per record on standard output, through [`WriterSink`],
//! which writes to any async writer.

use std::io;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::Sink;
use super::registry::{At, BuildEnv, SinkType};
use crate::config::ConfigError;
use crate::journal::StoredRecord;

/// `type = "stdout"` has no keys of its own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutFile {}

/// `type = "stdout"`: nothing to set besides the shared keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StdoutSettings {}

impl SinkType for StdoutSettings {
    type File = StdoutFile;
    type Sink = WriterSink<tokio::io::Stdout>;

    fn validate(_file: StdoutFile, _at: &At<'_>) -> Result<Self, ConfigError> {
        Ok(StdoutSettings {})
    }

    fn default_name(&self) -> String {
        "stdout".into()
    }

    async fn build(&self, _env: &BuildEnv<'_>) -> io::Result<Self::Sink> {
        Ok(WriterSink::new(tokio::io::stdout()))
    }
}

/// Writes each record as one line to `W`, flushing after every batch.
pub struct WriterSink<W> {
    writer: W,
    buf: Vec<u8>,
}

impl<W: AsyncWrite + Unpin + Send> WriterSink<W> {
    /// A sink over `writer`.
    pub fn new(writer: W) -> Self {
        WriterSink {
            writer,
            buf: Vec::with_capacity(64 * 1024),
        }
    }

    /// The writer, e.g. a `Vec<u8>` in a test.
    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.writer
    }
}

/// Joins the records' JSON into `buf`, each followed by `\n`.
pub(super) fn join_lines(records: &[&StoredRecord], buf: &mut Vec<u8>) {
    buf.clear();
    for record in records {
        buf.extend_from_slice(&record.json);
        buf.push(b'\n');
    }
}

impl<W: AsyncWrite + Unpin + Send> Sink for WriterSink<W> {
    async fn write(&mut self, records: &[&StoredRecord]) -> io::Result<()> {
        join_lines(records, &mut self.buf);
        self.writer.write_all(&self.buf).await?;
        self.writer.flush().await
    }

    async fn close(&mut self) -> io::Result<()> {
        self.writer.flush().await
    }
}

/// A stored record holding `json`, for tests.
#[cfg(test)]
pub(super) fn test_record(json: &str) -> StoredRecord {
    StoredRecord {
        seq: 1,
        property: "p".into(),
        kind: None,
        journal_id: 0,
        replay_key: None,
        only_sink: None,
        json: json.as_bytes().to_vec().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_one_line_per_record() {
        let mut sink = WriterSink::new(Vec::new());
        let (a, b, c) = (
            test_record(r#"{"seq":1}"#),
            test_record(r#"{"seq":2}"#),
            test_record(r#"{"seq":3}"#),
        );
        sink.write(&[&a, &b]).await.unwrap();
        sink.write(&[&c]).await.unwrap();
        assert_eq!(
            sink.into_inner(),
            b"{\"seq\":1}\n{\"seq\":2}\n{\"seq\":3}\n"
        );
    }
}

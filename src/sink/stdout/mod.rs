//! `type = "stdout"`: one JSON line per record on standard output, through [`StdoutSink`],
//! which writes from its own task where that cannot block (see [`out`]).

mod out;

use std::io;

use serde::{Deserialize, Serialize};

use super::Sink;
use super::registry::{At, BuildEnv, SinkType};
use crate::config::ConfigError;
use crate::journal::StoredRecord;
pub use out::Stdout;

/// `type = "stdout"` has no keys of its own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutFile {}

/// `type = "stdout"`: nothing to set besides the shared keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StdoutSettings {}

impl SinkType for StdoutSettings {
    type File = StdoutFile;
    type Sink = StdoutSink;

    fn validate(_file: StdoutFile, _at: &At<'_>) -> Result<Self, ConfigError> {
        Ok(StdoutSettings {})
    }

    fn default_name(&self) -> String {
        "stdout".into()
    }

    async fn build(&self, _env: &BuildEnv<'_>) -> io::Result<Self::Sink> {
        Ok(StdoutSink::new(Stdout::open()?))
    }
}

/// Writes each record as one line to standard output, one write per batch.
pub struct StdoutSink {
    out: Stdout,
    buf: Vec<u8>,
}

impl StdoutSink {
    /// A sink over `out`.
    pub fn new(out: Stdout) -> Self {
        StdoutSink {
            out,
            buf: Vec::with_capacity(64 * 1024),
        }
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

impl Sink for StdoutSink {
    async fn write(&mut self, records: &[&StoredRecord]) -> io::Result<()> {
        join_lines(records, &mut self.buf);
        self.out.write_all(&self.buf).await
    }

    async fn close(&mut self) -> io::Result<()> {
        self.out.flush()
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
        use std::io::Read;
        let (mut reader, writer) = std::io::pipe().unwrap();
        let mut sink = StdoutSink::new(Stdout::from_fd(writer.into()));
        let (a, b, c) = (
            test_record(r#"{"seq":1}"#),
            test_record(r#"{"seq":2}"#),
            test_record(r#"{"seq":3}"#),
        );
        sink.write(&[&a, &b]).await.unwrap();
        sink.write(&[&c]).await.unwrap();
        drop(sink);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"{\"seq\":1}\n{\"seq\":2}\n{\"seq\":3}\n");
    }
}

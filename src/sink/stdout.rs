//! A sink that writes JSON lines to any async writer; `stdout` is this over standard output.

use std::io;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::Sink;

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
    pub fn into_inner(self) -> W {
        self.writer
    }
}

/// Joins lines into `buf`, each followed by `\n`.
pub(super) fn join_lines(lines: &[&[u8]], buf: &mut Vec<u8>) {
    buf.clear();
    for line in lines {
        buf.extend_from_slice(line);
        buf.push(b'\n');
    }
}

impl<W: AsyncWrite + Unpin + Send> Sink for WriterSink<W> {
    async fn write(&mut self, lines: &[&[u8]]) -> io::Result<()> {
        join_lines(lines, &mut self.buf);
        self.writer.write_all(&self.buf).await?;
        self.writer.flush().await
    }

    async fn close(&mut self) -> io::Result<()> {
        self.writer.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_one_line_per_record() {
        let mut sink = WriterSink::new(Vec::new());
        sink.write(&[br#"{"seq":1}"#, br#"{"seq":2}"#])
            .await
            .unwrap();
        sink.write(&[br#"{"seq":3}"#]).await.unwrap();
        assert_eq!(
            sink.into_inner(),
            b"{\"seq\":1}\n{\"seq\":2}\n{\"seq\":3}\n"
        );
    }
}

//! A deadline for incomplete WebSocket messages. tungstenite assembles fragments out of sight, so
//! the socket counts the bytes it reads, and bytes that no message or control frame has
//! accounted for, for longer than `message_timeout`, mean a message that never completes (e.g.
//! an endless run of 1-byte fragments without FIN, which would keep a core busy for good).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Bytes read but not accounted for that are tolerated without a deadline: TLS records and
/// session tickets, the start of the next message.
pub(crate) const SLACK: u64 = 64 * 1024;
/// Bytes a control frame (ping, pong) accounts for besides its payload: frame and TLS record
/// headers, with room to spare.
const CONTROL_OVERHEAD: u64 = 64;

/// A socket that counts the bytes read from it.
pub(crate) struct Counted<T> {
    inner: T,
    read: Arc<AtomicU64>,
}

impl<T> Counted<T> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: T) -> Self {
        Counted {
            inner,
            read: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The running count.
    pub(crate) fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.read)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before) as u64;
        if n > 0 {
            self.read.fetch_add(n, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Whether the message being read is past its deadline.
pub(crate) struct Progress {
    read: Arc<AtomicU64>,
    accounted: u64,
    behind_since: Option<Instant>,
    limit: Duration,
}

impl Progress {
    /// Watches the bytes of `read` with `message_timeout` = `limit`.
    pub(crate) fn new(read: Arc<AtomicU64>, limit: Duration) -> Self {
        Progress {
            accounted: read.load(Ordering::Relaxed),
            read,
            behind_since: None,
            limit,
        }
    }

    /// How often [`Progress::overdue`] should be asked.
    pub(crate) fn check_every(&self) -> Duration {
        (self.limit / 4).max(Duration::from_millis(100))
    }

    /// A whole message (or a close) arrived: everything read so far is accounted for.
    pub(crate) fn message(&mut self) {
        self.accounted = self.read.load(Ordering::Relaxed);
        self.behind_since = None;
    }

    /// A control frame arrived: it accounts for its own bytes only.
    pub(crate) fn control(&mut self, payload: usize) {
        let read = self.read.load(Ordering::Relaxed);
        self.accounted = (self.accounted + payload as u64 + CONTROL_OVERHEAD).min(read);
    }

    /// Some(bytes) when more than [`SLACK`] bytes have gone unaccounted for longer than the
    /// limit: the message they belong to is overdue.
    pub(crate) fn overdue(&mut self, now: Instant) -> Option<u64> {
        let unaccounted = self
            .read
            .load(Ordering::Relaxed)
            .saturating_sub(self.accounted);
        if unaccounted <= SLACK {
            self.behind_since = None;
            return None;
        }
        let since = *self.behind_since.get_or_insert(now);
        (now.duration_since(since) >= self.limit).then_some(unaccounted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_that_never_become_a_message_are_overdue_after_the_limit() {
        let read = Arc::new(AtomicU64::new(0));
        let mut progress = Progress::new(Arc::clone(&read), Duration::from_secs(10));
        let t0 = Instant::now();
        read.fetch_add(SLACK * 2, Ordering::Relaxed);
        assert_eq!(progress.overdue(t0), None);
        // Pings interleaved with the fragments account only for themselves.
        progress.control(4);
        read.fetch_add(100, Ordering::Relaxed);
        assert_eq!(progress.overdue(t0 + Duration::from_secs(9)), None);
        assert!(progress.overdue(t0 + Duration::from_secs(10)).is_some());
        progress.message();
        assert_eq!(progress.overdue(t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn pongs_of_a_quiet_connection_never_add_up() {
        let read = Arc::new(AtomicU64::new(0));
        let mut progress = Progress::new(Arc::clone(&read), Duration::from_secs(10));
        let t0 = Instant::now();
        read.fetch_add(900, Ordering::Relaxed); // TLS session tickets
        for i in 0..100_000u64 {
            read.fetch_add(2 + 22, Ordering::Relaxed);
            progress.control(0);
            assert_eq!(progress.overdue(t0 + Duration::from_secs(i)), None);
        }
    }
}

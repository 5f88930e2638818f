//! Per-connection timeouts: a request head within `header_timeout`, no more than `idle_timeout`
//! between requests. The connection's socket is wrapped so a missed deadline fails its I/O.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Which deadline closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// The request line and headers did not arrive in time.
    Header,
    /// Nothing arrived between two requests for too long.
    Idle,
}

impl Expiry {
    /// The reason label in metrics and logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Expiry::Header => "header_timeout",
            Expiry::Idle => "idle_timeout",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Reading a request head; it must be complete by then.
    Head(Instant),
    /// A request is being handled (the body has its own timeout in the handler).
    Busy,
    /// Between requests; the next one must start by then.
    Idle(Instant),
}

/// What a connection is doing, shared by its socket wrapper and its request handler.
#[derive(Debug)]
pub(crate) struct Clock {
    header_timeout: Duration,
    idle_timeout: Duration,
    phase: Mutex<(Phase, Option<Expiry>)>,
    /// Told when the handler answered: the connection must be polled again so the socket
    /// wrapper arms the idle deadline (nothing else may wake it before the client sends).
    answered: tokio::sync::Notify,
}

impl Clock {
    /// A new connection: its first request head is due within `header_timeout`.
    pub(crate) fn new(header_timeout: Duration, idle_timeout: Duration) -> Arc<Clock> {
        Arc::new(Clock {
            header_timeout,
            idle_timeout,
            phase: Mutex::new((Phase::Head(Instant::now() + header_timeout), None)),
            answered: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Phase, Option<Expiry>)> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the first request head is due (TLS handshakes count against it).
    pub(crate) fn head_deadline(&self) -> Instant {
        match self.lock().0 {
            Phase::Head(at) | Phase::Idle(at) => at,
            Phase::Busy => Instant::now() + self.header_timeout,
        }
    }

    /// A request head arrived: the handler runs without a connection deadline.
    pub(crate) fn busy(&self) {
        self.lock().0 = Phase::Busy;
    }

    /// The handler answered: the connection may now idle for `idle_timeout`.
    pub(crate) fn idle(&self) {
        self.lock().0 = Phase::Idle(Instant::now() + self.idle_timeout);
        self.answered.notify_one();
    }

    /// Completes after the next [`Clock::idle`].
    pub(crate) async fn answered(&self) {
        self.answered.notified().await;
    }

    /// Bytes arrived: an idle connection starts a request head.
    fn bytes_arrived(&self) {
        let mut state = self.lock();
        if let Phase::Idle(_) = state.0 {
            state.0 = Phase::Head(Instant::now() + self.header_timeout);
        }
    }

    fn deadline(&self) -> Option<(Instant, Expiry)> {
        match self.lock().0 {
            Phase::Head(at) => Some((at, Expiry::Header)),
            Phase::Idle(at) => Some((at, Expiry::Idle)),
            Phase::Busy => None,
        }
    }

    fn expire(&self, why: Expiry) {
        self.lock().1 = Some(why);
    }

    /// The deadline that closed the connection, if one did.
    pub(crate) fn expired(&self) -> Option<Expiry> {
        self.lock().1
    }
}

/// A socket whose reads and writes fail with `TimedOut` once the connection's current deadline
/// has passed while they wait.
pub(crate) struct Deadline<T> {
    inner: T,
    clock: Arc<Clock>,
    sleep: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl<T> Deadline<T> {
    /// Wraps `inner`, timed by `clock`.
    pub(crate) fn new(inner: T, clock: Arc<Clock>) -> Self {
        let at = clock.head_deadline();
        Deadline {
            inner,
            clock,
            sleep: Box::pin(tokio::time::sleep_until(at)),
            armed: Some(at),
        }
    }

    /// Called when the inner I/O is pending: ready with an error once the deadline passed.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some((at, why)) = self.clock.deadline() else {
            return Poll::Pending;
        };
        if self.armed != Some(at) {
            self.sleep.as_mut().reset(at);
            self.armed = Some(at);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.clock.expire(why);
                Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, why.as_str()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Deadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.clock.bytes_arrived();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => self.check(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Deadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.check(cx).map(Err),
            ready => ready,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.check(cx).map(Err),
            ready => ready,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Pending => self.check(cx).map(Err),
            ready => ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_misses_the_header_deadline() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let clock = Clock::new(Duration::from_secs(5), Duration::from_secs(60));
        let mut io = Deadline::new(ours, Arc::clone(&clock));
        let mut buf = [0u8; 8];
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(clock.expired(), Some(Expiry::Header));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_gets_idle_timeout_then_a_head_deadline_from_its_first_byte() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let clock = Clock::new(Duration::from_secs(5), Duration::from_secs(60));
        let mut io = Deadline::new(ours, Arc::clone(&clock));
        clock.busy();
        clock.idle();
        let start = Instant::now();
        let peer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            theirs.write_all(b"G").await.unwrap();
            theirs
        });
        let mut buf = [0u8; 8];
        assert_eq!(
            io.read(&mut buf).await.unwrap(),
            1,
            "idle for 30 s is allowed"
        );
        let _peer = peer.await.unwrap();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(clock.expired(), Some(Expiry::Header));
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(35));
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_has_no_deadline() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let clock = Clock::new(Duration::from_secs(5), Duration::from_secs(60));
        let mut io = Deadline::new(ours, Arc::clone(&clock));
        clock.busy();
        let peer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(600)).await;
            theirs.write_all(b"x").await.unwrap();
            theirs
        });
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        drop(peer.await.unwrap());
        assert_eq!(clock.expired(), None);
    }
}

//! Bounded HTTP listeners (webhooks, metrics, the local API): a connection cap, header, body
//! and idle timeouts, the credential checked before the body is read, a body budget shared by
//! all listeners, and refusal logs that a flood cannot multiply.
//!
//! ```text
//! kernel queue (LISTEN_BACKLOG) ─▶ accept (only while under the cap) ─▶ TLS within
//!   header_timeout ─▶ hyper HTTP/1.1 request head within header_timeout ─▶ handler:
//!   Gate::admits, then read_body (max, budget, body_timeout) ─▶ answer ─▶ idle at most
//!   idle_timeout ─▶ next head …
//! ```

mod deadline;
pub mod fds;
mod refusals;
pub mod request;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub use refusals::{Refusals, SUMMARY_EVERY};
pub use request::{BodyBudget, Gate, read_body, refuse};

use crate::stats::Stats;
use deadline::{Clock, Deadline};

/// Connections the kernel queues for a listener beyond those it holds (`max_connections`): a
/// burst waits there until a slot frees. Linux lowers it to `net.core.somaxconn` (4,096 by
/// default since 5.4). The default of std and mio (128) is too small for a burst: once the
/// queue is full the kernel drops new SYNs, answers others with SYN cookies, and drops the
/// handshake's last ACK; the client's next segment then fails the cookie check and is reset,
/// so the connection is refused without an answer the relay could give or count.
pub const LISTEN_BACKLOG: u32 = 1024;
/// Largest request head (request line and headers) a listener reads.
pub const MAX_HEAD: usize = 16 * 1024;
/// After an accept error (e.g. no descriptor left), the listener waits this long.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// At shutdown, requests in flight get this long to finish.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// What bounds one listener.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// Request head within this (from the connect, or from the first byte of a later request).
    pub header_timeout: Duration,
    /// Body within this (enforced by [`read_body`]).
    pub body_timeout: Duration,
    /// Between requests at most this.
    pub idle_timeout: Duration,
    /// Connections held at once; up to [`LISTEN_BACKLOG`] more wait in the kernel's queue.
    pub max_connections: usize,
    /// Bodies being read, shared by all listeners.
    pub budget: BodyBudget,
}

impl Bounds {
    /// `[listeners]`, with `max_connections` already fitted to the descriptor limit.
    pub fn new(
        settings: &crate::config::Listeners,
        max_connections: usize,
        budget: BodyBudget,
    ) -> Self {
        Bounds {
            header_timeout: settings.header_timeout,
            body_timeout: settings.body_timeout,
            idle_timeout: settings.idle_timeout,
            max_connections,
            budget,
        }
    }
}

/// A bound listener, not yet serving.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    bounds: Bounds,
    refusals: Arc<Refusals>,
    stats: Arc<Stats>,
}

impl Listener {
    /// Binds `addr` with a queue of [`LISTEN_BACKLOG`]; `name` labels its logs and metrics.
    pub async fn bind(
        name: &'static str,
        addr: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
        bounds: Bounds,
        stats: Arc<Stats>,
    ) -> std::io::Result<Listener> {
        let tcp = listen(addr)?;
        Ok(Listener {
            tcp,
            tls,
            bounds,
            refusals: Arc::new(Refusals::new(name)),
            stats,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Its refusal log, for handlers to report 401s and 400s through.
    pub fn refusals(&self) -> Arc<Refusals> {
        Arc::clone(&self.refusals)
    }

    /// Serves `router` until `shutdown`; then requests in flight get a few seconds to finish.
    pub async fn serve(self, router: Router, shutdown: CancellationToken) {
        let name = self.refusals.listener();
        tracing::debug!(
            listener = name,
            max_connections = self.bounds.max_connections,
            header_timeout = ?self.bounds.header_timeout,
            body_timeout = ?self.bounds.body_timeout,
            idle_timeout = ?self.bounds.idle_timeout,
            "listener bounds"
        );
        let slots = Arc::new(Semaphore::new(self.bounds.max_connections));
        let mut connections = JoinSet::new();
        let mut summary =
            tokio::time::interval_at(tokio::time::Instant::now() + SUMMARY_EVERY, SUMMARY_EVERY);
        loop {
            while connections.try_join_next().is_some() {}
            if slots.available_permits() == 0 {
                self.refusals.refused(&self.stats, "full", || {
                    tracing::warn!(
                        listener = name,
                        max_connections = self.bounds.max_connections,
                        "listener at max_connections: new connections wait until one closes (header_timeout and idle_timeout close stalled ones)"
                    )
                });
            }
            let slot = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                _ = summary.tick() => { self.refusals.summarize(); continue; }
                slot = Arc::clone(&slots).acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                _ = summary.tick() => { self.refusals.summarize(); continue; }
                accepted = self.tcp.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    self.refusals.refused(&self.stats, "accept_failed", || {
                        tracing::warn!(listener = name, error = %err, "cannot accept a connection; raise LimitNOFILE if the error is \"Too many open files\"")
                    });
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                    }
                }
            };
            let connection = Connection {
                tls: self.tls.clone(),
                bounds: self.bounds.clone(),
                refusals: Arc::clone(&self.refusals),
                stats: Arc::clone(&self.stats),
                router: router.clone(),
            };
            let stop = shutdown.clone();
            connections.spawn(async move {
                connection.run(tcp, peer, stop).await;
                drop(slot);
            });
        }
        drop(self.tcp);
        let drained = tokio::time::timeout(SHUTDOWN_WAIT, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::debug!(
                listener = name,
                left = connections.len(),
                "connections still open at shutdown are closed"
            );
        }
        connections.abort_all();
        self.refusals.summarize();
    }
}

/// A listening socket on `addr` (SO_REUSEADDR, as `TcpListener::bind` sets it) whose kernel
/// queue holds [`LISTEN_BACKLOG`] connections.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What one connection's task needs.
struct Connection {
    tls: Option<tokio_rustls::TlsAcceptor>,
    bounds: Bounds,
    refusals: Arc<Refusals>,
    stats: Arc<Stats>,
    router: Router,
}

impl Connection {
    async fn run(self, tcp: TcpStream, peer: SocketAddr, shutdown: CancellationToken) {
        let _ = tcp.set_nodelay(true);
        let clock = Clock::new(self.bounds.header_timeout, self.bounds.idle_timeout);
        let name = self.refusals.listener();
        let io = match &self.tls {
            None => Either::Left(tcp),
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout_at(clock.head_deadline(), acceptor.accept(tcp));
                match tokio::select! {
                    () = shutdown.cancelled() => return,
                    res = handshake => res,
                } {
                    Ok(Ok(tls)) => Either::Right(tls),
                    Ok(Err(err)) => {
                        return tracing::debug!(listener = name, %peer, error = %err, "TLS handshake failed");
                    }
                    Err(_) => {
                        return self.refusals.refused(&self.stats, "header_timeout", || {
                            tracing::warn!(listener = name, %peer, timeout = ?self.bounds.header_timeout, "connection closed: no TLS handshake and request head within header_timeout")
                        });
                    }
                }
            }
        };
        let io = TokioIo::new(Deadline::new(io, Arc::clone(&clock)));
        let router = self.router.clone();
        let timing = Arc::clone(&clock);
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                timing.busy();
                let answer = router.clone().oneshot(request.map(axum::body::Body::new));
                let timing = Arc::clone(&timing);
                async move {
                    let response = answer.await;
                    timing.idle();
                    response
                }
            });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .keep_alive(true)
            .max_buf_size(MAX_HEAD)
            .header_read_timeout(None);
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        let result = loop {
            tokio::select! {
                res = conn.as_mut() => break res,
                // Poll the connection again: its socket wrapper arms the idle deadline.
                () = clock.answered() => {}
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    break conn.await;
                }
            }
        };
        match clock.expired() {
            // Closing a kept-alive connection nobody uses is routine.
            Some(why @ deadline::Expiry::Idle) => {
                self.stats.listener_refused(name, why.as_str());
                tracing::debug!(listener = name, %peer, "idle connection closed (idle_timeout)");
            }
            Some(why) => self.refusals.refused(&self.stats, why.as_str(), || {
                tracing::warn!(listener = name, %peer, timeout = ?self.bounds.header_timeout, "connection closed: no complete request head within header_timeout (a slow or stalled client)")
            }),
            None => {}
        }
        if clock.expired().is_none()
            && let Err(err) = result
        {
            tracing::debug!(listener = name, %peer, error = %err, "connection ended with an error");
        }
    }
}

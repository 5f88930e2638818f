//! What an attacker on a listener port does (raw TCP, no well-behaved client), and what it
//! costs the relay, read from /proc.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// Figures of a running process.
pub struct Proc(pub u32);

impl Proc {
    fn status_kib(&self, key: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.0))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Resident memory now, MiB.
    pub fn rss_mib(&self) -> u64 {
        self.status_kib("VmRSS:") / 1024
    }

    /// The most resident memory so far, MiB.
    pub fn peak_rss_mib(&self) -> u64 {
        self.status_kib("VmHWM:") / 1024
    }

    /// Open descriptors now.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.0)).map_or(0, |d| d.count())
    }
}

/// Raises this test process's soft descriptor limit to its hard one; false when that is still
/// below `need` (the test then says so and skips).
pub fn raise_own_fd_limit(need: u64) -> bool {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return false;
    };
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    getrlimit(Resource::RLIMIT_NOFILE).is_ok_and(|(soft, _)| soft >= need)
}

/// Reads the answer's status code; None when the connection closed (or reset) without one.
pub async fn status_of(read: &mut (impl AsyncReadExt + Unpin)) -> Option<u16> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") && head.len() < 256 {
        match read.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
}

/// One request written raw; the answer's status, or None when closed without one.
pub async fn request(addr: SocketAddr, head: &str, body: &[u8]) -> Option<u16> {
    let mut tcp = TcpStream::connect(addr).await.ok()?;
    tcp.write_all(head.as_bytes()).await.ok()?;
    tcp.write_all(body).await.ok()?;
    status_of(&mut tcp).await
}

/// Bytes a stalled body announces.
pub const STALLED_BODY: usize = 1 << 20;

/// A POST with a wrong token announcing a 1 MiB body, all of it but the last byte sent as fast
/// as the relay takes it, then nothing: returns when the relay answers or closes (the status,
/// if any), or after `give_up`.
pub async fn stalled_wrong_token(addr: SocketAddr, path: &str, give_up: Duration) -> Option<u16> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let (mut rd, mut wr) = tcp.into_split();
    let head = format!(
        "POST {path}?Token=not-the-token-0123456789 HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: {STALLED_BODY}\r\n\r\n"
    );
    let writer = async move {
        if wr.write_all(head.as_bytes()).await.is_ok() {
            let chunk = vec![b' '; 64 * 1024];
            let mut left = STALLED_BODY - 1;
            while left > 0 {
                let n = left.min(chunk.len());
                if wr.write_all(&chunk[..n]).await.is_err() {
                    break;
                }
                left -= n;
            }
        }
        // Stall: keep the write half open.
        std::future::pending::<()>().await;
        drop(wr);
    };
    let reader = status_of(&mut rd);
    tokio::select! {
        status = reader => status,
        () = writer => None,
        () = tokio::time::sleep(give_up) => None,
    }
}

/// Slowloris: a request line, then one header byte every `every`. Returns how long the relay
/// kept the connection before closing it, or None if it was still open after `give_up`.
pub async fn slowloris(addr: SocketAddr, every: Duration, give_up: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut tcp = TcpStream::connect(addr).await.ok()?;
    if tcp
        .write_all(b"POST /mews/webhooks HTTP/1.1\r\nHost: relay\r\nX-Slow: ")
        .await
        .is_err()
    {
        return Some(start.elapsed());
    }
    let mut buf = [0u8; 256];
    while start.elapsed() < give_up {
        tokio::select! {
            read = tcp.read(&mut buf) => match read {
                Ok(n) if n > 0 => {} // an answer (408/400); the close follows
                _ => return Some(start.elapsed()),
            },
            () = tokio::time::sleep(every) => {
                if tcp.write_all(b"a").await.is_err() {
                    return Some(start.elapsed());
                }
            }
        }
    }
    None
}

/// Waits until the relay closes `tcp` (EOF or reset), at most `give_up`; returns how long.
pub async fn until_closed(tcp: &mut TcpStream, give_up: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match timeout(give_up.saturating_sub(start.elapsed()), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return start.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// Opens up to `n` connections that send nothing; those not established within `within`
/// (the relay's accept queue is full) are given up.
pub async fn hold_idle(addr: SocketAddr, n: usize, within: Duration) -> Vec<TcpStream> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        tasks.spawn(async move { timeout(within, TcpStream::connect(addr)).await });
    }
    let mut held = Vec::with_capacity(n);
    while let Some(res) = tasks.join_next().await {
        if let Ok(Ok(Ok(tcp))) = res {
            held.push(tcp);
        }
    }
    held
}

//! The listeners under attack: wrong tokens with stalled bodies, slow and idle clients, a
//! descriptor flood, a flood of refusals. Each one bounded (issue 18).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::attack::*;
use crate::receiver::free_port;
use crate::support::*;

pub const TOKEN: &str = "wh-0123456789abcdef0123";

/// `[webhooks]` on `hooks` and `[metrics]` on `metrics`, appended to a config.
pub fn listeners(config: String, hooks: SocketAddr, metrics: SocketAddr, extra: &str) -> String {
    format!(
        "{config}\n[webhooks]\nlisten = \"{hooks}\"\ntoken = \"{TOKEN}\"\n\n[metrics]\nlisten = \"{metrics}\"\n{extra}\n"
    )
}

/// Waits until `addr` accepts connections (the relay has started).
pub async fn listening(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while TcpStream::connect(addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing listens on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET path` on the metrics listener: status and body.
/// Waits until `/readyz` answers `status`; returns the body.
pub async fn readyz_becomes(metrics: SocketAddr, status: u16, what: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (got, body) = get(metrics, "/readyz").await;
        if got == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never answered {status} ({what}); last: {got} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = http_client()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap_or_else(|err| panic!("GET {path}: {err}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// A counter's value in a `/metrics` page.
pub fn counter(page: &str, name: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{page}"))
}

/// 1,000 connections POST with a wrong Token and announce a 1 MiB body, send all of it but the
/// last byte and stall: each is refused (401) without its body being read, and the relay's
/// peak RSS stays under 100 MB (before: every body was read whole first, ~1 GB). The burst
/// fits the listener's kernel queue (1,024) even when the relay accepts none of it at first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_with_stalled_bodies_cost_no_memory() {
    if !raise_own_fd_limit(1_500) {
        return eprintln!("the descriptor limit is below 1,500; skipping");
    }
    let dir = tempfile::tempdir().unwrap();
    let server = MockServer::start().await;
    let (hooks, metrics) = (free_port(), free_port());
    let config = listeners(
        config_text(&server.url(), dir.path(), "[[sink]]\ntype = \"stdout\"\n"),
        hooks,
        metrics,
        "",
    );
    let path = write_config(dir.path(), &config);
    let mut daemon = Daemon::spawn(
        &["run", "--config", path.to_str().unwrap()],
        dir.path(),
        "relay",
    );
    listening(hooks).await;
    let relay = Proc(daemon.child.id());
    let mut attack = tokio::task::JoinSet::new();
    for _ in 0..1_000 {
        attack.spawn(stalled_wrong_token(hooks, "/mews/webhooks", WAIT * 3));
    }
    let mut answered = 0;
    while let Some(status) = attack.join_next().await {
        answered += usize::from(status.unwrap() == Some(401));
    }
    let peak = relay.peak_rss_mib();
    assert!(
        peak < 100,
        "peak RSS {peak} MiB under 1,000 stalled wrong-token bodies"
    );
    let (_, page) = get(metrics, "/metrics").await;
    let refusals: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with("mews_relay_listener_refusals_total{"))
        .collect();
    assert_eq!(
        counter(&page, "mews_relay_webhooks_refused_total"),
        1_000,
        "every connection was refused ({answered} saw the 401 before the close); listener refusals: {refusals:?}; relay: {}",
        daemon.stderr_text()
    );
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0));
}

/// A burst of 500 connections to a listener that holds its `max_connections` (8) waits in the
/// kernel's queue: every connect completes while the relay accepts nothing, and once the held
/// connections close each queued one is answered 401 and counted (before: the queue held 128;
/// the other connects had their SYNs dropped and could not complete while the listener was
/// full, and under a burst a connection completed by a SYN cookie was reset unanswered and
/// uncounted when it sent its request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_max_connections_waits_in_the_kernel_queue() {
    const BURST: usize = 500;
    if !raise_own_fd_limit(1_500) {
        return eprintln!("the descriptor limit is below 1,500; skipping");
    }
    let (hooks, metrics) = (free_port(), free_port());
    let limits = "[listeners]\nmax_connections = 8\nheader_timeout = \"60s\"\n";
    let h = Harness::start_with(|c| listeners(c, hooks, metrics, limits)).await;
    listening(hooks).await;
    let stats = std::sync::Arc::clone(&h.relay.stats);
    let full = move || {
        stats
            .listener_refusals()
            .iter()
            .any(|((l, r), n)| *l == "webhooks" && *r == "full" && *n > 0)
    };
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(hooks).await.unwrap());
    }
    wait_until("the webhook listener holds max_connections", full).await;

    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..BURST {
        burst.spawn(async move { tokio::time::timeout(WAIT, TcpStream::connect(hooks)).await });
    }
    let mut queued = Vec::with_capacity(BURST);
    while let Some(res) = burst.join_next().await {
        if let Ok(Ok(tcp)) = res.unwrap() {
            queued.push(tcp);
        }
    }
    assert_eq!(
        queued.len(),
        BURST,
        "connections established while the listener was full (the rest were not queued)"
    );

    let wrong = "POST /mews/webhooks?Token=wh-0123456789abcdef0124 HTTP/1.1\r\nHost: relay\r\nContent-Length: 0\r\n\r\n";
    let mut answers = tokio::task::JoinSet::new();
    for mut tcp in queued {
        answers.spawn(async move {
            tcp.write_all(wrong.as_bytes()).await.ok()?;
            tokio::time::timeout(WAIT, status_of(&mut tcp)).await.ok()?
        });
    }
    drop(held);
    let mut statuses = std::collections::BTreeMap::<Option<u16>, usize>::new();
    while let Some(status) = answers.join_next().await {
        *statuses.entry(status.unwrap()).or_default() += 1;
    }
    assert_eq!(
        statuses,
        [(Some(401), BURST)].into(),
        "every queued connection is answered"
    );
    let refused = h.relay.stats.webhooks_refused.load(Ordering::Relaxed);
    assert_eq!(refused, BURST as u64, "and counted");
    h.relay.stop().await;
}

/// A client that sends nothing, one that sends a header byte at a time, one that idles after
/// a request and one that stalls its body are all closed after their timeout (header_timeout,
/// idle_timeout, body_timeout), on the webhook and the metrics listener alike, and counted.
#[tokio::test]
async fn slow_idle_and_stalled_clients_are_closed_after_the_timeouts() {
    let (hooks, metrics) = (free_port(), free_port());
    let limits =
        "[listeners]\nheader_timeout = \"1s\"\nidle_timeout = \"2s\"\nbody_timeout = \"1s\"\n";
    let h = Harness::start_with(|c| listeners(c, hooks, metrics, limits)).await;
    listening(hooks).await;
    let floor = Duration::from_millis(950);

    let mut idle = TcpStream::connect(hooks).await.unwrap();
    let held = until_closed(&mut idle, WAIT).await;
    assert!(held >= floor && held < WAIT, "silent client held {held:?}");

    let held = slowloris(hooks, Duration::from_millis(100), WAIT)
        .await
        .expect("the relay closes a slowloris connection");
    assert!(held >= floor && held < WAIT, "slowloris held {held:?}");

    let mut kept = TcpStream::connect(hooks).await.unwrap();
    let body = r#"{"Action":"IntegrationEnabled","Data":{}}"#;
    let head = format!(
        "POST /mews/webhooks?Token={TOKEN} HTTP/1.1\r\nHost: relay\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    kept.write_all(head.as_bytes()).await.unwrap();
    let mut response = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut kept, &mut response)
        .await
        .unwrap();
    assert_eq!(&response, b"HTTP/1.1 202");
    let held = until_closed(&mut kept, WAIT).await;
    assert!(
        held >= Duration::from_millis(1_900) && held < WAIT,
        "a kept-alive connection idles for idle_timeout (2 s), not header_timeout; held {held:?}"
    );

    let stalled = request(
        hooks,
        &format!("POST /mews/webhooks?Token={TOKEN} HTTP/1.1\r\nHost: relay\r\nContent-Length: 100\r\n\r\n"),
        b"{\"Events\"",
    )
    .await;
    assert_eq!(
        stalled,
        Some(408),
        "a stalled body gets 408 after body_timeout"
    );

    let mut idle = TcpStream::connect(metrics).await.unwrap();
    let held = until_closed(&mut idle, WAIT).await;
    assert!(
        held >= floor && held < WAIT,
        "metrics: silent client held {held:?}"
    );

    let refusals = h.relay.stats.listener_refusals();
    let count = |listener: &str, reason: &str| {
        refusals
            .iter()
            .find(|((l, r), _)| *l == listener && *r == reason)
            .map_or(0, |(_, n)| *n)
    };
    assert!(count("webhooks", "header_timeout") >= 2, "{refusals:?}");
    assert_eq!(count("webhooks", "idle_timeout"), 1, "{refusals:?}");
    assert_eq!(count("webhooks", "body_timeout"), 1, "{refusals:?}");
    assert_eq!(count("metrics", "header_timeout"), 1, "{refusals:?}");
    h.relay.stop().await;
}

/// With RLIMIT_NOFILE at 1,024 (systemd's default), 2,000 connections that sit idle on the
/// webhook port leave the relay descriptors for everything else: /healthz answers, a dropped
/// WebSocket reconnects, and no event is lost (before: "Too many open files" on reconnect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_webhook_port_leaves_descriptors_for_reconnects() {
    if !raise_own_fd_limit(2_600) {
        return eprintln!("the descriptor limit is below 2,600; skipping");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let (hooks, metrics) = (free_port(), free_port());
    let out = dir.path().join("out.jsonl");
    let config = listeners(
        config_text(&server.url(), dir.path(), &file_sink(&out)),
        hooks,
        metrics,
        "",
    );
    let path = write_config(dir.path(), &config);
    let mut daemon = Daemon::spawn_in_shell(
        "ulimit -n 1024",
        &["run", "--config", path.to_str().unwrap()],
        dir.path(),
        "relay",
    );
    let mut conn = server.next().await;
    conn.send(&commands(0, 1)).await;
    wait_for_lines(&out, 1).await;

    let flood = hold_idle(hooks, 2_000, Duration::from_secs(2)).await;
    let relay = Proc(daemon.child.id());
    let fds = relay.fds();
    assert!(fds < 1_024, "{fds} descriptors open");
    let health = request(
        metrics,
        "GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(health, Some(200), "/healthz answers during the flood");

    conn.reset();
    let mut conn = server.next().await;
    conn.send(&commands(1, 3)).await;
    let lines = wait_for_lines(&out, 3).await;
    let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["cmd-0", "cmd-1", "cmd-2"]);
    assert!(
        flood.len() > 256,
        "the flood held {} connections open",
        flood.len()
    );
    drop(flood);
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0));
    let stderr = daemon.stderr_text();
    assert!(!stderr.contains("Too many open files"), "{stderr}");
}

/// 2,000 requests with a wrong token and 20 malformed bodies make one WARN line each kind and
/// a summary with the counts, not 2,020 lines (before: one WARN per request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_logged_once_then_summed_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = MockServer::start().await;
    let (hooks, metrics) = (free_port(), free_port());
    let config = listeners(
        config_text(&server.url(), dir.path(), "[[sink]]\ntype = \"stdout\"\n"),
        hooks,
        metrics,
        "",
    );
    let path = write_config(dir.path(), &config);
    let mut daemon = Daemon::spawn(
        &["run", "--config", path.to_str().unwrap()],
        dir.path(),
        "relay",
    );
    listening(hooks).await;
    let wrong = "POST /mews/webhooks?Token=wh-0123456789abcdef0124 HTTP/1.1\r\nHost: relay\r\nContent-Length: 2\r\n\r\n";
    for _ in 0..40 {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..50 {
            batch.spawn(request(hooks, wrong, b"{}"));
        }
        while let Some(status) = batch.join_next().await {
            assert_eq!(status.unwrap(), Some(401));
        }
    }
    let malformed = format!(
        "POST /mews/webhooks?Token={TOKEN} HTTP/1.1\r\nHost: relay\r\nContent-Length: 2\r\n\r\n"
    );
    for _ in 0..20 {
        assert_eq!(request(hooks, &malformed, b"[]").await, Some(400));
    }
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0));
    let stderr = daemon.stderr_text();
    let count = |needle: &str| stderr.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count("webhook refused (401)"), 1, "{stderr}");
    assert_eq!(count("webhook rejected (400)"), 1, "{stderr}");
    assert_eq!(count("unauthorized × 1999"), 1, "{stderr}");
    assert_eq!(count("malformed × 19"), 1, "{stderr}");
}

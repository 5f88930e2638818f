//! Figures for issue 18: each attack against a relay binary (a child process, default config
//! but for the listeners), with RSS, descriptors and the latency of WebSocket events sent every
//! 20 ms during the attack. Compare two builds:
//!
//! ```text
//! MEWS_RELAY_BIN=/work/main/target/release/mews-relay cargo test --test it measure -- --ignored --nocapture
//! MEWS_RELAY_BIN=target/release/mews-relay cargo test --test it measure -- --ignored --nocapture
//! ```

use std::collections::HashMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::attack::*;
use crate::listeners::listeners;
use crate::receiver::free_port;
use crate::support::*;

/// One relay under measurement.
struct Subject {
    child: Child,
    proc_: Proc,
    dir: tempfile::TempDir,
    hooks: SocketAddr,
    metrics: SocketAddr,
    /// Event number -> when it was sent, and when its line came out of the relay.
    sent: Arc<Mutex<HashMap<u64, Instant>>>,
    seen: Arc<Mutex<HashMap<u64, Instant>>>,
    /// Commands to the WebSocket side: drop the connection, or send a raw message.
    ws: tokio::sync::mpsc::UnboundedSender<Ws>,
    reconnects: Arc<Mutex<Vec<Duration>>>,
    /// When the relay closed a connection carrying an endless fragmented message.
    cut: Arc<Mutex<Option<Duration>>>,
    samples: Arc<Mutex<Vec<(Instant, u64, usize)>>>,
}

enum Ws {
    Drop,
    Send(Message),
    Fragments(Duration),
}

impl Subject {
    async fn start(shell: &str) -> Subject {
        let dir = tempfile::tempdir().unwrap();
        let mut server = MockServer::start().await;
        let (hooks, metrics) = (free_port(), free_port());
        let config = listeners(
            config_text(&server.url(), dir.path(), "[[sink]]\ntype = \"stdout\"\n")
                .replace("max_message_size = \"4KiB\"", "max_message_size = \"1MiB\""),
            hooks,
            metrics,
            "",
        );
        let path = write_config(dir.path(), &config);
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("{shell} && exec \"$0\" \"$@\""))
            .arg(relay_bin())
            .args(["run", "--config", path.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let seen_by_reader = Arc::clone(&seen);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(n) = line
                    .split("\"id\":\"lat-")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    seen_by_reader.lock().unwrap().insert(n, Instant::now());
                }
            }
        });
        let sent = Arc::new(Mutex::new(HashMap::new()));
        let reconnects = Arc::new(Mutex::new(Vec::new()));
        let (ws, mut orders) = tokio::sync::mpsc::unbounded_channel();
        let mut conn = server.next().await;
        let (sent_by_ticker, reconnected) = (Arc::clone(&sent), Arc::clone(&reconnects));
        let cut = Arc::new(Mutex::new(None));
        let cut_by_relay = Arc::clone(&cut);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(20));
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = ticks.tick() => {
                        let event = format!(r#"{{"Events":[{{"Type":"DeviceCommand","Id":"lat-{n}","State":"Pending"}}]}}"#);
                        if conn.try_send(Message::Text(event.into())).await {
                            sent_by_ticker.lock().unwrap().insert(n, Instant::now());
                        }
                        n += 1;
                    }
                    order = orders.recv() => match order {
                        None => return,
                        Some(Ws::Send(message)) => { conn.try_send(message).await; }
                        Some(Ws::Fragments(lasting)) => {
                            let start = Instant::now();
                            conn.try_send(Message::Frame(Frame::message(vec![b'{'], OpCode::Data(Data::Text), false))).await;
                            while start.elapsed() < lasting {
                                let next = Frame::message(vec![b' '], OpCode::Data(Data::Continue), false);
                                if !conn.try_send(Message::Frame(next)).await {
                                    cut_by_relay.lock().unwrap().replace(start.elapsed());
                                    break;
                                }
                            }
                            // Whatever happened, go on with a connection that works.
                            let _ = conn.try_send(Message::Close(None)).await;
                            drop(conn);
                            conn = server.next().await;
                        }
                        Some(Ws::Drop) => {
                            // Nothing in flight at the reset: an RST discards unread events,
                            // with any client.
                            sleep(Duration::from_millis(200)).await;
                            let at = Instant::now();
                            conn.reset();
                            loop {
                                if let Some(next) = server.try_next() { conn = next; break }
                                if at.elapsed() > Duration::from_secs(60) { return }
                                sleep(Duration::from_millis(5)).await;
                            }
                            reconnected.lock().unwrap().push(at.elapsed());
                        }
                    }
                }
            }
        });
        let proc_ = Proc(child.id());
        let samples = Arc::new(Mutex::new(Vec::new()));
        let sampling = Arc::clone(&samples);
        let pid = child.id();
        tokio::spawn(async move {
            let p = Proc(pid);
            loop {
                sampling
                    .lock()
                    .unwrap()
                    .push((Instant::now(), p.rss_mib(), p.fds()));
                sleep(Duration::from_millis(100)).await;
            }
        });
        crate::listeners::listening(hooks).await;
        sleep(Duration::from_secs(2)).await;
        Subject {
            child,
            proc_,
            dir,
            hooks,
            metrics,
            sent,
            seen,
            ws,
            reconnects,
            cut,
            samples,
        }
    }

    /// RSS and descriptors, peak between `from` and `to`.
    fn peak(&self, from: Instant, to: Instant) -> (u64, usize) {
        let samples = self.samples.lock().unwrap();
        let within = samples.iter().filter(|(at, ..)| *at >= from && *at <= to);
        within.fold((0, 0), |(r, f), (_, rss, fds)| (r.max(*rss), f.max(*fds)))
    }

    /// Latency p50, p99, max of events sent between `from` and `to`, and how many never came.
    fn latency(&self, from: Instant, to: Instant) -> (String, usize) {
        let sent = self.sent.lock().unwrap();
        let seen = self.seen.lock().unwrap();
        let mut lat = Vec::new();
        let mut lost = 0;
        for (n, at) in sent.iter().filter(|(_, at)| **at >= from && **at <= to) {
            match seen.get(n) {
                Some(got) => lat.push(got.duration_since(*at)),
                None => lost += 1,
            }
        }
        lat.sort();
        let pick = |q: f64| {
            lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
                .map_or("-".to_owned(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
        };
        (
            format!(
                "{} / {} / {} ms",
                pick(0.5),
                pick(0.99),
                lat.last()
                    .map_or("-".into(), |d| format!("{:.0}", d.as_secs_f64() * 1e3))
            ),
            lost,
        )
    }

    fn stop(mut self) -> String {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }
}

/// Prints a row for what happened between `from` and `to`, once the events sent last had a
/// second to come out.
async fn row(
    name: &str,
    s: &Subject,
    before: (u64, usize),
    from: Instant,
    to: Instant,
    extra: &str,
) {
    sleep(Duration::from_secs(1)).await;
    let (rss, fds) = s.peak(from, to);
    let (latency, lost) = s.latency(from, to);
    println!(
        "| {name} | {} → {} MiB (now {}) | {} → {} | {latency} | {lost} | {extra} |",
        before.0,
        rss,
        s.proc_.rss_mib(),
        before.1,
        fds,
    );
}

fn dir_bytes(dir: &Path, names: &[&str]) -> u64 {
    names
        .iter()
        .filter_map(|n| std::fs::metadata(dir.join(n)).ok())
        .map(|m| m.len())
        .sum()
}

/// Prints one table row per attack for `MEWS_RELAY_BIN` (default: this build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (about 4 minutes); run with --ignored --nocapture"]
async fn measure_attacks() {
    assert!(raise_own_fd_limit(4_000), "needs 4,000 descriptors");
    println!("binary: {}", relay_bin().display());
    println!(
        "| attack | RSS before → peak during (after) | fds before → peak | WS event latency p50 / p99 / max during | events lost | other |"
    );
    println!("|---|---|---|---|---|---|");

    // 1,000 wrong-token connections, 1 MiB bodies stalled before the last byte.
    let s = Subject::start("true").await;
    let before = (s.proc_.rss_mib(), s.proc_.fds());
    let from = Instant::now();
    let mut attack = JoinSet::new();
    for _ in 0..1_000 {
        attack.spawn(stalled_wrong_token(
            s.hooks,
            "/mews/webhooks",
            Duration::from_secs(10),
        ));
    }
    let mut refused = 0;
    while let Some(status) = attack.join_next().await {
        refused += usize::from(status.unwrap().is_some());
    }
    let to = Instant::now();
    sleep(Duration::from_secs(2)).await;
    row(
        "1,000 wrong-token conns, stalled 1 MiB bodies",
        &s,
        before,
        from,
        to,
        &format!(
            "answered {refused}/1000 within 10 s; {:.1} s",
            (to - from).as_secs_f64()
        ),
    )
    .await;
    s.stop();

    // 1,000 slowloris connections, a header byte per second, for 15 s.
    let s = Subject::start("true").await;
    let before = (s.proc_.rss_mib(), s.proc_.fds());
    let from = Instant::now();
    let mut attack = JoinSet::new();
    for _ in 0..1_000 {
        attack.spawn(slowloris(
            s.hooks,
            Duration::from_secs(1),
            Duration::from_secs(15),
        ));
    }
    let mut held = Vec::new();
    while let Some(d) = attack.join_next().await {
        held.extend(d.unwrap());
    }
    let to = Instant::now();
    held.sort();
    let closed = format!(
        "closed by the relay within 15 s: {}/1000{}",
        held.len(),
        held.first().map_or(String::new(), |first| format!(
            ", after {:.1}–{:.1} s",
            first.as_secs_f64(),
            held[held.len() - 1].as_secs_f64()
        ))
    );
    row(
        "1,000 slowloris (1 byte/s, 15 s)",
        &s,
        before,
        from,
        to,
        &closed,
    )
    .await;
    s.stop();

    // RLIMIT_NOFILE 1,024 and 2,000 idle connections, then a WebSocket drop.
    let s = Subject::start("ulimit -n 1024").await;
    let before = (s.proc_.rss_mib(), s.proc_.fds());
    let from = Instant::now();
    let flood = hold_idle(s.hooks, 2_000, Duration::from_secs(3)).await;
    sleep(Duration::from_secs(1)).await;
    let health = request(
        s.metrics,
        "GET /healthz HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n",
        b"",
    );
    let health = tokio::time::timeout(Duration::from_secs(5), health)
        .await
        .ok()
        .flatten();
    s.ws.send(Ws::Drop).unwrap();
    let dropped = Instant::now();
    while s.reconnects.lock().unwrap().is_empty() && dropped.elapsed() < Duration::from_secs(30) {
        sleep(Duration::from_millis(20)).await;
    }
    sleep(Duration::from_secs(2)).await;
    let to = Instant::now();
    let reconnect = s.reconnects.lock().unwrap().first().copied();
    row(
        "RLIMIT_NOFILE 1,024 + 2,000 idle conns, WS dropped",
        &s,
        before,
        from,
        to,
        &format!(
            "{} conns held; /healthz {health:?}; reconnect after {}",
            flood.len(),
            reconnect.map_or("none within 30 s".into(), |d| format!(
                "{:.0} ms",
                d.as_secs_f64() * 1e3
            ))
        ),
    )
    .await;
    drop(flood);
    s.stop();

    // 16,000 wrong-token requests: log lines.
    let s = Subject::start("true").await;
    let before = (s.proc_.rss_mib(), s.proc_.fds());
    let from = Instant::now();
    let wrong = "POST /mews/webhooks?Token=wh-0123456789abcdef0124 HTTP/1.1\r\nHost: r\r\nContent-Length: 2\r\n\r\n";
    for _ in 0..160 {
        let mut batch = JoinSet::new();
        for _ in 0..100 {
            batch.spawn(request(s.hooks, wrong, b"{}"));
        }
        while batch.join_next().await.is_some() {}
    }
    let to = Instant::now();
    row("16,000 wrong-token requests", &s, before, from, to, "").await;
    let stderr = s.stop();
    println!(
        "|  | log lines about refusals: {} |",
        stderr.lines().filter(|l| l.contains("refused")).count()
    );

    // A 60 MB message, three times.
    let s = Subject::start("true").await;
    let before = (s.proc_.rss_mib(), s.proc_.fds());
    let from = Instant::now();
    for _ in 0..3 {
        let huge = format!(
            r#"{{"Events":[{{"Type":"X","Id":"big","Blob":"{}"}}]}}"#,
            "a".repeat(60_000_000)
        );
        s.ws.send(Ws::Send(Message::Text(huge.into()))).unwrap();
    }
    sleep(Duration::from_secs(8)).await;
    let to = Instant::now();
    let on_disk = dir_bytes(s.dir.path(), &["rejected.jsonl", "rejected.jsonl.1"]);
    row(
        "3 × 60 MB WebSocket message",
        &s,
        before,
        from,
        to,
        &format!("rejected.jsonl: {on_disk} bytes"),
    )
    .await;
    s.stop();

    // 100,000 distinct Types.
    let s = Subject::start("true").await;
    let before = (s.proc_.rss_mib(), s.proc_.fds());
    let from = Instant::now();
    for batch in 0..100 {
        let events: Vec<String> = (0..1_000)
            .map(|i| format!(r#"{{"Type":"Type-{batch}-{i}","Id":"e-{batch}-{i}"}}"#))
            .collect();
        s.ws.send(Ws::Send(Message::Text(
            format!(r#"{{"Events":[{}]}}"#, events.join(",")).into(),
        )))
        .unwrap();
    }
    sleep(Duration::from_secs(8)).await;
    let page = http_client()
        .get(format!("http://{}/metrics", s.metrics))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let to = Instant::now();
    row(
        "100,000 distinct event Types",
        &s,
        before,
        from,
        to,
        &format!("/metrics: {} bytes", page.len()),
    )
    .await;
    s.stop();

    // 1-byte fragments without FIN for up to 40 s (message_timeout is 30 s).
    let s = Subject::start("true").await;
    let before = (s.proc_.rss_mib(), s.proc_.fds());
    let cpu = |pid: u32| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
            + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
        ticks / 100.0
    };
    let cpu_before = cpu(s.child.id());
    let from = Instant::now();
    s.ws.send(Ws::Fragments(Duration::from_secs(40))).unwrap();
    sleep(Duration::from_secs(41)).await;
    let to = Instant::now();
    let cut = match *s.cut.lock().unwrap() {
        Some(after) => format!("cut off by the relay after {:.1} s", after.as_secs_f64()),
        None => "not cut off in 40 s".into(),
    };
    row(
        "1-byte fragments without FIN, 40 s",
        &s,
        before,
        from,
        to,
        &format!(
            "relay CPU {:.1} s in 41 s; {cut}",
            cpu(s.child.id()) - cpu_before
        ),
    )
    .await;
    s.stop();
}

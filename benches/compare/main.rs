//! Side by side: the relay (the release binary as a child process, journal on with durable
//! group commits, one file sink) against the reference client (`reference.rs`: read, parse,
//! print; nothing else), in alternation, same scenarios, same machine, same moment. Prints one
//! Markdown table with medians and relay/reference ratios, and checks the targets.
//!
//! `cargo bench --bench compare` (5 runs each, 60 s idle spells: about 25 minutes);
//! `-- --quick` (1 run, 5 s idle); `-- --runs 7 --idle-secs 30 --fleet 1000`;
//! `-- burst steady idle fleet` picks scenarios.
//!
//! - burst: 200,000 events (`--burst-events`; more give a profiler more samples) of the
//!   simulator's event shapes at 1 and at 10 per message, sent as fast as the socket takes
//!   them: events/s from the first frame to the last line out.
//! - steady: 1,000 events/s for 10 s, each event stamped with its send time (this process's
//!   monotonic clock); latency to the line in the output file (tailed every 100 µs); the relay
//!   once with a file sink and once with the stdout sink (stdout redirected to the file); and
//!   the client's CPU time and context switches (all threads, /proc) per event over the run.
//!   The slowest 1 % of a relay's lines are split at their `received_at` stamp (wall clock):
//!   time before it (socket, the reader's wake-up, decoding) and after it (journal, sink).
//!   Beside it, the disk's own floor: one thread alone doing what the journal must do per
//!   event at that rate (a durable 400-byte append into a written-ahead file, both as the
//!   journal does it and with `write` + `fdatasync`), with its CPU time and context switches
//!   per append (the sleep between appends counted, as the relay's wait for the next message
//!   is).
//! - idle: one connection to the simulator, no events, `--idle-secs`: RSS and CPU time.
//! - With `MEWS_RELAY_BASELINE=/path/to/an/older/mews-relay`, that binary takes the reference's
//!   column: two builds of the relay side by side (for checking a change, not for the README).
//! - fleet: `--fleet` properties in one process against the simulator (with its REST API, so the
//!   relay's catch-up runs too): time until all are connected, RSS, idle CPU; then the simulator
//!   restarts (1 s down) and the reconnect attempts it sees are timed.

#[path = "../common/mod.rs"]
mod common;
mod floor;
mod reference;
mod steady;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Script, median, serve, tail};
use mews_relay::simulator::{self, EventFactory, Hotel, SimulatorConfig};
use tokio_util::sync::CancellationToken;

/// USER_HZ: /proc reports CPU time in these ticks on Linux.
const TICKS: f64 = 100.0;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Client {
    Reference,
    Relay,
}

/// A running client process and where its lines go.
struct Proc {
    child: Child,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Resident memory (kB → MB) from /proc.
    fn rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }

    /// Context switches so far (voluntary + involuntary, every thread), from /proc.
    fn switches(&self) -> f64 {
        let mut total = 0.0;
        let tasks = format!("/proc/{}/task", self.child.id());
        for task in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            total += status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
                .sum::<f64>();
        }
        total
    }

    /// User + system CPU time so far, in seconds.
    fn cpu_secs(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which is in parentheses): utime is the 12th, stime 13th.
        let rest = stat.rsplit(')').next().unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (tick(11) + tick(12)) / TICKS
    }
}

/// Starts `client` against `url` with `connections` connections (properties).
fn spawn(client: Client, url: &str, connections: usize, api_url: Option<&str>) -> Proc {
    spawn_with(client, url, connections, api_url, Output::File)
}

/// Which sink the relay writes its lines with (the reference always prints to stdout).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Output {
    /// A file sink at the output path.
    File,
    /// The stdout sink, with stdout redirected to the output path.
    Stdout,
}

fn spawn_with(
    client: Client,
    url: &str,
    connections: usize,
    api_url: Option<&str>,
    output: Output,
) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let baseline = std::env::var_os("MEWS_RELAY_BASELINE");
    let child = match client {
        Client::Reference if baseline.is_none() => {
            let file = std::fs::File::create(&out).unwrap();
            Command::new(std::env::current_exe().unwrap())
                .args(["--reference-client", url, &connections.to_string()])
                .stdout(file)
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        }
        Client::Reference | Client::Relay => {
            let binary = match (client, &baseline) {
                (Client::Reference, Some(path)) => PathBuf::from(path),
                _ => PathBuf::from(env!("CARGO_BIN_EXE_mews-relay")),
            };
            let sink = match output {
                Output::File => {
                    format!("[[sink]]\ntype = \"file\"\npath = \"{}\"\n", out.display())
                }
                Output::Stdout => "[[sink]]\ntype = \"stdout\"\n".to_owned(),
            };
            let mut text = format!(
                "[mews]\nwebsocket_url = \"{url}\"\nclient_token = \"BENCH\"\n{api}\n[state]\ndir = \"{dir}\"\n\n{sink}",
                api = api_url.map_or(String::new(), |a| format!("api_url = \"{a}\"\n")),
                dir = dir.path().display(),
            );
            for i in 0..connections {
                text.push_str(&format!(
                    "\n[[property]]\nname = \"p{i}\"\naccess_token = \"BENCH-{i}\"\n"
                ));
            }
            let config = dir.path().join("relay.toml");
            std::fs::write(&config, text).unwrap();
            let log = std::fs::File::create(dir.path().join("relay.log")).unwrap();
            let stdout = match output {
                Output::File => Stdio::null(),
                Output::Stdout => Stdio::from(std::fs::File::create(&out).unwrap()),
            };
            Command::new(binary)
                .args(["--log-level", "error", "run", "--config"])
                .arg(&config)
                .stdout(stdout)
                .stderr(log)
                .spawn()
                .unwrap()
        }
    };
    Proc {
        child,
        out,
        _dir: dir,
    }
}

/// `events` events of the simulator's shapes, `per_message` to a message.
fn burst_messages(events: usize, per_message: usize) -> Vec<String> {
    let mut factory = EventFactory::with_rng(fastrand::Rng::with_seed(42));
    (0..events / per_message)
        .map(|_| factory.message(per_message))
        .collect()
}

/// One burst: events/s until the last line is out, and the client's CPU time per event (µs)
/// from the first line out to the last.
fn burst(
    rt: &tokio::runtime::Runtime,
    client: Client,
    messages: &[String],
    events: usize,
) -> (f64, f64) {
    let (url, started) = rt.block_on(serve(Script::Burst(messages.to_vec())));
    let proc = spawn(client, &url, 1, None);
    let mut first = None;
    tail(&proc.out, events, Duration::from_micros(200), |_| {
        if first.is_none() {
            first = Some(proc.cpu_secs());
        }
    });
    let done = Instant::now();
    let cpu = (proc.cpu_secs() - first.unwrap_or(0.0)) * 1e6 / (events - 1) as f64;
    let started = rt.block_on(started).unwrap();
    (events as f64 / (done - started).as_secs_f64(), cpu)
}

/// The simulator (WebSocket and REST), serving until the token is cancelled.
struct Sim {
    hotel: Arc<Hotel>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

fn simulator(rt: &tokio::runtime::Runtime, addr: std::net::SocketAddr) -> Sim {
    let listener = rt.block_on(tokio::net::TcpListener::bind(addr)).unwrap();
    let hotel = Arc::new(Hotel::new());
    let stop = CancellationToken::new();
    let config = SimulatorConfig {
        rate: 1e-6, // idle: no events
        ..SimulatorConfig::default()
    };
    let task = rt.spawn(simulator::serve_hotel(
        listener,
        config,
        Arc::clone(&hotel),
        stop.clone(),
    ));
    Sim { hotel, stop, task }
}

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn wait_connected(hotel: &Hotel, n: usize, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while hotel.connected() < n {
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Some(start.elapsed())
}

/// RSS (MB) and CPU (% of one core) over an idle spell of `secs`.
fn idle_spell(proc: &Proc, secs: u64) -> (f64, f64) {
    let cpu0 = proc.cpu_secs();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let cpu = proc.cpu_secs() - cpu0;
    (proc.rss_mb(), 100.0 * cpu / t0.elapsed().as_secs_f64())
}

fn idle(rt: &tokio::runtime::Runtime, client: Client, secs: u64) -> (f64, f64) {
    let addr = free_addr();
    let sim = simulator(rt, addr);
    let url = format!("ws://{addr}{}", simulator::WS_PATH);
    let proc = spawn(client, &url, 1, None);
    wait_connected(&sim.hotel, 1, Duration::from_secs(30)).expect("connected");
    std::thread::sleep(Duration::from_secs(1)); // start-up settles
    let result = idle_spell(&proc, secs);
    drop(proc);
    sim.stop.cancel();
    let _ = rt.block_on(sim.task);
    result
}

/// What one fleet run measured.
struct Fleet {
    connected: Duration,
    rss: f64,
    cpu: f64,
    /// After the simulator restart: attempts' offsets from the moment it listened again.
    first: Duration,
    half: Duration,
    last: Duration,
    peak_per_100ms: usize,
    all_back: Duration,
}

fn fleet(rt: &tokio::runtime::Runtime, client: Client, n: usize, secs: u64) -> Option<Fleet> {
    let addr = free_addr();
    let sim = simulator(rt, addr);
    let url = format!("ws://{addr}{}", simulator::WS_PATH);
    let api = format!("http://{addr}");
    let proc = spawn(client, &url, n, Some(&api));
    let connected = wait_connected(&sim.hotel, n, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_secs(2)); // catch-up and start-up settle
    let (rss, cpu) = idle_spell(&proc, secs);
    if client == Client::Reference {
        // A bare client does not reconnect: no restart figures.
        sim.stop.cancel();
        let _ = rt.block_on(sim.task);
        return Some(Fleet {
            connected,
            rss,
            cpu,
            first: Duration::ZERO,
            half: Duration::ZERO,
            last: Duration::ZERO,
            peak_per_100ms: 0,
            all_back: Duration::ZERO,
        });
    }
    // Restart: every connection is closed (1001), the port is down for a second.
    sim.stop.cancel();
    let _ = rt.block_on(sim.task);
    std::thread::sleep(Duration::from_secs(1));
    let sim = simulator(rt, addr);
    let back = Instant::now();
    let all_back = wait_connected(&sim.hotel, n, Duration::from_secs(120))?;
    let mut offsets: Vec<Duration> = sim
        .hotel
        .upgrades()
        .into_iter()
        .map(|at| at.saturating_duration_since(back))
        .collect();
    offsets.sort();
    let mut buckets = std::collections::HashMap::new();
    for o in &offsets {
        *buckets.entry(o.as_millis() / 100).or_insert(0usize) += 1;
    }
    drop(proc);
    sim.stop.cancel();
    let _ = rt.block_on(sim.task);
    Some(Fleet {
        connected,
        rss,
        cpu,
        first: *offsets.first()?,
        half: offsets[offsets.len() / 2],
        last: *offsets.last()?,
        peak_per_100ms: buckets.values().copied().max().unwrap_or(0),
        all_back,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{cores} cores ({cpu}), {mem:.0} GiB RAM")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--reference-client") {
        let url = &args[1];
        let connections = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(1);
        return reference::main(url, connections);
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let quick = args.iter().any(|a| a == "--quick");
    let runs = value("--runs").unwrap_or(if quick { 1 } else { 5 }) as usize;
    let idle_secs = value("--idle-secs").unwrap_or(if quick { 5 } else { 60 });
    let fleet_n = value("--fleet").unwrap_or(1000) as usize;
    // Longer bursts give a profiler more samples.
    let events = value("--burst-events").unwrap_or(200_000) as usize;
    let steady_secs = if quick { 3 } else { 10 };
    let kinds = ["burst", "steady", "idle", "fleet"];
    let only = |name: &str| {
        !args.iter().any(|a| kinds.contains(&a.as_str())) || args.iter().any(|a| a == name)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let both = [Client::Reference, Client::Relay];
    println!(
        "mews-relay vs the reference client: {runs} run(s) each, alternating, medians; {}\n",
        machine()
    );
    println!("| scenario | reference | relay | relay / reference | target |");
    println!("| --- | --- | --- | --- | --- |");

    if only("burst") {
        for per_message in [1, 10] {
            let messages = burst_messages(events, per_message);
            let mut rates = [Vec::new(), Vec::new()];
            let mut cpu = [Vec::new(), Vec::new()];
            for _ in 0..runs {
                for (i, client) in both.iter().enumerate() {
                    let (rate, us) = burst(&rt, *client, &messages, events);
                    rates[i].push(rate);
                    cpu[i].push(us);
                }
            }
            let (r, m) = (median(rates[0].clone()), median(rates[1].clone()));
            println!(
                "| burst {events} events, {per_message} per message (events/s) | {r:.0} | {m:.0} | {:.2} | ≥ 0.70: {} |",
                m / r,
                verdict(m / r >= 0.7)
            );
            let (r, m) = (median(cpu[0].clone()), median(cpu[1].clone()));
            println!(
                "| the same: CPU per event (µs) | {r:.2} | {m:.2} | {:.2} | |",
                m / r
            );
        }
    }
    if only("steady") {
        steady::report(&rt, both, runs, steady_secs);
    }
    if only("idle") {
        let mut rss = [Vec::new(), Vec::new()];
        let mut cpu = [Vec::new(), Vec::new()];
        for _ in 0..runs {
            for (i, client) in both.iter().enumerate() {
                let (r, c) = idle(&rt, *client, idle_secs);
                rss[i].push(r);
                cpu[i].push(c);
            }
        }
        let (r, m) = (median(rss[0].clone()), median(rss[1].clone()));
        println!(
            "| idle {idle_secs} s, one property: RSS (MB) | {r:.1} | {m:.1} | {:.2} | ≤ 16 MB: {} |",
            m / r,
            verdict(m <= 16.0)
        );
        let (r, m) = (median(cpu[0].clone()), median(cpu[1].clone()));
        println!(
            "| idle {idle_secs} s, one property: CPU (% of one core) | {r:.3} | {m:.3} | — | |"
        );
    }
    if only("fleet") {
        let mut runs_of: [Vec<Fleet>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..runs {
            for (i, client) in both.iter().enumerate() {
                match fleet(&rt, *client, fleet_n, idle_secs) {
                    Some(f) => runs_of[i].push(f),
                    None => {
                        println!("| fleet: {client:?} did not connect all {fleet_n} |  |  |  |  |")
                    }
                }
            }
        }
        if runs_of.iter().all(|r| !r.is_empty()) {
            let med =
                |i: usize, f: &dyn Fn(&Fleet) -> f64| median(runs_of[i].iter().map(f).collect());
            let connected = |f: &Fleet| f.connected.as_secs_f64();
            let (r, m) = (med(0, &connected), med(1, &connected));
            println!(
                "| {fleet_n} properties: all connected after (s) | {r:.2} | {m:.2} | {:.2} | < 30 s: {} |",
                m / r,
                verdict(m < 30.0)
            );
            let (r, m) = (med(0, &|f| f.rss), med(1, &|f| f.rss));
            println!(
                "| {fleet_n} properties: RSS (MB) | {r:.1} | {m:.1} | {:.2} | ≤ 150 MB: {} |",
                m / r,
                verdict(m <= 150.0)
            );
            let (r, m) = (med(0, &|f| f.cpu), med(1, &|f| f.cpu));
            println!(
                "| {fleet_n} properties: idle CPU (% of one core) | {r:.2} | {m:.2} | — | < 2 %: {} |",
                verdict(m < 2.0)
            );
            println!(
                "| {fleet_n} properties, simulator restarted (1 s down): reconnect attempts after it listens again | no reconnect | first +{:.0} ms, half by +{:.0} ms, last +{:.0} ms; at most {:.0} in any 100 ms; all back after {:.2} s | — | spread by jitter |",
                med(1, &|f| ms(f.first)),
                med(1, &|f| ms(f.half)),
                med(1, &|f| ms(f.last)),
                med(1, &|f| f.peak_per_100ms as f64),
                med(1, &|f| f.all_back.as_secs_f64()),
            );
        }
    }
}

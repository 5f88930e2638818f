//! End-to-end benchmark: WebSocket frame in, line in the file sink out, journal on with durable
//! (fsync'd) group commits. Run with `cargo bench --bench throughput` (add `-- --quick` for a
//! shorter run; `-- burst`, `-- steady`, `-- http` or `-- nats` for one kind). Prints a Markdown table.
//!
//! Scenarios: bursts of 200,000 events at 1 and at 10 events per message (events/s until the
//! last line is in the file), and a steady 1,000 events/s for 10 s (latency from the server's
//! send to the line in the file: p50/p99/p99.9; the file is tailed every 100 µs, so figures
//! include up to 0.1 ms of polling); and the HTTP sink into a local endpoint: records/s with
//! `batch_max` 1 and 100, and the catch-up after a 10-minute outage at 100 events/s; and the
//! NATS sink into a local nats-server with JetStream, 1 and 64 publishes in flight (`-- nats`).
//!
//! `-- enrich`: the burst (200,000 DeviceCommands, 1 per message) and the steady 1,000/s with
//! enrichment off (no `api_url`), against the simulator's REST API answering (every command
//! exists in its hotel), and against a REST API that accepts connections and never answers
//! (`enrich.timeout` 2 s). The rate limit is raised to 1,000,000 per 30 s for these rows: at the
//! default 200 per 30 s a property cannot enrich 1,000 commands per second, and the rows would
//! measure the budget, not the relay.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::{Script, median, pct, sent_ns, serve, tail};
use mews_relay::app::{self, Control};
use mews_relay::config::{CredentialsDir, Settings};
use tokio::net::TcpListener;

fn burst_messages(events: usize, per_message: usize) -> Vec<String> {
    (0..events / per_message)
        .map(|m| {
            let list: Vec<String> = (0..per_message)
                .map(|k| {
                    let i = m * per_message + k;
                    format!(r#"{{"Type":"DeviceCommand","Id":"2391a3df-1c61-4131-b6f8-{i:012}","State":"Pending"}}"#)
                })
                .collect();
            format!(r#"{{"Events":[{}]}}"#, list.join(","))
        })
        .collect()
}

/// A relay config with a file sink at `<dir>/out.jsonl` and the given extra sinks.
fn settings(url: &str, dir: &Path, extra_sinks: &str) -> Settings {
    settings_with(url, dir, extra_sinks, None)
}

/// The same, with `api_url` (REST: catch-up of commands off, enrichment on).
fn settings_with(url: &str, dir: &Path, extra_sinks: &str, api_url: Option<&str>) -> Settings {
    let rest = api_url.map_or(String::new(), |api| {
        format!(
            "[mews]\napi_url = \"{api}\"\nrate_limit = 1000000\n[catch_up]\ncommands = false\n[enrich]\ncommands = true\n"
        )
    });
    let text = format!(
        r#"
[mews]
websocket_url = "{url}"
client_token = "BENCH"
[[property]]
name = "bench"
access_token = "BENCH"
[connection]
max_message_size = "1MiB"
[state]
dir = "{dir}"
[[sink]]
type = "file"
path = "{dir}/out.jsonl"
{extra_sinks}
"#,
        dir = dir.display()
    );
    // `[mews]` may appear once: fold the REST keys into it.
    let text = match rest.strip_prefix("[mews]\n") {
        Some(keys) => {
            let (mews_keys, rest) = keys.split_once("[catch_up]").unwrap_or((keys, ""));
            text.replacen("[mews]\n", &format!("[mews]\n{mews_keys}"), 1) + "[catch_up]" + rest
        }
        None => text,
    };
    Settings::from_toml(&text, Path::new("bench.toml"), &CredentialsDir::default()).unwrap()
}

struct Running {
    control: Control,
    handle: tokio::task::JoinHandle<Result<(), app::AppError>>,
}

fn start_relay(rt: &tokio::runtime::Runtime, url: &str, dir: &Path, extra_sinks: &str) -> Running {
    start_relay_with(rt, settings(url, dir, extra_sinks))
}

fn start_relay_with(rt: &tokio::runtime::Runtime, settings: Settings) -> Running {
    let (control, _reopen) = Control::new();
    let handle = rt.spawn(app::run(settings, control.clone()));
    Running { control, handle }
}

fn stop(rt: &tokio::runtime::Runtime, relay: Running) {
    relay.control.shutdown.cancel();
    rt.block_on(relay.handle).unwrap().unwrap();
}

fn burst(rt: &tokio::runtime::Runtime, events: usize, per_message: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let messages = burst_messages(events, per_message);
    let (url, started) = rt.block_on(serve(Script::Burst(messages)));
    let relay = start_relay(rt, &url, dir.path(), "");
    tail(
        &dir.path().join("out.jsonl"),
        events,
        Duration::from_micros(500),
        |_| {},
    );
    let done = Instant::now();
    let started = rt.block_on(started).unwrap();
    stop(rt, relay);
    events as f64 / (done - started).as_secs_f64()
}

fn steady(rt: &tokio::runtime::Runtime, rate: u32, seconds: u32) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    let epoch = Instant::now();
    let count = (rate * seconds) as usize;
    let (url, _started) = rt.block_on(serve(Script::Steady {
        count,
        rate,
        epoch,
        ids: None,
    }));
    let relay = start_relay(rt, &url, dir.path(), "");
    let mut latencies = Vec::with_capacity(count);
    tail(
        &dir.path().join("out.jsonl"),
        count,
        Duration::from_micros(100),
        |line| {
            let now = epoch.elapsed().as_nanos();
            let sent = sent_ns(line);
            latencies.push(Duration::from_nanos((now - sent) as u64));
        },
    );
    stop(rt, relay);
    latencies.sort();
    latencies
}

/// A local HTTP endpoint that counts the records it accepts; answers 503 while `up` is false.
struct Endpoint {
    url: String,
    received: Arc<AtomicUsize>,
    up: Arc<AtomicBool>,
}

fn endpoint(rt: &tokio::runtime::Runtime) -> Endpoint {
    let received = Arc::new(AtomicUsize::new(0));
    let up = Arc::new(AtomicBool::new(true));
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let (count, open) = (Arc::clone(&received), Arc::clone(&up));
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let (count, open) = (Arc::clone(&count), Arc::clone(&open));
        async move {
            if !open.load(Ordering::Relaxed) {
                return axum::http::StatusCode::SERVICE_UNAVAILABLE;
            }
            let records = body.windows(6).filter(|w| w == b"\"seq\":").count();
            count.fetch_add(records, Ordering::Relaxed);
            axum::http::StatusCode::OK
        }
    });
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    Endpoint { url, received, up }
}

fn http_sink(url: &str, batch_max: usize) -> String {
    format!(
        "[[sink]]\ntype = \"http\"\nname = \"bench\"\nurl = \"{url}\"\nbatch_max = {batch_max}\nretry_min = \"100ms\"\nretry_max = \"100ms\"\n"
    )
}

fn wait_for(count: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while count.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "HTTP benchmark stalled");
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Records/s from the WebSocket into a local HTTP endpoint.
fn http_burst(rt: &tokio::runtime::Runtime, events: usize, batch_max: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let ep = endpoint(rt);
    let (url, started) = rt.block_on(serve(Script::Burst(burst_messages(events, 100))));
    let relay = start_relay(rt, &url, dir.path(), &http_sink(&ep.url, batch_max));
    wait_for(&ep.received, events);
    let done = Instant::now();
    let started = rt.block_on(started).unwrap();
    stop(rt, relay);
    events as f64 / (done - started).as_secs_f64()
}

/// Time to deliver a backlog of `backlog` committed records once the endpoint is back.
fn http_catch_up(rt: &tokio::runtime::Runtime, backlog: usize, batch_max: usize) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let ep = endpoint(rt);
    ep.up.store(false, Ordering::Relaxed);
    let (url, _started) = rt.block_on(serve(Script::Burst(burst_messages(backlog, 100))));
    let relay = start_relay(rt, &url, dir.path(), &http_sink(&ep.url, batch_max));
    tail(
        &dir.path().join("out.jsonl"),
        backlog,
        Duration::from_millis(1),
        |_| {},
    ); // committed
    let back = Instant::now();
    ep.up.store(true, Ordering::Relaxed);
    wait_for(&ep.received, backlog);
    let took = back.elapsed();
    stop(rt, relay);
    took
}

/// A nats-server with JetStream on a free port, killed on drop (the store is removed with it).
struct NatsServer(
    std::process::Child,
    String,
    #[allow(dead_code)] tempfile::TempDir,
);

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nats_server() -> Option<NatsServer> {
    let binary = [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let store = tempfile::tempdir().ok()?;
    let child = std::process::Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(NatsServer(child, format!("nats://127.0.0.1:{port}"), store))
}

/// Records/s from the WebSocket into a JetStream stream (acknowledged publishes).
fn nats_burst(rt: &tokio::runtime::Runtime, events: usize, in_flight: usize) -> Option<f64> {
    let nats = nats_server()?;
    let dir = tempfile::tempdir().unwrap();
    let sink = format!(
        "[[sink]]\ntype = \"nats\"\nname = \"bench\"\nservers = [\"{}\"]\nstream = \"MEWS\"\ncreate_stream = true\nmax_in_flight = {in_flight}\n",
        nats.1
    );
    let (url, started) = rt.block_on(serve(Script::Burst(burst_messages(events, 100))));
    let relay = start_relay(rt, &url, dir.path(), &sink);
    let done = rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(nats.1.as_str()).await.unwrap());
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Ok(mut stream) = js.get_stream("MEWS").await
                && stream.info().await.map(|i| i.state.messages).unwrap_or(0) >= events as u64
            {
                return Instant::now();
            }
            assert!(Instant::now() < deadline, "NATS benchmark stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let started = rt.block_on(started).unwrap();
    stop(rt, relay);
    Some(events as f64 / (done - started).as_secs_f64())
}

/// Where enrichment asks for command details in the `enrich` rows.
#[derive(Clone, Copy, Debug)]
enum Rest {
    /// No `api_url`: enrichment off.
    Off,
    /// The simulator's REST API; every command of the stream exists in its hotel.
    Answering,
    /// Accepts connections, never answers.
    Hanging,
}

/// The REST side for `mode` with `n` command ids the stream may use; keep the guard alive.
fn rest_side(
    rt: &tokio::runtime::Runtime,
    mode: Rest,
    n: usize,
) -> (
    Option<String>,
    Vec<String>,
    tokio_util::sync::CancellationToken,
) {
    let stop = tokio_util::sync::CancellationToken::new();
    let ids: Vec<String> = (0..n)
        .map(|i| format!("2391a3df-1c61-4131-b6f8-{i:012}"))
        .collect();
    match mode {
        Rest::Off => (None, ids, stop),
        Rest::Answering => {
            let hotel = Arc::new(mews_relay::simulator::Hotel::new());
            hotel.keep_commands(n);
            let ids: Vec<String> = (0..n).map(|_| hotel.create_key_command(false)).collect();
            let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
            let api = format!("http://{}", listener.local_addr().unwrap());
            let config = mews_relay::simulator::SimulatorConfig {
                rate: 0.001,
                ..Default::default()
            };
            rt.spawn(mews_relay::simulator::serve_hotel(
                listener,
                config,
                hotel,
                stop.clone(),
            ));
            (Some(api), ids, stop)
        }
        Rest::Hanging => {
            let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
            let api = format!("http://{}", listener.local_addr().unwrap());
            let held = stop.clone();
            rt.spawn(async move {
                let mut sockets = Vec::new();
                loop {
                    tokio::select! {
                        () = held.cancelled() => return,
                        Ok((socket, _)) = listener.accept() => sockets.push(socket),
                    }
                }
            });
            (Some(api), ids, stop)
        }
    }
}

/// Events/s of a burst of single-DeviceCommand messages with enrichment as `mode` says.
fn enrich_burst(rt: &tokio::runtime::Runtime, mode: Rest, events: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let (api, ids, stop_rest) = rest_side(rt, mode, events);
    let messages: Vec<String> = ids
        .iter()
        .map(|id| {
            format!(r#"{{"Events":[{{"Type":"DeviceCommand","Id":"{id}","State":"Pending"}}]}}"#)
        })
        .collect();
    let (url, started) = rt.block_on(serve(Script::Burst(messages)));
    let relay = start_relay_with(rt, settings_with(&url, dir.path(), "", api.as_deref()));
    tail(
        &dir.path().join("out.jsonl"),
        events,
        Duration::from_micros(500),
        |_| {},
    );
    let done = Instant::now();
    let started = rt.block_on(started).unwrap();
    stop(rt, relay);
    stop_rest.cancel();
    events as f64 / (done - started).as_secs_f64()
}

/// Send → line latencies at `rate` DeviceCommands/s with enrichment as `mode` says.
fn enrich_steady(
    rt: &tokio::runtime::Runtime,
    mode: Rest,
    rate: u32,
    seconds: u32,
) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    let count = (rate * seconds) as usize;
    let (api, ids, stop_rest) = rest_side(rt, mode, count);
    let epoch = Instant::now();
    let (url, _started) = rt.block_on(serve(Script::Steady {
        count,
        rate,
        epoch,
        ids: Some(ids),
    }));
    let relay = start_relay_with(rt, settings_with(&url, dir.path(), "", api.as_deref()));
    let mut latencies = Vec::with_capacity(count);
    tail(
        &dir.path().join("out.jsonl"),
        count,
        Duration::from_micros(100),
        |line| {
            let now = epoch.elapsed().as_nanos();
            latencies.push(Duration::from_nanos((now - sent_ns(line)) as u64));
        },
    );
    stop(rt, relay);
    stop_rest.cancel();
    latencies.sort();
    latencies
}

/// Prints a latency row.
fn latency_row(label: &str, lat: &[Duration]) {
    println!(
        "| {label} | p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms |",
        pct(lat, 0.50).as_secs_f64() * 1e3,
        pct(lat, 0.99).as_secs_f64() * 1e3,
        pct(lat, 0.999).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3,
    );
}

/// Prints a table row: the median rate and every run.
fn rate_row(label: &str, unit: &str, runs: impl Iterator<Item = f64>) {
    let results: Vec<f64> = runs.collect();
    let each: Vec<String> = results.iter().map(|r| format!("{r:.0}")).collect();
    println!(
        "| {label} | {:.0} {unit} (runs: {}) |",
        median(results.clone()),
        each.join(", ")
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let quick = args.iter().any(|a| a == "--quick");
    // Optional filter: `burst`, `steady`, `http`, `nats` or `enrich`.
    let kinds = ["burst", "steady", "http", "nats", "enrich"];
    let only = |name: &str| {
        !args.iter().any(|a| kinds.contains(&a.as_str())) || args.iter().any(|a| a == name)
    };
    let (runs, steady_secs) = if quick { (1, 3) } else { (5, 10) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "mews-relay end-to-end benchmark ({runs} run(s) each, median; journal fsync per group commit, file sink fsync = \"interval\")\n"
    );
    println!("| scenario | result |");
    println!("| --- | --- |");
    for per_message in [1, 10].into_iter().filter(|_| only("burst")) {
        let label = format!("burst 200,000 events, {per_message} per message");
        rate_row(
            &label,
            "events/s",
            (0..runs).map(|_| burst(&rt, 200_000, per_message)),
        );
    }
    if only("http") {
        for batch_max in [1, 100] {
            let events = if batch_max == 1 { 20_000 } else { 200_000 };
            let label = format!("HTTP sink, batch_max {batch_max}, {events} records");
            rate_row(
                &label,
                "records/s",
                (0..runs).map(|_| http_burst(&rt, events, batch_max)),
            );
        }
        // A 10-minute outage at 100 events/s leaves 60,000 records waiting.
        for batch_max in [1, 100] {
            let took = http_catch_up(&rt, 60_000, batch_max);
            println!(
                "| HTTP catch-up after a 10-min outage at 100 events/s (60,000 records), batch_max {batch_max} | {:.1} s |",
                took.as_secs_f64()
            );
        }
    }
    if only("nats") {
        for in_flight in [1, 64] {
            let label =
                format!("NATS JetStream sink, {in_flight} publish(es) in flight, 50,000 records");
            match (0..runs)
                .map(|_| nats_burst(&rt, 50_000, in_flight))
                .collect::<Option<Vec<f64>>>()
            {
                Some(results) => rate_row(&label, "records/s", results.into_iter()),
                None => println!(
                    "| {label} | skipped: nats-server is not installed (apt-get install nats-server) |"
                ),
            }
        }
    }
    if only("enrich") && args.iter().any(|a| a == "enrich") {
        // Alternating the modes run by run, so a slow moment of the machine hits all three.
        let modes = [Rest::Off, Rest::Answering, Rest::Hanging];
        let mut bursts: Vec<Vec<f64>> = vec![Vec::new(); 3];
        for _ in 0..runs {
            for (i, mode) in modes.iter().enumerate() {
                bursts[i].push(enrich_burst(&rt, *mode, 200_000));
            }
        }
        for (mode, results) in modes.iter().zip(bursts) {
            let label = format!("burst 200,000 DeviceCommands, 1 per message, REST {mode:?}");
            rate_row(&label, "events/s", results.into_iter());
        }
        for mode in modes {
            let lat = enrich_steady(&rt, mode, 1000, steady_secs);
            latency_row(
                &format!(
                    "steady 1,000 DeviceCommands/s for {steady_secs} s, REST {mode:?}, WS send → file line"
                ),
                &lat,
            );
        }
    }
    if !only("steady") {
        return;
    }
    let lat = steady(&rt, 1000, steady_secs);
    latency_row(
        &format!("steady 1,000 events/s for {steady_secs} s, WS send → file line"),
        &lat,
    );
}

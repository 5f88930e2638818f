//! Chaos: the relay (a real child process) against a scripted Mews server and a scripted HTTP
//! endpoint, with faults on a schedule — TCP resets, clean closes, half-open spells, 401 spells,
//! HTTP outages and 503 bursts, and a `kill -9` in the middle. At the end every event the server
//! sent while the relay held a connection is in every sink, duplicates only as the same record,
//! and no process panicked. The short run is part of `cargo test`; the long one is
//! `CHAOS_ROUNDS=100 cargo test --test it chaos -- --ignored --nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

use crate::receiver::{Receiver, Reply};
use crate::support::*;

/// The faults, in the order the schedule cycles through them.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Reset,
    CleanClose,
    HalfOpen,
    Refused401,
    HttpOutageStart,
    HttpOutageEnd,
    Http503Burst,
}

const SCHEDULE: [Fault; 7] = [
    Fault::Reset,
    Fault::HttpOutageStart,
    Fault::CleanClose,
    Fault::Refused401,
    Fault::HttpOutageEnd,
    Fault::Http503Burst,
    Fault::HalfOpen,
];

struct Chaos {
    dir: tempfile::TempDir,
    server: MockServer,
    receiver: Receiver,
    config: PathBuf,
    daemon: Daemon,
    runs: usize,
    conn: Option<Conn>,
    sent: usize,
}

fn ids_in(path: &Path) -> BTreeMap<String, BTreeSet<u64>> {
    let mut out: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        out.entry(record["id"].as_str().unwrap().to_owned())
            .or_default()
            .insert(record["seq"].as_u64().unwrap());
    }
    out
}

impl Chaos {
    async fn start() -> Chaos {
        let dir = tempfile::tempdir().unwrap();
        let mut server = MockServer::start().await;
        let receiver = Receiver::start().await;
        let sinks = format!(
            "{}\n[[sink]]\ntype = \"http\"\nname = \"hooks\"\nurl = \"{}\"\nretry_min = \"20ms\"\nretry_max = \"200ms\"\ntimeout = \"2s\"\nbatch_max = 50\n",
            file_sink(&dir.path().join("out.jsonl")),
            receiver.url()
        );
        let text = config_text(&server.url(), dir.path(), &sinks)
            .replace("ping_interval = \"1s\"", "ping_interval = \"300ms\"")
            .replace("pong_timeout = \"3s\"", "pong_timeout = \"700ms\"");
        let config = write_config(dir.path(), &text);
        let daemon = Daemon::spawn(
            &["run", "--config", config.to_str().unwrap()],
            dir.path(),
            "run-0",
        );
        let conn = server.next().await;
        Chaos {
            dir,
            server,
            receiver,
            config,
            daemon,
            runs: 1,
            conn: Some(conn),
            sent: 0,
        }
    }

    /// Sends a batch and waits until the file sink has it: committed while connected.
    async fn traffic(&mut self, n: usize) {
        let batch = commands(self.sent, self.sent + n);
        self.conn().send(&batch).await;
        self.sent += n;
        let out = self.dir.path().join("out.jsonl");
        let last = format!("cmd-{}", self.sent - 1);
        wait_until(&format!("{last} is committed"), || {
            ids_in(&out).contains_key(&last)
        })
        .await;
    }

    async fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::Reset => {
                if let Some(conn) = self.conn.take() {
                    conn.reset();
                }
                self.conn = Some(self.server.next().await);
            }
            Fault::CleanClose => {
                self.conn().close().await;
                self.conn = Some(self.server.next().await);
            }
            Fault::HalfOpen => {
                self.conn().go_silent();
                self.conn = Some(self.server.next().await);
            }
            Fault::Refused401 => {
                self.server.reject_with(Some(401));
                let before = self.server.attempts();
                self.conn().close().await;
                let server = &self.server;
                wait_until("two refused attempts", || server.attempts() >= before + 2).await;
                self.server.reject_with(None);
                self.conn = Some(self.server.next().await);
            }
            Fault::HttpOutageStart => self.receiver.set_default(Reply::Status(503, "down")),
            Fault::HttpOutageEnd => self.receiver.set_default(Reply::Ok),
            Fault::Http503Burst => self
                .receiver
                .script(std::iter::repeat_n(Reply::RetryAfter(503, "0"), 5)),
        }
    }

    /// `kill -9`, then start the relay again on the same state.
    async fn kill_and_restart(&mut self) {
        self.daemon.child.kill().unwrap();
        self.daemon.wait().await;
        let tag = format!("run-{}", self.runs);
        self.runs += 1;
        self.daemon = Daemon::spawn(
            &["run", "--config", self.config.to_str().unwrap()],
            self.dir.path(),
            &tag,
        );
        self.conn = Some(self.server.next().await);
    }

    fn conn(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("a connection")
    }
}

async fn run(rounds: usize) {
    let mut chaos = Chaos::start().await;
    let mut faults: BTreeMap<String, usize> = BTreeMap::new();
    for round in 0..rounds {
        chaos.traffic(10).await;
        if round == rounds / 2 {
            chaos.kill_and_restart().await;
            *faults.entry("kill -9".into()).or_default() += 1;
            continue;
        }
        let fault = SCHEDULE[round % SCHEDULE.len()];
        chaos.inject(fault).await;
        *faults.entry(format!("{fault:?}")).or_default() += 1;
    }
    chaos.traffic(10).await;
    chaos.receiver.set_default(Reply::Ok);

    // Every event the HTTP endpoint got, by id, with the record keys it came under.
    let total = chaos.sent;
    let mut http: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut http_copies = 0usize;
    while http.len() < total {
        let request = chaos.receiver.next().await;
        for record in request.records() {
            http_copies += 1;
            let key = format!("{}", record["seq"]);
            http.entry(record["id"].as_str().unwrap().to_owned())
                .or_default()
                .insert(key);
        }
    }
    chaos.daemon.signal(Signal::SIGTERM);
    assert_eq!(chaos.daemon.wait().await, Some(0));

    let file = ids_in(&chaos.dir.path().join("out.jsonl"));
    let file_copies: usize = std::fs::read_to_string(chaos.dir.path().join("out.jsonl"))
        .unwrap()
        .lines()
        .count();
    println!("\n| chaos: {rounds} rounds | count |\n| --- | --- |");
    for (fault, n) in &faults {
        println!("| fault {fault} | {n} |");
    }
    println!("| events sent while connected | {total} |");
    println!(
        "| file sink: distinct events / lines | {} / {file_copies} |",
        file.len()
    );
    println!(
        "| HTTP sink: distinct events / records received | {} / {http_copies} |",
        http.len()
    );
    println!(
        "| relay processes (kill -9 restarts + 1) | {} |",
        chaos.runs
    );

    for i in 0..total {
        let id = format!("cmd-{i}");
        let in_file = file
            .get(&id)
            .unwrap_or_else(|| panic!("{id} missing from the file sink"));
        assert_eq!(
            in_file.len(),
            1,
            "{id}: redelivered to the file sink only as the same record (seq)"
        );
        let in_http = http
            .get(&id)
            .unwrap_or_else(|| panic!("{id} missing from the HTTP sink"));
        assert_eq!(
            in_http.len(),
            1,
            "{id}: redelivered to the HTTP sink only as the same record (seq)"
        );
        assert_eq!(
            in_file,
            &in_http
                .iter()
                .map(|k| k.parse().unwrap())
                .collect::<BTreeSet<u64>>()
        );
    }
    for run in 0..chaos.runs {
        let stderr =
            std::fs::read_to_string(chaos.dir.path().join(format!("run-{run}.stderr"))).unwrap();
        assert!(
            !stderr.contains("panicked"),
            "a panic in run {run}:\n{stderr}"
        );
    }
}

/// A short chaos run: every fault at least once, a kill -9 in the middle.
#[tokio::test]
async fn a_short_chaos_run_loses_nothing() {
    run(SCHEDULE.len() * 2).await;
}

/// The long run: `CHAOS_ROUNDS` rounds (default 100).
#[tokio::test]
#[ignore = "long; run with --ignored"]
async fn a_long_chaos_run_loses_nothing() {
    let rounds = std::env::var("CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    run(rounds).await;
}

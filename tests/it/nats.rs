//! The NATS JetStream sink against a real nats-server (Debian's package; `.ci/run` installs it):
//! order and subjects, a server restart without loss or duplicates, redeliveries dropped by
//! `Nats-Msg-Id`, and bad credentials.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::receiver::free_port;
use crate::support::*;

/// A nats-server with JetStream on a free port, storing under its own directory.
struct NatsServer {
    child: Child,
    addr: SocketAddr,
    store: tempfile::TempDir,
    auth: Vec<String>,
}

fn binary() -> PathBuf {
    [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("nats-server is not installed: apt-get install nats-server (.ci/run does this)")
}

impl NatsServer {
    async fn start(auth: &[&str]) -> NatsServer {
        let store = tempfile::tempdir().unwrap();
        let auth = auth.iter().map(|s| s.to_string()).collect();
        Self::spawn(free_port(), store, auth).await
    }

    async fn spawn(addr: SocketAddr, store: tempfile::TempDir, auth: Vec<String>) -> NatsServer {
        let child = Command::new(binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &addr.port().to_string(),
                "-js",
                "-sd",
            ])
            .arg(store.path())
            .args(&auth)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let server = NatsServer {
            child,
            addr,
            store,
            auth,
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not come up"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        server
    }

    fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Stops the server (by its PID) and starts it again on the same port and store.
    async fn restart_after(
        mut self,
        while_down: impl std::future::Future<Output = ()>,
    ) -> NatsServer {
        self.stop();
        while_down.await;
        let (addr, store, auth) = (
            self.addr,
            std::mem::replace(&mut self.store, tempfile::tempdir().unwrap()),
            self.auth.clone(),
        );
        Self::spawn(addr, store, auth).await
    }

    fn stop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }

    /// A client for checking the stream.
    async fn stream_messages(
        &self,
        stream: &str,
        opts: async_nats::ConnectOptions,
    ) -> Vec<(String, serde_json::Value)> {
        let client = opts.connect(self.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(stream).await.unwrap();
        let count = stream.info().await.unwrap().state.messages;
        let mut out = Vec::new();
        for seq in 1..=count {
            let message = stream.get_raw_message(seq).await.unwrap();
            out.push((
                message.subject.to_string(),
                serde_json::from_slice(&message.payload).unwrap(),
            ));
        }
        out
    }

    async fn count(&self, stream: &str, opts: async_nats::ConnectOptions) -> u64 {
        let client = opts.connect(self.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        match js.get_stream(stream).await {
            Ok(mut stream) => stream.info().await.unwrap().state.messages,
            Err(_) => 0,
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn nats_sink(url: &str, extra: &str) -> String {
    format!(
        "\n[[sink]]\ntype = \"nats\"\nname = \"nats\"\nservers = [\"{url}\"]\nstream = \"MEWS\"\ncreate_stream = true\nack_timeout = \"1s\"\n{extra}\n"
    )
}

async fn wait_count(server: &NatsServer, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let count = server
            .count("MEWS", async_nats::ConnectOptions::new())
            .await;
        if count >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream holds {count} of {n} messages"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn mixed(from: usize, to: usize) -> String {
    let events: Vec<String> = (from..to)
        .map(|i| {
            let kind = ["DeviceCommand", "Reservation", "Odd.Type Name"][i % 3];
            format!(r#"{{"Type":"{kind}","Id":"e-{i}","State":"Pending"}}"#)
        })
        .collect();
    format!(r#"{{"Events":[{}]}}"#, events.join(","))
}

/// Records arrive on the stream in order, with `mews.{property}.{type}` subjects (characters
/// NATS does not allow replaced) and the record as the payload.
#[tokio::test]
async fn records_arrive_in_order_with_the_expected_subjects() {
    let nats = NatsServer::start(&[]).await;
    let mut h = Harness::start_with(|c| c + &nats_sink(&nats.url(), "")).await;
    h.server.next().await.send(&mixed(0, 9)).await;
    wait_count(&nats, 9).await;
    let messages = nats
        .stream_messages("MEWS", async_nats::ConnectOptions::new())
        .await;
    let subjects: Vec<&str> = messages.iter().take(3).map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        subjects,
        [
            "mews.old-town.DeviceCommand",
            "mews.old-town.Reservation",
            "mews.old-town.Odd_Type_Name"
        ]
    );
    let ids: Vec<&str> = messages
        .iter()
        .map(|(_, r)| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, (0..9).map(|i| format!("e-{i}")).collect::<Vec<_>>());
    h.relay.stop().await;
}

/// nats-server stopped mid-flow and started again: nothing lost and no duplicate in the stream.
#[tokio::test]
async fn a_server_restart_loses_nothing_and_duplicates_nothing() {
    let nats = NatsServer::start(&[]).await;
    let mut h = Harness::start_with(|c| c + &nats_sink(&nats.url(), "")).await;
    let mut conn = h.server.next().await;
    conn.send(&mixed(0, 50)).await;
    wait_count(&nats, 50).await;
    let out = h.out.clone();
    let nats = nats
        .restart_after(async {
            conn.send(&mixed(50, 100)).await;
            wait_for_lines(&out, 100).await; // committed while the server is down
        })
        .await;
    wait_count(&nats, 100).await;
    h.relay.stop().await;
    let messages = nats
        .stream_messages("MEWS", async_nats::ConnectOptions::new())
        .await;
    assert_eq!(messages.len(), 100, "no duplicates");
    let seqs: Vec<u64> = messages
        .iter()
        .map(|(_, r)| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
}

/// A relay that republishes (as after `kill -9` between publish and cursor update) is dropped
/// by the stream's duplicate window: the stream keeps one copy of each record.
#[tokio::test]
async fn republished_records_are_dropped_as_duplicates() {
    let nats = NatsServer::start(&[]).await;
    // A second sink that never delivers keeps the records in the journal.
    let dead = format!("http://{}/never", free_port());
    let hold = format!("\n[[sink]]\ntype = \"http\"\nname = \"hold\"\nurl = \"{dead}\"\n");
    let mut h = Harness::start_with(|c| {
        c.replace("grace_period = \"5s\"", "grace_period = \"100ms\"")
            + &nats_sink(&nats.url(), "")
            + &hold
    })
    .await;
    h.server.next().await.send(&mixed(0, 20)).await;
    wait_count(&nats, 20).await;
    h.relay.stop().await;
    rewind_cursor(&h.dir.path().join("journal.redb"), "nats");
    let relay = Relay::start(&h.config);
    h.server.next().await; // connected again; the sink republishes everything
    wait_for_lines(&h.out, 20).await;
    // The republish is done when the rewound cursor is back at 20 (the relay saves it at stop).
    relay.stop().await;
    assert_eq!(
        cursor(&h.dir.path().join("journal.redb"), "nats"),
        20,
        "everything was republished"
    );
    assert_eq!(
        nats.count("MEWS", async_nats::ConnectOptions::new()).await,
        20,
        "duplicates dropped"
    );
}

const CURSORS: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("cursors");

/// What a crash between publish and cursor update leaves: the cursor behind the stream.
fn rewind_cursor(journal: &Path, sink: &str) {
    let db = redb::Database::create(journal).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(CURSORS).unwrap().insert(sink, 0).unwrap();
    txn.commit().unwrap();
}

fn cursor(journal: &Path, sink: &str) -> u64 {
    use redb::ReadableDatabase;
    let db = redb::Database::create(journal).unwrap();
    let txn = db.begin_read().unwrap();
    txn.open_table(CURSORS)
        .unwrap()
        .get(sink)
        .unwrap()
        .unwrap()
        .value()
}

/// Bad credentials: one clear error, retried, nothing lost (delivered once they are right).
#[tokio::test]
async fn bad_credentials_are_one_clear_error_and_lose_nothing() {
    let nats = NatsServer::start(&["--user", "relay", "--pass", "right-password"]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let config = dir.path().join("relay.toml");
    let ws_url = server.url();
    let write = |password: &str| {
        let sink = nats_sink(
            &nats.url(),
            &format!("user = \"relay\"\npassword = \"{password}\""),
        );
        std::fs::write(
            &config,
            config_text(
                &ws_url,
                dir.path(),
                &(file_sink(&dir.path().join("out.jsonl")) + &sink),
            ),
        )
        .unwrap();
    };
    write("wrong-password");
    let args = ["run", "--config", config.to_str().unwrap()];
    let mut daemon = Daemon::spawn(&args, dir.path(), "first");
    server.next().await.send(&mixed(0, 5)).await;
    wait_for_lines(&dir.path().join("out.jsonl"), 5).await;
    wait_until("the NATS error is logged", || {
        daemon
            .stderr_text()
            .contains("NATS refused the credentials")
    })
    .await;
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0));
    let stderr = daemon.stderr_text();
    let errors = stderr
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("NATS refused the credentials"))
        .count();
    assert_eq!(
        errors, 1,
        "one clear error, not one per reconnect attempt:\n{stderr}"
    );
    assert!(
        !stderr.contains("wrong-password"),
        "the password is never logged"
    );

    write("right-password");
    let mut daemon = Daemon::spawn(&args, dir.path(), "second");
    let opts = || {
        async_nats::ConnectOptions::new().user_and_password("relay".into(), "right-password".into())
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while nats.count("MEWS", opts()).await < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "records never arrived:\n{}",
            daemon.stderr_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(nats.stream_messages("MEWS", opts()).await.len(), 5);
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0));
}

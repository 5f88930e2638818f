//! The HTTP sink: retries until delivered, honours Retry-After, dead-letters what the endpoint
//! refuses, keeps order and keys, speaks mTLS, and never holds up other sinks.

use std::time::Duration;

use crate::pki::Ca;
use crate::receiver::{Receiver, Reply, free_port};
use crate::support::*;

/// An HTTP sink named "hooks" with fast retries, as TOML.
fn hooks(url: &str, extra: &str) -> String {
    format!(
        "\n[[sink]]\ntype = \"http\"\nname = \"hooks\"\nurl = \"{url}\"\nretry_min = \"50ms\"\nretry_max = \"200ms\"\ntimeout = \"1s\"\n{extra}\n"
    )
}

fn ids(records: &[serde_json::Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn expected(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("cmd-{i}")).collect()
}

/// Records committed while nothing listens are all delivered, in order, once it comes up.
#[tokio::test]
async fn an_endpoint_that_refuses_connections_gets_everything_once_it_is_up() {
    let addr = free_port();
    let mut h = Harness::start_with(|c| c + &hooks(&format!("http://{addr}/hooks"), "")).await;
    let mut conn = h.server.next().await;
    conn.send(&commands(0, 5)).await;
    wait_for_lines(&h.out, 5).await; // committed
    let mut receiver = Receiver::start_on(addr).await;
    assert_eq!(ids(&receiver.records(5).await), expected(0..5));
    h.relay.stop().await;
}

/// 503 with `Retry-After: 2` is not retried before 2 s; the retry carries the same key.
#[tokio::test]
async fn retry_after_is_honoured() {
    let mut receiver = Receiver::start().await;
    receiver.script([Reply::RetryAfter(503, "2")]);
    let mut h = Harness::start_with(|c| c + &hooks(&receiver.url(), "")).await;
    h.server.next().await.send(&commands(0, 1)).await;
    let first = receiver.next().await;
    let second = receiver.next().await;
    let gap = second.at - first.at;
    assert!(
        gap >= Duration::from_millis(1950),
        "retried after {gap:?}, before Retry-After"
    );
    assert!(gap < Duration::from_millis(3500), "waited {gap:?}");
    assert_eq!(first.key, second.key);
    assert_eq!(first.body, second.body);
    h.relay.stop().await;
}

/// A 400 dead-letters that record with status and body excerpt; the next one is delivered.
/// A replay puts it back for this sink only, under the same key.
#[tokio::test]
async fn a_refused_record_is_dead_lettered_and_can_be_replayed() {
    let mut receiver = Receiver::start().await;
    receiver.script([Reply::Ok, Reply::Status(400, "bad record: missing Foo")]);
    let mut h = Harness::start_with(|c| c + &hooks(&receiver.url(), "")).await;
    h.server.next().await.send(&commands(0, 3)).await;
    let requests = [
        receiver.next().await,
        receiver.next().await,
        receiver.next().await,
    ];
    assert_eq!(
        ids(&requests[2].records()),
        expected(2..3),
        "the next record is delivered"
    );
    let dead_file = h.dir.path().join("dead-letter/hooks.jsonl");
    let dead = wait_for_lines(&dead_file, 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["status"], 400);
    assert_eq!(dead[0]["response"], "bad record: missing Foo");
    assert_eq!(dead[0]["record"]["id"], "cmd-1");
    assert_eq!(dead[0]["key"], requests[1].key.as_str());
    h.relay.stop().await;

    let settings = mews_relay::Settings::from_toml(
        &h.config,
        std::path::Path::new("t.toml"),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(
        mews_relay::sink::dead_letter::replay(&settings, "hooks")
            .await
            .unwrap(),
        1
    );
    assert!(!dead_file.exists(), "the replayed file is renamed");
    let relay = Relay::start(&h.config);
    let again = receiver.next().await;
    assert_eq!(
        again.key, requests[1].key,
        "same Idempotency-Key as the first try"
    );
    assert_eq!(
        again.body, requests[1].body,
        "the same record, byte for byte"
    );
    relay.stop().await;
    assert_eq!(
        std::fs::read_to_string(&h.out).unwrap().lines().count(),
        3,
        "other sinks do not get a replay"
    );
}

/// A request past `timeout` is retried with the same key, not skipped.
#[tokio::test]
async fn a_slow_endpoint_is_retried_not_skipped() {
    let mut receiver = Receiver::start().await;
    receiver.script([Reply::Slow(Duration::from_secs(2))]);
    let mut h = Harness::start_with(|c| {
        c + &hooks(&receiver.url(), "").replace("timeout = \"1s\"", "timeout = \"300ms\"")
    })
    .await;
    h.server.next().await.send(&commands(0, 2)).await;
    let slow = receiver.next().await;
    let retry = receiver.next().await;
    let next = receiver.next().await;
    assert_eq!(slow.key, retry.key);
    assert_eq!(ids(&retry.records()), expected(0..1));
    assert_eq!(ids(&next.records()), expected(1..2));
    h.relay.stop().await;
}

/// `batch_max = 100` sends arrays in seq order and moves the cursor per batch: after a
/// restart, delivery resumes at the first undelivered batch.
#[tokio::test]
async fn batches_are_arrays_in_order_and_the_cursor_moves_per_batch() {
    let mut receiver = Receiver::start().await;
    receiver.script([Reply::Ok]);
    receiver.set_default(Reply::Status(503, "down"));
    let mut h = Harness::start_with(|c| {
        c.replace("grace_period = \"5s\"", "grace_period = \"200ms\"")
            .replace("max_message_size = \"4KiB\"", "max_message_size = \"1MiB\"")
            + &hooks(&receiver.url(), "batch_max = 100")
    })
    .await;
    h.server.next().await.send(&commands(0, 250)).await; // one message: one commit
    let first = receiver.next().await;
    assert_eq!(ids(&first.records()), expected(0..100));
    assert_eq!(first.headers["content-type"], "application/json");
    let failing = receiver.next().await;
    assert_eq!(ids(&failing.records()), expected(100..200));
    h.relay.stop().await;
    receiver.forget(); // the stopped relay's retries

    receiver.set_default(Reply::Ok);
    let relay = Relay::start(&h.config);
    let mut batches = Vec::new();
    while batches.iter().map(Vec::len).sum::<usize>() < 150 {
        batches.push(ids(&receiver.next().await.records()));
    }
    assert_eq!(
        batches[0],
        expected(100..200),
        "resumes after the last delivered batch"
    );
    assert_eq!(batches.concat(), expected(100..250));
    relay.stop().await;
}

/// With the HTTP endpoint hanging, a file sink on the same relay still gets each record at
/// once: within 1 s of its arrival, where waiting on the endpoint would take its 30 s request
/// timeout. (The bound was 100 ms; on a busy machine a record took 219 ms through a debug
/// build, not held by anything.)
#[tokio::test]
async fn a_hanging_endpoint_does_not_slow_the_file_sink() {
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", hang.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((tcp, _)) = hang.accept().await {
            conns.push(tcp); // accepted, never answered
        }
    });
    let mut h = Harness::start_with(|c| {
        c + &hooks(&url, "").replace("timeout = \"1s\"", "timeout = \"30s\"")
    })
    .await;
    let mut conn = h.server.next().await;
    for i in 0..10 {
        let sent = tokio::time::Instant::now();
        conn.send(&commands(i, i + 1)).await;
        wait_for_lines(&h.out, i + 1).await;
        let took = sent.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "record {i} reached the file sink after {took:?}"
        );
    }
    h.relay.stop().await;
    held.abort();
}

/// mTLS: with the client certificate the records arrive; `check` masks header values.
#[tokio::test]
async fn mtls_works_with_the_client_certificate() {
    let (server_ca, client_ca) = (Ca::new("endpoint CA"), Ca::new("client CA"));
    let (mut receiver, mut handshakes) =
        Receiver::start_tls(server_ca.server_config(Some(&client_ca))).await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_ca.client();
    let files = [
        ("ca.pem", server_ca.pem()),
        ("client.pem", client.cert_pem.clone()),
        ("client.key", client.key_pem.clone()),
    ];
    for (name, text) in &files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let p = |name: &str| dir.path().join(name).display().to_string();
    let extra = format!(
        "ca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\nheaders = {{ Authorization = \"Bearer s3cr3t-t0ken\" }}",
        p("ca.pem"),
        p("client.pem"),
        p("client.key")
    );
    let url = format!("https://127.0.0.1:{}/hooks", receiver.addr.port());
    let mut h = Harness::start_with(|c| c + &hooks(&url, &extra)).await;
    h.server.next().await.send(&commands(0, 1)).await;
    let request = receiver.next().await;
    assert_eq!(ids(&request.records()), expected(0..1));
    assert_eq!(request.headers["authorization"], "Bearer s3cr3t-t0ken");
    assert_eq!(
        tokio::time::timeout(WAIT, handshakes.recv()).await.unwrap(),
        Some(Ok(()))
    );
    h.relay.stop().await;

    let config = write_config(h.dir.path(), &h.config);
    let (code, stdout, _) = run_binary(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("Authorization = \"***\"") && !stdout.contains("s3cr3t"),
        "{stdout}"
    );
}

/// Without a client certificate the handshake fails, clearly, and is retried: a TLS failure
/// pauses the sink (the endpoint or its credentials are wrong), logged at ERROR once however
/// often it is retried.
#[tokio::test]
async fn mtls_without_a_client_certificate_fails_clearly_and_retries() {
    let (server_ca, client_ca) = (Ca::new("endpoint CA"), Ca::new("client CA"));
    let (receiver, mut handshakes) =
        Receiver::start_tls(server_ca.server_config(Some(&client_ca))).await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    std::fs::write(dir.path().join("ca.pem"), server_ca.pem()).unwrap();
    let url = format!("https://127.0.0.1:{}/hooks", receiver.addr.port());
    let extra = format!("ca_file = \"{}\"", dir.path().join("ca.pem").display());
    let config = write_config(
        dir.path(),
        &config_text(&server.url(), dir.path(), &hooks(&url, &extra)),
    );
    let mut daemon = Daemon::spawn(
        &["run", "--config", config.to_str().unwrap()],
        dir.path(),
        "relay",
    );
    server.next().await.send(&commands(0, 1)).await;
    for _ in 0..4 {
        let outcome = tokio::time::timeout(WAIT, handshakes.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            outcome.is_err(),
            "no handshake without a client certificate"
        );
    }
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0));
    let stderr = daemon.stderr_text();
    let line = stderr
        .lines()
        .find(|l| l.contains("cannot deliver"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.to_lowercase().contains("certificate"), "{line}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("cannot deliver"))
        .collect();
    assert_eq!(errors.len(), 1, "one ERROR for four failures: {errors:#?}");
    assert!(errors[0].contains("paused"), "{}", errors[0]);
    assert!(
        !dir.path().join("dead-letter/hooks.jsonl").exists(),
        "nothing dead-lettered"
    );
}

/// `kill -9` while the endpoint fails: after a restart with it up, every committed record
/// arrives, under the same Idempotency-Key it was first tried with.
#[tokio::test]
async fn kill_9_while_the_endpoint_is_down_loses_nothing_and_keeps_keys() {
    let mut receiver = Receiver::start().await;
    receiver.set_default(Reply::Status(503, "down"));
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let config = dir.path().join("relay.toml");
    let sinks = format!(
        "{}{}",
        file_sink(&dir.path().join("out.jsonl")),
        hooks(&receiver.url(), "")
    );
    std::fs::write(&config, config_text(&server.url(), dir.path(), &sinks)).unwrap();
    let args = ["run", "--config", config.to_str().unwrap()];
    let mut daemon = Daemon::spawn(&args, dir.path(), "first");
    server.next().await.send(&commands(0, 20)).await;
    wait_for_lines(&dir.path().join("out.jsonl"), 20).await;
    let tried = receiver.next().await;
    daemon.child.kill().unwrap();
    daemon.wait().await;

    receiver.set_default(Reply::Ok);
    let mut daemon = Daemon::spawn(&args, dir.path(), "second");
    let mut by_seq = std::collections::BTreeMap::new();
    while by_seq.len() < 20 {
        let request = receiver.next().await;
        if request.body == tried.body {
            assert_eq!(request.key, tried.key, "a redelivery carries the same key");
        }
        let record = &request.records()[0];
        let seq = record["seq"].as_u64().unwrap();
        assert!(
            request.key.ends_with(&format!("-{seq}")),
            "key {} for seq {seq}",
            request.key
        );
        by_seq.insert(seq, record["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(by_seq.into_values().collect::<Vec<_>>(), expected(0..20));
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0));
}

/// Past `state.max_bytes`, the sink holding the journal back sheds its oldest records to its
/// dead-letter file (counted and logged, never silently); other sinks get everything.
#[tokio::test]
async fn past_max_bytes_the_lagging_sink_sheds_to_dead_letters() {
    let mut receiver = Receiver::start().await;
    receiver.set_default(Reply::Status(503, "down"));
    let mut h = Harness::start_with(|c| {
        c.replace("[state]\n", "[state]\nmax_bytes = \"1MiB\"\n")
            .replace("max_message_size = \"4KiB\"", "max_message_size = \"1MiB\"")
            + &hooks(&receiver.url(), "")
    })
    .await;
    let mut conn = h.server.next().await;
    let total = 8000; // ~1.8 MB of journaled records
    for start in (0..total).step_by(500) {
        conn.send(&commands(start, start + 500)).await;
        // Paced like real traffic, so only the failing sink falls behind.
        wait_for_lines(&h.out, start + 500).await;
    }
    let file = std::fs::read_to_string(&h.out).unwrap();
    assert_eq!(
        file.lines().count(),
        total,
        "the healthy sink got every record once"
    );
    let dead_file = h.dir.path().join("dead-letter/hooks.jsonl");
    wait_until("the HTTP sink shed records", || {
        std::fs::read_to_string(&dead_file).is_ok_and(|t| t.lines().count() > 1000)
    })
    .await;
    receiver.set_default(Reply::Ok);
    // In seq order: once the last record arrives, every earlier one was delivered or shed.
    let mut seen = std::collections::BTreeSet::new();
    while !seen.contains(&(total as u64)) {
        for record in receiver.next().await.records() {
            seen.insert(record["seq"].as_u64().unwrap());
        }
    }
    let dead = wait_for_lines(&dead_file, 1).await;
    for line in &dead {
        assert!(
            line["reason"].as_str().unwrap().contains("max_bytes"),
            "{line}"
        );
        seen.insert(line["record"]["seq"].as_u64().unwrap());
    }
    assert_eq!(
        seen.len(),
        total,
        "every record was delivered or dead-lettered"
    );
    h.relay.stop().await;
}

/// A record still failing after `give_up_after` is dead-lettered and the sink goes on.
#[tokio::test]
async fn a_record_failing_past_give_up_after_is_dead_lettered() {
    let mut receiver = Receiver::start().await;
    receiver.set_default(Reply::Status(503, "down"));
    let mut h =
        Harness::start_with(|c| c + &hooks(&receiver.url(), "give_up_after = \"1s\"")).await;
    h.server.next().await.send(&commands(0, 2)).await;
    let dead = wait_for_lines(&h.dir.path().join("dead-letter/hooks.jsonl"), 1).await;
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("gave up after"),
        "{}",
        dead[0]
    );
    assert_eq!(dead[0]["record"]["id"], "cmd-0");
    receiver.set_default(Reply::Ok);
    receiver.forget();
    loop {
        let request = receiver.next().await;
        if request.records()[0]["id"] == "cmd-1" {
            break; // the sink went on with the next record
        }
    }
    h.relay.stop().await;
}

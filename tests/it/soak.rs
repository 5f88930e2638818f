//! Resource hygiene: a long run at a steady rate with regular reconnects keeps memory, file
//! descriptors and threads flat. `SOAK_SECS=600 cargo test --test it soak -- --ignored
//! --nocapture` (default 600 s); prints start and end figures and asserts they stay bounded.

use std::time::Duration;

use crate::support::*;

/// RSS in KiB, open file descriptors and threads of a process, from /proc.
fn usage(pid: u32) -> (u64, usize, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (field("VmRSS:"), fds, field("Threads:"))
}

/// 100 events/s with a reconnect every 30 s: RSS, descriptors and threads stay flat.
#[tokio::test]
#[ignore = "takes SOAK_SECS (600 s by default); run with --ignored"]
async fn a_long_run_keeps_memory_descriptors_and_threads_flat() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let dir = tempfile::tempdir().unwrap();
    let mut server = MockServer::start().await;
    let config = write_config(
        dir.path(),
        &config_text(
            &server.url(),
            dir.path(),
            &file_sink(&dir.path().join("out.jsonl")),
        ),
    );
    let mut daemon = Daemon::spawn(
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--log-level",
            "warn",
        ],
        dir.path(),
        "soak",
    );
    let pid = daemon.child.id();
    let mut conn = server.next().await;
    let mut sent = 0usize;
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    let started = tokio::time::Instant::now();
    let mut warm = None;
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        ticks.tick().await;
        conn.send(&commands(sent, sent + 10)).await; // 10 events per 100 ms
        sent += 10;
        let elapsed = started.elapsed().as_secs();
        if sent.is_multiple_of(3000) {
            // Every 30 s: the server drops the connection; the relay reconnects.
            conn.reset();
            conn = server.next().await;
        }
        if sent.is_multiple_of(1000) {
            let u = usage(pid);
            if warm.is_none() && elapsed >= 30 {
                warm = Some(u);
            }
            samples.push((elapsed, u));
        }
    }
    wait_for_lines(&dir.path().join("out.jsonl"), sent).await;
    let end = usage(pid);
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0));
    let warm = warm.unwrap_or(samples[0].1);
    println!(
        "\n| soak {secs} s, {sent} events, reconnect every 30 s | RSS KiB | fds | threads |\n| --- | --- | --- | --- |"
    );
    println!(
        "| after 30 s (warm) | {} | {} | {} |",
        warm.0, warm.1, warm.2
    );
    println!("| end | {} | {} | {} |", end.0, end.1, end.2);
    let peak = samples.iter().map(|(_, u)| u.0).max().unwrap_or(0);
    println!("| peak RSS KiB | {peak} | | |");
    assert!(
        end.1 <= warm.1 + 4,
        "file descriptors grew: {warm:?} -> {end:?}"
    );
    assert!(end.2 <= warm.2 + 4, "threads grew: {warm:?} -> {end:?}");
    assert!(
        end.0 <= warm.0 + 8 * 1024,
        "RSS grew by more than 8 MiB: {warm:?} -> {end:?}"
    );
}

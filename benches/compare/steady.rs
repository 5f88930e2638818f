//! The steady scenario: 1,000 events/s, latency to the line, CPU and switches per event, beside
//! the disk alone's floor.

use std::time::{Duration, Instant};

use super::common::{Script, median, pct, sent_ns, serve, tail};
use super::{Client, Output, floor, ms, spawn_with, verdict};

/// Runs the scenario `runs` times for each client, in alternation, and prints its rows.
pub fn report(rt: &tokio::runtime::Runtime, both: [Client; 2], runs: usize, steady_secs: u32) {
    // The disk alone's p99 (due → durable, as the journal writes): what durability costs
    // at that percentile on this machine before the relay does anything.
    let mut disk_p99 = 0.0;
    for (direct, how) in [
        (true, "direct synchronous block write, as the journal does"),
        (false, "`write` + `fdatasync`"),
    ] {
        let mut rows: [Vec<f64>; 5] = Default::default();
        for _ in 0..runs {
            let run = floor::disk_floor(1000, steady_secs, direct);
            rows[0].push(run.cpu_ms);
            rows[1].push(run.switches);
            for (k, p) in [0.5, 0.99, 0.999].into_iter().enumerate() {
                rows[2 + k].push(ms(pct(&run.latencies, p)));
            }
        }
        let m = |k: usize| median(rows[k].clone());
        if direct {
            disk_p99 = m(3);
        }
        println!(
            "| the disk alone, one thread: 1,000 durable 400-byte appends/s ({how}, then sleep): CPU (ms) / context switches per append | — | {:.4} / {:.2} | — | |",
            m(0),
            m(1)
        );
        println!(
            "| the same: due → durable, p50 / p99 / p99.9 (ms) | — | {:.2} / {:.2} / {:.2} | — | |",
            m(2),
            m(3),
            m(4)
        );
    }
    for output in [Output::File, Output::Stdout] {
        // Per client: p50, p99, p99.9, CPU ms/event, switches/event, and of the slowest
        // 1 %: the median before and after the relay's stamp.
        let mut p: [[Vec<f64>; 7]; 2] = Default::default();
        for _ in 0..runs {
            for (i, client) in both.iter().enumerate() {
                let run = steady(rt, *client, 1000, steady_secs, output);
                p[i][0].push(ms(pct(&run.latencies, 0.50)));
                p[i][1].push(ms(pct(&run.latencies, 0.99)));
                p[i][2].push(ms(pct(&run.latencies, 0.999)));
                p[i][3].push(run.cpu_ms_per_event);
                p[i][4].push(run.switches_per_event);
                if let Some((before, after)) = run.tail_split {
                    p[i][5].push(ms(before));
                    p[i][6].push(ms(after));
                }
            }
        }
        let sink = match output {
            Output::File => "file sink",
            Output::Stdout => "stdout sink",
        };
        for (k, name) in ["p50", "p99", "p99.9"].iter().enumerate() {
            let (r, m) = (median(p[0][k].clone()), median(p[1][k].clone()));
            let target = if *name == "p99" {
                format!(
                    "≤ reference + 1 ms: {}; on this disk, ≤ reference + the disk alone's p99 + 1 ms: {}",
                    verdict(m <= r + 1.0),
                    verdict(m <= r + disk_p99 + 1.0)
                )
            } else {
                String::new()
            };
            println!(
                "| 1,000 events/s for {steady_secs} s, {sink}, send → line, {name} (ms) | {r:.2} | {m:.2} | {:.2} | {target} |",
                m / r
            );
        }
        let split = |i: usize| {
            (!p[i][5].is_empty()).then(|| {
                format!(
                    "{:.2} / {:.2}",
                    median(p[i][5].clone()),
                    median(p[i][6].clone())
                )
            })
        };
        if let Some(m) = split(1) {
            let r = split(0).unwrap_or_else(|| "—".into());
            println!(
                "| 1,000 events/s, {sink}: the slowest 1 %, median send → `received_at` / `received_at` → line (ms) | {r} | {m} | — | |"
            );
        }
        let (r, m) = (median(p[0][3].clone()), median(p[1][3].clone()));
        println!(
            "| 1,000 events/s, {sink}: CPU per event (ms) | {r:.4} | {m:.4} | {:.2} | |",
            m / r
        );
        let (r, m) = (median(p[0][4].clone()), median(p[1][4].clone()));
        println!(
            "| 1,000 events/s, {sink}: context switches per event | {r:.2} | {m:.2} | — | ≤ 3: {} |",
            verdict(m <= 3.0)
        );
    }
}

/// One steady run: latencies, and the client's CPU time (ms) and context switches per event
/// over the run (from the first line out to the last).
struct SteadyRun {
    latencies: Vec<Duration>,
    /// Of the slowest 1 % of the lines that carry the relay's `received_at`: the median time
    /// from send to that stamp (the socket, the reader's wake-up, decoding) and from it to the
    /// line (journal commit, sink). Empty for the reference client, which stamps nothing.
    tail_split: Option<(Duration, Duration)>,
    cpu_ms_per_event: f64,
    switches_per_event: f64,
}

fn steady(
    rt: &tokio::runtime::Runtime,
    client: Client,
    rate: u32,
    secs: u32,
    output: Output,
) -> SteadyRun {
    let epoch = Instant::now();
    let wall = std::time::SystemTime::now();
    let count = (rate * secs) as usize;
    let (url, _started) = rt.block_on(serve(Script::Steady {
        count,
        rate,
        epoch,
        ids: None,
    }));
    let proc = spawn_with(client, &url, 1, None, output);
    let mut latencies = Vec::with_capacity(count);
    // (total, send → received_at) for lines with the stamp.
    let mut stamped = Vec::with_capacity(count);
    let mut first: Option<(f64, f64)> = None;
    tail(&proc.out, count, Duration::from_micros(100), |line| {
        let now = epoch.elapsed().as_nanos();
        let sent = sent_ns(line);
        let total = Duration::from_nanos((now - sent) as u64);
        latencies.push(total);
        if let Some(at) = received_at(line) {
            // The wall clock and the monotonic one agree to well under a microsecond over a
            // 10 s run; an event stamped "before" it was sent counts as zero.
            let at = at.duration_since(wall).unwrap_or_default().as_nanos();
            stamped.push((total, Duration::from_nanos(at.saturating_sub(sent) as u64)));
        }
        if first.is_none() {
            first = Some((proc.cpu_secs(), proc.switches()));
        }
    });
    let (cpu0, sw0) = first.unwrap_or((0.0, 0.0));
    let events = (count - 1) as f64;
    stamped.sort();
    let slowest = &stamped[stamped.len() - stamped.len() / 100..];
    let tail_split = (!slowest.is_empty()).then(|| {
        let mut before: Vec<Duration> = slowest.iter().map(|(_, b)| *b).collect();
        let mut after: Vec<Duration> = slowest.iter().map(|(t, b)| t.saturating_sub(*b)).collect();
        before.sort();
        after.sort();
        (pct(&before, 0.5), pct(&after, 0.5))
    });
    let run = SteadyRun {
        tail_split,
        cpu_ms_per_event: (proc.cpu_secs() - cpu0) * 1e3 / events,
        switches_per_event: (proc.switches() - sw0) / events,
        latencies: {
            latencies.sort();
            latencies
        },
    };
    drop(proc);
    run
}

/// The relay's `"received_at":"…"` stamp in a line (microseconds, UTC), if it has one.
fn received_at(line: &[u8]) -> Option<std::time::SystemTime> {
    const KEY: &str = "\"received_at\":\"";
    let text = std::str::from_utf8(line).ok()?;
    let at = text.find(KEY)? + KEY.len();
    let end = at + text[at..].find('"')?;
    humantime::parse_rfc3339(&text[at..end]).ok()
}

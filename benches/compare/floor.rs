//! The disk's own floor, printed beside the steady runs: what one durable append costs when
//! nothing else runs.

use std::time::{Duration, Instant};

/// What the disk alone did: CPU ms and context switches per append, and the time from each
/// append being due to it being durable (sorted).
pub struct Floor {
    pub cpu_ms: f64,
    pub switches: f64,
    pub latencies: Vec<Duration>,
}

/// The disk's floor at `rate` durable appends per second for `secs`: one thread appends 400
/// bytes per event into a file written ahead with zeros (as the journal's segments are),
/// durably, every append due by then in one write (a group commit), and sleeps until the next
/// one is due. `direct`: as the journal appends where it can (the blocks the bytes fall in,
/// written with `O_DIRECT | O_DSYNC`); else `write` + `fdatasync`. Its due → durable times are
/// what a relay that did nothing but journal would add to an event's latency on this disk.
pub fn disk_floor(rate: u32, secs: u32, direct: bool) -> Floor {
    use nix::sys::resource::{UsageWho, getrusage};
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("floor");
    std::fs::write(&path, vec![0u8; 4 << 20]).unwrap();
    std::fs::File::open(&path).unwrap().sync_all().unwrap();
    let flags = if direct {
        nix::libc::O_DIRECT | nix::libc::O_DSYNC
    } else {
        0
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(flags)
        .open(&path)
        .unwrap();
    // Room for the most appends one write groups (30: 12,000 bytes, at most four blocks).
    let mut buf = vec![b'x'; 20 << 10];
    let offset = buf.as_ptr().align_offset(4096);
    let block = &mut buf[offset..offset + (16 << 10)];
    let count = (rate * secs) as u64;
    let every = Duration::from_secs(1) / rate;
    let usage = || {
        let u = getrusage(UsageWho::RUSAGE_THREAD).unwrap();
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        let cpu = secs(u.user_time()) + secs(u.system_time());
        (
            cpu,
            u.voluntary_context_switches() + u.involuntary_context_switches(),
        )
    };
    let mut latencies = Vec::with_capacity(count as usize);
    let (cpu0, sw0) = usage();
    let start = Instant::now();
    let due = |i: u64| start + every * i as u32;
    let mut next = 0;
    while next < count {
        std::thread::sleep(due(next).saturating_duration_since(Instant::now()));
        // Every append due by now goes in one write, as a group commit takes every event that
        // arrived while the last one ran.
        let now = Instant::now();
        let mut last = next;
        while last + 1 < count && due(last + 1) <= now && last + 1 - next < 30 {
            last += 1;
        }
        let (from, to) = (next * 400 % (4 << 20), ((last + 1) * 400) % (4 << 20));
        let to = if to <= from { 4 << 20 } else { to };
        if direct {
            let first = from / 4096 * 4096;
            let end = to.div_ceil(4096) * 4096;
            file.write_all_at(&block[..(end - first) as usize], first)
                .unwrap();
        } else {
            file.write_all_at(&block[..(to - from) as usize], from)
                .unwrap();
            file.sync_data().unwrap();
        }
        let done = Instant::now();
        for i in next..=last {
            latencies.push(done - due(i));
        }
        next = last + 1;
    }
    let (cpu1, sw1) = usage();
    latencies.sort();
    Floor {
        cpu_ms: (cpu1 - cpu0) * 1e3 / count as f64,
        switches: (sw1 - sw0) as f64 / count as f64,
        latencies,
    }
}

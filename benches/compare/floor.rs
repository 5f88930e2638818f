//! The disk's own floor, printed beside the steady runs: what one durable append costs when
//! nothing else runs.

use std::time::{Duration, Instant};

/// The disk's floor at `rate` durable appends per second for `secs`: CPU ms and context
/// switches per append of one thread that appends 400 bytes into a file written ahead with
/// zeros (as the journal's segments are), durably, and sleeps until the next one is due.
/// `direct`: as the journal appends where it can (the block the bytes end in, written with
/// `O_DIRECT | O_DSYNC`); else `write` + `fdatasync`.
pub fn disk_floor(rate: u32, secs: u32, direct: bool) -> (f64, f64) {
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
    let mut buf = vec![b'x'; 8192];
    let offset = buf.as_ptr().align_offset(4096);
    let block = &mut buf[offset..offset + 4096];
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
    let (cpu0, sw0) = usage();
    let start = Instant::now();
    for i in 0..count {
        let at = (i * 400) % (4 << 20);
        if direct {
            file.write_all_at(block, at / 4096 * 4096).unwrap();
        } else {
            file.write_all_at(&block[..400], at).unwrap();
            file.sync_data().unwrap();
        }
        let due = start + every * (i + 1) as u32;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    let (cpu1, sw1) = usage();
    (
        (cpu1 - cpu0) * 1e3 / count as f64,
        (sw1 - sw0) as f64 / count as f64,
    )
}

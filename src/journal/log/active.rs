//! The segment being appended to, and how an append reaches the disk.
//!
//! - Zeros are written ahead of the frames ([`PREALLOCATE`]): appends overwrite bytes already
//!   in the file, so the file's size does not change and a durable write need not write the
//!   inode, which on ext4 is one wait for the disk fewer per commit. A write into written
//!   zeros also cannot fail for lack of space. Zeros end a scan as a torn frame does
//!   (`segment::parse`), so a crash leaves nothing to mistake for a record.
//! - Commits larger than [`DIRECT_MAX`] (a burst's) write no zeros ahead: they pay one change
//!   of size in their sync, where zeros would double the bytes they copy (a tenth of the
//!   relay's CPU in a burst, `perf record` of `cargo bench --bench compare -- burst`).
//! - Where the file system takes it, frames go out as direct, synchronous writes
//!   (`O_DIRECT | O_DSYNC`) of whole 4 KiB blocks: one system call, no page-cache writeback.
//!   The block the frames start in is written again with the bytes it already holds (kept in
//!   memory), so a write torn by a power cut can only damage the new frames, which a scan
//!   then cuts off. Measured at 1,000 commits/s on this project's CI machine (`python3`, see
//!   the closing note of issue 17): 35 µs of CPU per commit against 65 µs for `write` +
//!   `fdatasync`, with the same waits for the disk. Elsewhere (`EINVAL`): buffered writes and
//!   `fdatasync`.
//!
//! Readers keep their own buffered handle; Linux drops cached pages of a range a direct write
//! covered when the write completes, and readers never read past the length published after
//! it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use crate::files;

/// The active segment is written ahead with zeros this far past its frames (not past the
/// segment's size, rounded up to a block). Where the disk has no room for them, the frames
/// are written without.
pub const PREALLOCATE: u64 = 1 << 20;

/// Commits larger than this are written through the page cache even where direct writes
/// work: a burst's large commits cost no more that way, and sinks that fall behind in a burst
/// read them back from memory instead of from the disk.
const DIRECT_MAX: usize = 32 << 10;

/// Direct writes need offsets, lengths and memory aligned to the device's logical block; 4 KiB
/// is a multiple of every common one.
const BLOCK: u64 = 4096;

fn round_down(at: u64) -> u64 {
    at & !(BLOCK - 1)
}

fn round_up(at: u64) -> u64 {
    round_down(at + BLOCK - 1)
}

/// The segment being appended to.
pub(super) struct Active {
    pub first_seq: u64,
    /// Buffered read-write handle (buffered appends, cutting a failed write off).
    pub file: File,
    /// Bytes of whole frames (header included): where the next append goes.
    pub len: u64,
    /// How far the file holds written bytes (frames, then zeros written ahead).
    allocated: u64,
    /// Direct writes, where the file system takes them.
    direct: Option<Direct>,
}

/// The direct-write handle, and the bytes of the block the next frames start in.
struct Direct {
    file: File,
    /// `round_down(len)..len`: written again with the next frames.
    tail: Vec<u8>,
    /// Reused for every write (an aligned window of it is written).
    buf: Vec<u8>,
}

impl Active {
    /// Opens the segment at `path` for appends after its first `len` bytes.
    pub fn open(path: &Path, first_seq: u64, len: u64) -> io::Result<Active> {
        Active::open_with(path, first_seq, len, true)
    }

    /// [`Active::open`], with direct writes only if `try_direct`.
    fn open_with(path: &Path, first_seq: u64, len: u64, try_direct: bool) -> io::Result<Active> {
        let file = files::open_read_write(path, false)?;
        let allocated = file.metadata()?.len().max(len);
        let handle = if try_direct {
            open_direct(path)
        } else {
            Err(io::Error::from_raw_os_error(nix::libc::EINVAL))
        };
        let direct = match handle {
            Ok(handle) => {
                let mut tail = vec![0u8; (len - round_down(len)) as usize];
                file.read_exact_at(&mut tail, round_down(len))?;
                Some(Direct {
                    file: handle,
                    tail,
                    buf: Vec::new(),
                })
            }
            Err(err) if err.raw_os_error() == Some(nix::libc::EINVAL) => None,
            Err(err) => return Err(err),
        };
        Ok(Active {
            first_seq,
            file,
            len,
            allocated,
            direct,
        })
    }

    /// Appends `frames` durably at `len` (all or nothing), writing zeros ahead up to
    /// `PREALLOCATE` further (at most to `limit`). Returns where the frames went.
    pub fn append(&mut self, frames: &[u8], limit: u64) -> io::Result<u64> {
        let at = self.len;
        let result = match self.direct.as_mut() {
            Some(direct) if frames.len() <= DIRECT_MAX => {
                match direct.append(at, frames, self.allocated, limit) {
                    Err(err) if err.raw_os_error() == Some(nix::libc::EINVAL) => {
                        // The file system refused a direct write after all: buffered from now
                        // on.
                        self.direct = None;
                        buffered(&self.file, at, frames, self.allocated, limit)
                    }
                    other => other,
                }
            }
            Some(direct) => buffered(&self.file, at, frames, self.allocated, limit).inspect(|_| {
                direct.follow(frames);
            }),
            None => buffered(&self.file, at, frames, self.allocated, limit),
        };
        match result {
            Ok(allocated) => {
                self.allocated = allocated;
                self.len += frames.len() as u64;
                Ok(at)
            }
            Err(err) => {
                // Whatever part reached the file is cut off again (a commit is all or nothing).
                let _ = self.file.set_len(at);
                self.allocated = at;
                Err(err)
            }
        }
    }

    /// Cuts off the zeros written ahead (the segment is full; a crash before this reaches the
    /// disk leaves them, which `Log::open` accepts).
    pub fn trim(&self) {
        let _ = self
            .file
            .set_len(self.len)
            .and_then(|()| self.file.sync_data());
    }
}

fn open_direct(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(
            nix::libc::O_DIRECT | nix::libc::O_DSYNC | nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC,
        )
        .open(path)
}

/// Where zeros must be written ahead of a write ending at `end`: `None` when the file
/// already holds written bytes that far.
fn ahead(end: u64, allocated: u64, limit: u64) -> Option<u64> {
    (end > allocated).then(|| end.max((end + PREALLOCATE).min(limit)))
}

/// `write` + zeros ahead (not after a large commit) + `fdatasync`; the new allocated length.
fn buffered(file: &File, at: u64, frames: &[u8], allocated: u64, limit: u64) -> io::Result<u64> {
    let end = at + frames.len() as u64;
    file.write_all_at(frames, at)?;
    let zeros = if frames.len() > DIRECT_MAX {
        None
    } else {
        ahead(end, allocated, limit)
    };
    let to = match zeros {
        Some(to) => match write_zeros(file, end.max(allocated), to, &mut Vec::new()) {
            Ok(()) => to,
            Err(err) if no_room(&err) => end, // the frames fit; their sync tells
            Err(err) => return Err(err),
        },
        None => allocated.max(end),
    };
    file.sync_data()?;
    Ok(to)
}

impl Direct {
    /// Keeps `tail` right after `frames` were appended another way.
    fn follow(&mut self, frames: &[u8]) {
        let start = self.tail.len() as u64; // where the frames start in the block
        let end = start + frames.len() as u64;
        let keep = (end - round_down(end)) as usize;
        if keep <= frames.len() {
            self.tail.clear();
            self.tail.extend_from_slice(&frames[frames.len() - keep..]);
        } else {
            self.tail.extend_from_slice(frames);
        }
    }

    /// Zeros ahead (synced), then the frames in whole blocks from the block `at` is in; the
    /// new allocated length.
    fn append(&mut self, at: u64, frames: &[u8], allocated: u64, limit: u64) -> io::Result<u64> {
        let start = at - self.tail.len() as u64;
        let end = at + frames.len() as u64;
        let padded = round_up(end);
        let mut to = ahead(padded, allocated, limit).map(round_up);
        if let Some(end_of_zeros) = to {
            // Zeros first, so that the frames' write changes no size; from a block boundary.
            let from = padded.max(round_down(allocated));
            match write_zeros(&self.file, from, end_of_zeros, &mut self.buf) {
                Ok(()) => {}
                // No room for them: the frames may still fit (their own write tells).
                Err(err) if no_room(&err) => to = None,
                Err(err) => return Err(err),
            }
        }
        let size = (padded - start) as usize;
        let block = aligned(&mut self.buf, size)?;
        let tail = self.tail.len();
        block[..tail].copy_from_slice(&self.tail);
        block[tail..tail + frames.len()].copy_from_slice(frames);
        block[tail + frames.len()..].fill(0);
        self.file.write_all_at(block, start)?;
        let kept = (round_down(end) - start) as usize;
        self.tail.clear();
        self.tail
            .extend_from_slice(&block[kept..tail + frames.len()]);
        Ok(to.unwrap_or(allocated).max(padded))
    }
}

/// Whether `err` says the disk (or the file-size limit) has no room.
fn no_room(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(nix::libc::ENOSPC | nix::libc::EFBIG | nix::libc::EDQUOT)
    )
}

/// A window of `size` bytes of `buf` starting at a block-aligned address.
fn aligned(buf: &mut Vec<u8>, size: usize) -> io::Result<&mut [u8]> {
    buf.resize(size + BLOCK as usize, 0);
    let offset = buf.as_ptr().align_offset(BLOCK as usize);
    buf.get_mut(offset..offset + size)
        .ok_or_else(|| io::Error::from_raw_os_error(nix::libc::EINVAL))
}

/// Writes zeros over `from..to` of `file` (block-aligned when `file` is direct).
fn write_zeros(file: &File, mut from: u64, to: u64, buf: &mut Vec<u8>) -> io::Result<()> {
    const CHUNK: u64 = 256 << 10;
    while from < to {
        let n = (to - from).min(CHUNK) as usize;
        let zeros = aligned(buf, n)?;
        zeros.fill(0);
        file.write_all_at(zeros, from)?;
        from += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file after appends of sizes that start and end anywhere in a block, with a reopen
    /// in between: the frames in order, then only zeros; written ahead, within the limit.
    fn appends(try_direct: bool) -> (Vec<u8>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.seg");
        std::fs::write(&path, b"HEADER-16-BYTES.").unwrap();
        let limit = 8 << 20;
        let mut expected = b"HEADER-16-BYTES.".to_vec();
        let mut active = Active::open_with(&path, 1, 16, try_direct).unwrap();
        if try_direct && open_direct(&path).is_ok() {
            assert!(active.direct.is_some(), "direct writes where they open");
        }
        let mut rng = fastrand::Rng::with_seed(7);
        for i in 0..300u32 {
            if i == 150 {
                active = Active::open_with(&path, 1, active.len, try_direct).unwrap();
            }
            let size = if i % 7 == 0 {
                rng.usize(DIRECT_MAX..DIRECT_MAX * 3)
            } else {
                rng.usize(1..9000)
            };
            let frames: Vec<u8> = (0..size).map(|_| rng.u8(1..)).collect();
            let at = active.append(&frames, limit).unwrap();
            assert_eq!(at as usize, expected.len());
            expected.extend_from_slice(&frames);
            let size = std::fs::metadata(&path).unwrap().len();
            if i == 0 {
                assert_eq!(size, expected.len() as u64, "no zeros after a large commit");
            } else if i == 1 {
                assert!(size >= expected.len() as u64 + PREALLOCATE, "written ahead");
            }
        }
        let bytes = std::fs::read(&path).unwrap();
        let size = bytes.len() as u64;
        assert_eq!(&bytes[..expected.len()], &expected[..]);
        assert!(
            bytes[expected.len()..].iter().all(|b| *b == 0),
            "only zeros after the frames"
        );
        assert!(size >= expected.len() as u64 && size <= limit, "{size}");
        active.trim();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), active.len);
        (expected, size)
    }

    /// Set in the child process of [`with_no_room_for_zeros_ahead_the_frames_still_go_in`],
    /// whose file-size limit (`RLIMIT_FSIZE`, 64 KiB) stands for a full disk.
    const NO_ROOM_CHILD: &str = "MEWS_RELAY_TEST_NO_ROOM_CHILD";

    /// Appends in a child process where the file may not pass 64 KiB: frames that fit go in
    /// although the zeros ahead of them do not, a commit that does not fit fails and leaves
    /// nothing, and the next one that fits goes where the failed one would have.
    fn appends_with_no_room(try_direct: bool) {
        const LIMIT: usize = 64 << 10;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.seg");
        std::fs::write(&path, b"HEADER-16-BYTES.").unwrap();
        let mut expected = b"HEADER-16-BYTES.".to_vec();
        let mut active = Active::open_with(&path, 1, 16, try_direct).unwrap();
        let mut rng = fastrand::Rng::with_seed(3);
        let mut frames = |size: usize| -> Vec<u8> { (0..size).map(|_| rng.u8(1..)).collect() };
        // 1,000 bytes, then 20 of 3,000: the last ends at 61,016 (its block at 61,440).
        for size in std::iter::once(1000).chain([3000; 20]) {
            let bytes = frames(size);
            let at = active
                .append(&bytes, 8 << 20)
                .expect("frames that fit go in");
            assert_eq!(at as usize, expected.len());
            expected.extend_from_slice(&bytes);
        }
        let err = active
            .append(&frames(10_000), 8 << 20)
            .expect_err("a commit past the limit fails");
        assert!(no_room(&err), "{err}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), active.len);
        let last = frames(100);
        let at = active.append(&last, 8 << 20).unwrap();
        assert_eq!(
            at as usize,
            expected.len(),
            "where the failed commit would have gone"
        );
        expected.extend_from_slice(&last);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() <= LIMIT, "{}", bytes.len());
        assert_eq!(&bytes[..expected.len()], &expected[..]);
        assert!(bytes[expected.len()..].iter().all(|b| *b == 0));
    }

    #[test]
    fn with_no_room_for_zeros_ahead_the_frames_still_go_in() {
        if std::env::var_os(NO_ROOM_CHILD).is_some() {
            // The limit is the process's: this child runs nothing else.
            nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_FSIZE,
                64 << 10,
                64 << 10,
            )
            .unwrap();
            // Blocked, the signal does not end the process; the write fails with EFBIG.
            let mut xfsz = nix::sys::signal::SigSet::empty();
            xfsz.add(nix::sys::signal::Signal::SIGXFSZ);
            xfsz.thread_block().unwrap();
            appends_with_no_room(true);
            appends_with_no_room(false);
            return;
        }
        let name =
            "journal::log::active::tests::with_no_room_for_zeros_ahead_the_frames_still_go_in";
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(NO_ROOM_CHILD, "1");
        let out = child.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn direct_and_buffered_appends_leave_the_same_frames_and_zeros() {
        let (direct, direct_size) = appends(true);
        let (buffered, buffered_size) = appends(false);
        assert_eq!(direct, buffered);
        assert!(direct_size.abs_diff(buffered_size) < 4096);
    }
}

//! The record log: committed records in append-only segment files under `<state.dir>/log/`,
//! one write and one `fdatasync` per group commit; where each segment starts; reads by seq;
//! whole segments removed once every sink has passed them. The state around the records
//! (cursors, dedupe keys, pending records, …) stays in redb (see `super::store`).

mod active;
mod open;
pub mod segment;

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use active::Active;
use segment::Frame;

use crate::files;

/// The folder of segments inside `state.dir`.
pub const DIR: &str = "log";
/// A new segment starts once the active one holds this many bytes (at most; see
/// [`segment_bytes`]).
pub const SEGMENT_BYTES: u64 = 32 << 20;

/// The segment size for a journal limited to `max_bytes`: a sixteenth of it (between 64 KiB
/// and [`SEGMENT_BYTES`]), so removing whole segments keeps the journal near its limit.
pub fn segment_bytes(max_bytes: u64) -> u64 {
    (max_bytes / 16).clamp(64 << 10, SEGMENT_BYTES)
}

/// A segment as the readers know it.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// Read handle (shared with readers; also what a deleted segment is copied back from).
    file: Arc<File>,
    /// Bytes of whole frames (header included).
    len: u64,
    /// The last seq in it (`first - 1` while empty).
    last_seq: u64,
    /// Where some frames start: (seq, offset), ascending; reads start from the nearest.
    marks: Vec<(u64, u64)>,
}

/// The record log of one journal.
pub struct Log {
    dir: PathBuf,
    /// A new segment starts once the active one holds this many bytes.
    segment_bytes: u64,
    segments: RwLock<BTreeMap<u64, Segment>>,
    active: Mutex<Option<Active>>,
}

fn name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

impl Log {
    /// The last seq in the log, if it holds any segment.
    pub fn last_seq(&self) -> Option<u64> {
        self.segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .next_back()
            .map(|s| s.last_seq)
    }

    /// The log folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends `frames` (whole frames for seqs `first..=last`; `marks` are (seq, offset in
    /// `frames`) of some of them) durably: one write, one `fdatasync`. A new segment is started
    /// first when the active one is full.
    pub fn append(
        &self,
        frames: &[u8],
        first: u64,
        last: u64,
        marks: &[(u64, u64)],
    ) -> io::Result<()> {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let needs_new = match active.as_ref() {
            Some(open) => open.len >= self.segment_bytes,
            None => !self.can_continue_last(first)?,
        };
        if needs_new {
            match active.take() {
                Some(full) => full.trim(),
                None => self.trim_last(),
            }
            *active = Some(self.start_segment(first)?);
        } else if active.is_none() {
            *active = Some(self.continue_last()?);
        }
        let Some(open) = active.as_mut() else {
            return Err(io::Error::other("no active segment"));
        };
        let at = open.append(frames, self.segment_bytes)?;
        let mut segments = self.segments.write().unwrap_or_else(|p| p.into_inner());
        if let Some(segment) = segments.get_mut(&open.first_seq) {
            segment.len = open.len;
            segment.last_seq = last;
            segment
                .marks
                .extend(marks.iter().map(|(seq, offset)| (*seq, at + offset)));
        }
        Ok(())
    }

    /// Whether appends starting at `first` may go on in the last segment (it exists, is not
    /// full, and ends right before `first`).
    fn can_continue_last(&self, first: u64) -> io::Result<bool> {
        let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
        Ok(segments.iter().next_back().is_some_and(|(_, segment)| {
            segment.len < self.segment_bytes && segment.last_seq + 1 == first
        }))
    }

    /// Cuts the zeros written ahead off the last segment (a new one starts after it while no
    /// handle of it is open: after an I/O error, or a gap in seqs).
    fn trim_last(&self) {
        let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
        if let Some((_, segment)) = segments.iter().next_back() {
            let _ = files::open_read_write(&segment.path, false)
                .and_then(|file| file.set_len(segment.len).and_then(|()| file.sync_data()));
        }
    }

    /// Opens the last segment for appending.
    fn continue_last(&self) -> io::Result<Active> {
        let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
        let (first, segment) = segments
            .iter()
            .next_back()
            .ok_or_else(|| io::Error::other("no segment to continue"))?;
        Active::open(&segment.path, *first, segment.len)
    }

    /// A new segment starting at `first`: created (0600), its header written, the folder
    /// synced so the file survives a power loss.
    fn start_segment(&self, first: u64) -> io::Result<Active> {
        let path = self.dir.join(name(first));
        let file = files::open_read_write(&path, true)?;
        if file.metadata()?.len() > 0 {
            // Left by a crash right after it was made (no frame was committed in it).
            file.set_len(0)?;
        }
        file.write_all_at(&segment::header(first), 0)?;
        file.sync_all()?;
        File::open(&self.dir)?.sync_all()?;
        drop(file);
        let active = Active::open(&path, first, segment::HEADER)?;
        let read = files::open_read(&path)?;
        let mut segments = self.segments.write().unwrap_or_else(|p| p.into_inner());
        segments.insert(
            first,
            Segment {
                path,
                file: Arc::new(read),
                len: segment::HEADER,
                last_seq: first - 1,
                marks: Vec::new(),
            },
        );
        Ok(active)
    }

    /// Up to `max` frames after `after`, none after `upto`, oldest first.
    pub fn read(&self, after: u64, upto: u64, max: usize) -> io::Result<Vec<Frame>> {
        let mut out = Vec::new();
        let mut next = after + 1;
        while next <= upto && out.len() < max {
            // Which segment, from where, up to where: looked up, then read unlocked.
            let (file, from, end) = {
                let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
                let Some((_, segment)) = segments.range(..=next).next_back() else {
                    // Pruned already: start at the oldest segment there is.
                    match segments.iter().next() {
                        Some((first, _)) if *first > next => {
                            next = *first;
                            continue;
                        }
                        _ => break,
                    }
                };
                if segment.last_seq < next {
                    break;
                }
                let from = match segment.marks.partition_point(|(seq, _)| *seq <= next) {
                    0 => segment::HEADER,
                    i => segment.marks[i - 1].1,
                };
                (Arc::clone(&segment.file), from, segment.len)
            };
            let before = out.len();
            segment::scan(&file, from, end, |frame| {
                if frame.seq > upto || out.len() >= max {
                    return false;
                }
                if frame.seq >= next {
                    next = frame.seq + 1;
                    out.push(frame);
                }
                true
            })?;
            if out.len() == before {
                break; // nothing more here
            }
        }
        Ok(out)
    }

    /// Removes the segments whose records are all at or below `upto`, never the last one.
    /// Returns the bytes freed.
    pub fn prune(&self, upto: u64) -> io::Result<u64> {
        let doomed: Vec<(u64, PathBuf, u64)> = {
            let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
            let last_first = segments.keys().next_back().copied();
            segments
                .iter()
                .filter(|(first, segment)| Some(**first) != last_first && segment.last_seq <= upto)
                .map(|(first, segment)| (*first, segment.path.clone(), segment.len))
                .collect()
        };
        let mut freed = 0;
        for (first, path, len) in doomed {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
            self.segments
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&first);
            freed += len;
        }
        Ok(freed)
    }

    /// Bytes in all segments.
    pub fn bytes(&self) -> u64 {
        self.segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|s| s.len)
            .sum()
    }

    /// The seq up to which the oldest frames after `after` add up to at least `bytes`.
    pub fn seq_covering(&self, after: u64, bytes: u64) -> io::Result<u64> {
        let (mut sum, mut last) = (0u64, after);
        let mut next = after;
        loop {
            let frames = self.read(next, u64::MAX, 4096)?;
            let Some(end) = frames.last().map(|f| f.seq) else {
                return Ok(last);
            };
            for frame in &frames {
                sum += frame.size;
                last = frame.seq;
                if sum >= bytes {
                    return Ok(last);
                }
            }
            next = end;
        }
    }

    /// Whether `bytes` more would fit in a segment now: a file of that size written and synced
    /// in the log folder, then removed.
    pub fn probe(&self, bytes: usize) -> io::Result<()> {
        let path = self.dir.join("probe.tmp");
        let _ = std::fs::remove_file(&path);
        let result = files::create_new(&path).and_then(|file| {
            file.write_all_at(&vec![0u8; bytes], 0)?;
            file.sync_data()
        });
        let _ = std::fs::remove_file(&path);
        result
    }

    /// Each segment's path and read handle (to copy back a deleted one).
    pub fn files(&self) -> Vec<(PathBuf, Arc<File>)> {
        self.segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|s| (s.path.clone(), Arc::clone(&s.file)))
            .collect()
    }

    /// Drops the open segment handle so the next append opens the last segment again (after an
    /// I/O error).
    pub fn reset(&self) {
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// A mark is kept at least every this many bytes of frames.
const MARK_EVERY: u64 = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::active::PREALLOCATE;
    use super::segment::{Effects, encode};
    use super::*;

    /// Frames for seqs `from..=to` with marks every 10.
    fn frames(from: u64, to: u64) -> (Vec<u8>, Vec<(u64, u64)>) {
        let mut out = Vec::new();
        let mut marks = Vec::new();
        for seq in from..=to {
            if seq % 10 == 0 {
                marks.push((seq, out.len() as u64));
            }
            let value = format!("record {seq}");
            encode(&mut out, seq, &Effects::default(), |o| {
                o.extend_from_slice(value.as_bytes())
            });
        }
        (out, marks)
    }

    fn seqs(frames: &[Frame]) -> Vec<u64> {
        frames.iter().map(|f| f.seq).collect()
    }

    #[test]
    fn appended_frames_read_back_by_seq_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (log, recovered) = Log::open(dir.path(), 0, SEGMENT_BYTES).unwrap();
        assert_eq!(recovered.last_seq, 0);
        let (buf, marks) = frames(1, 100);
        log.append(&buf, 1, 100, &marks).unwrap();
        assert_eq!(seqs(&log.read(0, 100, 5).unwrap()), [1, 2, 3, 4, 5]);
        assert_eq!(seqs(&log.read(42, 45, 100).unwrap()), [43, 44, 45]);
        assert_eq!(log.read(95, 100, 100).unwrap()[0].value, b"record 96");
        drop(log);
        let (log, recovered) = Log::open(dir.path(), 90, SEGMENT_BYTES).unwrap();
        assert_eq!(recovered.last_seq, 100);
        assert_eq!(seqs(&recovered.unapplied), (91..=100).collect::<Vec<_>>());
        let (buf, marks) = frames(101, 110);
        log.append(&buf, 101, 110, &marks).unwrap();
        assert_eq!(
            seqs(&log.read(98, 110, 100).unwrap()),
            (99..=110).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_torn_write_is_cut_off_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = Log::open(dir.path(), 0, SEGMENT_BYTES).unwrap();
        let (buf, marks) = frames(1, 10);
        log.append(&buf, 1, 10, &marks).unwrap();
        drop(log);
        // A crash in the middle of the next write leaves half a frame, in the zeros written
        // ahead of the frames.
        let path = dir.path().join(name(1));
        let size = std::fs::metadata(&path).unwrap().len();
        let at = segment::HEADER + buf.len() as u64;
        assert!(size >= at + PREALLOCATE, "zeros are written ahead");
        let (more, _) = frames(11, 12);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&more[..more.len() - 5], at).unwrap();
        drop(file);
        let (log, recovered) = Log::open(dir.path(), 10, SEGMENT_BYTES).unwrap();
        assert_eq!(recovered.last_seq, 11, "the whole frame 11 stays");
        assert_eq!(
            recovered.cut,
            more.len() as u64 - 5 - (more.len() / 2) as u64,
            "only the torn frame 12 counts as cut, not the zeros after it"
        );
        let (buf, marks) = frames(12, 13);
        log.append(&buf, 12, 13, &marks).unwrap();
        assert_eq!(
            seqs(&log.read(0, 13, 100).unwrap()),
            (1..=13).collect::<Vec<_>>()
        );
    }

    #[test]
    fn full_segments_roll_over_and_passed_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = Log::open(dir.path(), 0, SEGMENT_BYTES).unwrap();
        let big = vec![b'x'; (SEGMENT_BYTES / 2) as usize];
        for next in 1..=5 {
            let mut buf = Vec::new();
            encode(&mut buf, next, &Effects::default(), |o| {
                o.extend_from_slice(&big)
            });
            log.append(&buf, next, next, &[]).unwrap();
        }
        let segments = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(segments >= 2, "{segments} segments");
        assert_eq!(seqs(&log.read(0, 5, 10).unwrap()), [1, 2, 3, 4, 5]);
        let before = log.bytes();
        let freed = log.prune(4).unwrap();
        assert!(freed > 0 && log.bytes() == before - freed);
        assert_eq!(seqs(&log.read(0, 5, 10).unwrap()).last(), Some(&5));
        assert!(
            log.read(0, 5, 10).unwrap()[0].seq > 1,
            "pruned records are gone"
        );
        drop(log);
        let (_, recovered) = Log::open(dir.path(), 5, SEGMENT_BYTES).unwrap();
        assert_eq!(recovered.last_seq, 5);
    }

    #[test]
    fn zeros_written_ahead_are_neither_records_nor_damage() {
        let dir = tempfile::tempdir().unwrap();
        let small = 64 << 10;
        let (log, _) = Log::open(dir.path(), 0, small).unwrap();
        let (buf, marks) = frames(1, 10);
        log.append(&buf, 1, 10, &marks).unwrap();
        let path = dir.path().join(name(1));
        let size = std::fs::metadata(&path).unwrap().len();
        assert_eq!(
            size, small,
            "written ahead up to the segment's size, not past it"
        );
        assert_eq!(log.bytes(), segment::HEADER + buf.len() as u64);
        // A full segment rolls over; a crash leaves its zeros (the trim never reached the disk).
        let big = vec![b'x'; small as usize];
        let mut frame = Vec::new();
        encode(&mut frame, 11, &Effects::default(), |o| {
            o.extend_from_slice(&big)
        });
        log.append(&frame, 11, 11, &[]).unwrap();
        let (buf, marks) = frames(12, 20);
        log.append(&buf, 12, 20, &marks).unwrap();
        drop(log);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(small * 3)
            .unwrap();
        let (log, recovered) = Log::open(dir.path(), 0, small).unwrap();
        assert_eq!(recovered.cut, 0, "zeros are not a torn write");
        assert_eq!(recovered.last_seq, 20);
        assert_eq!(
            seqs(&recovered.unapplied),
            (1..=20).collect::<Vec<_>>(),
            "every frame is read back, across the zero tail of the first segment"
        );
        assert_eq!(
            seqs(&log.read(0, 20, 100).unwrap()),
            (1..=20).collect::<Vec<_>>()
        );
        let (buf, marks) = frames(21, 22);
        log.append(&buf, 21, 22, &marks).unwrap();
        assert_eq!(seqs(&log.read(19, 22, 100).unwrap()), [20, 21, 22]);
    }
}

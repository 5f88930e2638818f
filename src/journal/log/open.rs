//! Opening the record log: every segment found, the last one read to its end and cut after
//! its last whole frame (zeros written ahead are not a cut; zeros where records should be are
//! an error), the frames a crash left unapplied handed back.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use super::segment::{self, Frame};
use super::{Log, MARK_EVERY, Segment, invalid};
use crate::files;

/// What the log found when it was opened.
pub struct Recovered {
    /// The last seq in the log (0 when it holds nothing).
    pub last_seq: u64,
    /// The frames after the seq the caller's state had applied, for replaying their effects.
    pub unapplied: Vec<Frame>,
    /// Bytes cut off the end: a write a crash interrupted.
    pub cut: u64,
}

impl Log {
    /// Opens (creating it, 0700) the log folder: every segment is found, the last one is read
    /// to its end and cut after its last whole frame. Frames after `applied` are returned.
    pub fn open(dir: &Path, applied: u64, segment_bytes: u64) -> io::Result<(Log, Recovered)> {
        files::create_private_dir(dir)?;
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "seg") {
                let first = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| invalid(&path, "not a segment name (<first seq>.seg)"))?;
                found.push((first, path));
            }
        }
        found.sort();
        let mut segments = BTreeMap::new();
        let mut recovered = Recovered {
            last_seq: 0,
            unapplied: Vec::new(),
            cut: 0,
        };
        let count = found.len();
        let nexts: Vec<Option<u64>> = (0..count).map(|i| found.get(i + 1).map(|n| n.0)).collect();
        for (i, (first, path)) in found.into_iter().enumerate() {
            let file = files::open_read(&path)?;
            let named = segment::read_header(&file).map_err(|err| invalid(&path, err))?;
            if named != first {
                return Err(invalid(&path, "its header names another first seq"));
            }
            let size = file.metadata()?.len();
            let last = i + 1 == count;
            let mut segment = Segment {
                path,
                file: Arc::new(file),
                len: size,
                last_seq: first.saturating_sub(1),
                marks: Vec::new(),
            };
            // Whole segments before the last: their end is the next one's start; they are read
            // only when frames after `applied` may be in them.
            let may_hold_unapplied = nexts[i].is_some_and(|next| next.saturating_sub(1) > applied);
            let end = if last || may_hold_unapplied {
                let mut last_seq = first.saturating_sub(1);
                let mut marks = Vec::new();
                let mut since_mark = u64::MAX;
                let end = segment::scan(&segment.file, segment::HEADER, size, |frame| {
                    if since_mark >= MARK_EVERY {
                        marks.push((frame.seq, frame.offset));
                        since_mark = 0;
                    }
                    since_mark += frame.size;
                    last_seq = frame.seq;
                    if frame.seq > applied {
                        recovered.unapplied.push(frame);
                    }
                    true
                })?;
                segment.last_seq = last_seq;
                segment.marks = marks;
                end
            } else {
                size
            };
            if end < size {
                // Past the last whole frame: zeros written ahead (`active::PREALLOCATE`), and possibly
                // a write a crash cut short before them.
                let written = written_end(&segment.file, end, size)?;
                if !last && written > end {
                    return Err(invalid(
                        &segment.path,
                        format!("damaged at byte {end} of {size}, before the last segment"),
                    ));
                }
                if let Some(next) = nexts[i].filter(|next| segment.last_seq + 1 < *next) {
                    // Zeros where frames should be: the disk lost them.
                    tracing::error!(
                        segment = %segment.path.display(),
                        missing_from = segment.last_seq + 1,
                        missing_to = next - 1,
                        "records of a record-log segment read back as zeros (the disk lost writes or the file was damaged): they cannot be delivered"
                    );
                }
                if last {
                    // Nothing after `end` was committed; the zeros are written again when
                    // appends go on.
                    let write = files::open_read_write(&segment.path, false)?;
                    write.set_len(end)?;
                    write.sync_all()?;
                    recovered.cut = written - end;
                }
                segment.len = end;
            }
            segments.insert(first, segment);
        }
        // The last seq: the last segment's, or (segments before it are whole) its first - 1.
        if let Some((_, segment)) = segments.iter().next_back() {
            recovered.last_seq = segment.last_seq;
        }
        let log = Log {
            dir: dir.to_owned(),
            segment_bytes,
            segments: RwLock::new(segments),
            active: Mutex::new(None),
        };
        log.fill_last_seqs();
        Ok((log, recovered))
    }

    /// Segments before the last hold everything up to the next one's first seq.
    fn fill_last_seqs(&self) {
        let mut segments = self.segments.write().unwrap_or_else(|p| p.into_inner());
        let firsts: Vec<u64> = segments.keys().copied().collect();
        for pair in firsts.windows(2) {
            if let Some(segment) = segments.get_mut(&pair[0]) {
                segment.last_seq = pair[1] - 1;
            }
        }
    }
}

/// Where the bytes of `file` after `from` (up to `size`) stop being zeros: `from` when they all
/// are.
fn written_end(file: &File, from: u64, size: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 << 10];
    let (mut at, mut written) = (from, from);
    while at < size {
        let n = ((size - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)?;
        if let Some(last) = buf[..n].iter().rposition(|b| *b != 0) {
            written = at + last as u64 + 1;
        }
        at += n as u64;
    }
    Ok(written)
}

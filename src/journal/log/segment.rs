//! One segment file of the record log: a header, then frames, each checked by a CRC, so that a
//! write cut short by a crash is found (and cut off) when the journal opens.
//!
//! ```text
//! header  "MRLOG001" (8 bytes) | first seq (u64 LE)
//! frame   len (u32 LE: bytes after it) | crc32 (u32 LE, of the rest) | seq (u64 LE) |
//!         flags (u8: 1 = pending) | dedupe key (str16) | heal key (str16) | value (rest)
//! str16   u16 LE length (0xFFFF: none) | bytes
//! ```
//!
//! `value` is the entry as `super::super::value` encodes it (property, type, key, only-sink,
//! the record's JSON line).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The first bytes of every segment (the format's version is in it).
pub const MAGIC: &[u8; 8] = b"MRLOG001";
/// Header: magic and first seq.
pub const HEADER: u64 = 16;
/// The smallest `len`: crc, seq, flags, two empty str16, an empty value.
const MIN_LEN: u32 = 4 + 8 + 1 + 2 + 2;
/// A frame larger than this is damage, not data (a record is at most a few MiB).
const MAX_FRAME: u32 = 256 << 20;

/// Frame flag: the record waits for enrichment; its final value is kept elsewhere once settled.
pub const PENDING: u8 = 1;

/// A frame as read back.
#[derive(Debug, Clone)]
pub struct Frame {
    pub seq: u64,
    pub flags: u8,
    pub dedupe: Option<String>,
    pub heal: Option<String>,
    /// The encoded entry.
    pub value: Vec<u8>,
    /// Where the frame starts in its segment, and its size.
    pub offset: u64,
    pub size: u64,
}

/// What a frame carries besides the value: what its commit did in the state tables, for
/// replaying it after a crash between the two.
#[derive(Debug, Clone, Default)]
pub struct Effects<'a> {
    pub pending: bool,
    pub dedupe: Option<&'a str>,
    pub heal: Option<&'a str>,
}

fn put16(out: &mut Vec<u8>, field: Option<&str>) {
    match field.map(str::as_bytes) {
        Some(bytes) if bytes.len() < u16::MAX as usize => {
            out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        _ => out.extend_from_slice(&u16::MAX.to_le_bytes()),
    }
}

/// Appends one frame to `out`; `value` is written by `write_value` into `out` directly, and
/// what it returns is returned.
pub fn encode<T>(
    out: &mut Vec<u8>,
    seq: u64,
    effects: &Effects<'_>,
    write_value: impl FnOnce(&mut Vec<u8>) -> T,
) -> T {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]); // len and crc, filled below
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(if effects.pending { PENDING } else { 0 });
    put16(out, effects.dedupe);
    put16(out, effects.heal);
    let written = write_value(out);
    let len = (out.len() - start - 4) as u32;
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    written
}

/// The header of a segment starting at `first_seq`.
pub fn header(first_seq: u64) -> [u8; HEADER as usize] {
    let mut out = [0u8; HEADER as usize];
    out[..8].copy_from_slice(MAGIC);
    out[8..].copy_from_slice(&first_seq.to_le_bytes());
    out
}

/// The first seq a segment's header names, or an error if it is not a segment.
pub fn read_header(file: &File) -> io::Result<u64> {
    let mut buf = [0u8; HEADER as usize];
    file.read_exact_at(&mut buf, 0)?;
    if &buf[..8] != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a mews-relay log segment (or a newer format)",
        ));
    }
    Ok(u64::from_le_bytes(buf[8..].try_into().unwrap_or_default()))
}

/// Parses frames from `buf` (which starts at segment offset `base`), handing each to
/// `on_frame` until it returns false. Returns how many bytes held whole, valid frames: a frame
/// cut short, damaged or zeroed ends the scan there.
pub fn parse(buf: &[u8], base: u64, mut on_frame: impl FnMut(Frame) -> bool) -> usize {
    let mut at = 0;
    while buf.len() - at >= 4 + MIN_LEN as usize {
        let len = u32::from_le_bytes(buf[at..at + 4].try_into().unwrap_or_default());
        if !(MIN_LEN..=MAX_FRAME).contains(&len) {
            break;
        }
        let end = at + 4 + len as usize;
        if end > buf.len() {
            break;
        }
        let crc = u32::from_le_bytes(buf[at + 4..at + 8].try_into().unwrap_or_default());
        let body = &buf[at + 8..end];
        if crc32fast::hash(body) != crc {
            break;
        }
        let Some(frame) = decode_body(body, base + at as u64, (end - at) as u64) else {
            break;
        };
        at = end;
        if !on_frame(frame) {
            break;
        }
    }
    at
}

/// The fields of a frame whose CRC held.
fn decode_body(body: &[u8], offset: u64, size: u64) -> Option<Frame> {
    let seq = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    let flags = *body.get(8)?;
    let mut at = 9;
    let mut take = || -> Option<Option<String>> {
        let len = u16::from_le_bytes(body.get(at..at + 2)?.try_into().ok()?);
        at += 2;
        if len == u16::MAX {
            return Some(None);
        }
        let text = std::str::from_utf8(body.get(at..at + len as usize)?).ok()?;
        at += len as usize;
        Some(Some(text.to_owned()))
    };
    let dedupe = take()?;
    let heal = take()?;
    Some(Frame {
        seq,
        flags,
        dedupe,
        heal,
        value: body.get(at..)?.to_vec(),
        offset,
        size,
    })
}

/// Reads frames of `file` from `offset` (a frame boundary) to `end`, in chunks, handing each
/// to `on_frame` until it returns false. Returns the offset after the last whole frame read.
pub fn scan(
    file: &File,
    mut offset: u64,
    end: u64,
    mut on_frame: impl FnMut(Frame) -> bool,
) -> io::Result<u64> {
    const CHUNK: usize = 256 * 1024;
    let mut chunk = CHUNK;
    let mut buf = Vec::new();
    while offset < end {
        let want = ((end - offset) as usize).min(chunk);
        buf.resize(want, 0);
        let n = read_at_most(file, &mut buf, offset)?;
        buf.truncate(n);
        let mut stop = false;
        let used = parse(&buf, offset, |frame| {
            let more = on_frame(frame);
            stop = !more;
            more
        });
        offset += used as u64;
        if stop {
            break;
        }
        if used == 0 {
            // One frame bigger than the chunk: read it whole; anything else is damage or the end.
            match frame_size(&buf) {
                Some(size) if size as usize > buf.len() && offset + size <= end => {
                    chunk = size as usize;
                    continue;
                }
                _ => break,
            }
        }
        chunk = CHUNK;
    }
    Ok(offset)
}

/// The size of the frame at the start of `buf`, from its length field.
fn frame_size(buf: &[u8]) -> Option<u64> {
    let len = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?);
    (len <= MAX_FRAME).then_some(u64::from(len) + 4)
}

fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let effects = Effects {
            pending: seq.is_multiple_of(2),
            dedupe: Some("d"),
            heal: None,
        };
        encode(&mut out, seq, &effects, |out| out.extend_from_slice(value));
        out
    }

    #[test]
    fn frames_round_trip_and_damage_ends_the_scan() {
        let mut buf = frame(7, b"seven");
        buf.extend(frame(8, b"eight"));
        let mut seen = Vec::new();
        let used = parse(&buf, 100, |f| {
            seen.push((f.seq, f.flags, f.dedupe.clone(), f.value.clone(), f.offset));
            true
        });
        assert_eq!(used, buf.len());
        assert_eq!(seen[0], (7, 0, Some("d".into()), b"seven".to_vec(), 100));
        assert_eq!(seen[1].0, 8);
        assert_eq!(seen[1].1, PENDING);
        // A torn second frame: only the first counts.
        let cut = buf.len() - 3;
        assert_eq!(parse(&buf[..cut], 0, |_| true), frame(7, b"seven").len());
        // A flipped byte in the second frame: the same.
        let mut bad = buf.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(parse(&bad, 0, |_| true), frame(7, b"seven").len());
        // Zeros after the data (a preallocated tail) end it too.
        let mut zeros = buf.clone();
        zeros.extend([0u8; 64]);
        assert_eq!(parse(&zeros, 0, |_| true), buf.len());
    }
}

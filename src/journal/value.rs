//! What a journal entry holds on disk, and the record a sink reads back.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;

use crate::record::Record;

/// A committed record as a sink reads it.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    /// Its position in the journal.
    pub seq: u64,
    /// The property it belongs to (for filters); shared by the records of a read.
    pub property: Arc<str>,
    /// The event `Type` (for filters); shared by the records of a read.
    pub kind: Option<Arc<str>>,
    /// The journal's id (for [`StoredRecord::key`]).
    pub journal_id: u64,
    /// The original key of a replayed dead letter.
    pub replay_key: Option<String>,
    /// Set for a replayed dead letter: only this sink delivers it.
    pub only_sink: Option<String>,
    /// The record's JSON line, without the newline (shared, cheap to clone).
    pub json: Bytes,
}

impl StoredRecord {
    /// Stable id for receivers to drop redeliveries (`Idempotency-Key`, `Nats-Msg-Id`): the
    /// same on every retry, after a restart, and after a dead-letter replay. Made on demand:
    /// stdout and file sinks never need it.
    pub fn key(&self) -> String {
        match &self.replay_key {
            Some(key) => key.clone(),
            None => record_key(self.journal_id, self.seq),
        }
    }
}

/// A dead letter put back into the journal for one sink, exactly as it was first journaled.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The only sink that delivers it.
    pub sink: String,
    /// Its original key.
    pub key: String,
    /// Its property.
    pub property: String,
    /// Its event type.
    pub kind: Option<String>,
    /// Its original JSON line (with its original `seq`).
    pub json: Vec<u8>,
}

/// What is appended: a new record, or a replayed dead letter.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A record from a source; it gets the next seq and a key derived from it.
    Record(Record),
    /// A dead letter for one sink.
    Replay(Replay),
}

/// The key of the record journaled at `seq` in the journal `journal_id`.
pub fn record_key(journal_id: u64, seq: u64) -> String {
    format!("{journal_id:016x}-{seq}")
}

/// Layout: four length-prefixed strings (`u16`, `0xFFFF` = none) — property, type, key (none =
/// derived from the seq), only-sink — then the JSON line. Returns the header as written and
/// where the JSON line starts in `out`.
pub(super) fn encode<'a>(seq: u64, entry: &'a Entry, out: &mut Vec<u8>) -> (Header<'a>, usize) {
    match entry {
        Entry::Record(record) => {
            let header = put_header(
                out,
                [Some(&record.property), record.kind.as_deref(), None, None],
            );
            let at = out.len();
            record.encode(seq, out);
            (header, at)
        }
        Entry::Replay(replay) => {
            let fields = [
                Some(replay.property.as_str()),
                replay.kind.as_deref(),
                Some(replay.key.as_str()),
                Some(replay.sink.as_str()),
            ];
            let header = put_header(out, fields);
            let at = out.len();
            out.extend_from_slice(&replay.json);
            (header, at)
        }
    }
}

/// A value's four header fields (see [`encode`]); none where absent or too long to store.
pub(super) struct Header<'a> {
    property: Option<Cow<'a, str>>,
    kind: Option<Cow<'a, str>>,
    key: Option<Cow<'a, str>>,
    sink: Option<Cow<'a, str>>,
}

impl Header<'_> {
    /// The fields as a sink's record holds them; the names shared through `names` (no property
    /// reads as empty).
    pub(super) fn named(self, names: &mut Names) -> Named {
        Named {
            property: self
                .property
                .map_or_else(|| Arc::from(""), |name| names.get(name.as_bytes())),
            kind: self.kind.map(|name| names.get(name.as_bytes())),
            replay_key: self.key.map(Cow::into_owned),
            only_sink: self.sink.map(Cow::into_owned),
        }
    }
}

/// A value's header as a sink's record holds it.
pub(super) struct Named {
    property: Arc<str>,
    kind: Option<Arc<str>>,
    replay_key: Option<String>,
    only_sink: Option<String>,
}

impl Named {
    /// The record a sink reads: these fields and the JSON line.
    pub(super) fn stored(self, journal_id: u64, seq: u64, json: Bytes) -> StoredRecord {
        StoredRecord {
            seq,
            property: self.property,
            kind: self.kind,
            journal_id,
            replay_key: self.replay_key,
            only_sink: self.only_sink,
            json,
        }
    }
}

fn put_header<'a>(out: &mut Vec<u8>, fields: [Option<&'a str>; 4]) -> Header<'a> {
    let [property, kind, key, sink] = fields.map(|field| put(out, field).map(Cow::Borrowed));
    Header {
        property,
        kind,
        key,
        sink,
    }
}

/// Writes `field` if it fits (else none); returns it if it was written.
fn put<'a>(out: &mut Vec<u8>, field: Option<&'a str>) -> Option<&'a str> {
    match field {
        Some(text) if text.len() < u16::MAX as usize => {
            out.extend_from_slice(&(text.len() as u16).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
            Some(text)
        }
        _ => {
            out.extend_from_slice(&u16::MAX.to_le_bytes());
            None
        }
    }
}

/// The property names and event types of the records read together, each allocated once per
/// read rather than once per record (a batch has a few of each). A handful kept inline: a
/// single-record read allocates no more than two strings, as before.
#[derive(Default)]
pub(super) struct Names {
    known: [Option<Arc<str>>; 8],
}

impl Names {
    pub(super) fn get(&mut self, bytes: &[u8]) -> Arc<str> {
        for slot in &mut self.known {
            match slot {
                Some(name) if name.as_bytes() == bytes => return Arc::clone(name),
                Some(_) => {}
                None => {
                    let name: Arc<str> = Arc::from(String::from_utf8_lossy(bytes));
                    *slot = Some(Arc::clone(&name));
                    return name;
                }
            }
        }
        Arc::from(String::from_utf8_lossy(bytes))
    }
}

/// Reads an entry back; a damaged value yields empty fields rather than a panic. The JSON
/// shares `value`'s bytes.
pub(super) fn decode(journal_id: u64, seq: u64, value: Bytes, names: &mut Names) -> StoredRecord {
    let mut at = 0;
    // In field order: each read starts where the last one ended.
    let header = Header {
        property: field(&value, &mut at),
        kind: field(&value, &mut at),
        key: field(&value, &mut at),
        sink: field(&value, &mut at),
    };
    let json = value.slice(at.min(value.len())..);
    header.named(names).stored(journal_id, seq, json)
}

/// The header field at `at` (moved past it); none if absent or cut off.
fn field<'v>(value: &'v [u8], at: &mut usize) -> Option<Cow<'v, str>> {
    let len = value.get(*at..*at + 2)?;
    let len = u16::from_le_bytes([len[0], len[1]]);
    *at += 2;
    if len == u16::MAX {
        return None;
    }
    let end = (*at + len as usize).min(value.len());
    let bytes = value.get(*at..end)?;
    *at = end;
    Some(String::from_utf8_lossy(bytes))
}

/// A DeviceCommand record of property `p`, for the journal's tests.
#[cfg(test)]
pub(crate) fn test_record(id: &str, enrich: crate::record::Enrich, dedupe: Option<&str>) -> Record {
    Record {
        kind: Some("DeviceCommand".into()),
        id: Some(id.into()),
        state: Some("Pending".into()),
        dedupe: dedupe.map(str::to_owned),
        enrich,
        ..Record::new(
            std::sync::Arc::from("p"),
            crate::record::Origin::Websocket,
            "t".into(),
            serde_json::value::RawValue::from_string(format!(r#"{{"Id":"{id}"}}"#)).unwrap(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Enrich, Origin};
    use serde_json::value::RawValue;

    #[test]
    fn records_and_replays_round_trip() {
        for kind in [Some("DeviceCommand".to_owned()), None] {
            let record = Record {
                kind: kind.clone(),
                ..Record::new(
                    "old-town".into(),
                    Origin::Websocket,
                    "t".into(),
                    RawValue::from_string("{}".into()).unwrap(),
                )
            };
            let mut buf = Vec::new();
            encode(3, &Entry::Record(record), &mut buf);
            let stored = decode(0xab, 3, buf.into(), &mut Names::default());
            assert_eq!(&*stored.property, "old-town");
            assert_eq!(stored.kind.as_deref(), kind.as_deref());
            assert_eq!(stored.key(), "00000000000000ab-3");
            assert_eq!(stored.only_sink, None);
            assert!(stored.json.starts_with(br#"{"seq":3,"#));
        }
        let replay = Replay {
            sink: "hooks".into(),
            key: "00000000000000ab-3".into(),
            property: "p".into(),
            kind: None,
            json: br#"{"seq":3}"#.to_vec(),
        };
        let mut buf = Vec::new();
        encode(9, &Entry::Replay(replay), &mut buf);
        let stored = decode(0xab, 9, buf.into(), &mut Names::default());
        assert_eq!(
            (stored.seq, stored.key().as_str()),
            (9, "00000000000000ab-3")
        );
        assert_eq!(stored.only_sink.as_deref(), Some("hooks"));
        assert_eq!(&stored.json[..], br#"{"seq":3}"#);
    }

    #[test]
    fn records_read_together_share_their_names() {
        let mut names = Names::default();
        let mut read = |seq| {
            let mut buf = Vec::new();
            encode(
                seq,
                &Entry::Record(test_record("a", Enrich::None, None)),
                &mut buf,
            );
            decode(1, seq, buf.into(), &mut names)
        };
        let (a, b) = (read(1), read(2));
        assert!(std::sync::Arc::ptr_eq(&a.property, &b.property));
        assert!(std::sync::Arc::ptr_eq(
            a.kind.as_ref().unwrap(),
            b.kind.as_ref().unwrap()
        ));
        // Beyond the inline slots a name is still read right, just not shared.
        for i in 0..20 {
            assert_eq!(&*names.get(format!("p{i}").as_bytes()), format!("p{i}"));
        }
    }

    #[test]
    fn a_damaged_value_does_not_panic() {
        let stored = decode(
            1,
            1,
            Bytes::from_static(&[5, 0, b'a']),
            &mut Names::default(),
        );
        assert_eq!(&*stored.property, "a");
        assert!(stored.json.is_empty());
    }
}

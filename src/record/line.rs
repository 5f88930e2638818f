//! A record's JSON line and its `received_at` stamp, written by hand: both run once per event
//! on the journal's hot path, where serde's serializer and humantime's formatter were 13 % and
//! 4 % of a burst's CPU (`perf record`). The tests hold both to what serde_json and humantime
//! write, byte for byte.

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Record;

impl Record {
    /// Appends the record's JSON line (without the newline) to `out`: the public shape of the
    /// README's "Record format", in its field order.
    pub fn encode(&self, seq: u64, out: &mut Vec<u8>) {
        out.reserve(self.event.get().len() + 256);
        out.extend_from_slice(b"{\"seq\":");
        out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        out.extend_from_slice(b",\"property\":");
        string(out, &self.property);
        out.extend_from_slice(b",\"origin\":\"");
        out.extend_from_slice(self.origin.as_str().as_bytes());
        out.extend_from_slice(b"\",\"received_at\":");
        string(out, &self.received_at);
        out.extend_from_slice(b",\"type\":");
        string_or_null(out, self.kind.as_deref());
        out.extend_from_slice(b",\"id\":");
        string_or_null(out, self.id.as_deref());
        out.extend_from_slice(b",\"state\":");
        string_or_null(out, self.state.as_deref());
        out.extend_from_slice(b",\"event\":");
        out.extend_from_slice(self.event.get().as_bytes());
        if let Some(command) = &self.command {
            out.extend_from_slice(b",\"command\":");
            out.extend_from_slice(command.get().as_bytes());
        }
        let optional = [
            (&b",\"enrich_error\":"[..], &self.enrich_error),
            (b",\"enterprise_id\":", &self.enterprise_id),
            (b",\"integration_id\":", &self.integration_id),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                out.extend_from_slice(key);
                string(out, value);
            }
        }
        out.push(b'}');
    }
}

/// A JSON string, escaped as serde_json escapes it.
fn string(out: &mut Vec<u8>, text: &str) {
    if plain(text.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        // Rare (the relay's own strings and Mews's ids, types and states need no escapes):
        // serde_json's escaping. Writing into a Vec cannot fail.
        serde_json::to_writer(&mut *out, text).expect("a string serializes"); // ok: no I/O
    }
}

fn string_or_null(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => string(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

/// Whether no byte needs an escape: no control character, quote or backslash. Checked 16
/// bytes at a time without an early exit, so the compiler can use vector instructions.
fn plain(bytes: &[u8]) -> bool {
    bytes.chunks(16).all(|chunk| {
        chunk
            .iter()
            .fold(true, |ok, &b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'))
    })
}

/// `2026-11-23T12:00:00.123456Z`: RFC 3339, UTC, microseconds (truncated), as humantime
/// writes it. The part up to the second is kept per thread and written again only when the
/// second changes.
pub fn format_time(at: SystemTime) -> String {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let Ok(since) = at.duration_since(UNIX_EPOCH) else {
        return humantime::format_rfc3339_micros(at).to_string();
    };
    let (secs, micros) = (since.as_secs(), since.subsec_micros());
    SECOND.with_borrow_mut(|(second, prefix)| {
        if *second != secs {
            let whole = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs))
                .to_string();
            // `…:SSZ` becomes `…:SS.`
            prefix.clear();
            prefix.push_str(whole.trim_end_matches('Z'));
            prefix.push('.');
            *second = secs;
        }
        let mut digits = [b'0'; 7];
        digits[6] = b'Z';
        let mut rest = micros;
        for digit in digits[..6].iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        let mut out = String::with_capacity(prefix.len() + digits.len());
        out.push_str(prefix);
        out.extend(digits.iter().map(|&b| b as char));
        out
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use serde::Serialize;
    use serde_json::value::RawValue;

    use super::*;
    use crate::record::{Enrich, Origin};

    /// The record's shape as serde writes it: what the hand-written encoder must match.
    #[derive(Serialize)]
    struct Wire<'a> {
        seq: u64,
        property: &'a str,
        origin: Origin,
        received_at: &'a str,
        #[serde(rename = "type")]
        kind: Option<&'a str>,
        id: Option<&'a str>,
        state: Option<&'a str>,
        event: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        command: Option<&'a RawValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        enrich_error: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        enterprise_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        integration_id: Option<&'a str>,
    }

    fn by_serde(record: &Record, seq: u64) -> String {
        serde_json::to_string(&Wire {
            seq,
            property: &record.property,
            origin: record.origin,
            received_at: &record.received_at,
            kind: record.kind.as_deref(),
            id: record.id.as_deref(),
            state: record.state.as_deref(),
            event: &record.event,
            command: record.command.as_deref(),
            enrich_error: record.enrich_error.as_deref(),
            enterprise_id: record.enterprise_id.as_deref(),
            integration_id: record.integration_id.as_deref(),
        })
        .unwrap()
    }

    /// Strings with what needs escaping: quotes, backslashes, every control character, DEL,
    /// non-ASCII; long enough to cross the 16-byte chunks.
    fn text() -> impl Strategy<Value = String> {
        let chars = prop_oneof![
            4 => proptest::char::range('a', 'z'),
            1 => Just('"'),
            1 => Just('\\'),
            1 => proptest::char::range('\u{0}', '\u{1f}'),
            1 => Just('\u{7f}'),
            1 => Just('é'),
            1 => Just('🔑'),
            1 => Just('/'),
        ];
        proptest::collection::vec(chars, 0..40).prop_map(|c| c.into_iter().collect())
    }

    fn origin() -> impl Strategy<Value = Origin> {
        prop_oneof![
            Just(Origin::Websocket),
            Just(Origin::CatchUp),
            Just(Origin::Webhook)
        ]
    }

    fn raw(text: String) -> Box<RawValue> {
        RawValue::from_string(serde_json::to_string(&text).unwrap()).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn the_line_is_what_serde_writes(
            seq in any::<u64>(),
            property in text(),
            origin in origin(),
            received_at in text(),
            fields in proptest::collection::vec(proptest::option::of(text()), 6),
            event in text(),
            command in proptest::option::of(text()),
        ) {
            let record = Record {
                kind: fields[0].clone(),
                id: fields[1].clone(),
                state: fields[2].clone(),
                enrich_error: fields[3].clone(),
                enterprise_id: fields[4].clone(),
                integration_id: fields[5].clone(),
                command: command.map(raw),
                enrich: Enrich::None,
                ..Record::new(Arc::from(property), origin, received_at, raw(event))
            };
            let mut line = Vec::new();
            record.encode(seq, &mut line);
            prop_assert_eq!(String::from_utf8(line).unwrap(), by_serde(&record, seq));
        }

        #[test]
        fn the_stamp_is_what_humantime_writes(secs in 0u64..253_402_300_799, nanos in 0u32..1_000_000_000) {
            let at = UNIX_EPOCH + Duration::new(secs, nanos);
            prop_assert_eq!(format_time(at), humantime::format_rfc3339_micros(at).to_string());
        }
    }

    #[test]
    fn a_stamp_in_the_same_second_and_the_next_one() {
        let base = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        for offset in [
            0,
            999_999_999,
            1_000_000_000,
            1_000_000_001,
            86_400_000_000_000,
        ] {
            let at = base + Duration::from_nanos(offset);
            assert_eq!(
                format_time(at),
                humantime::format_rfc3339_micros(at).to_string()
            );
        }
        assert_eq!(format_time(base), "2026-11-18T11:06:40.000000Z");
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
    }
}

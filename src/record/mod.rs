//! The record every sink receives, and `decode`: one Mews message into one record per event.

use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

mod line;
mod scan;

pub use line::format_time;

/// Where a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A Mews WebSocket message.
    Websocket = 0,
    /// The REST catch-up after a (re)connect.
    CatchUp = 1,
    /// A Mews webhook.
    Webhook = 2,
}

impl Origin {
    /// Every origin, in index order.
    pub const ALL: [Origin; 3] = [Origin::Websocket, Origin::CatchUp, Origin::Webhook];

    /// The name used in records and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Websocket => "websocket",
            Origin::CatchUp => "catch_up",
            Origin::Webhook => "webhook",
        }
    }
}

/// One event with what the relay knows about it. The journal gives it a `seq`.
#[derive(Debug, Clone)]
pub struct Record {
    /// The `[[property]]` name of the connection it came through.
    pub property: Arc<str>,
    /// How it arrived.
    pub origin: Origin,
    /// RFC 3339 UTC with microseconds.
    pub received_at: String,
    /// The event's `Type`, when it is a string.
    pub kind: Option<String>,
    /// The event's `Id`, when it is a string.
    pub id: Option<String>,
    /// The event's `State`, when it is a string.
    pub state: Option<String>,
    /// The event exactly as Mews sent it.
    pub event: Box<RawValue>,
    /// Enrichment: the command's details.
    pub command: Option<Box<RawValue>>,
    /// Webhooks: the `EnterpriseId` Mews sent.
    pub enterprise_id: Option<String>,
    /// Webhooks: the `IntegrationId` Mews sent.
    pub integration_id: Option<String>,
    /// Enrichment was wanted but failed: why (`command` is then absent).
    pub enrich_error: Option<String>,
    /// Not part of the record: a key the journal remembers for `catch_up.dedupe_window`; a
    /// second record with the same key in that time is dropped (live vs catch-up).
    pub dedupe: Option<String>,
    /// Not part of the record: what enrichment still has to do with it.
    pub enrich: Enrich,
}

/// What enrichment still has to do with a record (not part of the record).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Enrich {
    /// Nothing.
    #[default]
    None,
    /// The journal holds it back from every sink until the enricher settles it (with
    /// `command` or with `enrich_error`).
    Pending,
    /// It goes out without details (`enrich_error` set, the REST API is failing); the journal
    /// remembers this key so the command is sent again with details once Mews answers.
    Heal(String),
}

impl Record {
    /// A record of `event` with nothing copied out of it, no enrichment and no dedupe key; the
    /// fields a source knows are set over it (`Record { kind, ..Record::new(…) }`).
    pub fn new(
        property: Arc<str>,
        origin: Origin,
        received_at: String,
        event: Box<RawValue>,
    ) -> Record {
        Record {
            property,
            origin,
            received_at,
            kind: None,
            id: None,
            state: None,
            event,
            command: None,
            enterprise_id: None,
            integration_id: None,
            enrich_error: None,
            dedupe: None,
            enrich: Enrich::None,
        }
    }

    /// Reads a journaled JSON line back (a pending record after a restart); `None` if it is
    /// not a record.
    pub fn from_json(json: &[u8]) -> Option<Record> {
        #[derive(Deserialize)]
        struct WireIn {
            property: String,
            origin: OriginIn,
            received_at: String,
            #[serde(rename = "type")]
            kind: Option<String>,
            id: Option<String>,
            state: Option<String>,
            event: Box<RawValue>,
            command: Option<Box<RawValue>>,
            enrich_error: Option<String>,
            enterprise_id: Option<String>,
            integration_id: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case")]
        enum OriginIn {
            Websocket,
            CatchUp,
            Webhook,
        }
        let wire: WireIn = serde_json::from_slice(json).ok()?;
        Some(Record {
            property: Arc::from(wire.property),
            origin: match wire.origin {
                OriginIn::Websocket => Origin::Websocket,
                OriginIn::CatchUp => Origin::CatchUp,
                OriginIn::Webhook => Origin::Webhook,
            },
            received_at: wire.received_at,
            kind: wire.kind,
            id: wire.id,
            state: wire.state,
            event: wire.event,
            command: wire.command,
            enterprise_id: wire.enterprise_id,
            integration_id: wire.integration_id,
            enrich_error: wire.enrich_error,
            dedupe: None,
            enrich: Enrich::None,
        })
    }
}

/// Why a message was not turned into records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON at all.
    #[error("not valid JSON: {0}")]
    Json(String),
    /// JSON, but no `Events` array.
    #[error("no \"Events\" array in the message")]
    NoEvents,
    /// Nested deeper than any Mews message (consumers' JSON parsers would refuse the record).
    #[error("nested more than {MAX_DEPTH} levels deep")]
    TooDeep,
}

/// Mews messages nest a handful of levels; past this a message is refused, not forwarded.
pub const MAX_DEPTH: usize = 64;

/// Whether the JSON text nests objects/arrays deeper than `limit` (strings are skipped).
pub(crate) fn deeper_than(text: &str, limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for byte in text.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "Events", borrow)]
    events: Option<&'a RawValue>,
}

/// The fields copied out of an event for routing; anything else is left raw.
#[derive(Deserialize, Default)]
struct Head {
    #[serde(rename = "Type", default)]
    kind: MaybeStr,
    #[serde(rename = "Id", default)]
    id: MaybeStr,
    #[serde(rename = "State", default)]
    state: MaybeStr,
}

/// A string, or `None` for any other JSON value, which is skipped without being built.
#[derive(Default)]
struct MaybeStr(Option<String>);

impl<'de> Deserialize<'de> for MaybeStr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct Keep;
        impl<'de> Visitor<'de> for Keep {
            type Value = MaybeStr;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<MaybeStr, E> {
                Ok(MaybeStr(Some(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<MaybeStr, E> {
                Ok(MaybeStr(Some(v)))
            }
            fn visit_bool<E>(self, _: bool) -> Result<MaybeStr, E> {
                Ok(MaybeStr(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<MaybeStr, E> {
                Ok(MaybeStr(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<MaybeStr, E> {
                Ok(MaybeStr(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<MaybeStr, E> {
                Ok(MaybeStr(None))
            }
            fn visit_unit<E>(self) -> Result<MaybeStr, E> {
                Ok(MaybeStr(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MaybeStr, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MaybeStr, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
        }
        d.deserialize_any(Keep)
    }
}

/// Splits `{"Events":[…]}` into one record per event, each event kept byte for byte.
pub fn decode(
    property: &Arc<str>,
    message: &str,
    received_at: SystemTime,
) -> Result<Vec<Record>, DecodeError> {
    let events = match scan::split(message) {
        scan::Split::Events(events) => events,
        scan::Split::TooDeep => return Err(DecodeError::TooDeep),
        scan::Split::Unusual => split_in_general(message)?,
    };
    Ok(records(property, received_at, events))
}

/// The events of any message, their heads left to serde: the reference that the common shape's
/// fast path (`scan::split`) agrees with.
fn split_in_general(message: &str) -> Result<Vec<scan::Event<'_>>, DecodeError> {
    if deeper_than(message, MAX_DEPTH) {
        return Err(DecodeError::TooDeep);
    }
    let envelope: Envelope<'_> =
        serde_json::from_str(message).map_err(|err| DecodeError::Json(err.to_string()))?;
    let events = envelope.events.ok_or(DecodeError::NoEvents)?;
    let events: Vec<&RawValue> =
        serde_json::from_str(events.get()).map_err(|_| DecodeError::NoEvents)?;
    Ok(events
        .into_iter()
        .map(|raw| scan::Event { raw, head: None })
        .collect())
}

/// One WebSocket record per event.
fn records(
    property: &Arc<str>,
    received_at: SystemTime,
    events: Vec<scan::Event<'_>>,
) -> Vec<Record> {
    let received_at = format_time(received_at);
    events
        .into_iter()
        .map(|event| {
            let [kind, id, state] = match event.head {
                Some(head) => head.map(|field| field.map(str::to_owned)),
                None => {
                    let head: Head = serde_json::from_str(event.raw.get()).unwrap_or_default();
                    [head.kind.0, head.id.0, head.state.0]
                }
            };
            Record {
                kind,
                id,
                state,
                ..Record::new(
                    Arc::clone(property),
                    Origin::Websocket,
                    received_at.clone(),
                    event.raw.to_owned(),
                )
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_now(message: &str) -> Result<Vec<Record>, DecodeError> {
        decode(&Arc::from("old-town"), message, SystemTime::UNIX_EPOCH)
    }

    #[test]
    fn splits_events_and_keeps_them_byte_for_byte() {
        let message = r#"{"Events":[{"Type":"DeviceCommand","Id":"a","State":"Pending"},
            { "Type" : "Resource", "Id":"b","State":"Dirty","Extra":{"x":1.50}}]}"#;
        let records = decode_now(message).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].kind.as_deref(), Some("DeviceCommand"));
        assert_eq!(
            records[1].event.get(),
            r#"{ "Type" : "Resource", "Id":"b","State":"Dirty","Extra":{"x":1.50}}"#
        );
        let mut line = Vec::new();
        records[1].encode(7, &mut line);
        let line = String::from_utf8(line).unwrap();
        assert!(line.starts_with(r#"{"seq":7,"property":"old-town","origin":"websocket","received_at":"1970-01-01T00:00:00.000000Z","type":"Resource","id":"b","state":"Dirty","event":{ "Type" : "Resource""#), "{line}");
        assert!(!line.contains("command"));
    }

    #[test]
    fn a_journaled_line_reads_back_into_the_same_record() {
        let mut records =
            decode_now(r#"{"Events":[{"Type":"DeviceCommand","Id":"a","State":"Pending"}]}"#)
                .unwrap();
        let mut record = records.remove(0);
        record.enrich_error = Some("no answer".into());
        let mut line = Vec::new();
        record.encode(9, &mut line);
        let back = Record::from_json(&line).unwrap();
        let mut again = Vec::new();
        back.encode(9, &mut again);
        assert_eq!(
            String::from_utf8(again).unwrap(),
            String::from_utf8(line).unwrap()
        );
        assert!(Record::from_json(b"{}").is_none());
    }

    #[test]
    fn unknown_types_and_odd_fields_are_forwarded() {
        let records =
            decode_now(r#"{"Events":[{"Type":"Space","Id":5},{"Id":"x"},null,"text"]}"#).unwrap();
        assert_eq!(records.len(), 4);
        assert_eq!(records[0].kind.as_deref(), Some("Space"));
        assert_eq!(records[0].id, None);
        assert_eq!(records[1].kind, None);
        assert_eq!(records[2].event.get(), "null");
        assert_eq!(records[3].event.get(), "\"text\"");
    }

    #[test]
    fn rejects_non_json_and_missing_events() {
        assert!(matches!(
            decode_now("{\"Events\":[1,"),
            Err(DecodeError::Json(_))
        ));
        assert_eq!(decode_now("{}").unwrap_err(), DecodeError::NoEvents);
        assert_eq!(
            decode_now(r#"{"Events":{"a":1}}"#).unwrap_err(),
            DecodeError::NoEvents
        );
        assert!(matches!(decode_now("[1,2]"), Err(DecodeError::Json(_))));
    }

    #[test]
    fn deep_nesting_is_refused_but_brackets_in_strings_do_not_count() {
        let deep = format!(r#"{{"Events":[{}{}]}}"#, "[".repeat(100), "]".repeat(100));
        assert_eq!(decode_now(&deep).unwrap_err(), DecodeError::TooDeep);
        let text = format!(
            r#"{{"Events":[{{"Type":"X","Note":"{}\"{}"}}]}}"#,
            "[".repeat(100),
            "{".repeat(100)
        );
        assert_eq!(decode_now(&text).unwrap().len(), 1);
    }

    #[test]
    fn an_empty_events_array_yields_no_records() {
        assert!(decode_now(r#"{"Events":[]}"#).unwrap().is_empty());
    }
}

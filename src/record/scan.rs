//! The common shape of a Mews message, split in one validating pass: `{"Events":[…]}` with
//! plain keys. serde_json reads the message once, keeping each event as borrowed raw text; one
//! pass over each event then finds its nesting depth and its `Type`, `Id` and `State`.
//!
//! Anything unusual (a top level that is not an object or has keys besides `Events`, no
//! `Events` array, a head key or value with escapes, a head field given twice, an event that is
//! an array, a message serde refuses) is left to the general path in `super`, so the two always
//! agree; a test checks them against each other on generated messages.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::MAX_DEPTH;

/// One event: its raw text and, when it was plain, its head fields (`None`: ask serde).
pub(super) struct Event<'a> {
    pub raw: &'a RawValue,
    pub head: Option<[Option<&'a str>; 3]>,
}

/// What the fast path made of a message.
pub(super) enum Split<'a> {
    /// The events, in order.
    Events(Vec<Event<'a>>),
    /// Valid, but nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Not the common shape: the general path decides.
    Unusual,
}

/// Splits a message of the common shape (see the module's header).
pub(super) fn split(message: &str) -> Split<'_> {
    // serde also reads a struct from an array; that shape is left to the general path.
    if message.trim_start().as_bytes().first() != Some(&b'{') {
        return Split::Unusual;
    }
    // Any other top-level key, or an `Events` that is missing, not an array or given twice,
    // fails here: the general path decides those (and checks the depth of what else is there).
    let Ok(Envelope { events }) = serde_json::from_str::<Envelope<'_>>(message) else {
        return Split::Unusual;
    };
    let mut out = Vec::with_capacity(events.len());
    for raw in events {
        let (depth, head) = scan(raw.get());
        // An event sits inside the message's object and its array.
        if depth + 2 > MAX_DEPTH {
            return Split::TooDeep;
        }
        out.push(Event { raw, head });
    }
    Split::Events(out)
}

/// The common shape's top level: an `Events` array and nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    #[serde(rename = "Events", borrow)]
    events: Vec<&'a RawValue>,
}

/// The head fields, in [`Event::head`]'s order.
const FIELDS: [&[u8]; 3] = [b"Type", b"Id", b"State"];

/// One pass over an event (valid JSON): its nesting depth (as `super::deeper_than` counts it)
/// and, if it is an object whose keys and head strings carry no escapes and name no head field
/// twice, its head fields. A non-object that is not an array has none (serde would refuse it
/// as a head); an array is left to serde, which reads a struct from one.
fn scan(raw: &str) -> (usize, Option<[Option<&str>; 3]>) {
    let bytes = raw.as_bytes();
    let object = bytes.first() == Some(&b'{');
    let mut plain = object;
    let mut head = [None; 3];
    let mut seen = [false; 3];
    let (mut depth, mut max) = (0usize, 0usize);
    // At the object's own level, whether the next string is a key.
    let mut key_next = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let (end, escaped) = string_end(bytes, i + 1);
                if depth == 1 && key_next && plain {
                    key_next = false;
                    let field = FIELDS.iter().position(|f| *f == &bytes[i + 1..end]);
                    if escaped {
                        plain = false;
                    } else if let Some(field) = field {
                        plain &= !seen[field];
                        seen[field] = true;
                        let value = skip_colon(bytes, end + 1);
                        if bytes.get(value) == Some(&b'"') {
                            let (value_end, escaped) = string_end(bytes, value + 1);
                            plain &= !escaped;
                            head[field] = raw.get(value + 1..value_end);
                            i = value_end + 1;
                            continue;
                        }
                    }
                }
                i = end + 1;
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
                key_next = depth == 1;
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => key_next = true,
            _ => {}
        }
        i += 1;
    }
    let head = match (object, plain) {
        (true, true) => Some(head),
        (false, _) if bytes.first() != Some(&b'[') => Some([None; 3]),
        _ => None,
    };
    (max, head)
}

/// The index of the quote that closes a string whose text starts at `from`, and whether the
/// string holds an escape (the slice's end if it is not closed).
fn string_end(bytes: &[u8], mut from: usize) -> (usize, bool) {
    let mut escaped = false;
    while from < bytes.len() {
        match bytes[from] {
            b'"' => return (from, escaped),
            b'\\' => {
                escaped = true;
                from += 2;
            }
            _ => from += 1,
        }
    }
    (bytes.len(), escaped)
}

/// Past the whitespace, colon and whitespace after a key.
fn skip_colon(bytes: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r' | b':') = bytes.get(at) {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use super::super::{decode, records, split_in_general};

    /// Random JSON-ish text in the shapes (and odd corners) the fast path must either decode
    /// exactly as the general path does or leave to it.
    struct Gen(fastrand::Rng);

    impl Gen {
        fn ws(&mut self) -> &'static str {
            ["", "", "", " ", "\n\t ", "\r\n"][self.0.usize(..6)]
        }

        fn string(&mut self) -> String {
            let texts = [
                "DeviceCommand",
                "Pending",
                "",
                "a\\\"b",
                "caf\\u00e9",
                "x\\\\",
                "[{",
                "é ü",
                "\\n",
            ];
            format!("\"{}\"", texts[self.0.usize(..texts.len())])
        }

        fn key(&mut self, head: bool) -> String {
            let keys: &[&str] = if head {
                &[
                    "Type",
                    "Id",
                    "State",
                    "T\\u0079pe",
                    "Extra",
                    "Id",
                    "type",
                    "Stat",
                ]
            } else {
                &["Events", "Ev\\u0065nts", "Other", "Events", "events"]
            };
            format!("\"{}\"", keys[self.0.usize(..keys.len())])
        }

        fn value(&mut self, depth: usize) -> String {
            let pick = if depth > 80 {
                self.0.usize(..5)
            } else {
                self.0.usize(..8)
            };
            match pick {
                0 | 1 => self.string(),
                2 => ["0", "-1.5e3", "12345678901234567890"][self.0.usize(..3)].into(),
                3 => ["true", "false", "null"][self.0.usize(..3)].into(),
                4 => "{}".into(),
                5 => self.event(depth + 1),
                6 => {
                    // A deep chain (the depth limit's edge).
                    let n = [1, 30, 61, 62, 63, 64, 70][self.0.usize(..7)];
                    format!("{}1{}", "[".repeat(n), "]".repeat(n))
                }
                _ => {
                    let items: Vec<String> = (0..self.0.usize(..4))
                        .map(|_| self.value(depth + 1))
                        .collect();
                    format!("[{}]", items.join(","))
                }
            }
        }

        fn event(&mut self, depth: usize) -> String {
            match self.0.usize(..10) {
                0 => self.value(depth + 1),
                1 => format!("[{},{}]", self.string(), self.string()),
                _ => {
                    let fields: Vec<String> = (0..self.0.usize(..6))
                        .map(|_| {
                            let (a, b) = (self.ws(), self.ws());
                            let value = if self.0.bool() {
                                self.string()
                            } else {
                                self.value(depth + 1)
                            };
                            format!("{a}{}{b}:{}{value}", self.key(true), self.ws())
                        })
                        .collect();
                    format!("{{{}}}", fields.join(","))
                }
            }
        }

        fn message(&mut self) -> String {
            let events: Vec<String> = (0..self.0.usize(..5))
                .map(|_| format!("{}{}{}", self.ws(), self.event(2), self.ws()))
                .collect();
            let events = match self.0.usize(..12) {
                0 => "null".into(),
                1 => "{\"a\":1}".into(),
                _ => format!("[{}]", events.join(",")),
            };
            let mut fields = vec![format!("\"Events\":{}{events}", self.ws())];
            // Other top-level keys now and then (they take the general path).
            let others = if self.0.usize(..4) == 0 {
                self.0.usize(1..3)
            } else {
                0
            };
            for _ in 0..others {
                let value = self.value(1);
                fields.insert(
                    self.0.usize(..=fields.len()),
                    format!("{}:{value}", self.key(false)),
                );
            }
            let mut text = match self.0.usize(..15) {
                0 => format!("[{events}]"),
                _ => format!("{}{{{}}}{}", self.ws(), fields.join(","), self.ws()),
            };
            // Now and then broken: cut short or with a stray byte.
            let mut at = self.0.usize(..=text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            match self.0.usize(..12) {
                0 => text.truncate(at),
                1 => text.insert(at, [',', '"', ']', '\\', 'x'][self.0.usize(..5)]),
                _ => {}
            }
            text
        }
    }

    #[test]
    fn the_fast_path_agrees_with_the_general_one() {
        let mut generate = Gen(fastrand::Rng::with_seed(17));
        let property: Arc<str> = Arc::from("p");
        let (mut kept, mut refused, mut fast_path) = (0, 0, 0);
        for _ in 0..20_000 {
            let message = generate.message();
            fast_path += usize::from(!matches!(super::split(&message), super::Split::Unusual));
            let fast = decode(&property, &message, SystemTime::UNIX_EPOCH);
            let general = split_in_general(&message)
                .map(|events| records(&property, SystemTime::UNIX_EPOCH, events));
            assert_eq!(format!("{fast:?}"), format!("{general:?}"), "{message}");
            match fast {
                Ok(found) => kept += found.len(),
                Err(_) => refused += 1,
            }
        }
        // The generator reaches both outcomes, and the fast path, plentifully.
        assert!(
            kept > 10_000 && refused > 1_000 && fast_path > 8_000,
            "{kept} {refused} {fast_path}"
        );
    }

    #[test]
    fn the_common_shape_takes_the_fast_path() {
        use super::{Split, split};
        let message = r#"{"Events":[{"Type":"DeviceCommand","Id":"a","State":"Pending","Data":{"x":[1]}},{"Id":5}]}"#;
        let Split::Events(events) = split(message) else {
            panic!("not split")
        };
        assert_eq!(
            events[0].head,
            Some([Some("DeviceCommand"), Some("a"), Some("Pending")])
        );
        assert_eq!(events[1].head, Some([None, None, None]));
        assert_eq!(events[1].raw.get(), r#"{"Id":5}"#);
        for odd in [
            r#"{"Events":null}"#,
            r#"[[{"Type":"x"}]]"#,
            r#"{"Events":[1],"Events":[2]}"#,
            r#"{"Events":[1,]}"#,
            r#"{"Events":[],"Other":1}"#,
        ] {
            assert!(matches!(split(odd), Split::Unusual), "{odd}");
        }
        let escaped = r#"{"Events":[{"Type":"Dev\u0069ce"},["a","b"],{"Id":"x","Id":"y"}]}"#;
        let Split::Events(events) = split(escaped) else {
            panic!("not split")
        };
        assert!(events.iter().all(|e| e.head.is_none()));
    }
}

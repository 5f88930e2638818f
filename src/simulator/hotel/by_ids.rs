//! `commands/getAllByIds`, as strictly as Mews's documentation allows.
//!
//! `operations/commands.md` gives `CommandIds` as "array of string, required, max 1000 items"
//! of "Unique identifiers of Commands to be returned", and `guidelines/responses.md` answers
//! `400 Invalid {Parameter}` when "the referenced resource does not exist or is in an invalid
//! state for the given endpoint". The docs are silent on ids that are not GUIDs, on an id given
//! twice, on an empty list and on an id Mews does not know (or that belongs to another
//! enterprise): the strictest reading is taken for each — the whole request is refused with
//! `400 Invalid CommandIds`. [`Hotel::omit_unknown_command_ids`] switches to the other reading
//! for unknown ids (left out of the answer), so a client can be tested against both.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::rest::{limitation, page};
use super::{Command, Hotel, Refusal, State};

/// `CommandIds` takes at most this many ids.
const MAX_IDS: usize = 1000;

impl Hotel {
    /// `commands/getAllByIds` leaves unknown command ids out of its answer instead of refusing
    /// the request with 400 (the docs are silent; refusing is the default, the stricter
    /// reading).
    pub fn omit_unknown_command_ids(&self, omit: bool) {
        self.faults().omit_unknown_ids = omit;
    }
}

impl State {
    /// `commands/getAllByIds`: the named commands of this property, in the order asked,
    /// paged when a `Limitation` is given. `omit_unknown`: see the module's header.
    pub(super) fn commands_by_ids(
        &self,
        token: &str,
        body: &Value,
        omit_unknown: bool,
    ) -> Result<Value, Refusal> {
        let ids = body["CommandIds"]
            .as_array()
            .ok_or_else(|| Refusal::invalid("CommandIds"))?;
        if ids.is_empty() || ids.len() > MAX_IDS {
            return Err(Refusal::new(
                400,
                "Invalid CommandIds: 1 to 1000 items are required.",
            ));
        }
        let mut seen = HashSet::with_capacity(ids.len());
        let mut found: Vec<&Command> = Vec::with_capacity(ids.len());
        for id in ids {
            let id = id
                .as_str()
                .filter(|id| is_guid(id))
                .ok_or_else(|| refused("is not a GUID", id))?;
            if !seen.insert(id) {
                return Err(refused("is given twice", &Value::from(id)));
            }
            match self.commands.get(id).filter(|c| c.visible_to(token)) {
                Some(command) => found.push(command),
                None if omit_unknown => {}
                None => return Err(refused("does not exist", &Value::from(id))),
            }
        }
        let (found, cursor) = match limitation(body, false)? {
            Some(limitation) => page(&found, &limitation, |c| c.id.as_str()),
            None => (&found[..], Value::Null),
        };
        let commands: Vec<Value> = found.iter().map(|c| self.command_json(c)).collect();
        Ok(json!({ "Commands": commands, "Cursor": cursor }))
    }
}

/// `400 Invalid CommandIds` naming the id and why.
fn refused(why: &str, id: &Value) -> Refusal {
    Refusal::new(400, format!("Invalid CommandIds: {id} {why}."))
}

/// Whether `id` is a GUID as Mews writes them (`8-4-4-4-12` hex digits, either case).
fn is_guid(id: &str) -> bool {
    let bytes = id.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::super::*;

    fn by_ids(hotel: &Hotel, ids: Value) -> Result<Value, Refusal> {
        hotel.rest("commands/getAllByIds", &json!({ "CommandIds": ids }))
    }

    fn refusal(result: Result<Value, Refusal>) -> (u16, String) {
        let refusal = result.expect_err("refused");
        (refusal.status, refusal.message)
    }

    #[test]
    fn commands_by_ids_page_when_asked() {
        let hotel = Hotel::new();
        let ids: Vec<String> = (0..5).map(|_| hotel.create_key_command(false)).collect();
        let first = hotel
            .rest(
                "commands/getAllByIds",
                &json!({"CommandIds": ids, "Limitation": {"Count": 3}}),
            )
            .unwrap();
        assert_eq!(first["Commands"].as_array().unwrap().len(), 3);
        assert_eq!(first["Cursor"], ids[2].as_str());
        let rest = hotel
            .rest(
                "commands/getAllByIds",
                &json!({"CommandIds": ids, "Limitation": {"Count": 3, "Cursor": first["Cursor"]}}),
            )
            .unwrap();
        assert_eq!(rest["Commands"][1]["Id"], ids[4].as_str());
    }

    #[test]
    fn one_bad_id_refuses_the_whole_request() {
        let hotel = Hotel::new();
        let known = hotel.create_key_command(false);
        let unknown = "0b7e2f6a-3c1d-4e5f-8a9b-0c1d2e3f4a5b";
        let cases = [
            (json!([known, "cmd-1"]), "\"cmd-1\" is not a GUID"),
            (json!([known, 7]), "7 is not a GUID"),
            (json!([known, known]), "is given twice"),
            (json!([known, unknown]), "does not exist"),
            (json!([]), "1 to 1000 items"),
        ];
        for (ids, why) in cases {
            let (status, message) = refusal(by_ids(&hotel, ids.clone()));
            assert_eq!(status, 400, "{ids}");
            assert!(message.starts_with("Invalid CommandIds"), "{message}");
            assert!(message.contains(why), "{ids}: {message}");
        }
        let ids: Vec<String> = (0..1001).map(|_| known.clone()).collect();
        assert_eq!(refusal(by_ids(&hotel, json!(ids))).0, 400);
        // Alone, the known one is found.
        let answer = by_ids(&hotel, json!([known])).unwrap();
        assert_eq!(answer["Commands"][0]["Id"], known.as_str());
    }

    #[test]
    fn unknown_ids_can_be_left_out_instead() {
        let hotel = Hotel::new();
        let known = hotel.create_key_command(false);
        hotel.omit_unknown_command_ids(true);
        let unknown = "0B7E2F6A-3C1D-4E5F-8A9B-0C1D2E3F4A5B";
        let answer = by_ids(&hotel, json!([unknown, known])).unwrap();
        let commands = answer["Commands"].as_array().unwrap();
        assert_eq!(commands.len(), 1);
        assert_eq!(commands[0]["Id"], known.as_str());
        // Not a GUID, or twice, is still refused.
        assert_eq!(refusal(by_ids(&hotel, json!(["cmd-1"]))).0, 400);
        assert_eq!(refusal(by_ids(&hotel, json!([known, known]))).0, 400);
        hotel.omit_unknown_command_ids(false);
        assert_eq!(refusal(by_ids(&hotel, json!([unknown, known]))).0, 400);
    }
}

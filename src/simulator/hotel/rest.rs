//! The Mews REST operations the relay uses, answered from the simulated hotel:
//! `commands/getAllActive`, `commands/getAllByIds`, `commands/update` and
//! `reservations/getAll/2023-06-06`, with paging as `guidelines/pagination.md` documents it
//! (`Limitation` = `Count` 1..1000 and `Cursor`), and the faults tests switch on (429, 403, 408).

use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use serde_json::{Value, json};

use super::{Command, Hotel, Refusal, State, ascii, time, time_ms};

/// The operations served under `/api/connector/v1/`; anything else is 404, as Mews answers a
/// wrong address.
pub const OPERATIONS: [&str; 4] = [
    "commands/getAllActive",
    "commands/getAllByIds",
    "commands/update",
    "reservations/getAll/2023-06-06",
];

/// Mews's page limit: `Count` is "minimum 1, maximum 1000".
const MAX_COUNT: u64 = 1000;

/// A request's `Limitation`.
pub(super) struct Limitation {
    count: usize,
    cursor: Option<String>,
}

/// `Limitation` of `body`; `required` as the operation documents it.
pub(super) fn limitation(body: &Value, required: bool) -> Result<Option<Limitation>, Refusal> {
    let raw = &body["Limitation"];
    if raw.is_null() {
        return if required {
            Err(Refusal::invalid("Limitation"))
        } else {
            Ok(None)
        };
    }
    let count = raw["Count"]
        .as_u64()
        .filter(|c| (1..=MAX_COUNT).contains(c))
        .ok_or_else(|| Refusal::new(400, "Invalid Limitation: Count must be from 1 to 1000."))?;
    let cursor = match &raw["Cursor"] {
        Value::Null => None,
        Value::String(cursor) => Some(cursor.clone()),
        _ => return Err(Refusal::invalid("Limitation")),
    };
    Ok(Some(Limitation {
        count: count as usize,
        cursor,
    }))
}

/// One page of `items` (in their order) after the item named by the cursor, and the response's
/// `Cursor`: the id of the last item returned. Mews's pagination guide: "If Limitation is
/// specified in the request message, then Cursor will always be included in the response
/// message", so a full last page still carries one; a client stops on a page with fewer items
/// than `Count` (or on a null Cursor, given here with an empty page).
pub(super) fn page<'a, T>(
    items: &'a [T],
    limitation: &Limitation,
    id: impl Fn(&T) -> &str,
) -> (&'a [T], Value) {
    let from = match &limitation.cursor {
        // An unknown cursor is past everything: the docs say nothing, an empty page is safest.
        Some(cursor) => items
            .iter()
            .position(|item| id(item) == cursor)
            .map_or(items.len(), |i| i + 1),
        None => 0,
    };
    let page = &items[from..(from + limitation.count).min(items.len())];
    let cursor = page
        .last()
        .map_or(Value::Null, |item| Value::String(id(item).to_owned()));
    (page, cursor)
}

/// Mews (`guidelines/environments.md`): "200 requests per `AccessToken` within 30 seconds".
pub(in crate::simulator) const RATE_LIMIT: usize = 200;
/// The sliding window of [`RATE_LIMIT`].
pub(in crate::simulator) const RATE_WINDOW: std::time::Duration =
    std::time::Duration::from_secs(30);

impl Hotel {
    /// Mews's request limit, always on: past 200 calls of one AccessToken in 30 s, 429 with
    /// `Retry-After` (the seconds until the oldest call leaves the window). Counted here on
    /// its own, not with the relay's limiter: a mistake shared by both would pass every test.
    /// Refused calls count too (the docs do not say they don't: the strictest reading).
    fn rate_limit(&self, body: &Value) -> Result<(), Refusal> {
        let token = body["AccessToken"].as_str().unwrap_or_default();
        let now = std::time::Instant::now();
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        let calls = limits.entry(token.to_owned()).or_default();
        while calls.front().is_some_and(|at| now - *at >= RATE_WINDOW) {
            calls.pop_front();
        }
        if calls.len() >= RATE_LIMIT {
            let wait = RATE_WINDOW - (now - calls[0]);
            return Err(Refusal {
                retry_after: Some(wait.as_secs_f64().ceil().max(1.0) as u64),
                ..Refusal::new(429, "Too many requests.")
            });
        }
        calls.push_back(now);
        Ok(())
    }

    /// Answers one REST call (tokens and `Client` already checked by the HTTP side).
    pub(in crate::simulator) fn rest(
        &self,
        operation: &str,
        body: &Value,
    ) -> Result<Value, Refusal> {
        if !OPERATIONS.contains(&operation) {
            return Err(Refusal::new(404, format!("Unknown operation {operation}")));
        }
        self.rate_limit(body)?;
        self.fault(operation, body)?;
        let token = body["AccessToken"].as_str().unwrap_or_default();
        match operation {
            "commands/getAllActive" => Ok(self.state().active_commands(token)),
            "commands/getAllByIds" => {
                let omit_unknown = self.faults().omit_unknown_ids;
                self.state().commands_by_ids(token, body, omit_unknown)
            }
            "commands/update" => {
                let applied = self.update_command(body)?;
                let mut faults = self.faults();
                if faults.timeout_after_apply > 0 {
                    faults.timeout_after_apply -= 1;
                    return Err(Refusal::new(
                        408,
                        "The request timed out (simulated: the update was applied, its answer lost).",
                    ));
                }
                Ok(applied)
            }
            _ => self.state().reservations_page(body),
        }
    }

    /// The faults switched on: 429 (with or without `Retry-After`), 403 for a refused
    /// operation, 408 for a page larger than allowed.
    fn fault(&self, operation: &str, body: &Value) -> Result<(), Refusal> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let mut faults = self.faults();
        if faults.down {
            return Err(Refusal::new(
                503,
                "The service is temporarily unavailable (simulated outage).",
            ));
        }
        let every = faults.throttle_every > 0 && n.is_multiple_of(u64::from(faults.throttle_every));
        if faults.throttle_next > 0 || every {
            faults.throttle_next = faults.throttle_next.saturating_sub(1);
            return Err(Refusal {
                retry_after: faults.retry_after,
                ..Refusal::new(429, "Too many requests.")
            });
        }
        if faults.unpermitted.contains(operation) {
            return Err(Refusal::new(
                401,
                format!(
                    "The client does not have permission to perform {operation} (simulated: the integration lacks it)."
                ),
            ));
        }
        if faults.refused.contains(operation) {
            return Err(Refusal::new(
                403,
                format!(
                    "The enterprise does not allow {operation} for this integration (simulated business-rule refusal)."
                ),
            ));
        }
        // A heavy request is one that asks for many items: a page's `Count`, or the ids of
        // `commands/getAllByIds` (`guidelines/responses.md` on 408: "request data in smaller
        // batches"; which requests Mews finds heavy is not documented).
        let count = body["Limitation"]["Count"]
            .as_u64()
            .or_else(|| body["CommandIds"].as_array().map(|ids| ids.len() as u64));
        if let (Some(max), Some(count)) = (faults.max_page, count)
            && count > max
        {
            return Err(Refusal::new(
                408,
                "The request took too long to process; request data in smaller batches.",
            ));
        }
        Ok(())
    }
}

impl State {
    /// `commands/getAllActive`: this property's (and everyone's) Pending and Received commands,
    /// oldest first. The request documents no `Limitation`, so none is read.
    fn active_commands(&self, token: &str) -> Value {
        let commands: Vec<Value> = self
            .order
            .iter()
            .filter_map(|id| self.commands.get(id))
            .filter(|c| c.state.is_active() && c.visible_to(token))
            .map(|c| self.command_json(c))
            .collect();
        json!({ "Commands": commands, "Cursor": null })
    }

    pub(super) fn command_json(&self, c: &Command) -> Value {
        let device = &self.devices[c.device.min(self.devices.len() - 1)];
        let data = match (device.kind, self.reservations.get(c.reservation)) {
            // The docs call LockIds "Identifiers of locks/rooms the key should open"; lock
            // systems know rooms by number, so the room's name is given.
            ("KeyCutter", Some(r)) => json!({
                "KeyCutterId": device.id,
                "KeyCount": c.key_count,
                "LockIds": [self.resources[r.resource].name],
                "StartUtc": time(r.start),
                "EndUtc": time(r.end),
                "FirstName": r.first_name,
                "LastName": r.last_name,
                "NormalizedFirstName": ascii(&r.first_name),
                "NormalizedLastName": ascii(&r.last_name),
                "Telephone": r.phone,
                "Email": r.email,
                "ReservationId": r.id,
                "ReservationNumber": r.number,
            }),
            _ => json!({
                "CopyCount": 1,
                "FileType": "application/pdf",
                "FileData": "JVBERi0xLjQK",
                "PrinterName": device.name,
                "PrinterDriverName": "",
                "PrinterPortName": "",
            }),
        };
        json!({
            "Id": c.id,
            "State": c.state.as_str(),
            "CreatedUtc": time(c.created),
            "Creator": { "FirstName": "Front", "LastName": "Desk" },
            "Device": { "Id": device.id, "Name": device.name, "Type": device.kind },
            "Data": data,
        })
    }

    /// `reservations/getAll/2023-06-06` with `UpdatedUtc` (half-open, as `_objects.md` defines
    /// a Time interval; at most 3 months) and the required `Limitation`. Pages follow the order
    /// the reservations were made in, and a cursor stands for its reservation's place in that
    /// order: a reservation updated between two pages (out of the window now) neither moves
    /// nor hides the next page. (The docs say nothing of it; a cursor that ended the listing
    /// early would be a Mews bug that loses the rest of the window.)
    fn reservations_page(&self, body: &Value) -> Result<Value, Refusal> {
        let limitation = limitation(body, true)?.ok_or_else(|| Refusal::invalid("Limitation"))?;
        let interval = &body["UpdatedUtc"];
        // The docs name no error for an interval that ends before it starts or has one bound:
        // the strictest reading refuses both (an empty page would let a client move its mark
        // past a window it never read). Equal bounds filter for that instant (`_objects.md`).
        let (from, to) = match (interval.get("StartUtc"), interval.get("EndUtc")) {
            (None, None) => (0, u64::MAX),
            (Some(a), Some(b)) => (
                a.as_str()
                    .and_then(parse_ms)
                    .ok_or_else(|| Refusal::invalid("UpdatedUtc"))?,
                b.as_str()
                    .and_then(parse_ms)
                    .ok_or_else(|| Refusal::invalid("UpdatedUtc"))?,
            ),
            _ => return Err(Refusal::invalid("UpdatedUtc")),
        };
        if to < from {
            return Err(Refusal::new(
                400,
                "Invalid UpdatedUtc: EndUtc is before StartUtc.",
            ));
        }
        if !interval.is_null() && to - from > 92 * 86_400_000 {
            return Err(Refusal::new(
                400,
                "Invalid UpdatedUtc: longer than 3 months.",
            ));
        }
        let after = match &limitation.cursor {
            // An unknown cursor is past everything (as `page` has it).
            Some(cursor) => self
                .reservations
                .iter()
                .position(|r| r.id == *cursor)
                .map_or(self.reservations.len(), |i| i + 1),
            None => 0,
        };
        let limitation = Limitation {
            cursor: None,
            ..limitation
        };
        let matching: Vec<&super::Reservation> = self.reservations[after..]
            .iter()
            .filter(|r| {
                if from == to {
                    r.updated_ms == from
                } else {
                    r.updated_ms >= from && r.updated_ms < to
                }
            })
            .collect();
        let (found, cursor) = page(&matching, &limitation, |r| r.id.as_str());
        let reservations: Vec<Value> = found
            .iter()
            .map(|r| {
                json!({
                    "Id": r.id,
                    "ServiceId": "bd26d8db-86da-4f96-9efc-e5a4654a4a94",
                    "AccountType": "Customer",
                    "Number": r.number,
                    "State": r.state,
                    "Origin": "Connector",
                    "CreatedUtc": time(r.created),
                    "UpdatedUtc": time_ms(r.updated_ms),
                    "AssignedResourceId": self.resources[r.resource].id,
                    "ScheduledStartUtc": time(r.start),
                    "ScheduledEndUtc": time(r.end),
                    "PersonCounts": [{ "AgeCategoryId": "adult", "Count": 2 }],
                })
            })
            .collect();
        Ok(json!({ "Reservations": reservations, "Cursor": cursor }))
    }
}

/// Parses `2026-11-23T12:00:00Z` (with or without fractions) into unix milliseconds: the `T`
/// and the `Z` are required, as Mews's serialization guideline writes them.
fn parse_ms(text: &str) -> Option<u64> {
    let utc = text.strip_suffix('Z')?;
    if utc.as_bytes().get(10) != Some(&b'T') {
        return None;
    }
    let at = humantime::parse_rfc3339_weak(utc).ok()?;
    Some(at.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use std::time::{Duration, SystemTime};

    fn update(hotel: &Hotel, id: &str, state: &str) -> Result<Value, Refusal> {
        hotel.rest("commands/update", &json!({"CommandId": id, "State": state}))
    }

    #[test]
    fn commands_are_served_with_key_cutter_data_until_final() {
        let hotel = Hotel::new();
        let id = hotel.create_key_command(false);
        let active = hotel.rest("commands/getAllActive", &json!({})).unwrap();
        let command = &active["Commands"][0];
        assert_eq!(command["Id"], id.as_str());
        assert_eq!(command["Device"]["Type"], "KeyCutter");
        assert_eq!(command["Data"]["KeyCount"], 1);
        assert!(command["Data"]["Email"].as_str().unwrap().contains('@'));
        let room = command["Data"]["LockIds"][0]
            .as_str()
            .unwrap()
            .parse::<u32>();
        assert!(room.is_ok_and(|n| (101..131).contains(&n)), "{command}");
        update(&hotel, &id, "Received").unwrap();
        let active = hotel.rest("commands/getAllActive", &json!({})).unwrap();
        assert_eq!(active["Commands"][0]["State"], "Received");
        update(&hotel, &id, "Processed").unwrap();
        let active = hotel.rest("commands/getAllActive", &json!({})).unwrap();
        assert_eq!(active["Commands"].as_array().unwrap().len(), 0);
        let by_id = hotel
            .rest("commands/getAllByIds", &json!({"CommandIds": [id]}))
            .unwrap();
        assert_eq!(by_id["Commands"][0]["State"], "Processed");
        let again = update(&hotel, &id, "Error").unwrap_err();
        assert_eq!(
            (again.status, again.message.starts_with("Invalid CommandId")),
            (400, true)
        );
        assert_eq!(
            update(&hotel, &id, "Done").unwrap_err().message,
            "Invalid State"
        );
        assert_eq!(
            update(&hotel, "nope", "Received").unwrap_err().message,
            "Invalid CommandId"
        );
    }

    #[test]
    fn reservations_page_through_an_updated_window() {
        let hotel = Hotel::new();
        hotel.add_reservations(2500, SystemTime::now() - Duration::from_secs(60));
        let now = now_secs();
        let window = json!({"StartUtc": time(now - 3600), "EndUtc": time(now + 1)});
        let mut cursor = Value::Null;
        let mut seen = std::collections::HashSet::new();
        let mut pages = 0;
        loop {
            let mut limitation = json!({"Count": 1000});
            if !cursor.is_null() {
                limitation["Cursor"] = cursor.clone();
            }
            let page = hotel
                .rest(
                    "reservations/getAll/2023-06-06",
                    &json!({"UpdatedUtc": window, "Limitation": limitation}),
                )
                .unwrap();
            pages += 1;
            let items = page["Reservations"].as_array().unwrap();
            for r in items {
                assert!(seen.insert(r["Id"].as_str().unwrap().to_owned()));
                assert_eq!(r["AssignedResourceId"].as_str().unwrap().len(), 36);
            }
            cursor = page["Cursor"].clone();
            assert_eq!(
                cursor,
                items.last().map_or(Value::Null, |r| r["Id"].clone())
            );
            if items.len() < 1000 {
                break;
            }
        }
        assert_eq!((seen.len(), pages), (2500, 3));
        let no_limitation = json!({"UpdatedUtc": window});
        let err = hotel
            .rest("reservations/getAll/2023-06-06", &no_limitation)
            .unwrap_err();
        assert_eq!(
            (err.status, err.message.as_str()),
            (400, "Invalid Limitation")
        );
    }

    #[test]
    fn faults_answer_429_403_and_408_as_switched_on() {
        let hotel = Hotel::new();
        hotel.throttle_next(1, None);
        let throttled = hotel.rest("commands/getAllActive", &json!({})).unwrap_err();
        assert_eq!((throttled.status, throttled.retry_after), (429, None));
        assert!(hotel.rest("commands/getAllActive", &json!({})).is_ok());
        hotel.refuse("reservations/getAll/2023-06-06");
        let body = json!({"Limitation": {"Count": 10}});
        let refused = hotel
            .rest("reservations/getAll/2023-06-06", &body)
            .unwrap_err();
        assert_eq!(refused.status, 403);
        assert!(
            hotel.rest("commands/getAllActive", &json!({})).is_ok(),
            "only that one"
        );
        hotel.too_heavy_above(Some(5));
        let heavy = json!({"CommandIds": [], "Limitation": {"Count": 10}});
        assert_eq!(
            hotel
                .rest("commands/getAllByIds", &heavy)
                .unwrap_err()
                .status,
            408
        );
        let id = hotel.create_key_command(false);
        let light = json!({"CommandIds": [id], "Limitation": {"Count": 5}});
        assert!(hotel.rest("commands/getAllByIds", &light).is_ok());
        assert_eq!(
            hotel
                .rest("commands/getAll", &json!({}))
                .unwrap_err()
                .status,
            404
        );
    }

    #[test]
    fn two_hundred_calls_of_one_token_in_30_s_are_the_limit() {
        let hotel = Hotel::new();
        let body = json!({"AccessToken": "A"});
        for _ in 0..super::RATE_LIMIT {
            assert!(hotel.rest("commands/getAllActive", &body).is_ok());
        }
        let over = hotel.rest("commands/getAllActive", &body).unwrap_err();
        assert_eq!(over.status, 429);
        assert!(over.retry_after.is_some_and(|s| (1..=30).contains(&s)));
        assert!(
            hotel
                .rest("commands/getAllActive", &json!({"AccessToken": "B"}))
                .is_ok(),
            "per AccessToken"
        );
    }

    #[test]
    fn updated_utc_is_checked_as_strictly_as_the_docs_allow() {
        let hotel = Hotel::new();
        let ask = |interval: Value| {
            hotel.rest(
                "reservations/getAll/2023-06-06",
                &json!({"Limitation": {"Count": 10}, "UpdatedUtc": interval}),
            )
        };
        let backwards =
            json!({"StartUtc": "2026-11-23T12:00:00Z", "EndUtc": "2026-11-22T12:00:00Z"});
        assert_eq!(ask(backwards).unwrap_err().status, 400);
        let one_bound = json!({"StartUtc": "2026-11-23T12:00:00Z"});
        assert_eq!(ask(one_bound).unwrap_err().status, 400);
        let no_z = json!({"StartUtc": "2026-11-22T12:00:00", "EndUtc": "2026-11-23T12:00:00Z"});
        assert_eq!(ask(no_z).unwrap_err().status, 400);
        let space = json!({"StartUtc": "2026-11-22 12:00:00Z", "EndUtc": "2026-11-23T12:00:00Z"});
        assert_eq!(ask(space).unwrap_err().status, 400);
        let fine = json!({"StartUtc": "2026-11-22T12:00:00.5Z", "EndUtc": "2026-11-23T12:00:00Z"});
        assert!(ask(fine).is_ok());
    }

    #[test]
    fn a_reservation_updated_between_two_pages_does_not_end_the_listing() {
        let hotel = Hotel::new();
        hotel.add_reservations(3, SystemTime::now() - Duration::from_secs(60));
        let now = now_secs();
        let window = json!({"StartUtc": time(now - 3600), "EndUtc": time(now + 1)});
        let ask = |cursor: Value| {
            let mut limitation = json!({"Count": 1});
            if !cursor.is_null() {
                limitation["Cursor"] = cursor;
            }
            hotel
                .rest(
                    "reservations/getAll/2023-06-06",
                    &json!({"UpdatedUtc": window, "Limitation": limitation}),
                )
                .unwrap()
        };
        let first = ask(Value::Null);
        // The window's reservations, in the order they were made (the three added last).
        let (ids, at): (Vec<String>, Vec<usize>) = {
            let state = hotel.state();
            let n = state.reservations.len();
            (n - 3..n)
                .map(|i| (state.reservations[i].id.clone(), i))
                .unzip()
        };
        assert_eq!(first["Reservations"][0]["Id"], ids[0].as_str());
        // Updated meanwhile: out of the window now.
        hotel.state().reservations[at[0]].updated_ms = (now + 7200) * 1000;
        let second = ask(first["Cursor"].clone());
        assert_eq!(second["Reservations"][0]["Id"], ids[1].as_str());
        let third = ask(second["Cursor"].clone());
        assert_eq!(third["Reservations"][0]["Id"], ids[2].as_str());
    }
}

//! The Mews REST operations the relay uses, answered from the simulated hotel:
//! `commands/getAllActive`, `commands/getAllByIds`, `commands/update` and
//! `reservations/getAll/2023-06-06`, with paging as `guidelines/pagination.md` documents it
//! (`Limitation` = `Count` 1..1000 and `Cursor`), and the faults tests switch on (429, 403, 408).

use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use super::{Command, Hotel, Refusal, State, ascii, time};

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
    pub(super) count: usize,
    pub(super) cursor: Option<String>,
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
            _ => {
                let touch_cursor = self.faults().touch_cursor;
                self.state().reservations_page(body, touch_cursor)
            }
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
}

#[cfg(test)]
mod tests {
    use super::super::*;

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
}

//! The Mews REST operations the relay uses, answered from the simulated hotel:
//! `commands/getAllActive`, `commands/getAllByIds`, `commands/update` and
//! `reservations/getAll/2023-06-06` (UpdatedUtc, Limitation/Cursor paging), with 429 on demand.

use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use serde_json::{Value, json};

use super::{
    COMMAND_STATES, Command, Hotel, MAX_LOG, MAX_PAGE, Reservation, State, ascii, time, time_ms,
};

impl Hotel {
    /// Handles one REST call: `Err((status, retry_after, message))` for a refusal.
    pub(in crate::simulator) fn rest(
        &self,
        operation: &str,
        body: &Value,
    ) -> Result<Value, (u16, u64, String)> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
            if log.len() >= MAX_LOG {
                log.drain(..MAX_LOG / 2);
            }
            log.push((std::time::Instant::now(), operation.to_owned()));
        }
        {
            let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
            let every =
                faults.throttle_every > 0 && n.is_multiple_of(u64::from(faults.throttle_every));
            if faults.throttle_next > 0 || every {
                faults.throttle_next = faults.throttle_next.saturating_sub(1);
                return Err((
                    429,
                    faults.retry_after_secs.max(1),
                    "Too many requests".into(),
                ));
            }
        }
        let state = self.state();
        match operation {
            "commands/getAllActive" => {
                // This property's (and everyone's) active commands, oldest first.
                let token = body["AccessToken"].as_str().unwrap_or_default();
                let active: Vec<&Command> = state
                    .order
                    .iter()
                    .filter_map(|id| state.commands.get(id))
                    .filter(|c| matches!(c.state, "Pending" | "Received"))
                    .filter(|c| c.owner.as_deref().is_none_or(|owner| owner == token))
                    .collect();
                let commands: Vec<Value> = active.iter().map(|c| state.command_json(c)).collect();
                Ok(json!({ "Commands": commands, "Cursor": null }))
            }
            "commands/getAllByIds" => {
                let ids = body["CommandIds"].as_array().ok_or((
                    400,
                    0,
                    "Invalid CommandIds".to_owned(),
                ))?;
                if ids.len() > 1000 {
                    return Err((400, 0, "Invalid CommandIds: more than 1000".into()));
                }
                let commands: Vec<Value> = ids
                    .iter()
                    .filter_map(Value::as_str)
                    .filter_map(|id| state.commands.get(id))
                    .map(|c| state.command_json(c))
                    .collect();
                Ok(json!({ "Commands": commands, "Cursor": null }))
            }
            "commands/update" => {
                let id = body["CommandId"].as_str().unwrap_or_default().to_owned();
                let new_state = match body["State"].as_str() {
                    Some(s) => COMMAND_STATES
                        .iter()
                        .chain(&["Cancelled", "Error"])
                        .find(|known| **known == s)
                        .copied()
                        .ok_or((400, 0, "Invalid State".to_owned()))?,
                    None => return Err((400, 0, "Invalid State".into())),
                };
                if !state.commands.contains_key(&id) {
                    return Err((400, 0, "Invalid CommandId".into()));
                }
                drop(state);
                self.set_command_state(&id, new_state, true);
                Ok(json!({}))
            }
            "reservations/getAll/2023-06-06" => state.reservations_page(body),
            _ => Err((404, 0, format!("Unknown operation {operation}"))),
        }
    }
}

impl State {
    fn command_json(&self, c: &Command) -> Value {
        let device = &self.devices[c.device.min(self.devices.len() - 1)];
        let data = match (
            device.kind,
            c.reservation.and_then(|i| self.reservations.get(i)),
        ) {
            ("KeyCutter", Some(r)) => json!({
                "KeyCutterId": device.id,
                "KeyCount": 2,
                "LockIds": [r.room],
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
            "State": c.state,
            "CreatedUtc": time(c.created),
            "Creator": { "FirstName": "Front", "LastName": "Desk" },
            "Device": { "Id": device.id, "Name": device.name, "Type": device.kind },
            "Data": data,
        })
    }

    /// `UpdatedUtc` (half-open), `Limitation` with `Count` and `Cursor` (the last id returned).
    fn reservations_page(&self, body: &Value) -> Result<Value, (u16, u64, String)> {
        let bad = |what: &str| (400, 0, format!("Invalid {what}"));
        let count = body["Limitation"]["Count"]
            .as_u64()
            .filter(|c| (1..=MAX_PAGE as u64).contains(c))
            .ok_or_else(|| bad("Limitation"))? as usize;
        let interval = &body["UpdatedUtc"];
        let (from, to) = match (interval["StartUtc"].as_str(), interval["EndUtc"].as_str()) {
            (Some(a), Some(b)) => (
                parse_ms(a).ok_or_else(|| bad("UpdatedUtc"))?,
                parse_ms(b).ok_or_else(|| bad("UpdatedUtc"))?,
            ),
            _ => (0, u64::MAX),
        };
        if to.saturating_sub(from) > 92 * 86_400_000 {
            return Err(bad("UpdatedUtc: longer than 3 months"));
        }
        let mut matching: Vec<&Reservation> = self
            .reservations
            .iter()
            .filter(|r| r.updated_ms >= from && (r.updated_ms < to || from == to))
            .collect();
        matching.sort_by(|a, b| (a.updated_ms, &a.id).cmp(&(b.updated_ms, &b.id)));
        let skip = match body["Limitation"]["Cursor"].as_str() {
            Some(cursor) => matching
                .iter()
                .position(|r| r.id == cursor)
                .map_or(matching.len(), |i| i + 1),
            None => 0,
        };
        let page: Vec<Value> = matching
            .iter()
            .skip(skip)
            .take(count)
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
                    "AssignedResourceId": r.room,
                    "ScheduledStartUtc": time(r.start),
                    "ScheduledEndUtc": time(r.end),
                    "PersonCounts": [{ "AgeCategoryId": "adult", "Count": 2 }],
                })
            })
            .collect();
        let cursor = if page.len() == count {
            page.last().map(|r| r["Id"].clone()).unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        Ok(json!({ "Reservations": page, "Cursor": cursor }))
    }
}

/// Parses `2026-11-23T12:00:00Z` (with or without fractions) into unix milliseconds.
fn parse_ms(text: &str) -> Option<u64> {
    let at = humantime::parse_rfc3339_weak(text.trim_end_matches('Z')).ok()?;
    Some(at.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn commands_are_served_with_key_cutter_data() {
        let hotel = Hotel::new();
        let id = hotel.create_key_command(false);
        let active = hotel.rest("commands/getAllActive", &json!({})).unwrap();
        let command = &active["Commands"][0];
        assert_eq!(command["Id"], id.as_str());
        assert_eq!(command["Device"]["Type"], "KeyCutter");
        assert_eq!(command["Data"]["KeyCount"], 2);
        assert!(command["Data"]["Email"].as_str().unwrap().contains('@'));
        hotel.set_command_state(&id, "Processed", false);
        let active = hotel.rest("commands/getAllActive", &json!({})).unwrap();
        assert_eq!(active["Commands"].as_array().unwrap().len(), 0);
        let by_id = hotel
            .rest("commands/getAllByIds", &json!({"CommandIds": [id]}))
            .unwrap();
        assert_eq!(by_id["Commands"][0]["State"], "Processed");
    }

    #[test]
    fn reservations_page_through_an_updated_window() {
        let hotel = Hotel::new();
        hotel.add_reservations(2500, SystemTime::now() - Duration::from_secs(60));
        let window = json!({"StartUtc": time(now_secs() - 3600), "EndUtc": time(now_secs() + 1)});
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
            for r in page["Reservations"].as_array().unwrap() {
                assert!(seen.insert(r["Id"].as_str().unwrap().to_owned()));
            }
            cursor = page["Cursor"].clone();
            if cursor.is_null() {
                break;
            }
        }
        assert_eq!((seen.len(), pages), (2500, 3));
    }

    #[test]
    fn update_moves_a_command_and_announces_it() {
        let hotel = Hotel::new();
        let mut live = hotel.subscribe();
        let id = hotel.create_key_command(false);
        hotel
            .rest(
                "commands/update",
                &json!({"CommandId": id, "State": "Processed"}),
            )
            .unwrap();
        let event: Value = serde_json::from_str(&live.try_recv().unwrap()).unwrap();
        assert_eq!(event["Events"][0]["State"], "Processed");
        let err = hotel
            .rest(
                "commands/update",
                &json!({"CommandId": id, "State": "Done"}),
            )
            .unwrap_err();
        assert_eq!(err.0, 400);
    }

    #[test]
    fn throttling_answers_429_then_recovers() {
        let hotel = Hotel::new();
        hotel.throttle_next(1, 2);
        assert_eq!(
            hotel
                .rest("commands/getAllActive", &json!({}))
                .unwrap_err()
                .0,
            429
        );
        assert!(hotel.rest("commands/getAllActive", &json!({})).is_ok());
    }
}

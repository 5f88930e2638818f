//! `reservations/getAll/2023-06-06`, paged as strictly as Mews's documentation allows.
//!
//! `guidelines/pagination.md` on `Limitation.Cursor`: "Unique identifier of the item one newer
//! in time order than the items to be returned. If Cursor is not specified, i.e. null, then the
//! latest or most recent items will be returned"; the answer's `Cursor` is "the last and hence
//! oldest datum returned". So pages run newest first. Which time is meant is not said: the one
//! that moves (`UpdatedUtc`) is the strictest reading. Nor is it said what happens when the
//! cursor's reservation changes during the listing: here the cursor is then unknown, and the
//! page is empty — the listing ends early, the strictest reading (a client that trusts the
//! cursor loses the rest of its window).

use std::time::UNIX_EPOCH;

use serde_json::{Value, json};

use super::rest::{limitation, page};
use super::{Hotel, Refusal, State, time, time_ms};

impl Hotel {
    /// Fault: after each full page of reservations, the page's last one (the answer's
    /// `Cursor`) is updated now, as on a busy hotel.
    pub fn update_reservations_while_paging(&self, on: bool) {
        self.faults().touch_cursor = on;
    }
}

impl State {
    /// `reservations/getAll/2023-06-06` with `UpdatedUtc` (half-open, as `_objects.md` defines
    /// a Time interval; at most 3 months) and the required `Limitation`. See the module's
    /// header for the order and the cursor. `touch_cursor`: see
    /// [`Hotel::update_reservations_while_paging`].
    pub(super) fn reservations_page(
        &mut self,
        body: &Value,
        touch_cursor: bool,
    ) -> Result<Value, Refusal> {
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
        // "max length 3 months": the docs do not say which months; the shortest three in a
        // row (February to April of a common year, 89 days) is the strictest reading.
        if !interval.is_null() && to - from > 89 * 86_400_000 {
            return Err(Refusal::new(
                400,
                "Invalid UpdatedUtc: longer than 3 months.",
            ));
        }
        // Newest first, by the time that moves (`UpdatedUtc`), then the newest made.
        let mut matching: Vec<(&str, usize)> = (self.reservations.iter().enumerate())
            .filter(|(_, r)| {
                if from == to {
                    r.updated_ms == from
                } else {
                    r.updated_ms >= from && r.updated_ms < to
                }
            })
            .map(|(i, r)| (r.id.as_str(), i))
            .collect();
        matching.sort_unstable_by_key(|&(_, i)| {
            std::cmp::Reverse((self.reservations[i].updated_ms, i))
        });
        // A cursor whose reservation changed since it was given, or left the window, is
        // unknown (see the module's header): an empty page, which ends the listing.
        let changed = limitation.cursor.as_ref().is_some_and(|cursor| {
            match matching.iter().find(|(id, _)| *id == cursor.as_str()) {
                Some(&(_, i)) => {
                    let r = &self.reservations[i];
                    r.cursor_at.is_some_and(|then| then != r.updated_ms)
                }
                None => true,
            }
        });
        let (found, cursor) = if changed {
            (&matching[..0], Value::Null)
        } else {
            page(&matching, &limitation, |(id, _)| id)
        };
        let found: Vec<usize> = found.iter().map(|&(_, i)| i).collect();
        if let Some(&last) = found.last() {
            let r = &mut self.reservations[last];
            r.cursor_at = Some(r.updated_ms);
            if touch_cursor && found.len() == limitation.count {
                // A busy hotel: the page's last reservation changes before the next page is
                // asked (a millisecond later at least, so its `UpdatedUtc` differs).
                r.updated_ms = super::now_ms().max(r.updated_ms + 1);
            }
        }
        let found: Vec<&super::Reservation> =
            found.iter().map(|&i| &self.reservations[i]).collect();
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
        let months = json!({"StartUtc": "2026-02-01T00:00:00Z", "EndUtc": "2026-05-01T00:00:00Z"});
        assert!(ask(months).is_ok(), "89 days");
        let longer =
            json!({"StartUtc": "2026-02-01T00:00:00Z", "EndUtc": "2026-05-01T00:00:00.001Z"});
        assert_eq!(ask(longer).unwrap_err().status, 400);
    }

    /// Three reservations updated a second apart, asked one per page in a window that ends
    /// at `end` (unix ms).
    fn three(hotel: &Hotel) -> (Vec<String>, u64, impl Fn(Value) -> Value + '_) {
        let now = now_secs();
        for ago in [3, 2, 1] {
            hotel.add_reservations(1, SystemTime::now() - Duration::from_secs(ago));
        }
        let ids: Vec<String> = {
            let state = hotel.state();
            let n = state.reservations.len();
            (n - 3..n)
                .map(|i| state.reservations[i].id.clone())
                .collect()
        };
        let window = json!({"StartUtc": time(now - 3600), "EndUtc": time(now + 1)});
        let ask = move |cursor: Value| {
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
        (ids, (now + 1) * 1000, ask)
    }

    #[test]
    fn pages_run_newest_first() {
        let hotel = Hotel::new();
        let (ids, _, ask) = three(&hotel);
        let first = ask(Value::Null);
        assert_eq!(first["Reservations"][0]["Id"], ids[2].as_str());
        assert_eq!(first["Cursor"], ids[2].as_str());
        let second = ask(first["Cursor"].clone());
        assert_eq!(second["Reservations"][0]["Id"], ids[1].as_str());
        let third = ask(second["Cursor"].clone());
        assert_eq!(third["Reservations"][0]["Id"], ids[0].as_str());
        let fourth = ask(third["Cursor"].clone());
        assert_eq!(fourth["Reservations"].as_array().unwrap().len(), 0);
        assert!(fourth["Cursor"].is_null());
    }

    #[test]
    fn a_cursor_updated_out_of_the_window_ends_the_listing() {
        let hotel = Hotel::new();
        let (ids, _, ask) = three(&hotel);
        let first = ask(Value::Null);
        assert_eq!(first["Cursor"], ids[2].as_str());
        let updated = (now_secs() + 7200) * 1000;
        let at = hotel.state().reservations.len() - 1;
        hotel.state().reservations[at].updated_ms = updated;
        let second = ask(first["Cursor"].clone());
        assert_eq!(
            second["Reservations"].as_array().unwrap().len(),
            0,
            "{second}"
        );
    }

    #[test]
    fn a_cursor_updated_within_the_window_ends_the_listing_too() {
        let hotel = Hotel::new();
        let (ids, _, ask) = three(&hotel);
        let first = ask(Value::Null);
        let second = ask(first["Cursor"].clone());
        assert_eq!(second["Cursor"], ids[1].as_str());
        // Still in the window, now the newest: the cursor names a reservation that changed.
        let at = hotel.state().reservations.len() - 2;
        hotel.state().reservations[at].updated_ms += 1500;
        let third = ask(second["Cursor"].clone());
        assert_eq!(
            third["Reservations"].as_array().unwrap().len(),
            0,
            "{third}"
        );
        assert!(third["Cursor"].is_null());
    }

    #[test]
    fn the_fault_updates_each_full_page_s_last_reservation() {
        let hotel = Hotel::new();
        let (ids, _, ask) = three(&hotel);
        let before = hotel.state().reservations.last().unwrap().updated_ms;
        hotel.update_reservations_while_paging(true);
        let first = ask(Value::Null);
        assert_eq!(first["Cursor"], ids[2].as_str());
        let after = hotel.state().reservations.last().unwrap().updated_ms;
        assert!(after > before && after <= now_ms(), "{before} {after}");
        let second = ask(first["Cursor"].clone());
        assert_eq!(
            second["Reservations"].as_array().unwrap().len(),
            0,
            "{second}"
        );
    }
}

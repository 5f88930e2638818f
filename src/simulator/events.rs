//! Realistic Mews events (shapes from mews-api.md §2) for the simulator.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

/// Makes events of the four WebSocket types about a small, stable hotel.
pub struct EventFactory {
    rng: fastrand::Rng,
    rooms: Vec<String>,
    rates: Vec<String>,
    categories: Vec<String>,
}

impl Default for EventFactory {
    fn default() -> Self {
        Self::new()
    }
}

impl EventFactory {
    /// A factory with 12 rooms, 3 rates and 2 room categories.
    pub fn new() -> Self {
        Self::with_rng(fastrand::Rng::new())
    }

    /// The same, seeded.
    pub fn with_rng(mut rng: fastrand::Rng) -> Self {
        let mut ids = |n| (0..n).map(|_| uuid(&mut rng)).collect::<Vec<_>>();
        let rooms = ids(12);
        let rates = ids(3);
        let categories = ids(2);
        EventFactory {
            rng,
            rooms,
            rates,
            categories,
        }
    }

    /// A `{"Events":[…]}` message with `n` events.
    pub fn message(&mut self, n: usize) -> String {
        let events: Vec<Value> = (0..n).map(|_| self.event()).collect();
        json!({ "Events": events }).to_string()
    }

    /// One event; device commands are the most frequent, as at a busy front desk.
    pub fn event(&mut self) -> Value {
        match self.rng.u8(0..10) {
            0..=3 => self.device_command(),
            4..=6 => self.reservation(),
            7..=8 => self.resource(),
            _ => self.price_update(),
        }
    }

    fn pick<'a>(&mut self, items: &'a [&'a str]) -> &'a str {
        items[self.rng.usize(..items.len())]
    }

    fn device_command(&mut self) -> Value {
        let state = self.pick(&[
            "Pending",
            "Pending",
            "Received",
            "Processing",
            "Processed",
            "Cancelled",
            "Error",
        ]);
        json!({ "Type": "DeviceCommand", "Id": uuid(&mut self.rng), "State": state })
    }

    fn reservation(&mut self) -> Value {
        let state = self.pick(&[
            "Confirmed",
            "Started",
            "Processed",
            "Canceled",
            "Optional",
            "Inquired",
        ]);
        let start = SystemTime::now() + Duration::from_secs(86_400 * self.rng.u64(0..14));
        let end = start + Duration::from_secs(86_400 * self.rng.u64(1..6));
        let mut event = json!({
            "Type": "Reservation",
            "Id": uuid(&mut self.rng),
            "State": state,
            "StartUtc": day_at(start, 14),
            "EndUtc": day_at(end, 10),
        });
        if self.rng.bool() {
            let room = self.rooms[self.rng.usize(..self.rooms.len())].clone();
            event["AssignedResourceId"] = Value::String(room);
        }
        event
    }

    fn resource(&mut self) -> Value {
        let state = self.pick(&["Dirty", "Clean", "Inspected", "OutOfService", "OutOfOrder"]);
        let room = self.rooms[self.rng.usize(..self.rooms.len())].clone();
        json!({ "Type": "Resource", "Id": room, "State": state })
    }

    /// A PriceUpdate event (the simulated hotel keeps no rates).
    pub fn price_update(&mut self) -> Value {
        let day = SystemTime::now() + Duration::from_secs(86_400 * self.rng.u64(0..90));
        let rate = self.rates[self.rng.usize(..self.rates.len())].clone();
        let category = if self.rng.bool() {
            Value::String(self.categories[self.rng.usize(..self.categories.len())].clone())
        } else {
            Value::Null
        };
        json!({
            "Type": "PriceUpdate",
            "Id": uuid(&mut self.rng),
            "StartUtc": day_at(day, 0),
            "EndUtc": day_at(day, 0),
            "RateId": rate,
            "ResourceCategoryId": category,
        })
    }
}

/// `2026-11-24T14:00:00Z`: that day at the given hour, UTC.
fn day_at(at: SystemTime, hour: u64) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let day = secs - secs % 86_400 + hour * 3600;
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(day)).to_string()
}

/// A random (version 4) lowercase GUID, as Mews writes them.
pub fn uuid(rng: &mut fastrand::Rng) -> String {
    let hi = rng.u64(..);
    let lo = rng.u64(..);
    let hi = (hi & 0xffff_ffff_ffff_0fff) | 0x4000;
    let lo = (lo & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_hold_documented_shapes() {
        let mut factory = EventFactory::with_rng(fastrand::Rng::with_seed(7));
        let message: Value = serde_json::from_str(&factory.message(200)).unwrap();
        let events = message["Events"].as_array().unwrap();
        assert_eq!(events.len(), 200);
        let mut seen = std::collections::HashSet::new();
        for event in events {
            let kind = event["Type"].as_str().unwrap();
            seen.insert(kind.to_owned());
            assert_eq!(event["Id"].as_str().unwrap().len(), 36);
            if kind != "PriceUpdate" {
                assert!(event["State"].is_string(), "{event}");
            }
            if kind == "Reservation" {
                assert!(event["StartUtc"].as_str().unwrap().ends_with(":00:00Z"));
            }
        }
        assert_eq!(seen.len(), 4, "{seen:?}");
    }

    #[test]
    fn guids_look_like_mews_guids() {
        let id = uuid(&mut fastrand::Rng::with_seed(1));
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(id.chars().all(|c| c.is_ascii_hexdigit() || c == '-'));
    }
}

//! The simulator's in-memory hotel: devices (a key cutter among them), reservations and device
//! commands, served over the Mews REST operations the relay uses, with WebSocket events that
//! match that state.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::events::{EventFactory, uuid};

/// Commands kept in memory; the oldest go first.
const MAX_COMMANDS: usize = 10_000;
/// Most items per page whatever `Limitation.Count` says.
const MAX_PAGE: usize = 1000;

/// One device linked to the integration.
#[derive(Debug, Clone)]
struct Device {
    id: String,
    name: String,
    kind: &'static str,
}

/// One reservation (ver 2023-06-06 fields the relay and a key cutter use).
#[derive(Debug, Clone)]
struct Reservation {
    id: String,
    number: String,
    state: &'static str,
    start: u64,
    end: u64,
    room: String,
    first_name: String,
    last_name: String,
    email: String,
    phone: String,
    created: u64,
    /// Unix milliseconds.
    updated_ms: u64,
}

#[derive(Debug, Clone)]
struct Command {
    id: String,
    /// The AccessToken of the connection whose stream created it (its property); `None`
    /// for commands made through [`Hotel::create_key_command`], which every property sees.
    owner: Option<Arc<str>>,
    state: &'static str,
    created: u64,
    device: usize,
    reservation: Option<usize>,
}

struct State {
    rng: fastrand::Rng,
    devices: Vec<Device>,
    reservations: Vec<Reservation>,
    commands: HashMap<String, Command>,
    order: VecDeque<String>,
}

/// REST faults the tests (and `simulate --rest-429-every`) switch on.
#[derive(Debug, Default)]
struct RestFaults {
    /// The next this-many calls get 429 with `Retry-After`.
    throttle_next: u32,
    /// Every n-th call gets 429 (0: never).
    throttle_every: u32,
    retry_after_secs: u64,
}

/// The hotel every connection and REST call of one simulator shares.
pub struct Hotel {
    state: Mutex<State>,
    faults: Mutex<RestFaults>,
    /// Messages for every connected WebSocket (commands created through the API).
    live: broadcast::Sender<String>,
    calls: AtomicU64,
    log: Mutex<Vec<(std::time::Instant, String)>>,
    connected: std::sync::atomic::AtomicUsize,
    upgrades: Mutex<Vec<std::time::Instant>>,
}

/// At most this many REST calls and upgrade attempts are remembered (the oldest go).
const MAX_LOG: usize = 100_000;

impl Default for Hotel {
    fn default() -> Self {
        Self::new()
    }
}

const FIRST: [&str; 6] = ["Jana", "Petr", "Eva", "Tomáš", "Anna", "Martin"];
const LAST: [&str; 6] = [
    "Nováková",
    "Svoboda",
    "Dvořák",
    "Černá",
    "Procházka",
    "Kučera",
];
const COMMAND_STATES: [&str; 4] = ["Pending", "Received", "Processing", "Processed"];

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn time_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Parses `2026-11-23T12:00:00Z` (with or without fractions) into unix milliseconds.
fn parse_ms(text: &str) -> Option<u64> {
    let at = humantime::parse_rfc3339_weak(text.trim_end_matches('Z')).ok()?;
    Some(at.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
}

impl Hotel {
    /// A hotel with three devices and 40 reservations, none updated recently.
    pub fn new() -> Self {
        let mut rng = fastrand::Rng::new();
        let devices = vec![
            Device {
                id: uuid(&mut rng),
                name: "Reception key cutter".into(),
                kind: "KeyCutter",
            },
            Device {
                id: uuid(&mut rng),
                name: "Reception printer".into(),
                kind: "Printer",
            },
            Device {
                id: uuid(&mut rng),
                name: "Kiosk key cutter".into(),
                kind: "KeyCutter",
            },
        ];
        let mut state = State {
            rng,
            devices,
            reservations: Vec::new(),
            commands: HashMap::new(),
            order: VecDeque::new(),
        };
        let long_ago = now_ms().saturating_sub(30 * 86_400_000);
        for _ in 0..40 {
            state.add_reservation(long_ago);
        }
        let (live, _) = broadcast::channel(4096);
        Hotel {
            state: Mutex::new(state),
            faults: Mutex::new(RestFaults {
                retry_after_secs: 1,
                ..RestFaults::default()
            }),
            live,
            calls: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            connected: std::sync::atomic::AtomicUsize::new(0),
            upgrades: Mutex::new(Vec::new()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Live messages for one WebSocket connection.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.live.subscribe()
    }

    /// The next event of a connection's stream, changing the hotel to match: device commands
    /// are created (belonging to `owner`, the connection's AccessToken) and move through their
    /// states, reservations change.
    pub fn next_event(&self, factory: &mut EventFactory, owner: &Arc<str>) -> Value {
        let mut state = self.state();
        match state.rng.u8(0..10) {
            0..=3 => state.command_event(owner),
            4..=6 => state.reservation_event(),
            _ => factory.untracked_event(),
        }
    }

    /// Creates a Pending key-cutter command for a random reservation; returns its id. Connected
    /// WebSockets get its event (when `announce`), as Mews would send it.
    pub fn create_key_command(&self, announce: bool) -> String {
        let id = self.state().new_command(0, None);
        if announce {
            self.announce(&id, "Pending");
        }
        id
    }

    /// Moves a command to `state`; connected WebSockets get the event when `announce`.
    pub fn set_command_state(&self, id: &str, state: &'static str, announce: bool) {
        if let Some(command) = self.state().commands.get_mut(id) {
            command.state = state;
        }
        if announce {
            self.announce(id, state);
        }
    }

    fn announce(&self, id: &str, state: &str) {
        let message = json!({"Events": [{"Type": "DeviceCommand", "Id": id, "State": state}]});
        let _ = self.live.send(message.to_string());
    }

    /// Adds `n` reservations last updated at `updated` (unix seconds).
    pub fn add_reservations(&self, n: usize, updated: SystemTime) {
        let ms = updated
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut state = self.state();
        for _ in 0..n {
            state.add_reservation(ms);
        }
    }

    /// The next `n` REST calls get 429 with `Retry-After: secs`.
    pub fn throttle_next(&self, n: u32, secs: u64) {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        faults.throttle_next = n;
        faults.retry_after_secs = secs;
    }

    /// Every n-th REST call gets 429 with `Retry-After: 1` (0: never).
    pub fn throttle_every(&self, n: u32) {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .throttle_every = n;
    }

    /// Every REST call so far: when it arrived and the operation.
    pub fn calls(&self) -> Vec<(std::time::Instant, String)> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// WebSocket connections open now.
    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    pub(super) fn connection_opened(&self) {
        self.connected.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn connection_closed(&self) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
    }

    /// When each WebSocket upgrade request arrived (accepted or not).
    pub fn upgrades(&self) -> Vec<std::time::Instant> {
        self.upgrades
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn upgrade_requested(&self) {
        let mut log = self.upgrades.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() >= MAX_LOG {
            log.drain(..MAX_LOG / 2);
        }
        log.push(std::time::Instant::now());
    }

    /// Handles one REST call: `Err((status, retry_after, message))` for a refusal.
    pub(super) fn rest(&self, operation: &str, body: &Value) -> Result<Value, (u16, u64, String)> {
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
    fn add_reservation(&mut self, updated_ms: u64) {
        let start = now_secs() - now_secs() % 86_400 + 14 * 3600 + 86_400 * self.rng.u64(0..7);
        let end = start + 86_400 * self.rng.u64(1..5) - 4 * 3600;
        let first = FIRST[self.rng.usize(..FIRST.len())].to_owned();
        let last = LAST[self.rng.usize(..LAST.len())].to_owned();
        let reservation = Reservation {
            id: uuid(&mut self.rng),
            number: format!("{}", 10_000 + self.reservations.len()),
            state: "Confirmed",
            start,
            end,
            room: format!("{}", 101 + self.rng.u32(0..30)),
            email: format!("{}.{}@example.com", ascii(&first), ascii(&last)),
            phone: format!(
                "+420 6{:02} {:03} {:03}",
                self.rng.u32(0..100),
                self.rng.u32(0..1000),
                self.rng.u32(0..1000)
            ),
            first_name: first,
            last_name: last,
            created: updated_ms / 1000,
            updated_ms,
        };
        self.reservations.push(reservation);
    }

    /// A new Pending command on device `device` (a key cutter by default).
    fn new_command(&mut self, device: usize, owner: Option<Arc<str>>) -> String {
        let id = uuid(&mut self.rng);
        let reservation = Some(self.rng.usize(..self.reservations.len()));
        self.commands.insert(
            id.clone(),
            Command {
                id: id.clone(),
                owner,
                state: "Pending",
                created: now_secs(),
                device,
                reservation,
            },
        );
        self.order.push_back(id.clone());
        while self.order.len() > MAX_COMMANDS {
            if let Some(old) = self.order.pop_front() {
                self.commands.remove(&old);
            }
        }
        id
    }

    fn command_event(&mut self, owner: &Arc<str>) -> Value {
        // Move an unfinished command on, or create a new one.
        let unfinished: Vec<String> = self
            .order
            .iter()
            .rev()
            .take(8)
            .filter(|id| {
                self.commands
                    .get(*id)
                    .is_some_and(|c| c.state != "Processed")
            })
            .cloned()
            .collect();
        let moved = if !unfinished.is_empty() && self.rng.bool() {
            let id = unfinished[self.rng.usize(..unfinished.len())].clone();
            self.commands.get_mut(&id).map(|command| {
                let at = COMMAND_STATES
                    .iter()
                    .position(|s| *s == command.state)
                    .unwrap_or(0);
                command.state = COMMAND_STATES[(at + 1).min(COMMAND_STATES.len() - 1)];
                (id.clone(), command.state)
            })
        } else {
            None
        };
        let (id, state) = if let Some(moved) = moved {
            moved
        } else {
            let device = self.rng.usize(..self.devices.len());
            (self.new_command(device, Some(Arc::clone(owner))), "Pending")
        };
        json!({ "Type": "DeviceCommand", "Id": id, "State": state })
    }

    fn reservation_event(&mut self) -> Value {
        let at = self.rng.usize(..self.reservations.len());
        let state =
            ["Confirmed", "Started", "Processed", "Canceled", "Optional"][self.rng.usize(..5)];
        let r = &mut self.reservations[at];
        r.state = state;
        r.updated_ms = now_ms();
        json!({
            "Type": "Reservation",
            "Id": r.id,
            "State": r.state,
            "StartUtc": time(r.start),
            "EndUtc": time(r.end),
            "AssignedResourceId": r.room,
        })
    }

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

/// The name without diacritics (Mews's Normalized names), lowercased for e-mail use too.
fn ascii(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            'á' => 'a',
            'č' => 'c',
            'ď' => 'd',
            'é' | 'ě' => 'e',
            'í' => 'i',
            'ň' => 'n',
            'ó' => 'o',
            'ř' => 'r',
            'š' => 's',
            'ť' => 't',
            'ú' | 'ů' => 'u',
            'ý' => 'y',
            'ž' => 'z',
            'Č' => 'C',
            'Ř' => 'R',
            'Š' => 'S',
            'Ž' => 'Z',
            other => other,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! The simulator's in-memory hotel: rooms (resources with GUID ids and room-number names),
//! devices (a key cutter among them), reservations assigned to rooms by id, and device
//! commands, served over the Mews REST operations the relay uses, with WebSocket events that
//! match that state. Like Mews, the hotel never moves a command by itself: its stream creates
//! new Pending commands (a front desk asking for keys), and only `commands/update` changes one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::events::{EventFactory, uuid};

mod by_ids;
mod commands;
mod reservations;
mod rest;

pub use rest::OPERATIONS;

use commands::Command;
pub use commands::{CommandState, CommandUpdate, NewKeyCommand};

/// Commands kept in memory; the oldest go first.
const MAX_COMMANDS: usize = 10_000;
/// At most this many REST calls and upgrade attempts are remembered (the oldest go).
const MAX_LOG: usize = 100_000;
/// Rooms of the hotel, named from 101 on.
const ROOMS: usize = 30;

/// One device linked to the integration.
#[derive(Debug, Clone)]
struct Device {
    id: String,
    name: String,
    kind: &'static str,
}

/// One room (a Mews resource): a GUID and a name, the room number.
#[derive(Debug, Clone)]
struct Resource {
    id: String,
    name: String,
    state: &'static str,
}

/// One reservation (ver 2023-06-06 fields the relay and a key cutter use).
#[derive(Debug, Clone)]
struct Reservation {
    id: String,
    number: String,
    state: &'static str,
    start: u64,
    end: u64,
    /// Index into the rooms; `AssignedResourceId` is that room's id.
    resource: usize,
    first_name: String,
    last_name: String,
    email: String,
    phone: String,
    created: u64,
    /// Unix milliseconds.
    updated_ms: u64,
    /// `updated_ms` when it was last given as a page's `Cursor`.
    cursor_at: Option<u64>,
}

struct State {
    rng: fastrand::Rng,
    devices: Vec<Device>,
    resources: Vec<Resource>,
    reservations: Vec<Reservation>,
    commands: HashMap<String, Command>,
    order: VecDeque<String>,
    /// Commands kept in memory; the oldest go first (default [`MAX_COMMANDS`]).
    max_commands: usize,
}

/// A refused REST call as Mews answers it: the status, the `Message`, and for 429 the
/// `Retry-After` seconds (`None`: the header is left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// The error body's `Message`.
    pub message: String,
    /// `Retry-After` seconds of a 429.
    pub retry_after: Option<u64>,
}

impl Refusal {
    /// A refusal with this status and message.
    pub fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Mews's `400 Invalid {Parameter}`.
    pub fn invalid(parameter: &str) -> Refusal {
        Refusal::new(400, format!("Invalid {parameter}"))
    }
}

/// REST faults the tests and `simulate` switch on.
#[derive(Debug, Default)]
struct RestFaults {
    /// The next this-many calls get 429.
    throttle_next: u32,
    /// Every n-th call gets 429 (0: never).
    throttle_every: u32,
    /// `Retry-After` of those 429s; `None`: no header (Mews: "In some cases the header may not
    /// be present").
    retry_after: Option<u64>,
    /// Operations answered 403 (a business rule refuses them).
    refused: HashSet<String>,
    /// Operations answered 401 (the integration lacks the permission for them).
    unpermitted: HashSet<String>,
    /// Requests asking for more than this many items (a page, or `CommandIds`) get 408.
    max_page: Option<u64>,
    /// Every call gets 503 (an outage of the REST API).
    down: bool,
    /// The next this-many `commands/update` calls are applied, then answered 408.
    timeout_after_apply: u32,
    /// `commands/getAllByIds` leaves unknown ids out instead of refusing the request.
    omit_unknown_ids: bool,
    /// The last reservation of each full page is updated before the next page is asked.
    touch_cursor: bool,
}

/// One REST request the simulator answered.
#[derive(Debug, Clone)]
pub struct Call {
    /// When it arrived.
    pub at: std::time::Instant,
    /// The operation, e.g. `commands/getAllActive`.
    pub operation: String,
    /// The status of the answer.
    pub status: u16,
    /// The `Request-Id` of the answer.
    pub request_id: String,
    /// The request's `Limitation.Count`, if any.
    pub count: Option<u64>,
    /// The request's `UpdatedUtc.EndUtc`, if any, as sent.
    pub updated_until: Option<String>,
    /// Items in a successful answer's first array (`Reservations`, `Commands`).
    pub items: Option<usize>,
}

/// A message for the WebSockets of one property (`owner`: its AccessToken) or of all.
#[derive(Debug, Clone)]
pub struct Live {
    /// The AccessToken whose connections get it; `None`: every connection.
    pub owner: Option<Arc<str>>,
    /// The `{"Events":[…]}` text.
    pub message: String,
}

impl Live {
    /// Whether a connection made with this AccessToken gets it.
    pub fn is_for(&self, token: &str) -> bool {
        self.owner.as_deref().is_none_or(|owner| owner == token)
    }
}

/// The hotel every connection and REST call of one simulator shares.
pub struct Hotel {
    state: Mutex<State>,
    faults: Mutex<RestFaults>,
    /// Messages for connected WebSockets (command events caused by REST or `/sim/commands`).
    live: broadcast::Sender<Live>,
    calls: AtomicU64,
    /// Mews's request limit: each AccessToken's calls in the last 30 s.
    limits: Mutex<HashMap<String, std::collections::VecDeque<std::time::Instant>>>,
    log: Mutex<Vec<Call>>,
    updates: Mutex<Vec<CommandUpdate>>,
    connected: std::sync::atomic::AtomicUsize,
    upgrades: Mutex<Vec<std::time::Instant>>,
}

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

impl Hotel {
    /// A hotel with 30 rooms, three devices and 40 reservations, none updated recently.
    pub fn new() -> Self {
        let mut rng = fastrand::Rng::new();
        let device = |rng: &mut fastrand::Rng, name: &str, kind| Device {
            id: uuid(rng),
            name: name.into(),
            kind,
        };
        let devices = vec![
            device(&mut rng, "Reception key cutter", "KeyCutter"),
            device(&mut rng, "Reception printer", "Printer"),
            device(&mut rng, "Kiosk key cutter", "KeyCutter"),
        ];
        let resources = (0..ROOMS)
            .map(|i| Resource {
                id: uuid(&mut rng),
                name: format!("{}", 101 + i),
                state: "Inspected",
            })
            .collect();
        let mut state = State {
            rng,
            devices,
            resources,
            reservations: Vec::new(),
            commands: HashMap::new(),
            order: VecDeque::new(),
            max_commands: MAX_COMMANDS,
        };
        let long_ago = now_ms().saturating_sub(30 * 86_400_000);
        for _ in 0..40 {
            state.add_reservation(long_ago);
        }
        let (live, _) = broadcast::channel(4096);
        Hotel {
            state: Mutex::new(state),
            faults: Mutex::new(RestFaults {
                retry_after: Some(1),
                ..RestFaults::default()
            }),
            live,
            calls: AtomicU64::new(0),
            limits: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            updates: Mutex::new(Vec::new()),
            connected: std::sync::atomic::AtomicUsize::new(0),
            upgrades: Mutex::new(Vec::new()),
        }
    }

    /// Keeps up to `n` commands instead of 10,000 (benchmarks that enrich many commands).
    pub fn keep_commands(&self, n: usize) {
        self.state().max_commands = n.max(1);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, RestFaults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Live messages for WebSocket connections (each keeps those [`Live::is_for`] it).
    pub fn subscribe(&self) -> broadcast::Receiver<Live> {
        self.live.subscribe()
    }

    /// The next event of a connection's stream, changing the hotel to match: a front desk
    /// creates a Pending device command (belonging to `owner`, the connection's AccessToken),
    /// a reservation or a room changes, a price is updated. Commands are never moved here.
    pub fn next_event(&self, factory: &mut EventFactory, owner: &Arc<str>) -> Value {
        let mut guard = self.state();
        let state = &mut *guard;
        match state.rng.u8(0..10) {
            0..=2 => {
                let device = state.rng.usize(..state.devices.len());
                let reservation = state.rng.usize(..state.reservations.len());
                let id = state.new_command(device, reservation, 1, Some(Arc::clone(owner)));
                json!({ "Type": "DeviceCommand", "Id": id, "State": CommandState::Pending.as_str() })
            }
            3..=5 => state.reservation_event(),
            6..=7 => state.resource_event(),
            _ => factory.price_update(),
        }
    }

    /// The ids of every reservation, in the order they were made.
    pub fn reservation_ids(&self) -> Vec<String> {
        self.state()
            .reservations
            .iter()
            .map(|r| r.id.clone())
            .collect()
    }

    /// Adds `n` reservations last updated at `updated`.
    pub fn add_reservations(&self, n: usize, updated: SystemTime) {
        let ms = updated
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut state = self.state();
        for _ in 0..n {
            state.add_reservation(ms);
        }
    }

    /// The next `n` REST calls get 429, with `Retry-After: secs` or, with `None`, without it.
    pub fn throttle_next(&self, n: u32, retry_after: Option<u64>) {
        let mut faults = self.faults();
        faults.throttle_next = n;
        faults.retry_after = retry_after;
    }

    /// Every n-th REST call gets 429 (0: never), with `Retry-After: secs` or without it.
    pub fn throttle_every(&self, n: u32, retry_after: Option<u64>) {
        let mut faults = self.faults();
        faults.throttle_every = n;
        faults.retry_after = retry_after;
    }

    /// `operation` is answered 403 from now on: a business rule refuses it.
    pub fn refuse(&self, operation: &str) {
        self.faults().refused.insert(operation.to_owned());
    }

    /// `operation` is answered 401 from now on, the tokens being right: Mews
    /// (`guidelines/responses.md`) answers 401 also when "The client does not have permission
    /// to perform the requested operation".
    pub fn deny_permission(&self, operation: &str) {
        self.faults().unpermitted.insert(operation.to_owned());
    }

    /// While `down`, every REST call gets 503 Service Unavailable (Mews: a server error; retry).
    pub fn set_down(&self, down: bool) {
        self.faults().down = down;
    }

    /// The next `n` `commands/update` calls are applied, then answered 408 Request Timeout
    /// (`guidelines/responses.md`: a request that took too long; the client cannot tell
    /// whether it was done), as if the answer were lost after Mews did the work.
    pub fn time_out_after_applying(&self, n: u32) {
        self.faults().timeout_after_apply = n;
    }

    /// Requests asking for more than `count` items get 408 (`None`: never): a page whose
    /// `Limitation.Count` is above it, or a `commands/getAllByIds` without `Limitation` naming
    /// more `CommandIds`.
    pub fn too_heavy_above(&self, count: Option<u64>) {
        self.faults().max_page = count;
    }

    /// Every REST call so far: when it arrived and the operation.
    pub fn calls(&self) -> Vec<(std::time::Instant, String)> {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|call| (call.at, call.operation.clone()))
            .collect()
    }

    /// Every REST call so far with its answer.
    pub fn answers(&self) -> Vec<Call> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The `Limitation.Count` of each call of `operation` so far.
    pub fn page_counts(&self, operation: &str) -> Vec<u64> {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|call| call.operation == operation)
            .filter_map(|call| call.count)
            .collect()
    }

    pub(super) fn record(&self, call: Call) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() >= MAX_LOG {
            log.drain(..MAX_LOG / 2);
        }
        log.push(call);
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
            resource: self.rng.usize(..self.resources.len()),
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
            cursor_at: None,
        };
        self.reservations.push(reservation);
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
            "AssignedResourceId": self.resources[r.resource].id,
        })
    }

    /// A room changes its housekeeping state (Resource state values of `operations/resources.md`).
    fn resource_event(&mut self) -> Value {
        let state =
            ["Dirty", "Clean", "Inspected", "OutOfService", "OutOfOrder"][self.rng.usize(..5)];
        let at = self.rng.usize(..self.resources.len());
        let room = &mut self.resources[at];
        room.state = state;
        json!({ "Type": "Resource", "Id": room.id, "State": room.state })
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
    fn the_stream_creates_pending_commands_and_never_moves_one() {
        let hotel = Hotel::new();
        let first = hotel.create_key_command(false);
        let owner: Arc<str> = Arc::from("token");
        let mut factory = EventFactory::with_rng(fastrand::Rng::with_seed(3));
        let events: Vec<Value> = (0..2000)
            .map(|_| hotel.next_event(&mut factory, &owner))
            .collect();
        let commands: Vec<&Value> = events
            .iter()
            .filter(|e| e["Type"] == "DeviceCommand")
            .collect();
        assert!(commands.len() > 300, "{}", commands.len());
        assert!(commands.iter().all(|e| e["State"] == "Pending"));
        let ids: HashSet<&str> = commands.iter().filter_map(|e| e["Id"].as_str()).collect();
        assert_eq!(ids.len(), commands.len(), "each event is a new command");
        assert_eq!(hotel.command_state(&first), Some(CommandState::Pending));
        // Reservations point at rooms by id; rooms have GUIDs and room-number names.
        let state = hotel.state();
        let rooms: HashSet<&str> = state.resources.iter().map(|r| r.id.as_str()).collect();
        for event in events.iter().filter(|e| e["Type"] == "Reservation") {
            assert!(rooms.contains(event["AssignedResourceId"].as_str().unwrap()));
        }
        for event in events.iter().filter(|e| e["Type"] == "Resource") {
            assert!(rooms.contains(event["Id"].as_str().unwrap()));
        }
        assert!(state.resources.iter().all(|r| r.id.len() == 36));
        assert_eq!(state.resources[0].name, "101");
    }
}

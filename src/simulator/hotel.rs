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

mod rest;

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

//! Device commands in the simulated hotel: Mews's six states, the transitions `commands/update`
//! allows, key commands created on demand (`POST /sim/commands`), and the WebSocket event Mews
//! sends when a command is created or updated.
//!
//! Mews documents the states (`operations/commands.md`, "Command state") and that
//! `commands/update` sets "New state of the command", with `Progress` "Only used if the `State`
//! is `Processing`" and `Notes` "Only used if the `State` is `Processed`, `Cancelled` or
//! `Error`". It documents no transition table and no error for updating a finished command.
//! Where it is silent the simulator takes the strictest reading, so a client that works here
//! works against Mews:
//!
//! - only Mews makes a command `Pending` (an update to `Pending` is refused);
//! - states only move forward (Pending < Received < Processing < final), skipping is allowed
//!   (`use-cases/device-integration.md` asks for `Processed` once processed, without requiring
//!   `Received` first), repeating is not, except `Processing` (to report `Progress`);
//! - `Processed`, `Cancelled` and `Error` are final: any further update is refused with
//!   `400 Invalid CommandId`, the answer `guidelines/responses.md` documents for a resource "in
//!   an invalid state for the given endpoint (for example, attempting to close a bill that is
//!   already closed)";
//! - `Progress`, when given, is a number from 0 to 1 (undocumented range), `Notes` a string;
//! - a command belongs to the property (AccessToken) it was made for: another property's
//!   command is `Invalid CommandId`, as if it did not exist.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Hotel, Refusal, State, now_secs};

/// Mews's command states (`operations/commands.md`, "Command state").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandState {
    /// Created in Mews, but not yet received by the client application.
    Pending,
    /// Received by the client application.
    Received,
    /// Being processed by the client application.
    Processing,
    /// Successfully processed command.
    Processed,
    /// Canceled before (or during) processing.
    Cancelled,
    /// Execution or processing was terminated by an error.
    Error,
}

impl CommandState {
    /// Every state, in order.
    pub const ALL: [CommandState; 6] = [
        CommandState::Pending,
        CommandState::Received,
        CommandState::Processing,
        CommandState::Processed,
        CommandState::Cancelled,
        CommandState::Error,
    ];

    /// The name Mews uses.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandState::Pending => "Pending",
            CommandState::Received => "Received",
            CommandState::Processing => "Processing",
            CommandState::Processed => "Processed",
            CommandState::Cancelled => "Cancelled",
            CommandState::Error => "Error",
        }
    }

    /// The state of that name (exact spelling, as Mews's enum).
    pub fn parse(name: &str) -> Option<CommandState> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// `commands/getAllActive` returns these: "either `Pending` or `Received` state".
    pub fn is_active(self) -> bool {
        matches!(self, CommandState::Pending | CommandState::Received)
    }

    /// Processed, Cancelled and Error: nothing follows them.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            CommandState::Processed | CommandState::Cancelled | CommandState::Error
        )
    }

    fn rank(self) -> u8 {
        match self {
            CommandState::Pending => 0,
            CommandState::Received => 1,
            CommandState::Processing => 2,
            _ => 3,
        }
    }

    /// Whether `commands/update` may move a command from `self` to `next` (see the module
    /// comment for the reading); the refusal is Mews's `400 Invalid {Parameter}`.
    pub fn update_to(self, next: CommandState) -> Result<(), Refusal> {
        if self.is_final() {
            return Err(Refusal::new(
                400,
                format!(
                    "Invalid CommandId: the command is {}, a final state, and cannot be updated.",
                    self.as_str()
                ),
            ));
        }
        if next == CommandState::Pending {
            return Err(Refusal::new(
                400,
                "Invalid State: only Mews sets Pending; an update sets Received, Processing, Processed, Cancelled or Error.",
            ));
        }
        let repeat_progress = self == CommandState::Processing && next == self;
        if next.rank() <= self.rank() && !repeat_progress {
            return Err(Refusal::new(
                400,
                format!(
                    "Invalid State: the command is {}; it cannot become {}.",
                    self.as_str(),
                    next.as_str()
                ),
            ));
        }
        Ok(())
    }
}

/// One command.
#[derive(Debug, Clone)]
pub(super) struct Command {
    pub(super) id: String,
    /// The AccessToken of the property it belongs to; `None`: every property sees it (commands
    /// made by tests and `POST /sim/commands` without an AccessToken).
    pub(super) owner: Option<Arc<str>>,
    pub(super) state: CommandState,
    pub(super) created: u64,
    /// Index into the hotel's devices.
    pub(super) device: usize,
    /// Index into the hotel's reservations.
    pub(super) reservation: usize,
    pub(super) key_count: u64,
}

impl Command {
    /// Whether the property with this AccessToken may see it.
    pub(super) fn visible_to(&self, token: &str) -> bool {
        self.owner.as_deref().is_none_or(|owner| owner == token)
    }
}

/// What `POST /sim/commands` takes; every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKeyCommand {
    /// Only the property with this AccessToken sees the command (default: every property).
    #[serde(rename = "AccessToken", default)]
    pub access_token: Option<String>,
    /// A KeyCutter device of the hotel (default: the reception key cutter).
    #[serde(rename = "KeyCutterId", default)]
    pub key_cutter_id: Option<String>,
    /// A reservation of the hotel (default: one picked at random).
    #[serde(rename = "ReservationId", default)]
    pub reservation_id: Option<String>,
    /// Keys to cut (default 1).
    #[serde(rename = "KeyCount", default)]
    pub key_count: Option<u64>,
}

/// An update `commands/update` accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandUpdate {
    /// `CommandId`
    pub command_id: String,
    /// The new state.
    pub state: CommandState,
    /// `Progress`, kept only with `Processing` (Mews ignores it otherwise).
    pub progress: Option<f64>,
    /// `Notes`, kept only with a final state (Mews ignores them otherwise).
    pub notes: Option<String>,
}

impl Hotel {
    /// Creates a Pending key-cutter command (one key, a random reservation) that every property
    /// sees; returns its id. Connected WebSockets get its event when `announce`.
    pub fn create_key_command(&self, announce: bool) -> String {
        let id = {
            let mut guard = self.state();
            let state = &mut *guard;
            let reservation = state.rng.usize(..state.reservations.len());
            state.new_command(0, reservation, 1, None)
        };
        if announce {
            self.announce(None, &id, CommandState::Pending);
        }
        id
    }

    /// Creates a key-cutter command as a front desk would (`POST /sim/commands`) and sends its
    /// Pending event to the WebSockets of the property it belongs to.
    pub fn add_key_command(&self, request: NewKeyCommand) -> Result<String, Refusal> {
        let owner: Option<Arc<str>> = match request.access_token {
            Some(token) if token.is_empty() => return Err(Refusal::invalid("AccessToken")),
            Some(token) => Some(Arc::from(token)),
            None => None,
        };
        let key_count = request.key_count.unwrap_or(1);
        if key_count == 0 {
            return Err(Refusal::invalid("KeyCount"));
        }
        let id = {
            let mut guard = self.state();
            let state = &mut *guard;
            let device = match &request.key_cutter_id {
                Some(id) => state
                    .devices
                    .iter()
                    .position(|d| d.id == *id && d.kind == "KeyCutter")
                    .ok_or_else(|| Refusal::invalid("KeyCutterId"))?,
                None => 0,
            };
            let reservation = match &request.reservation_id {
                Some(id) => state
                    .reservations
                    .iter()
                    .position(|r| r.id == *id)
                    .ok_or_else(|| Refusal::invalid("ReservationId"))?,
                None => state.rng.usize(..state.reservations.len()),
            };
            state.new_command(device, reservation, key_count, owner.clone())
        };
        self.announce(owner, &id, CommandState::Pending);
        Ok(id)
    }

    /// The state of a command, if the hotel has it.
    pub fn command_state(&self, id: &str) -> Option<CommandState> {
        self.state().commands.get(id).map(|c| c.state)
    }

    /// Every update `commands/update` accepted, oldest first.
    pub fn updates(&self) -> Vec<CommandUpdate> {
        self.updates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `commands/update`: validates, moves the command, and sends the DeviceCommand event Mews
    /// sends "whenever a command is created or updated" to its property's WebSockets.
    pub(in crate::simulator) fn update_command(&self, body: &Value) -> Result<Value, Refusal> {
        let token = body["AccessToken"].as_str().unwrap_or_default();
        let id = body["CommandId"]
            .as_str()
            .ok_or_else(|| Refusal::invalid("CommandId"))?;
        let next = body["State"]
            .as_str()
            .and_then(CommandState::parse)
            .ok_or_else(|| Refusal::invalid("State"))?;
        let progress = match &body["Progress"] {
            Value::Null => None,
            value => Some(
                value
                    .as_f64()
                    .filter(|p| (0.0..=1.0).contains(p))
                    .ok_or_else(|| {
                        Refusal::new(400, "Invalid Progress: a number from 0 to 1 is expected.")
                    })?,
            ),
        };
        let notes = match &body["Notes"] {
            Value::Null => None,
            Value::String(notes) => Some(notes.clone()),
            _ => return Err(Refusal::invalid("Notes")),
        };
        let owner = {
            let mut state = self.state();
            let command = state
                .commands
                .get_mut(id)
                .filter(|c| c.visible_to(token))
                .ok_or_else(|| Refusal::invalid("CommandId"))?;
            command.state.update_to(next)?;
            command.state = next;
            command.owner.clone()
        };
        self.updates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(CommandUpdate {
                command_id: id.to_owned(),
                state: next,
                progress: progress.filter(|_| next == CommandState::Processing),
                notes: notes.filter(|_| next.is_final()),
            });
        self.announce(owner, id, next);
        Ok(json!({}))
    }

    /// Sends a DeviceCommand event to the WebSockets of `owner` (all when `None`).
    pub(super) fn announce(&self, owner: Option<Arc<str>>, id: &str, state: CommandState) {
        let event = json!({"Type": "DeviceCommand", "Id": id, "State": state.as_str()});
        let message = json!({ "Events": [event] }).to_string();
        let _ = self.live.send(super::Live { owner, message });
    }
}

impl State {
    /// A new Pending command on `device` for `reservation`.
    pub(super) fn new_command(
        &mut self,
        device: usize,
        reservation: usize,
        key_count: u64,
        owner: Option<Arc<str>>,
    ) -> String {
        let id = super::uuid(&mut self.rng);
        self.commands.insert(
            id.clone(),
            Command {
                id: id.clone(),
                owner,
                state: CommandState::Pending,
                created: now_secs(),
                device,
                reservation,
                key_count,
            },
        );
        self.order.push_back(id.clone());
        while self.order.len() > self.max_commands {
            if let Some(old) = self.order.pop_front() {
                self.commands.remove(&old);
            }
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::CommandState::*;
    use super::*;

    #[test]
    fn states_only_move_forward_and_final_states_stay() {
        for from in CommandState::ALL {
            for to in CommandState::ALL {
                let allowed = from.update_to(to).is_ok();
                let expected = !from.is_final()
                    && to != Pending
                    && (to.rank() > from.rank() || (from, to) == (Processing, Processing));
                assert_eq!(allowed, expected, "{from:?} -> {to:?}");
            }
        }
        let refusal = Processed.update_to(Error).unwrap_err();
        assert_eq!(refusal.status, 400);
        assert!(
            refusal.message.starts_with("Invalid CommandId"),
            "{refusal:?}"
        );
        assert!(Received.update_to(Received).is_err(), "no repeats");
        assert!(
            Pending.update_to(Processed).is_ok(),
            "skipping ahead is allowed"
        );
    }

    #[test]
    fn names_are_mews_spellings() {
        for state in CommandState::ALL {
            assert_eq!(CommandState::parse(state.as_str()), Some(state));
        }
        assert_eq!(CommandState::parse("Canceled"), None);
        assert_eq!(CommandState::parse("processed"), None);
        assert!(Pending.is_active() && Received.is_active() && !Processing.is_active());
    }

    #[test]
    fn an_update_is_announced_to_its_property_only() {
        let hotel = Hotel::new();
        let mut live = hotel.subscribe();
        let id = hotel
            .add_key_command(NewKeyCommand {
                access_token: Some("A".into()),
                ..NewKeyCommand::default()
            })
            .unwrap();
        let created = live.try_recv().unwrap();
        assert!(created.is_for("A") && !created.is_for("B"));
        let other = json!({"AccessToken": "B", "CommandId": id, "State": "Received"});
        assert_eq!(hotel.update_command(&other).unwrap_err().status, 400);
        let body =
            json!({"AccessToken": "A", "CommandId": id, "State": "Processing", "Progress": 0.5});
        hotel.update_command(&body).unwrap();
        let event: Value = serde_json::from_str(&live.try_recv().unwrap().message).unwrap();
        assert_eq!(event["Events"][0]["State"], "Processing");
        assert_eq!(hotel.command_state(&id), Some(Processing));
        let bad =
            json!({"AccessToken": "A", "CommandId": id, "State": "Processing", "Progress": 2});
        assert!(
            hotel
                .update_command(&bad)
                .unwrap_err()
                .message
                .starts_with("Invalid Progress")
        );
        let done =
            json!({"AccessToken": "A", "CommandId": id, "State": "Processed", "Notes": "2 keys"});
        hotel.update_command(&done).unwrap();
        let updates = hotel.updates();
        assert_eq!(updates.len(), 2);
        assert_eq!(updates[0].progress, Some(0.5));
        assert_eq!(updates[1].notes.as_deref(), Some("2 keys"));
    }

    #[test]
    fn sim_commands_check_what_they_refer_to() {
        let hotel = Hotel::new();
        let printer = hotel.state().devices[1].id.clone();
        let refused = hotel.add_key_command(NewKeyCommand {
            key_cutter_id: Some(printer),
            ..NewKeyCommand::default()
        });
        assert_eq!(refused.unwrap_err().message, "Invalid KeyCutterId");
        let refused = hotel.add_key_command(NewKeyCommand {
            reservation_id: Some("nope".into()),
            ..NewKeyCommand::default()
        });
        assert_eq!(refused.unwrap_err().message, "Invalid ReservationId");
        let refused = hotel.add_key_command(NewKeyCommand {
            key_count: Some(0),
            ..NewKeyCommand::default()
        });
        assert_eq!(refused.unwrap_err().message, "Invalid KeyCount");
    }
}

//! The command loop's state in the journal: what the relay knows of each device command, and
//! the outbox of state updates waiting to be applied in Mews (`commands/update`). Written in
//! the same transactions as the records and cursors they follow from, so an update is queued
//! exactly once: for an API request when it is answered 202, for `received_after` when the
//! sink's cursor moves past the delivered command.

use redb::{ReadableTable, Table, TableDefinition};
use serde::{Deserialize, Serialize};

/// command id -> [`CommandEntry`] (JSON).
pub(super) const COMMANDS: TableDefinition<&str, &[u8]> = TableDefinition::new("commands");
/// outbox key -> [`Outgoing`] (JSON), applied in key order per property.
pub(super) const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");

/// Command states an integration may set (Mews's `commands/update`).
pub const SETTABLE: [&str; 5] = ["Received", "Processing", "Processed", "Cancelled", "Error"];
/// States after which a command takes no further update.
pub const FINAL: [&str; 3] = ["Processed", "Cancelled", "Error"];
/// A command the relay has not heard of for this long (and nothing waits for) is forgotten.
pub const FORGET_AFTER_SECS: u64 = 7 * 24 * 3600;

/// A state change as Mews's `commands/update` takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Update {
    /// The new state.
    pub state: String,
    /// 0 to 1, with `Processing` only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub progress: Option<f64>,
    /// With a final state only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub notes: Option<String>,
}

/// Who asked for an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum By {
    /// The key system, through the local API.
    Api,
    /// The relay, after `[commands] received_after` delivered the command.
    ReceivedAfter,
}

/// One update waiting in the outbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outgoing {
    /// Its outbox key (order of arrival).
    #[serde(skip)]
    pub key: u64,
    /// The command's id.
    pub command: String,
    /// The property whose tokens apply it.
    pub property: String,
    /// What to set.
    pub update: Update,
    /// Who asked.
    pub by: By,
}

/// The last state asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Requested {
    /// What.
    #[serde(flatten)]
    pub update: Update,
    /// Who.
    pub by: By,
    /// When (RFC 3339).
    pub at: String,
}

/// Mews's answer to the last update it was sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MewsAnswer {
    /// The state that was sent.
    pub state: String,
    /// Whether Mews applied it.
    pub accepted: bool,
    /// The HTTP status of the answer (none: no answer, e.g. given up).
    pub status: Option<u16>,
    /// Mews's `Message`, for a refusal.
    pub message: Option<String>,
    /// The answer's `Request-Id` (Mews support asks for it).
    pub request_id: Option<String>,
    /// When (RFC 3339).
    pub at: String,
}

/// What the journal knows of a command.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CommandEntry {
    /// The property it was journaled for (its tokens apply updates).
    pub property: String,
    /// The last state a Mews event (live or caught up) said.
    pub event_state: Option<String>,
    /// When it was last touched (unix seconds).
    pub updated: u64,
    /// `received_after` has queued its `Received`.
    pub received_queued: bool,
    /// The last state asked for, by the key system or the relay.
    pub requested: Option<Requested>,
    /// Mews's answer to the last update sent.
    pub mews: Option<MewsAnswer>,
    /// Updates queued and not answered yet.
    pub waiting: u32,
}

/// A key system's request to change a command's state.
#[derive(Debug, Clone)]
pub struct Request {
    /// The command.
    pub command: String,
    /// Its property, when the relay never saw the command (`?property=`).
    pub property: Option<String>,
    /// What to set.
    pub update: Update,
}

/// What became of a [`Request`].
#[derive(Debug, Clone)]
pub enum RequestOutcome {
    /// Journaled; it goes to Mews next.
    Queued(Box<CommandEntry>),
    /// The relay never journaled this command and no property was given.
    Unknown,
    /// Refused before Mews: why.
    Conflict(String),
}

/// A `Pending` DeviceCommand record the `received_after` sink delivered.
#[derive(Debug, Clone)]
pub struct Ack {
    /// Its property.
    pub property: String,
    /// The command id.
    pub command: String,
}

/// Mews answered an outgoing update (or it was given up).
#[derive(Debug, Clone)]
pub struct Answered {
    /// The outbox key.
    pub key: u64,
    /// The command id.
    pub command: String,
    /// The answer.
    pub answer: MewsAnswer,
}

/// The two tables inside one write transaction.
pub(super) struct CommandTables<'t> {
    pub commands: Table<'t, &'static str, &'static [u8]>,
    pub outbox: Table<'t, u64, &'static [u8]>,
    /// The next outbox key.
    pub next_key: u64,
    pub now: u64,
    pub now_text: String,
    /// Updates queued in this transaction, to hand to the updaters after the commit.
    pub queued: Vec<Outgoing>,
}

type Result<T> = std::result::Result<T, redb::Error>;

impl CommandTables<'_> {
    fn get(&self, command: &str) -> Result<Option<CommandEntry>> {
        Ok(self
            .commands
            .get(command)?
            .and_then(|v| serde_json::from_slice(v.value()).ok()))
    }

    fn put(&mut self, command: &str, entry: &CommandEntry) -> Result<()> {
        let bytes = serde_json::to_vec(entry).unwrap_or_default();
        self.commands.insert(command, bytes.as_slice())?;
        Ok(())
    }

    fn queue(
        &mut self,
        entry: &mut CommandEntry,
        command: &str,
        update: Update,
        by: By,
    ) -> Result<()> {
        let outgoing = Outgoing {
            key: self.next_key,
            command: command.to_owned(),
            property: entry.property.clone(),
            update: update.clone(),
            by,
        };
        let bytes = serde_json::to_vec(&outgoing).unwrap_or_default();
        self.outbox.insert(self.next_key, bytes.as_slice())?;
        self.next_key += 1;
        entry.requested = Some(Requested {
            update,
            by,
            at: self.now_text.clone(),
        });
        entry.waiting += 1;
        entry.updated = self.now;
        self.queued.push(outgoing);
        Ok(())
    }

    /// A DeviceCommand record was journaled: remember its property and state.
    pub fn track(&mut self, property: &str, command: &str, state: Option<&str>) -> Result<()> {
        let mut entry = self.get(command)?.unwrap_or_else(|| CommandEntry {
            property: property.to_owned(),
            ..CommandEntry::default()
        });
        if state.is_some() {
            entry.event_state = state.map(str::to_owned);
        }
        entry.updated = self.now;
        self.put(command, &entry)
    }

    /// The key system asks for a state: queued, unless the command is unknown or finished.
    pub fn request(&mut self, request: Request) -> Result<RequestOutcome> {
        let mut entry = match (self.get(&request.command)?, request.property) {
            (Some(entry), _) => entry,
            (None, Some(property)) => CommandEntry {
                property,
                ..CommandEntry::default()
            },
            (None, None) => return Ok(RequestOutcome::Unknown),
        };
        if let Some(done) = entry
            .requested
            .as_ref()
            .map(|r| r.update.state.as_str())
            .filter(|s| FINAL.contains(s))
        {
            return Ok(RequestOutcome::Conflict(format!(
                "the command was already set to {done}, a final state; Mews takes no further update"
            )));
        }
        self.queue(&mut entry, &request.command, request.update, By::Api)?;
        self.put(&request.command, &entry)?;
        Ok(RequestOutcome::Queued(Box::new(entry)))
    }

    /// The `received_after` sink delivered a Pending command: `Received`, once per command,
    /// and only while nothing else was asked for it.
    pub fn ack(&mut self, ack: &Ack) -> Result<()> {
        let mut entry = self.get(&ack.command)?.unwrap_or_else(|| CommandEntry {
            property: ack.property.clone(),
            ..CommandEntry::default()
        });
        if entry.received_queued || entry.requested.is_some() {
            return Ok(());
        }
        entry.received_queued = true;
        let update = Update {
            state: "Received".into(),
            progress: None,
            notes: None,
        };
        self.queue(&mut entry, &ack.command, update, By::ReceivedAfter)?;
        self.put(&ack.command, &entry)
    }

    /// Mews answered an update: it leaves the outbox, the answer is kept.
    pub fn answered(&mut self, answered: &Answered) -> Result<()> {
        if self.outbox.remove(answered.key)?.is_none() {
            return Ok(()); // answered already
        }
        if let Some(mut entry) = self.get(&answered.command)? {
            entry.waiting = entry.waiting.saturating_sub(1);
            entry.mews = Some(answered.answer.clone());
            entry.updated = self.now;
            self.put(&answered.command, &entry)?;
        }
        Ok(())
    }

    /// Forgets commands untouched for [`FORGET_AFTER_SECS`] that nothing waits for.
    pub fn forget(&mut self) -> Result<()> {
        let before = self.now.saturating_sub(FORGET_AFTER_SECS);
        self.commands.retain(|_, value| {
            serde_json::from_slice::<CommandEntry>(value)
                .map_or(true, |e| e.updated >= before || e.waiting > 0)
        })?;
        Ok(())
    }
}

/// Every update in the outbox, in order.
pub(super) fn outbox(table: &impl ReadableTable<u64, &'static [u8]>) -> Result<Vec<Outgoing>> {
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (key, value) = entry?;
        if let Ok(mut outgoing) = serde_json::from_slice::<Outgoing>(value.value()) {
            outgoing.key = key.value();
            out.push(outgoing);
        }
    }
    Ok(out)
}

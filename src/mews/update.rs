//! Applies command state updates in Mews (`commands/update`), behind the journal: one task per
//! property takes the updates queued in the journal's outbox (by the local API, or by
//! `[commands] received_after`), in order, and sends each under the property's rate limit,
//! retried through outages (the REST client retries 5xx, 408, 429 and lost connections; a
//! refused token is retried slowly) until Mews answers it. The answer is journaled and the
//! update leaves the outbox in the same transaction, so an update survives restarts and is
//! applied once.

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Rest, RestError, parse_commands};
use crate::journal::Journal;
use crate::journal::commands::{Answered, MewsAnswer, Outgoing};
use crate::record::format_time;
use crate::retry::schedules;
use crate::stats::Stats;

/// One property's updater.
pub struct Updater {
    /// The property's REST client.
    pub rest: Arc<Rest>,
    /// Where answers go.
    pub journal: Journal,
    /// Counters.
    pub stats: Arc<Stats>,
}

/// What an updater stopped with: the update it was sending and its inbox. They are in the
/// journal's outbox, but the journal hands each out once: the property's next updater (a
/// reload restarted the property) takes them first.
pub struct Unsent {
    /// The update under way when it stopped, and what it was given to send first.
    pub pending: Vec<Outgoing>,
    /// What was handed to it and not taken yet.
    pub inbox: mpsc::UnboundedReceiver<Outgoing>,
}

impl Unsent {
    /// Everything in it, in order. Take it once the journal handed the property to another
    /// updater (its inbox is closed then), or later updates would be missed.
    pub fn into_vec(mut self) -> Vec<Outgoing> {
        let mut out = self.pending;
        while let Ok(outgoing) = self.inbox.try_recv() {
            out.push(outgoing);
        }
        out
    }
}

impl Updater {
    /// Sends `first` (what the property's previous updater left, see [`Unsent`]), then the
    /// property's updates (`inbox`, from [`Journal::claim_updates`]), until `stop`; what is not
    /// answered then stays in the outbox for the next start, and is returned.
    pub async fn run(
        self,
        first: Vec<Outgoing>,
        mut inbox: mpsc::UnboundedReceiver<Outgoing>,
        stop: CancellationToken,
    ) -> Unsent {
        let mut refused = schedules::UPDATE_REFUSED.backoff();
        let mut first = std::collections::VecDeque::from(first);
        loop {
            let outgoing = match first.pop_front() {
                Some(outgoing) => outgoing,
                None => tokio::select! {
                    () = stop.cancelled() => return unsent(first, inbox),
                    next = inbox.recv() => match next {
                        Some(outgoing) => outgoing,
                        None => return unsent(first, inbox),
                    },
                },
            };
            if stop.is_cancelled() {
                first.push_front(outgoing);
                return unsent(first, inbox);
            }
            let answer = loop {
                let attempt = tokio::select! {
                    () = stop.cancelled() => {
                        first.push_front(outgoing);
                        return unsent(first, inbox);
                    }
                    attempt = self.send(&outgoing) => attempt,
                };
                match attempt {
                    Some(answer) => break answer,
                    None => {
                        let delay = refused.next_delay();
                        tokio::select! {
                            () = stop.cancelled() => {
                                first.push_front(outgoing);
                                return unsent(first, inbox);
                            }
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            };
            refused.reset();
            if answer.accepted {
                Stats::add(&self.stats.command_updates_applied, 1);
                tracing::info!(command = %outgoing.command, state = %outgoing.update.state, by = ?outgoing.by, "command state set in Mews");
            } else {
                Stats::add(&self.stats.command_updates_refused, 1);
                tracing::warn!(
                    command = %outgoing.command,
                    state = %outgoing.update.state,
                    status = ?answer.status,
                    mews_message = answer.message.as_deref().unwrap_or(""),
                    request_id = answer.request_id.as_deref().unwrap_or("-"),
                    "Mews refused a command state update; GET /v1/commands/{{id}} shows its answer"
                );
            }
            let answered = Answered {
                key: outgoing.key,
                command: outgoing.command.clone(),
                answer,
            };
            if self.journal.answered(answered).await.is_err() {
                return unsent(first, inbox);
            }
        }
    }

    /// One try: Mews's answer, or `None` to try again later.
    async fn send(&self, outgoing: &Outgoing) -> Option<MewsAnswer> {
        let mut body = Map::new();
        body.insert("CommandId".into(), outgoing.command.clone().into());
        body.insert("State".into(), outgoing.update.state.clone().into());
        if let Some(progress) = outgoing.update.progress {
            body.insert("Progress".into(), progress.into());
        }
        if let Some(notes) = &outgoing.update.notes {
            body.insert("Notes".into(), notes.clone().into());
        }
        let state = outgoing.update.state.clone();
        let at = format_time(SystemTime::now());
        match self.rest.call_answer("commands/update", body).await {
            Ok(answer) => Some(MewsAnswer {
                state,
                accepted: true,
                status: Some(200),
                message: None,
                request_id: answer.request_id,
                at,
            }),
            // The tokens may be fixed (or the integration enabled again): keep the update.
            Err(RestError::Unauthorized { .. }) => None,
            Err(err) => {
                // Sent before a crash and applied then, its answer lost with the process: Mews
                // now refuses the repeat. Its current state tells.
                if self.already(outgoing).await {
                    return Some(MewsAnswer {
                        state,
                        accepted: true,
                        status: err.status(),
                        message: Some(
                            "the command already had this state in Mews (applied before a restart)"
                                .into(),
                        ),
                        request_id: err.request_id().map(str::to_owned),
                        at,
                    });
                }
                Some(MewsAnswer {
                    state,
                    accepted: false,
                    status: err.status(),
                    message: Some(refusal_message(&err)),
                    request_id: err.request_id().map(str::to_owned),
                    at,
                })
            }
        }
    }

    /// Whether the command is already in the state the update asks for.
    async fn already(&self, outgoing: &Outgoing) -> bool {
        let mut body = Map::new();
        body.insert(
            "CommandIds".into(),
            Value::Array(vec![outgoing.command.clone().into()]),
        );
        let Ok(bytes) = self.rest.call("commands/getAllByIds", body).await else {
            return false;
        };
        parse_commands(&bytes).is_ok_and(|commands| {
            commands.iter().any(|(id, state, _)| {
                *id == outgoing.command && state.as_deref() == Some(&outgoing.update.state)
            })
        })
    }
}

/// Mews's `Message` where it sent one, else the error.
fn refusal_message(err: &RestError) -> String {
    match err {
        RestError::Refused { message, .. }
        | RestError::Status { message, .. }
        | RestError::Unauthorized { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// What is left: `pending` (the one under way first), then the inbox.
fn unsent(
    pending: std::collections::VecDeque<Outgoing>,
    inbox: mpsc::UnboundedReceiver<Outgoing>,
) -> Unsent {
    Unsent {
        pending: pending.into(),
        inbox,
    }
}

//! Enrichment behind the journal: a live DeviceCommand event carries only `Id` and `State`; its
//! record is journaled at once, held back from the sinks, and settled here with `command`
//! (Device, Data, … from `commands/getAllByIds`) or with `enrich_error`.
//!
//! One task per property. Records waiting when a call goes out are coalesced into it; a record
//! never waits longer than `enrich.timeout` from its arrival (or from the restart that found it
//! pending). Once the REST API is failing — an error, a timeout, or a rate-limit block past the
//! deadline — records go on at once with `enrich_error` while a probe retries in the
//! background. Command states that went out without details are kept as heal keys in the
//! journal; when Mews answers again, those still active are journaled once more with their
//! details (`origin = "catch_up"`), exactly once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::catch_up::command_record;
use super::lookup::{IdsPerCall, Lookup, MAX_IDS, fetch};
use super::{Rest, RestError, command_key, command_key_prefix};
use crate::journal::{Entry, Journal, Note, Settle};
use crate::record::{Enrich, Record};
use crate::retry::{Backoff, schedules};
use crate::stats::Stats;

/// At most this many records are coalesced into one round of calls.
const MAX_ROUND: usize = 4096;
/// While heal keys remain, they are looked at again this often.
const HEAL_EVERY: Duration = Duration::from_secs(60);
/// The event type that is enriched.
pub const DEVICE_COMMAND: &str = "DeviceCommand";
/// Command states Mews still expects an integration to act on.
const ACTIVE: [&str; 2] = ["Pending", "Received"];

/// What one round of `commands/getAllByIds` found.
type Fetched = Result<Lookup, RestError>;

/// Whether a property's REST API is failing, shared with its WebSocket reader: while it is,
/// DeviceCommand records are journaled with `enrich_error` at once rather than pending.
#[derive(Debug, Default)]
pub struct Health {
    failing: std::sync::atomic::AtomicBool,
    reason: std::sync::Mutex<Option<Arc<str>>>,
}

impl Health {
    /// The `enrich_error` for a record while the REST API is failing; `None` while it works.
    pub fn failing(&self) -> Option<Arc<str>> {
        if !self.failing.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, reason: Option<&str>) {
        let mut guard = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        *guard = reason.map(|r| {
            Arc::from(format!(
                "the Mews REST API is failing ({r}); details follow once it answers"
            ))
        });
        self.failing
            .store(guard.is_some(), std::sync::atomic::Ordering::Relaxed);
    }
}

/// One property's enrichment task.
pub struct Enricher {
    /// Its REST client.
    pub rest: Arc<Rest>,
    /// Where pending records are settled and healed ones appended.
    pub journal: Journal,
    /// The property's name.
    pub property: Arc<str>,
    /// `enrich.timeout`
    pub timeout: Duration,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Told when the REST API starts and stops failing (the reader reads it).
    pub health: Arc<Health>,
}

/// A pending record and when it must go on at the latest.
struct Waiting {
    note: Note,
    deadline: Instant,
}

/// The REST API is failing: why, and when to probe it next.
struct Outage {
    reason: String,
    probe_at: Instant,
    backoff: Backoff,
    /// Command ids to probe with (the last ones that went out without details).
    probe_ids: Vec<String>,
}

/// One enricher's moving parts between two turns of its loop.
#[derive(Default)]
struct State {
    /// Records waiting for a call.
    queue: VecDeque<Waiting>,
    /// The records of the call in flight; empty while the call is a probe.
    round: Vec<Waiting>,
    /// The call in flight.
    call: Option<JoinHandle<Fetched>>,
    /// While the REST API is failing.
    outage: Option<Outage>,
    /// The healing pass in flight.
    heal: Option<JoinHandle<Result<usize, String>>>,
    /// When the next healing pass starts.
    heal_at: Option<Instant>,
    /// `finish` came (or the inbox closed): settle what is left, take nothing new.
    finishing: bool,
    /// How many ids one call asks for (lowered by a 408), shared with the healing passes.
    per_call: Arc<IdsPerCall>,
}

/// The enricher ends: what it had is settled, or the journal is gone.
struct Stop;

impl Enricher {
    /// Settles the property's pending records as they come (`inbox`, from
    /// [`Journal::claim`]) until `finish`; then settles what is left, within its deadlines.
    pub async fn run(self, mut inbox: mpsc::UnboundedReceiver<Note>, finish: CancellationToken) {
        let mut st = State {
            heal_at: Some(Instant::now()),
            ..State::default()
        };
        while let Ok(()) = self.turn(&mut st, &mut inbox, &finish).await {}
        if let Some(task) = st.call {
            task.abort();
        }
        if let Some(task) = st.heal {
            task.abort();
        }
    }

    /// One turn: what waits is settled (during an outage) or sent, then the next thing that
    /// happens is handled. `Err` when the enricher is done or the journal is gone.
    async fn turn(
        &self,
        st: &mut State,
        inbox: &mut mpsc::UnboundedReceiver<Note>,
        finish: &CancellationToken,
    ) -> Result<(), Stop> {
        if let Some(out) = &mut st.outage {
            let settled = self.fail_all(st.queue.drain(..), &out.reason, &mut out.probe_ids);
            self.settle(settled).await?;
        }
        if st.call.is_none() && !st.queue.is_empty() {
            if let Some(reason) = self.rate_limited(&st.queue) {
                st.outage = Some(self.outage(reason, None));
                return Ok(());
            }
            let take = st.queue.len().min(MAX_ROUND);
            st.round = st.queue.drain(..take).collect();
            let ids = st.round.iter().filter_map(|w| w.note.record.id.clone());
            st.call = Some(self.spawn_fetch(&st.per_call, ids.collect()));
        }
        if st.finishing && st.queue.is_empty() && st.round.is_empty() {
            return Err(Stop);
        }
        let next_deadline = st
            .round
            .iter()
            .chain(st.queue.iter())
            .map(|w| w.deadline)
            .min();
        let probe_at = st.outage.as_ref().map(|o| o.probe_at);
        tokio::select! {
            note = inbox.recv(), if !st.finishing => match note {
                Some(note) => st.queue.push_back(self.waiting(note)),
                None => st.finishing = true,
            },
            () = finish.cancelled(), if !st.finishing => {
                st.finishing = true;
                // Whatever was committed before the finish is still settled.
                while let Ok(note) = inbox.try_recv() {
                    st.queue.push_back(self.waiting(note));
                }
                if let Some(task) = st.heal.take() {
                    task.abort();
                }
            }
            joined = join(&mut st.call), if st.call.is_some() => {
                st.call = None;
                let fetched = joined.unwrap_or_else(|err| Err(RestError::Transport(format!("enrichment task failed: {err}"))));
                self.fetched(st, fetched).await?;
            }
            () = sleep_until(next_deadline.unwrap_or_else(Instant::now)), if next_deadline.is_some() => {
                self.timed_out(st).await?;
            }
            () = sleep_until(probe_at.unwrap_or_else(Instant::now)), if probe_at.is_some() && st.call.is_none() => {
                if let Some(out) = &mut st.outage {
                    out.probe_at = Instant::now() + out.backoff.next_delay();
                    st.call = Some(self.spawn_fetch(&st.per_call, out.probe_ids.clone()));
                }
            }
            joined = join(&mut st.heal), if st.heal.is_some() => {
                st.heal = None;
                st.heal_at = healed(joined);
            }
            () = sleep_until(st.heal_at.unwrap_or_else(Instant::now)), if st.heal_at.is_some() && st.heal.is_none() && st.outage.is_none() && !st.finishing => {
                st.heal_at = None;
                st.heal = Some(tokio::spawn(self.heal_task(&st.per_call)));
            }
        }
        Ok(())
    }

    /// A record that waits at most `timeout` from now.
    fn waiting(&self, note: Note) -> Waiting {
        Waiting {
            note,
            deadline: Instant::now() + self.timeout,
        }
    }

    /// Why no call may go out before the first waiting record's deadline (the rate limit, or
    /// a 429's `Retry-After`), if so.
    fn rate_limited(&self, queue: &VecDeque<Waiting>) -> Option<String> {
        let first_deadline = queue.iter().map(|w| w.deadline).min()?;
        let next_start = self.rest.next_start();
        if next_start < first_deadline {
            return None;
        }
        let wait = next_start.saturating_duration_since(Instant::now());
        Some(format!(
            "the Mews REST rate limit allows no request for {} (429 Retry-After or rate_limit)",
            humantime::format_duration(Duration::from_secs(wait.as_secs().max(1)))
        ))
    }

    /// A call came back: its round settled with details, or without them (an outage starts
    /// or goes on).
    async fn fetched(&self, st: &mut State, fetched: Fetched) -> Result<(), Stop> {
        let round = std::mem::take(&mut st.round);
        match fetched {
            Ok(found) => {
                if let Some(out) = st.outage.take() {
                    self.health.set(None);
                    tracing::info!(was = %out.reason, "the Mews REST API answers again: DeviceCommand records are enriched again; healing those that went without");
                    st.heal_at = Some(Instant::now());
                }
                self.settle(self.found(round, &found)).await
            }
            Err(err) => {
                let reason = format!("commands/getAllByIds failed: {err}");
                let mut out = match st.outage.take() {
                    Some(mut out) => {
                        out.probe_at = Instant::now() + out.backoff.next_delay();
                        tracing::debug!(error = %err, retry_in = ?out.probe_at.saturating_duration_since(Instant::now()), "Mews REST API still failing");
                        out
                    }
                    None => self.outage(reason.clone(), Some(&err)),
                };
                let settled = self.fail_all(round, &reason, &mut out.probe_ids);
                st.outage = Some(out);
                self.settle(settled).await
            }
        }
    }

    /// A record's deadline passed: everything waiting goes on now without details; the call
    /// in flight stays as the probe.
    async fn timed_out(&self, st: &mut State) -> Result<(), Stop> {
        let reason = format!(
            "no answer from commands/getAllByIds within enrich.timeout ({})",
            humantime::format_duration(self.timeout)
        );
        let mut out = st
            .outage
            .take()
            .unwrap_or_else(|| self.outage(reason.clone(), None));
        let waiting: Vec<Waiting> = st.round.drain(..).chain(st.queue.drain(..)).collect();
        let settled = self.fail_all(waiting, &reason, &mut out.probe_ids);
        st.outage = Some(out);
        self.settle(settled).await
    }

    /// Starts an outage: logged once, first probe soon, the reader told.
    fn outage(&self, reason: String, err: Option<&RestError>) -> Outage {
        self.health.set(Some(&reason));
        let mut backoff = schedules::ENRICH_PROBE.backoff();
        let delay = backoff.next_delay();
        match err {
            Some(err) => {
                tracing::warn!(error = %err, retry_in = ?delay, "the Mews REST API is failing: DeviceCommand records go on at once without details (enrich_error) until it answers; they are forwarded again with details then")
            }
            None => {
                tracing::warn!(reason = %reason, retry_in = ?delay, "the Mews REST API is failing: DeviceCommand records go on at once without details (enrich_error) until it answers; they are forwarded again with details then")
            }
        }
        Outage {
            reason,
            probe_at: Instant::now() + delay,
            backoff,
            probe_ids: Vec::new(),
        }
    }

    /// Records that go on without details, each remembered for healing.
    fn fail_all(
        &self,
        waiting: impl IntoIterator<Item = Waiting>,
        reason: &str,
        probe_ids: &mut Vec<String>,
    ) -> Vec<Settle> {
        let settled: Vec<Settle> = waiting
            .into_iter()
            .map(|w| self.without_details(w.note, reason.to_owned()))
            .collect();
        for settle in &settled {
            if let Some(id) = &settle.record.id {
                if probe_ids.len() >= MAX_IDS {
                    probe_ids.remove(0);
                }
                probe_ids.push(id.clone());
            }
        }
        settled
    }

    fn without_details(&self, note: Note, error: String) -> Settle {
        let mut record = note.record;
        let heal = record.id.as_deref().map(|id| {
            command_key(
                &self.property,
                id,
                record.state.as_deref().unwrap_or_default(),
            )
        });
        record.enrich_error = Some(error);
        Settle {
            seq: note.seq,
            record,
            heal,
        }
    }

    /// Settles a round Mews answered: details where found, else an error naming why (not
    /// returned, or refused with Mews's message), with a heal key: the next healing pass asks
    /// once more (so a refusal of every id, not of one, is healed once Mews takes them).
    fn found(&self, round: Vec<Waiting>, lookup: &Lookup) -> Vec<Settle> {
        round
            .into_iter()
            .map(|w| {
                let id = w.note.record.id.clone().unwrap_or_default();
                if let Some(message) = lookup.refused.get(&id) {
                    let error = format!(
                        "Mews refused the command id in commands/getAllByIds (HTTP 400: {message})"
                    );
                    return self.without_details(w.note, error);
                }
                match lookup.found.get(&id) {
                    Some((_, details)) => {
                        let mut record = w.note.record;
                        record.command = Some(details.clone());
                        Settle {
                            seq: w.note.seq,
                            record,
                            heal: None,
                        }
                    }
                    None => self.without_details(
                        w.note,
                        "the command was not returned by commands/getAllByIds".into(),
                    ),
                }
            })
            .collect()
    }

    async fn settle(&self, settled: Vec<Settle>) -> Result<(), Stop> {
        let failed = settled
            .iter()
            .filter(|s| s.record.enrich_error.is_some())
            .count();
        Stats::add(&self.stats.enrich_failed, failed as u64);
        self.journal.settle(settled).await.map_err(|_| Stop)
    }

    fn spawn_fetch(&self, per_call: &Arc<IdsPerCall>, ids: Vec<String>) -> JoinHandle<Fetched> {
        let (rest, per_call) = (Arc::clone(&self.rest), Arc::clone(per_call));
        tokio::spawn(async move { fetch(rest, ids, &per_call).await })
    }

    /// The healing pass as a task of its own.
    fn heal_task(
        &self,
        per_call: &Arc<IdsPerCall>,
    ) -> impl Future<Output = Result<usize, String>> + Send + 'static {
        let (rest, journal, property, per_call) = (
            Arc::clone(&self.rest),
            self.journal.clone(),
            Arc::clone(&self.property),
            Arc::clone(per_call),
        );
        async move { heal(&rest, &journal, &property, &per_call).await }
    }
}

/// How a healing pass ended: logged; when the next one starts.
fn healed(joined: Result<Result<usize, String>, tokio::task::JoinError>) -> Option<Instant> {
    match joined {
        Ok(Ok(0)) => None,
        Ok(Ok(n)) => {
            tracing::info!(
                commands = n,
                "commands that went out without details and are still active were journaled again with them (unless the catch-up already had)"
            );
            Some(Instant::now() + HEAL_EVERY)
        }
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "healing failed; trying again later");
            Some(Instant::now() + HEAL_EVERY)
        }
        Err(err) => {
            tracing::error!(error = %err, "the healing task failed");
            None
        }
    }
}

/// Waits for a task, or forever when there is none.
async fn join<T>(task: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

/// Whether a record is one the enricher settles: a live DeviceCommand with an `Id`.
pub fn wants(record: &Record) -> bool {
    record.kind.as_deref() == Some(DEVICE_COMMAND) && record.id.is_some()
}

/// Prepares a live record for enrichment, on the reader's side (no waiting): held back for the
/// enricher, or — while the REST API is failing — out at once with `enrich_error` and a heal
/// key (and no dedupe key, so a later copy with details is not dropped). True for the latter.
pub fn prepare(record: &mut Record, property: &str, health: &Health) -> bool {
    if !wants(record) {
        return false;
    }
    match health.failing() {
        None => {
            record.enrich = Enrich::Pending;
            false
        }
        Some(reason) => {
            let id = record.id.as_deref().unwrap_or_default();
            let state = record.state.as_deref().unwrap_or_default();
            record.enrich = Enrich::Heal(command_key(property, id, state));
            record.enrich_error = Some(reason.to_string());
            record.dedupe = None;
            true
        }
    }
}

/// Journals once more, with details, the commands of `property` that went out without them
/// and are still active in Mews; forgets the rest. Returns how many were forwarded.
async fn heal(
    rest: &Arc<Rest>,
    journal: &Journal,
    property: &Arc<str>,
    per_call: &IdsPerCall,
) -> Result<usize, String> {
    let prefix = command_key_prefix(property);
    let prefix = prefix.as_str();
    let keys = journal
        .heal_keys(prefix)
        .await
        .map_err(|err| err.to_string())?;
    if keys.is_empty() {
        return Ok(0);
    }
    let ids_of_keys: Vec<(String, String)> = keys
        .iter()
        .filter_map(|key| {
            let id = key.strip_prefix(prefix)?.split('\u{1f}').next()?;
            Some((key.clone(), id.to_owned()))
        })
        .collect();
    let ids = ids_of_keys.iter().map(|(_, id)| id.clone()).collect();
    let found = fetch(Arc::clone(rest), ids, per_call)
        .await
        .map_err(|err| err.to_string())?
        .found;
    let received_at = crate::record::format_time(SystemTime::now());
    let mut entries = Vec::new();
    let mut forwarded = std::collections::HashSet::new();
    for (_, id) in &ids_of_keys {
        if let Some((Some(state), details)) = found.get(id)
            && ACTIVE.contains(&state.as_str())
            && forwarded.insert(id.clone())
        {
            let record = command_record(property, &received_at, id, Some(state), details.clone())
                .map_err(|err| err.to_string())?;
            entries.push(Entry::Record(record));
        }
    }
    let count = entries.len();
    let unheal = ids_of_keys.into_iter().map(|(key, _)| key).collect();
    journal
        .append_healed(entries, unheal)
        .await
        .map_err(|err| err.to_string())?;
    Ok(count)
}

//! What the relay counts and knows about itself: stored, rejected, lost, per property and per
//! sink. `/metrics`, `/readyz` and systemd's STATUS= read it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use crate::record::Origin;

/// Metric label values (property, type) are cut to this many bytes.
pub const MAX_LABEL_BYTES: usize = 64;
/// Distinct `type` labels per property; later new types are counted as [`OTHER`].
pub const MAX_TYPES_PER_PROPERTY: usize = 100;
/// Distinct properties not in the config (webhooks from unmapped enterprises); later new ones
/// are counted as [`OTHER`].
pub const MAX_EXTRA_PROPERTIES: usize = 20;
/// The label that collects what is over a cap.
pub const OTHER: &str = "other";

/// What a property's connection is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Not connected yet.
    Connecting,
    /// Connected since then.
    Connected(Instant),
    /// Lost or refused; the short reason.
    Reconnecting(String),
}

/// Counters shared by every component of one running relay.
#[derive(Debug, Default)]
pub struct Stats {
    /// Records durably committed to the journal.
    pub records_committed: AtomicU64,
    /// Records that reached the relay but could not be stored and will not come again:
    /// WebSocket events whose commit failed (Mews does not send them again), and committed
    /// records the record log no longer held when the journal opened (the disk lost them).
    pub records_lost: AtomicU64,
    /// Records that could not be stored whose sender was told and sends them again: webhooks
    /// answered 503, catch-up and healing steps retried, dead-letter replays left in their file.
    pub records_refused: AtomicU64,
    /// Whether the journal stores records now (set by its writer).
    pub journal: crate::journal::JournalHealth,
    /// Messages that were not decoded into records (kept in `rejected.jsonl`).
    pub messages_rejected: AtomicU64,
    /// WebSocket connections established.
    pub connections: AtomicU64,
    /// Webhook requests refused for a missing or wrong token (401).
    pub webhooks_refused: AtomicU64,
    /// Webhook bodies that were not a Mews webhook (400).
    pub webhooks_malformed: AtomicU64,
    /// Bytes of records held in the journal.
    pub journal_bytes: AtomicU64,
    /// Records dropped because their dedupe key was journaled within `dedupe_window`.
    pub duplicates_dropped: AtomicU64,
    /// Mews REST requests answered 2xx.
    pub rest_ok: AtomicU64,
    /// Mews REST requests that failed (status or transport); retried ones count each time.
    pub rest_failed: AtomicU64,
    /// Mews REST requests answered 429.
    pub rest_throttled: AtomicU64,
    /// DeviceCommand records that went on without `command` (`enrich_error` set).
    pub enrich_failed: AtomicU64,
    /// Command state updates Mews applied (`commands/update`).
    pub command_updates_applied: AtomicU64,
    /// Command state updates Mews refused for good (the answer is kept).
    pub command_updates_refused: AtomicU64,
    /// Command state updates in the journal's outbox, not yet answered by Mews.
    pub command_updates_waiting: AtomicU64,
    /// Per property.
    pub properties: Mutex<BTreeMap<String, PropertyStats>>,
    /// Per sink.
    pub sinks: Mutex<BTreeMap<String, SinkStats>>,
    /// Records committed, by property, then type, then origin (websocket, catch_up, webhook);
    /// capped by [`MAX_TYPES_PER_PROPERTY`] and [`MAX_EXTRA_PROPERTIES`].
    pub events: Mutex<BTreeMap<String, BTreeMap<String, [u64; 3]>>>,
    /// The configured properties (never folded into [`OTHER`]).
    pub configured: Mutex<Vec<String>>,
    /// WebSocket messages that did not complete within `message_timeout` (connection closed).
    pub messages_timed_out: AtomicU64,
    /// Requests and connections a listener refused or closed, by listener and reason.
    pub listener_refusals: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// How the last reload of the config went (none yet: `None`).
    pub last_reload: Mutex<Option<LastReload>>,
}

/// How the last reload went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastReload {
    /// The request's number (`app::Reloads`).
    pub generation: u64,
    /// When it was done with.
    pub at: SystemTime,
    /// What changed (`Ok`), or why the new config was refused or could not start.
    pub outcome: Result<String, String>,
}

/// `value` cut to at most [`MAX_LABEL_BYTES`], at a character boundary.
pub fn label_value(value: &str) -> &str {
    if value.len() <= MAX_LABEL_BYTES {
        return value;
    }
    let mut end = MAX_LABEL_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// One property's connection.
#[derive(Debug, Clone)]
pub struct PropertyStats {
    /// What it is doing now.
    pub link: Link,
    /// Connections lost or refused after having been up.
    pub reconnects: u64,
    /// When its last WebSocket event was journaled.
    pub last_event: Option<SystemTime>,
}

impl Default for PropertyStats {
    fn default() -> Self {
        PropertyStats {
            link: Link::Connecting,
            reconnects: 0,
            last_event: None,
        }
    }
}

/// Why a sink is not delivering now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trouble {
    /// The endpoint or its credentials are wrong (the sink is paused), rather than a passing
    /// failure (a timeout, a 503).
    pub paused: bool,
    /// A few words (`HTTP 401`, `cannot connect`) for the status line.
    pub kind: String,
    /// The last failure, one line.
    pub reason: String,
    /// Since when deliveries fail.
    pub since: Instant,
}

/// One sink's progress.
#[derive(Debug, Clone, Default)]
pub struct SinkStats {
    /// Records delivered.
    pub delivered: u64,
    /// Failed attempts that will be retried.
    pub retries: u64,
    /// Records moved to its dead-letter file.
    pub dead_lettered: u64,
    /// Committed records it has not passed yet.
    pub lag_records: u64,
    /// Since when it has been behind (None: caught up).
    pub behind_since: Option<Instant>,
    /// While deliveries fail: why, and whether the sink is paused.
    pub trouble: Option<Trouble>,
}

impl SinkStats {
    /// How long it has been behind (zero when caught up).
    pub fn lag(&self) -> std::time::Duration {
        self.behind_since
            .map_or(std::time::Duration::ZERO, |since| since.elapsed())
    }

    /// Why it is not well, if it is not: paused (always), or behind for longer than `max_lag`.
    pub fn problem(&self, max_lag: std::time::Duration) -> Option<String> {
        if let Some(trouble) = self.trouble.as_ref().filter(|t| t.paused) {
            return Some(format!("paused: {}", trouble.reason));
        }
        let lag = self.lag();
        (lag > max_lag).then(|| {
            let mut text = format!(
                "behind by {} records for {}",
                self.lag_records,
                humantime::format_duration(std::time::Duration::from_secs(lag.as_secs()))
            );
            if let Some(trouble) = &self.trouble {
                text.push_str(&format!(" ({})", trouble.reason));
            }
            text
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Stats {
    /// Adds `n` to a counter and returns the new total.
    pub fn add(counter: &AtomicU64, n: u64) -> u64 {
        counter.fetch_add(n, Ordering::Relaxed) + n
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Records what a property's connection is doing.
    pub fn set_link(&self, property: &str, link: Link) {
        let mut properties = lock(&self.properties);
        let entry = properties.entry(property.to_owned()).or_default();
        if matches!(entry.link, Link::Connected(_)) && matches!(link, Link::Reconnecting(_)) {
            entry.reconnects += 1;
        }
        entry.link = link;
    }

    /// Keeps only these properties (after a reload); they are the configured ones.
    pub fn keep_properties(&self, names: &[&str]) {
        lock(&self.properties).retain(|name, _| names.contains(&name.as_str()));
        *lock(&self.configured) = names.iter().map(|n| (*n).to_owned()).collect();
    }

    /// Counts a request or connection that listener `listener` refused for `reason`.
    pub fn listener_refused(&self, listener: &'static str, reason: &'static str) {
        *lock(&self.listener_refusals)
            .entry((listener, reason))
            .or_default() += 1;
    }

    /// The refusals so far, by (listener, reason).
    pub fn listener_refusals(&self) -> Vec<((&'static str, &'static str), u64)> {
        lock(&self.listener_refusals)
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// Keeps only these sinks (after a reload).
    pub fn keep_sinks(&self, names: &[String]) {
        lock(&self.sinks).retain(|name, _| names.contains(name));
    }

    /// Counts committed records by property, type and origin; notes when WebSocket events came.
    /// Runs per commit: allocates its tally, and labels only for a property or type seen the
    /// first time.
    pub fn committed<'a>(&self, records: impl Iterator<Item = (&'a str, Option<&'a str>, Origin)>) {
        // Tallied first, so a commit of many records looks each property and type up about once
        // (among the last few pairs seen: a pair may appear twice, which only adds twice).
        let mut tally: Vec<(&str, &str, [u64; 3])> = Vec::new();
        for (property, kind, origin) in records {
            let kind = kind.unwrap_or("unknown");
            match tally
                .iter_mut()
                .rev()
                .take(32)
                .find(|(p, k, _)| *p == property && *k == kind)
            {
                Some((_, _, counts)) => counts[origin as usize] += 1,
                None => {
                    let mut counts = [0; 3];
                    counts[origin as usize] = 1;
                    tally.push((property, kind, counts));
                }
            }
        }
        let mut events = lock(&self.events);
        let mut websocket: Vec<&str> = Vec::new();
        for (property, kind, added) in tally {
            let label = label_value(property);
            let kind = label_value(kind);
            let by_type = if events.contains_key(label) {
                events.get_mut(label)
            } else {
                let key = if self.may_add_property(&events, label) {
                    label
                } else {
                    OTHER
                };
                Some(events.entry(key.to_owned()).or_default())
            };
            let Some(by_type) = by_type else { continue };
            let kind = if by_type.len() >= MAX_TYPES_PER_PROPERTY && !by_type.contains_key(kind) {
                OTHER
            } else {
                kind
            };
            let counts = match by_type.get_mut(kind) {
                Some(counts) => counts,
                None => by_type.entry(kind.to_owned()).or_default(),
            };
            for (count, add) in counts.iter_mut().zip(added) {
                *count += add;
            }
            if added[Origin::Websocket as usize] > 0 && !websocket.contains(&property) {
                websocket.push(property);
            }
        }
        drop(events);
        if websocket.is_empty() {
            return;
        }
        let now = SystemTime::now();
        let mut properties = lock(&self.properties);
        for property in websocket {
            match properties.get_mut(property) {
                Some(p) => p.last_event = Some(now),
                None => {
                    properties
                        .entry(property.to_owned())
                        .or_default()
                        .last_event = Some(now)
                }
            }
        }
    }

    /// Whether a property not counted yet gets its own label: configured ones always, others
    /// while fewer than [`MAX_EXTRA_PROPERTIES`] have one.
    fn may_add_property(
        &self,
        events: &BTreeMap<String, BTreeMap<String, [u64; 3]>>,
        property: &str,
    ) -> bool {
        let configured = lock(&self.configured);
        if configured.iter().any(|c| label_value(c) == property) {
            return true;
        }
        let extra = events
            .keys()
            .filter(|k| {
                k.as_str() != OTHER && !configured.iter().any(|c| label_value(c) == k.as_str())
            })
            .count();
        extra < MAX_EXTRA_PROPERTIES
    }

    /// Updates one sink's figures.
    pub fn sink(&self, name: &str, update: impl FnOnce(&mut SinkStats)) {
        update(lock(&self.sinks).entry(name.to_owned()).or_default());
    }

    /// Notes how reload request `generation` went: what changed, or why it did not happen.
    pub fn reloaded(&self, generation: u64, outcome: Result<String, String>) {
        *lock(&self.last_reload) = Some(LastReload {
            generation,
            at: SystemTime::now(),
            outcome,
        });
    }

    /// One line for systemd's STATUS=: `old-town: connected 3m · airport: reconnecting (401) ·
    /// hooks: paused (HTTP 401)`, led by what is wrong with the journal and a failed reload, if
    /// anything; sinks appear while paused, failing with records waiting, or behind for longer
    /// than `max_lag`.
    pub fn status_line(&self, max_lag: std::time::Duration) -> String {
        let mut parts = Vec::new();
        if let Some(problem) = self.journal.problem() {
            parts.push(format!("NOT STORING: {problem}"));
        }
        if let Some(Err(error)) = lock(&self.last_reload).as_ref().map(|r| &r.outcome) {
            parts.push(format!("last reload failed: {error}"));
        }
        let properties = lock(&self.properties);
        parts.extend(properties.iter().map(|(name, p)| match &p.link {
            Link::Connecting => format!("{name}: connecting"),
            Link::Connected(since) => {
                let secs = since.elapsed().as_secs();
                let up = humantime::format_duration(std::time::Duration::from_secs(
                    secs - secs % if secs >= 60 { 60 } else { 1 },
                ));
                format!("{name}: connected {up}")
            }
            Link::Reconnecting(why) => format!("{name}: reconnecting ({why})"),
        }));
        drop(properties);
        let sinks = lock(&self.sinks);
        parts.extend(
            sinks
                .iter()
                .filter_map(|(name, s)| Some(format!("{name}: {}", s.short_state(max_lag)?))),
        );
        parts.join(" · ")
    }
}

impl SinkStats {
    /// A few words for the status line while the sink is not keeping up, else `None`.
    fn short_state(&self, max_lag: std::time::Duration) -> Option<String> {
        match &self.trouble {
            Some(t) if t.paused => {
                Some(format!("paused ({}), {} behind", t.kind, self.lag_records))
            }
            Some(t) if self.lag_records > 0 => Some(format!(
                "retrying ({}), {} behind",
                t.kind, self.lag_records
            )),
            _ => {
                let lag = self.lag();
                (lag > max_lag).then(|| {
                    format!(
                        "{} behind ({})",
                        self.lag_records,
                        humantime::format_duration(std::time::Duration::from_secs(lag.as_secs()))
                    )
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_unknown_properties_are_capped_and_labels_cut() {
        let stats = Stats::default();
        stats.keep_properties(&["old-town"]);
        let kinds: Vec<String> = (0..1000).map(|i| format!("Type{i}")).collect();
        stats.committed(
            kinds
                .iter()
                .map(|k| ("old-town", Some(k.as_str()), Origin::Websocket)),
        );
        let long = "x".repeat(500);
        let enterprises: Vec<String> = (0..100).map(|i| format!("enterprise-{i}")).collect();
        stats.committed(
            enterprises
                .iter()
                .map(|e| (e.as_str(), Some(long.as_str()), Origin::Webhook)),
        );
        let events = stats.events.lock().unwrap();
        let town = &events["old-town"];
        assert_eq!(town.len(), MAX_TYPES_PER_PROPERTY + 1);
        assert_eq!(town[OTHER][0], 1000 - MAX_TYPES_PER_PROPERTY as u64);
        assert_eq!(events.len(), 1 + MAX_EXTRA_PROPERTIES + 1);
        assert_eq!(events[OTHER][&long[..MAX_LABEL_BYTES]][2], 80);
        assert!(events.keys().all(|k| k.len() <= MAX_LABEL_BYTES));
    }

    #[test]
    fn a_commit_counts_every_record_by_property_type_and_origin() {
        let stats = Stats::default();
        stats.keep_properties(&["a", "b"]);
        // Interleaved pairs, and more distinct pairs than the tally searches back.
        let many: Vec<String> = (0..40).map(|i| format!("T{i}")).collect();
        let mut records = vec![
            ("a", Some("X"), Origin::Websocket),
            ("b", Some("X"), Origin::Websocket),
            ("a", Some("X"), Origin::CatchUp),
            ("a", None, Origin::Websocket),
        ];
        records.extend(
            many.iter()
                .map(|k| ("b", Some(k.as_str()), Origin::Webhook)),
        );
        records.push(("a", Some("X"), Origin::Websocket));
        stats.committed(records.into_iter());
        let events = stats.events.lock().unwrap();
        assert_eq!(events["a"]["X"], [2, 1, 0]);
        assert_eq!(events["a"]["unknown"], [1, 0, 0]);
        assert_eq!(events["b"]["X"], [1, 0, 0]);
        assert_eq!(events["b"]["T0"], [0, 0, 1]);
        assert_eq!(events["b"].len(), 41);
        drop(events);
        let properties = stats.properties.lock().unwrap();
        assert!(properties["a"].last_event.is_some() && properties["b"].last_event.is_some());
    }

    #[test]
    fn the_status_line_leads_with_a_journal_that_stores_nothing() {
        let stats = Stats::default();
        stats.set_link("old-town", Link::Connecting);
        assert_eq!(stats.status_line(MAX_LAG), "old-town: connecting");
        stats
            .journal
            .set_file(Some(crate::journal::FileProblem::Deleted(
                "/state/journal.redb".into(),
            )));
        let line = stats.status_line(MAX_LAG);
        assert!(
            line.starts_with("NOT STORING: journal /state/journal.redb was deleted"),
            "{line}"
        );
        assert!(line.ends_with(" · old-town: connecting"), "{line}");
    }

    const MAX_LAG: std::time::Duration = std::time::Duration::from_secs(300);

    #[test]
    fn the_status_line_names_sinks_that_are_paused_or_failing_and_a_failed_reload() {
        let stats = Stats::default();
        stats.set_link("old-town", Link::Connecting);
        stats.sink("keys", |s| s.lag_records = 0);
        assert_eq!(
            stats.status_line(MAX_LAG),
            "old-town: connecting",
            "a sink that keeps up is not named"
        );
        let trouble = |paused, kind: &str| Trouble {
            paused,
            kind: kind.into(),
            reason: "why".into(),
            since: Instant::now(),
        };
        stats.sink("hooks", |s| {
            s.lag_records = 3;
            s.trouble = Some(trouble(true, "HTTP 401"));
        });
        stats.sink("keys", |s| {
            s.lag_records = 2;
            s.trouble = Some(trouble(false, "cannot connect"));
        });
        stats.reloaded(1, Err("sink \"x\": cannot open".into()));
        assert_eq!(
            stats.status_line(MAX_LAG),
            "last reload failed: sink \"x\": cannot open · old-town: connecting · hooks: paused (HTTP 401), 3 behind · keys: retrying (cannot connect), 2 behind"
        );
        stats.reloaded(2, Ok("nothing changed".into()));
        stats.sink("hooks", |s| s.trouble = None);
        stats.sink("keys", |s| {
            s.trouble = None;
            s.behind_since = Some(Instant::now() - MAX_LAG * 2);
        });
        assert_eq!(
            stats.status_line(MAX_LAG),
            "old-town: connecting · keys: 2 behind (10m)"
        );
    }

    #[test]
    fn labels_are_cut_at_a_character_boundary() {
        let text = "é".repeat(40);
        let cut = label_value(&text);
        assert!(cut.len() <= MAX_LABEL_BYTES && cut.len() >= MAX_LABEL_BYTES - 1);
        assert!(text.starts_with(cut));
    }
}

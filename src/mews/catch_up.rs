//! The catch-up after every (re)connect: Mews never replays what happened while nobody
//! listened, so active commands (`commands/getAllActive`) and, when enabled, reservations
//! updated since the last sync (`reservations/getAll/2023-06-06`) are fetched and journaled as
//! `origin = "catch_up"` records. Dedupe keys keep states already journaled from repeating.
//!
//! The two steps run side by side and fail alone: a 403 (a business rule refuses that
//! operation) stops only its step, which tries again after [`REFUSED_RETRY`]; a 408 to a
//! reservations page halves `Limitation.Count` for the rest of the listing.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::enrich::DEVICE_COMMAND;
use super::{Rest, RestError, command_key, parse_commands, reservation_key};
use crate::config::CatchUp;
use crate::journal::{Entry, Journal, JournalError};
use crate::record::{Origin, Record, format_time};
use crate::retry::schedules;

/// Reservations per page at first (the most Mews allows); a 408 halves it.
pub const PAGE: usize = 1000;
/// A step Mews refused with 403 tries again after this long (jittered up to twice as long),
/// not sooner: the hotel has to change a setting first.
pub const REFUSED_RETRY: Duration = Duration::from_secs(300);
/// One `UpdatedUtc` window is at most this long (Mews allows 3 months).
const WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

/// Why a catch-up step stopped.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Rest(#[from] RestError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// One property's catch-up; run after each successful connect.
pub struct CatchUpJob {
    /// The property's REST client.
    pub rest: Arc<Rest>,
    /// Where records go.
    pub journal: Journal,
    /// The property's name.
    pub property: Arc<str>,
    /// `[catch_up]`
    pub settings: CatchUp,
}

impl CatchUpJob {
    /// Runs the catch-up until done or `stop` (the connection ended: the next one catches up).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        tokio::select! {
            () = stop.cancelled() => tracing::debug!("catch-up interrupted; the next connection runs it again"),
            () = self.all() => {}
        }
    }

    /// Both steps at once: one refused or slow never holds up the other.
    async fn all(&self) {
        let commands = async {
            if self.settings.commands {
                self.retrying("active commands", || self.commands()).await;
            }
        };
        let reservations = async {
            if self.settings.reservations {
                self.retrying("reservations", || self.reservations()).await;
            }
        };
        tokio::join!(commands, reservations);
    }

    /// Runs a step until it succeeds; refused tokens end it (the client logs it; the next
    /// connection tries again), a refused operation waits [`REFUSED_RETRY`].
    async fn retrying<F, Fut>(&self, what: &str, step: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<usize, StepError>>,
    {
        let mut backoff = schedules::CATCH_UP.backoff();
        loop {
            match step().await {
                Ok(records) => {
                    tracing::info!(records, "catch-up of {what} done");
                    return;
                }
                Err(StepError::Rest(RestError::Unauthorized { .. })) => return,
                Err(StepError::Journal(JournalError::Closed)) => return,
                Err(StepError::Rest(err @ RestError::Refused { .. })) => {
                    let delay = REFUSED_RETRY + REFUSED_RETRY.mul_f64(fastrand::f64());
                    tracing::info!(error = %err, retry_in = ?delay, "catch-up of {what} refused by Mews; the rest of the catch-up goes on, this step tries again later");
                    tokio::time::sleep(delay).await;
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, retry_in = ?delay, "catch-up of {what} failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Every command still Pending or Received, as a record shaped like the live event.
    async fn commands(&self) -> Result<usize, StepError> {
        let body = self.rest.call("commands/getAllActive", Map::new()).await?;
        let received_at = format_time(SystemTime::now());
        let entries = parse_commands(&body)?
            .into_iter()
            .map(|(id, state, details)| {
                command_record(&self.property, &received_at, &id, state.as_deref(), details)
                    .map(Entry::Record)
            })
            .collect::<Result<Vec<Entry>, RestError>>()?;
        let n = entries.len();
        if n > 0 {
            self.journal.append_committed(entries).await?;
        }
        Ok(n)
    }

    /// The name of this property's reservation sync mark in the journal.
    pub fn mark_name(property: &str) -> String {
        format!("reservations\u{1f}{property}")
    }

    /// Reservations updated since the mark (minus the margin), window by window; the mark
    /// moves after each window's records are committed.
    ///
    /// A window whose first page comes back full is split in two halves, each listed on its
    /// own, until every window fits in one page: the listing never rests on a `Cursor`.
    /// Mews pages newest first, and its docs do not say what a cursor means once its
    /// reservation has changed during the listing; if it ended the listing, trusting it would
    /// lose the rest of the window. Only a window of one second that holds more than a page
    /// is paged with cursors.
    async fn reservations(&self) -> Result<usize, StepError> {
        let mark_name = Self::mark_name(&self.property);
        // Whole seconds, rounded up: the window ends after anything updated so far (the next
        // one starts `margin` before this mark, for changes Mews records late).
        let now = unix_secs(SystemTime::now()) + 1;
        let start = match self.journal.mark(&mark_name).await? {
            Some(mark) => mark.saturating_sub(self.settings.margin.as_secs()),
            None => now.saturating_sub(self.settings.reservations_since.as_secs()),
        };
        let mut total = 0;
        let mut count = PAGE;
        // Windows still to list, the earliest last (so the mark moves forward only).
        let mut windows: Vec<(u64, u64)> = (start..now)
            .step_by(WINDOW.as_secs() as usize)
            .map(|from| (from, (from + WINDOW.as_secs()).min(now)))
            .collect();
        windows.reverse();
        while let Some((from, to)) = windows.pop() {
            match self.window(from, to, &mut count).await? {
                Some(n) => {
                    total += n;
                    self.journal.set_mark(&mark_name, to).await?;
                }
                None => {
                    let mid = from + (to - from) / 2;
                    windows.push((mid, to));
                    windows.push((from, mid));
                }
            }
        }
        Ok(total)
    }

    /// Lists and commits one window: how many records, or `None` when its first page was full
    /// and the window is longer than a second (nothing committed: list its halves instead).
    async fn window(
        &self,
        from: u64,
        to: u64,
        count: &mut usize,
    ) -> Result<Option<usize>, StepError> {
        let mut total = 0;
        let mut cursor: Option<String> = None;
        loop {
            let (entries, next) = match self
                .reservation_page(from, to, cursor.clone(), *count)
                .await
            {
                Ok(page) => page,
                // Mews: "request data in smaller batches"; the client logged the 408.
                Err(RestError::TooHeavy { .. }) if *count > 1 => {
                    *count = (*count / 2).max(1);
                    tracing::info!(count, "asking Mews for fewer reservations per page");
                    continue;
                }
                Err(err) => return Err(err.into()),
            };
            let n = entries.len();
            if n >= *count && cursor.is_none() && to - from > 1 {
                return Ok(None);
            }
            total += n;
            if n > 0 {
                self.journal.append_committed(entries).await?;
            }
            // The last page is the one with fewer items than asked for (or no Cursor).
            match next {
                Some(next) if n >= *count => cursor = Some(next),
                _ => break,
            }
        }
        Ok(Some(total))
    }

    async fn reservation_page(
        &self,
        start: u64,
        end: u64,
        cursor: Option<String>,
        count: usize,
    ) -> Result<(Vec<Entry>, Option<String>), RestError> {
        let mut body = Map::new();
        body.insert(
            "UpdatedUtc".into(),
            json!({"StartUtc": rfc3339(start), "EndUtc": rfc3339(end)}),
        );
        let mut limitation = json!({ "Count": count });
        if let Some(cursor) = cursor {
            limitation["Cursor"] = Value::String(cursor);
        }
        body.insert("Limitation".into(), limitation);
        let bytes = self
            .rest
            .call("reservations/getAll/2023-06-06", body)
            .await?;
        let page: ReservationPage<'_> =
            serde_json::from_slice(&bytes).map_err(|err| RestError::Decode(err.to_string()))?;
        let received_at = format_time(SystemTime::now());
        let mut entries = Vec::with_capacity(page.reservations.len());
        for raw in page.reservations {
            let head: ReservationHead = serde_json::from_str(raw.get())
                .map_err(|err| RestError::Decode(format!("a reservation: {err}")))?;
            entries.push(Entry::Record(Record {
                kind: Some("Reservation".into()),
                dedupe: head
                    .updated_utc
                    .as_deref()
                    .map(|updated| reservation_key(&self.property, &head.id, updated)),
                id: Some(head.id),
                state: head.state,
                ..Record::new(
                    Arc::clone(&self.property),
                    Origin::CatchUp,
                    received_at.clone(),
                    raw.to_owned(),
                )
            }));
        }
        Ok((entries, page.cursor))
    }
}

/// A command fetched over REST as a record: `event` shaped like the live one, `command` filled
/// in, a dedupe key for its state (catch-up, and commands healed after an enrichment failure).
pub(super) fn command_record(
    property: &Arc<str>,
    received_at: &str,
    id: &str,
    state: Option<&str>,
    details: Box<RawValue>,
) -> Result<Record, RestError> {
    let event = json!({"Type": DEVICE_COMMAND, "Id": id, "State": state});
    let event = serde_json::value::to_raw_value(&event)
        .map_err(|err| RestError::Decode(err.to_string()))?;
    Ok(Record {
        kind: Some(DEVICE_COMMAND.into()),
        dedupe: state.map(|state| command_key(property, id, state)),
        id: Some(id.to_owned()),
        state: state.map(str::to_owned),
        command: Some(details),
        ..Record::new(
            Arc::clone(property),
            Origin::CatchUp,
            received_at.to_owned(),
            event,
        )
    })
}

#[derive(Deserialize)]
struct ReservationPage<'a> {
    #[serde(rename = "Reservations", borrow)]
    reservations: Vec<&'a RawValue>,
    #[serde(rename = "Cursor", default)]
    cursor: Option<String>,
}

#[derive(Deserialize)]
struct ReservationHead {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "State", default)]
    state: Option<String>,
    #[serde(rename = "UpdatedUtc", default)]
    updated_utc: Option<String>,
}

fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `2026-11-23T12:00:00Z`
pub fn rfc3339(unix_secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_mews_datetimes() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_435_200), "2026-11-23T12:00:00Z");
    }
}

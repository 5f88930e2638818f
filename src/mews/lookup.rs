//! `commands/getAllByIds` for enrichment and healing: the details of many commands, in as few
//! calls as `CommandIds` allows.
//!
//! Mews refuses the whole request (`400 Invalid CommandIds`) for a single id it will not
//! answer: the docs are silent on which ids that is (one it does not know, one purged, one of
//! another enterprise, one that is not a GUID), so any may be. One such id must not cost the
//! details of the others, nor keep an outage going (the probe would send it again and again):
//! a refused request is split in halves, both asked again at once, until the refused ids stand
//! alone. Those come back as refused, with Mews's message; a 400 is an answer, not an outage.
//!
//! A 408 to many ids (`guidelines/responses.md`: "request data in smaller batches") is split
//! the same way until Mews answers the halves, and later calls of the property ask for no more
//! ids than the last size Mews took; a 408 to a single id is no answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::future::join_all;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{Rest, RestError, parse_commands};

/// `CommandIds` takes at most this many ids.
pub(super) const MAX_IDS: usize = 1000;
/// One lookup splits requests refused with 400 at most this many times: enough to single out
/// a few refused ids among thousands (about 10 splits for one among 1,000), not enough to
/// spend the property's rate limit (200 calls in 30 s, shared with the catch-up and command
/// updates) on ids Mews refuses whole. Ids still together when the splits run out are neither
/// found nor refused: their records go on without details and are healed later.
const MAX_SPLITS: usize = 32;

/// A command's state in Mews and the record's `command` (which holds that state too).
pub(super) type Details = (Option<String>, Box<RawValue>);

/// What Mews answered for a set of command ids.
#[derive(Debug, Default)]
pub(super) struct Lookup {
    /// Details of the commands Mews returned, by id.
    pub found: HashMap<String, Details>,
    /// Ids Mews refused with 400 on their own, and its message.
    pub refused: HashMap<String, String>,
}

/// How many ids one call of a property asks for: [`MAX_IDS`] until Mews answers 408 to that
/// many, then the largest size it took since (it is not raised again while the relay runs).
#[derive(Debug)]
pub(super) struct IdsPerCall(AtomicUsize);

impl Default for IdsPerCall {
    fn default() -> Self {
        IdsPerCall(AtomicUsize::new(MAX_IDS))
    }
}

impl IdsPerCall {
    fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed).max(1)
    }

    fn at_most(&self, n: usize) {
        self.0.fetch_min(n.max(1), Ordering::Relaxed);
    }
}

/// Details of these commands: the ids (each asked once) in calls of `per_call`, made together;
/// refused and too heavy ones split as the module's header says.
pub(super) async fn fetch(
    rest: Arc<Rest>,
    mut ids: Vec<String>,
    per_call: &IdsPerCall,
) -> Result<Lookup, RestError> {
    ids.sort_unstable();
    ids.dedup();
    let mut out = Lookup::default();
    let mut todo: Vec<Vec<String>> = ids.chunks(per_call.get()).map(<[_]>::to_vec).collect();
    let mut splits = 0;
    // The last refusal of a single id, for the log line.
    let mut last_refusal = None;
    while !todo.is_empty() {
        let answers = join_all(todo.iter().map(|ids| call(&rest, ids))).await;
        let mut next = Vec::new();
        for (ids, answer) in todo.into_iter().zip(answers) {
            let halves = |next: &mut Vec<Vec<String>>, ids: Vec<String>| {
                let (first, second) = ids.split_at(ids.len() / 2);
                next.extend([first.to_vec(), second.to_vec()]);
            };
            match answer {
                Ok(found) => out.found.extend(found),
                Err(RestError::TooHeavy { .. }) if ids.len() > 1 => {
                    per_call.at_most(ids.len() / 2);
                    halves(&mut next, ids);
                }
                Err(err @ RestError::Status { status: 400, .. }) if ids.len() == 1 => {
                    if let RestError::Status { message, .. } = &err {
                        out.refused
                            .extend(ids.into_iter().map(|id| (id, message.clone())));
                    }
                    last_refusal = Some(err);
                }
                Err(RestError::Status { status: 400, .. }) if splits < MAX_SPLITS => {
                    splits += 1;
                    halves(&mut next, ids);
                }
                // Out of splits: neither found nor refused.
                Err(RestError::Status { status: 400, .. }) => {}
                Err(err) => return Err(err),
            }
        }
        todo = next;
    }
    if let Some(err) = last_refusal {
        tracing::warn!(
            ids = out.refused.len(),
            error = %err,
            request_id = err.request_id().unwrap_or("-"),
            "Mews refused command ids in commands/getAllByIds; those commands get no details"
        );
    }
    Ok(out)
}

async fn call(rest: &Rest, ids: &[String]) -> Result<Vec<(String, Details)>, RestError> {
    let mut body = Map::new();
    body.insert(
        "CommandIds".into(),
        Value::Array(ids.iter().cloned().map(Value::String).collect()),
    );
    let bytes = rest.call("commands/getAllByIds", body).await?;
    Ok(parse_commands(&bytes)?
        .into_iter()
        .map(|(id, state, details)| (id, (state, details)))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::mews::{Limiter, RestSetup, http_client};
    use crate::secret::Secret;
    use crate::simulator::{self, Hotel, SimulatorConfig};
    use crate::stats::Stats;

    /// A hotel of the simulator, served over HTTP on loopback, and a REST client of it; the
    /// server stops with the token.
    async fn simulated() -> (Arc<Hotel>, Arc<Rest>, CancellationToken) {
        let hotel = Arc::new(Hotel::new());
        let config = SimulatorConfig {
            rate: 0.001,
            ..SimulatorConfig::default()
        };
        let (addr, stop) = simulator::serve_hotel_locally(Arc::clone(&hotel), config)
            .await
            .unwrap();
        let tls = crate::tls::client_config(&[], None).unwrap();
        let rest = Arc::new(Rest::new(RestSetup {
            api_url: &format!("http://{addr}"),
            client_token: Secret::new("CLIENT"),
            access_token: Secret::new("ACCESS"),
            client: "mews-relay test",
            limiter: Limiter::new(1000, Duration::from_secs(30)),
            http: http_client(&tls, Duration::from_secs(5)).unwrap(),
            stats: Arc::new(Stats::default()),
        }));
        (hotel, rest, stop)
    }

    /// `fetch`, bounded: a split that never happens would leave the client retrying forever.
    async fn fetch_within(rest: &Arc<Rest>, ids: Vec<String>, per_call: &IdsPerCall) -> Lookup {
        tokio::time::timeout(
            Duration::from_secs(30),
            fetch(Arc::clone(rest), ids, per_call),
        )
        .await
        .expect("answered within 30 s")
        .unwrap()
    }

    /// Refused requests as the simulator logged them.
    fn refusals(hotel: &Hotel) -> usize {
        let answers = hotel.answers();
        answers.iter().filter(|c| c.status == 400).count()
    }

    #[tokio::test]
    async fn a_refused_request_is_split_until_the_refused_ids_stand_alone() {
        let (hotel, rest, stop) = simulated().await;
        let mut ids: Vec<String> = (0..100).map(|_| hotel.create_key_command(false)).collect();
        let unknown = ["0b7e2f6a-3c1d-4e5f-8a9b-0c1d2e3f4a5b", "not-a-guid"];
        ids.insert(17, unknown[0].to_owned());
        ids.insert(80, unknown[1].to_owned());
        let lookup = fetch_within(&rest, ids.clone(), &IdsPerCall::default()).await;
        assert_eq!(lookup.found.len(), 100);
        assert!(
            ids.iter()
                .all(|id| unknown.contains(&id.as_str()) || lookup.found.contains_key(id))
        );
        let mut refused: Vec<&str> = lookup.refused.keys().map(String::as_str).collect();
        refused.sort_unstable();
        assert_eq!(
            refused,
            ["0b7e2f6a-3c1d-4e5f-8a9b-0c1d2e3f4a5b", "not-a-guid"]
        );
        assert!(
            lookup
                .refused
                .values()
                .all(|m| m.starts_with("Invalid CommandIds"))
        );
        // Each split asks both halves again: each of the two refused ids is singled out in
        // at most seven halvings of 102 (the first one may be shared).
        let calls = hotel.answers().len();
        assert!((15..=29).contains(&calls), "{calls} calls");
        assert!(refusals(&hotel) >= 8, "{} refused", refusals(&hotel));
        stop.cancel();
    }

    #[tokio::test]
    async fn a_request_too_heavy_is_split_until_mews_answers() {
        let (hotel, rest, stop) = simulated().await;
        let ids: Vec<String> = (0..100).map(|_| hotel.create_key_command(false)).collect();
        hotel.too_heavy_above(Some(30));
        let per_call = IdsPerCall::default();
        let lookup = fetch_within(&rest, ids.clone(), &per_call).await;
        assert_eq!(lookup.found.len(), 100);
        assert!(lookup.refused.is_empty());
        // 100 → 50 + 50 → four of 25, each answered: 1 + 2 + 4 calls, three answered 408.
        let statuses: Vec<u16> = hotel.answers().iter().map(|c| c.status).collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == 408).count(),
            3,
            "{statuses:?}"
        );
        assert_eq!(statuses.len(), 7, "{statuses:?}");
        // The next lookup asks for 25 at a time from the start: four calls, none refused.
        let again = fetch_within(&rest, ids.clone(), &per_call).await;
        assert_eq!(again.found.len(), 100);
        let statuses: Vec<u16> = hotel.answers().iter().map(|c| c.status).collect();
        assert_eq!(statuses[7..], [200; 4], "{statuses:?}");
        // A single id that is still too heavy is no answer: the caller's outage (the client
        // retries that 408 until the caller gives up, as for any unanswered call).
        hotel.too_heavy_above(Some(0));
        let one = tokio::time::timeout(
            Duration::from_millis(300),
            fetch(Arc::clone(&rest), ids[..1].to_vec(), &per_call),
        )
        .await;
        assert!(one.is_err(), "{one:?}");
        stop.cancel();
    }

    #[tokio::test]
    async fn ids_refused_whole_stop_the_splits_and_are_neither_found_nor_refused() {
        let (hotel, rest, stop) = simulated().await;
        let ids: Vec<String> = (0..1000).map(|i| format!("cmd-{i}")).collect();
        let lookup = fetch_within(&rest, ids, &IdsPerCall::default()).await;
        // None stood alone when the splits ran out: not known to be refused one by one, so
        // their records go on as "not returned", to be healed.
        assert!(lookup.found.is_empty());
        assert!(lookup.refused.is_empty(), "{:?}", lookup.refused.len());
        // The first request and two for each split.
        assert_eq!(hotel.answers().len(), 1 + 2 * MAX_SPLITS);
        stop.cancel();
    }
}

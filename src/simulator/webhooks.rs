//! The simulator's webhook side: General webhooks POSTed to a configured URL, like Mews does,
//! and sent again when they were not accepted (`events/wh-faq.md`: "If an event message fails
//! to be delivered (either HTTP error code is received or the server doesn't respond within 5
//! seconds), the message will be re-sent after a few minutes. If the message isn't received
//! after repeated attempts, it will be discarded.").

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::json;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::events::uuid;

/// The simulated hotel's enterprise id (the one in Mews's documentation example);
/// `config/demo.toml` maps it to its property.
pub const ENTERPRISE_ID: &str = "851df8c8-90f2-4c4a-8e01-a4fc46b25178";

/// Mews's answer deadline: a webhook not answered within it failed.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// How often webhooks go out, and how one that failed is sent again.
#[derive(Debug, Clone, Copy)]
pub struct WebhookRetry {
    /// A new webhook this often.
    pub every: Duration,
    /// A failed one is sent again this long after it failed ("after a few minutes").
    pub after: Duration,
    /// Deliveries of one webhook in all, the first included; then it is discarded. The docs
    /// give no number (an older version said three): three, the fewest that is still
    /// "repeated attempts".
    pub attempts: u32,
}

impl Default for WebhookRetry {
    fn default() -> Self {
        WebhookRetry {
            every: Duration::from_secs(2),
            after: Duration::from_secs(120),
            attempts: 3,
        }
    }
}

/// A webhook that failed, waiting to be sent again.
struct Again {
    at: Instant,
    attempt: u32,
    body: String,
}

/// POSTs a General webhook with one to three events every `retry.every` until `shutdown`, and
/// those that failed again (see the module's header).
pub(super) async fn send(url: String, retry: WebhookRetry, shutdown: CancellationToken) {
    let client = match crate::tls::client_config(&[], None)
        .map_err(|e| e.to_string())
        .and_then(|tls| {
            reqwest::Client::builder()
                .tls_backend_preconfigured((*tls).clone())
                .timeout(ANSWER_WITHIN)
                .build()
                .map_err(|e| e.without_url().to_string())
        }) {
        Ok(client) => client,
        Err(err) => {
            return tracing::error!(error = %err, "simulator: cannot build the webhook client");
        }
    };
    let mut rng = fastrand::Rng::new();
    let integration = uuid(&mut rng);
    let mut failing = false;
    let mut again: VecDeque<Again> = VecDeque::new();
    let mut ticks = tokio::time::interval_at(Instant::now() + retry.every, retry.every);
    // Deliveries go one at a time: while one waits out its 5 s, the ticks it missed are
    // skipped rather than sent in a burst.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let due = again.front().map(|a| a.at);
        let (body, attempt) = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => (new_body(&mut rng, &integration), 1),
            () = sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                match again.pop_front() {
                    Some(a) => (a.body, a.attempt),
                    None => continue,
                }
            }
        };
        let request = client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone());
        let failure = match request.send().await {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some(format!("answered {}", response.status().as_u16())),
            Err(err) => Some(err.without_url().to_string()),
        };
        let Some(failure) = failure else {
            failing = false;
            continue;
        };
        // A run of failures is logged once (the receiver may simply not be up yet, or gone).
        if !failing {
            failing = true;
            tracing::warn!(%failure, "simulator: webhook not accepted; sending it again later");
        }
        if attempt < retry.attempts {
            // Failures come in order of time, and each waits as long: the queue stays sorted.
            again.push_back(Again {
                at: Instant::now() + retry.after,
                attempt: attempt + 1,
                body,
            });
        } else {
            tracing::debug!(attempts = attempt, "simulator: webhook discarded");
        }
    }
}

/// A General webhook with one to three events.
fn new_body(rng: &mut fastrand::Rng, integration: &str) -> String {
    let kinds = [
        "ServiceOrderUpdated",
        "ResourceUpdated",
        "CustomerUpdated",
        "MessageAdded",
        "PaymentUpdated",
    ];
    let events: Vec<_> = (0..rng.usize(1..=3))
        .map(|_| json!({ "Discriminator": kinds[rng.usize(..kinds.len())], "Value": { "Id": uuid(rng) } }))
        .collect();
    json!({ "EnterpriseId": ENTERPRISE_ID, "IntegrationId": integration, "Events": events })
        .to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::http::StatusCode;
    use tokio::sync::mpsc;

    use super::*;

    /// Deliveries of each body so far, as a receiver saw them.
    type Seen = Arc<Mutex<HashMap<String, u32>>>;

    /// A receiver on loopback: `accept(n)` says whether the n-th delivery of a body is taken;
    /// each delivery's body and count are reported on the channel.
    async fn receiver(accept: fn(u32) -> bool) -> (String, mpsc::UnboundedReceiver<(String, u32)>) {
        let seen: Seen = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(move |body: String| {
                let (seen, tx) = (Arc::clone(&seen), tx.clone());
                async move {
                    let n = {
                        let mut seen = seen.lock().unwrap();
                        let n = seen.entry(body.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    let _ = tx.send((body, n));
                    if accept(n) {
                        StatusCode::ACCEPTED
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, rx)
    }

    const FAST: WebhookRetry = WebhookRetry {
        every: Duration::from_millis(40),
        after: Duration::from_millis(100),
        attempts: 3,
    };

    /// Webhooks sent ([`FAST`]) to a [`receiver`] with `accept`, until the token is cancelled.
    async fn sending_to(
        accept: fn(u32) -> bool,
    ) -> (mpsc::UnboundedReceiver<(String, u32)>, CancellationToken) {
        let (url, rx) = receiver(accept).await;
        let stop = CancellationToken::new();
        tokio::spawn(send(url, FAST, stop.clone()));
        (rx, stop)
    }

    /// Deliveries until `done` holds for what was seen (each body's count), or 30 s.
    async fn until(
        rx: &mut mpsc::UnboundedReceiver<(String, u32)>,
        seen: &mut HashMap<String, u32>,
        done: impl Fn(&HashMap<String, u32>) -> bool,
    ) {
        while !done(seen) {
            let (body, n) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .expect("a delivery within 30 s")
                .expect("the receiver runs");
            seen.insert(body, n);
        }
    }

    #[tokio::test]
    async fn a_webhook_answered_503_comes_again_the_same_and_once_taken_never_again() {
        let (mut rx, stop) = sending_to(|n| n >= 2).await;
        let mut seen = HashMap::new();
        until(&mut rx, &mut seen, |s| {
            s.values().filter(|n| **n == 2).count() >= 3
        })
        .await;
        let taken: Vec<String> = seen
            .iter()
            .filter(|(_, n)| **n == 2)
            .map(|(b, _)| b.clone())
            .collect();
        // More webhooks come and are taken; those taken before are not sent again.
        until(&mut rx, &mut seen, |s| {
            s.values().filter(|n| **n == 2).count() >= 8
        })
        .await;
        stop.cancel();
        assert!(taken.iter().all(|b| seen[b] == 2), "{seen:?}");
        assert!(seen.values().all(|n| *n <= 2), "{seen:?}");
    }

    #[tokio::test]
    async fn a_webhook_never_taken_is_discarded_after_three_deliveries() {
        let (mut rx, stop) = sending_to(|_| false).await;
        let mut seen = HashMap::new();
        until(&mut rx, &mut seen, |s| {
            s.values().filter(|n| **n == 3).count() >= 8
        })
        .await;
        stop.cancel();
        // Deliveries go out one at a time in the order they fall due: a fourth delivery of
        // the first body would have been due (at 340 ms) long before the eighth body's third
        // (at about 480 ms), so it would have been seen.
        assert!(seen.values().all(|n| *n <= 3), "{seen:?}");
    }
}

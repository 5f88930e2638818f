//! The simulator's webhook side: General webhooks POSTed to a configured URL, like Mews does.

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::events::uuid;

/// The simulated hotel's enterprise id (the one in Mews's documentation example);
/// `config/demo.toml` maps it to its property.
pub const ENTERPRISE_ID: &str = "851df8c8-90f2-4c4a-8e01-a4fc46b25178";

/// How often a webhook goes out.
const EVERY: Duration = Duration::from_secs(2);

/// POSTs a General webhook with one to three events every [`EVERY`] until `shutdown`.
pub(super) async fn send(url: String, shutdown: CancellationToken) {
    let client = match crate::tls::client_config(&[], None)
        .map_err(|e| e.to_string())
        .and_then(|tls| {
            reqwest::Client::builder()
                .tls_backend_preconfigured((*tls).clone())
                .timeout(Duration::from_secs(5))
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
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + EVERY, EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let kinds = [
            "ServiceOrderUpdated",
            "ResourceUpdated",
            "CustomerUpdated",
            "MessageAdded",
            "PaymentUpdated",
        ];
        let events: Vec<_> = (0..rng.usize(1..=3))
            .map(|_| json!({ "Discriminator": kinds[rng.usize(..kinds.len())], "Value": { "Id": uuid(&mut rng) } }))
            .collect();
        let body = json!({ "EnterpriseId": ENTERPRISE_ID, "IntegrationId": integration, "Events": events });
        let request = client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        // A run of failures is logged once (the receiver may simply not be up yet, or gone).
        match request.send().await {
            Ok(response) if response.status().is_success() => failing = false,
            Ok(response) if !failing => {
                failing = true;
                tracing::warn!(
                    status = response.status().as_u16(),
                    "simulator: webhook not accepted"
                );
            }
            Err(err) if !failing => {
                failing = true;
                tracing::warn!(error = %err.without_url(), "simulator: cannot send a webhook");
            }
            _ => {}
        }
    }
}

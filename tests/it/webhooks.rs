//! Mews webhooks: token-checked, shape-checked, journaled before 202, through the same sinks.

use std::net::SocketAddr;

use reqwest::StatusCode;

use crate::receiver::{Receiver, Reply, free_port};
use crate::support::*;

const TOKEN: &str = "wh-0123456789abcdef0123";
const ENTERPRISE: &str = "851df8c8-90f2-4c4a-8e01-a4fc46b25178";

/// `[webhooks]` on `addr`, and the old-town property mapped to ENTERPRISE.
fn webhooks(config: String, addr: SocketAddr) -> String {
    config.replace(
        &format!("access_token = \"{ACCESS_TOKEN}\"\n"),
        &format!("access_token = \"{ACCESS_TOKEN}\"\nenterprise_id = \"{ENTERPRISE}\"\n"),
    ) + &format!("\n[webhooks]\nlisten = \"{addr}\"\ntoken = \"{TOKEN}\"\nmax_body = \"4KiB\"\n")
}

fn url(addr: SocketAddr, token: Option<&str>) -> String {
    match token {
        Some(token) => format!("http://{addr}/mews/webhooks?Token={token}"),
        None => format!("http://{addr}/mews/webhooks"),
    }
}

fn general(ids: &[&str]) -> String {
    let events: Vec<String> = ids
        .iter()
        .map(|id| format!(r#"{{"Discriminator":"ServiceOrderUpdated","Value":{{"Id":"{id}"}}}}"#))
        .collect();
    format!(
        r#"{{"EnterpriseId":"{ENTERPRISE}","IntegrationId":"c8bee838","Events":[{}]}}"#,
        events.join(",")
    )
}

async fn post(client: &reqwest::Client, url: &str, body: String) -> StatusCode {
    // The relay's listener may still be starting: retry only a refused connection.
    for _ in 0..200 {
        match client.post(url).body(body.clone()).send().await {
            Ok(response) => return response.status(),
            Err(err) if err.is_connect() => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await
            }
            Err(err) => panic!("{err}"),
        }
    }
    panic!("the webhook listener never came up");
}

/// General and Integration webhooks reach the sinks with the documented fields.
#[tokio::test]
async fn general_and_integration_webhooks_reach_the_sinks() {
    let addr = free_port();
    let h = Harness::start_with(|c| webhooks(c, addr)).await;
    let client = http_client();
    assert_eq!(
        post(&client, &url(addr, Some(TOKEN)), general(&["r-1", "r-2"])).await,
        StatusCode::ACCEPTED
    );
    let integration = r#"{"Action":"IntegrationDisabled","Data":{"Integration":{"Id":"9e5e84e9","Name":"Keys"}}}"#;
    assert_eq!(
        post(&client, &url(addr, Some(TOKEN)), integration.into()).await,
        StatusCode::ACCEPTED
    );
    let lines = wait_for_lines(&h.out, 3).await;
    assert_eq!(lines[0]["origin"], "webhook");
    assert_eq!(lines[0]["property"], "old-town", "mapped by enterprise_id");
    assert_eq!(lines[0]["type"], "ServiceOrderUpdated");
    assert_eq!(lines[1]["id"], "r-2");
    assert_eq!(lines[1]["enterprise_id"], ENTERPRISE);
    assert_eq!(lines[1]["integration_id"], "c8bee838");
    assert_eq!(lines[1]["event"]["Value"]["Id"], "r-2");
    assert_eq!(lines[2]["type"], "IntegrationDisabled");
    assert_eq!(lines[2]["id"], "9e5e84e9");
    assert_eq!(
        lines[2]["event"],
        serde_json::from_str::<serde_json::Value>(integration).unwrap()
    );
    h.relay.stop().await;
}

/// Wrong or missing token: 401; oversized: 413; malformed: 400; none of them is journaled.
#[tokio::test]
async fn bad_requests_are_refused_and_journal_nothing() {
    let addr = free_port();
    let h = Harness::start_with(|c| webhooks(c, addr)).await;
    let client = http_client();
    let body = general(&["r-1"]);
    assert_eq!(
        post(&client, &url(addr, None), body.clone()).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(
            &client,
            &url(addr, Some("wh-0123456789abcdef0124")),
            body.clone()
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(&client, &url(addr, Some("wh")), body).await,
        StatusCode::UNAUTHORIZED
    );
    let huge = general(&vec!["x".repeat(100).as_str(); 50]);
    assert_eq!(
        post(&client, &url(addr, Some(TOKEN)), huge).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    for bad in [
        "{",
        "[]",
        r#"{"Events":[]}"#,
        r#"{"EnterpriseId":"e","Events":[{"Value":{}}]}"#,
    ] {
        assert_eq!(
            post(&client, &url(addr, Some(TOKEN)), bad.into()).await,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    assert_eq!(
        post(&client, &url(addr, Some(TOKEN)), general(&["good"])).await,
        StatusCode::ACCEPTED
    );
    let lines = wait_for_lines(&h.out, 1).await;
    assert_eq!(lines.len(), 1, "only the good webhook was journaled");
    assert_eq!(
        (lines[0]["seq"].as_u64(), lines[0]["id"].as_str()),
        (Some(1), Some("good"))
    );
    assert_eq!(
        mews_relay::stats::Stats::get(&h.relay.stats.webhooks_refused),
        3
    );
    assert_eq!(
        mews_relay::stats::Stats::get(&h.relay.stats.webhooks_malformed),
        4
    );
    h.relay.stop().await;
}

/// 100 concurrent POSTs are all journaled exactly once.
#[tokio::test]
async fn concurrent_webhooks_are_each_journaled_once() {
    let addr = free_port();
    let h = Harness::start_with(|c| webhooks(c, addr)).await;
    let client = http_client();
    assert_eq!(
        post(&client, &url(addr, Some(TOKEN)), general(&["warm-up"])).await,
        StatusCode::ACCEPTED
    );
    let posts = (0..100).map(|i| {
        let client = client.clone();
        async move {
            post(
                &client,
                &url(addr, Some(TOKEN)),
                general(&[&format!("c-{i}")]),
            )
            .await
        }
    });
    let statuses = futures_util::future::join_all(posts).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::ACCEPTED),
        "{statuses:?}"
    );
    let lines = wait_for_lines(&h.out, 101).await;
    let ids: std::collections::BTreeSet<&str> =
        lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(lines.len(), 101);
    assert_eq!(ids.len(), 101, "no duplicates");
    h.relay.stop().await;
}

/// `kill -9` right after a 202, before any sink delivered it: the record is delivered after the
/// restart, so the 202 came after a durable commit. Integration warnings reach the log.
#[tokio::test]
async fn a_webhook_answered_202_survives_kill_9() {
    let mut receiver = Receiver::start().await;
    receiver.set_default(Reply::Status(503, "down"));
    let (dir, addr, server) = (
        tempfile::tempdir().unwrap(),
        free_port(),
        MockServer::start().await,
    );
    let sink = format!(
        "[[sink]]\ntype = \"http\"\nname = \"hooks\"\nurl = \"{}\"\nretry_min = \"50ms\"\nretry_max = \"100ms\"\n",
        receiver.url()
    );
    let config = write_config(
        dir.path(),
        &webhooks(config_text(&server.url(), dir.path(), &sink), addr),
    );
    let args = ["run", "--config", config.to_str().unwrap()];
    let mut daemon = Daemon::spawn(&args, dir.path(), "first");
    let client = http_client();
    let disabled = r#"{"Action":"IntegrationDisabled","Data":{"Integration":{"Id":"9e5e84e9","Name":"Keys"}}}"#;
    assert_eq!(
        post(&client, &url(addr, Some(TOKEN)), disabled.into()).await,
        StatusCode::ACCEPTED
    );
    daemon.child.kill().unwrap();
    daemon.wait().await;
    assert!(
        daemon.stderr_text().contains("IntegrationDisabled"),
        "warned:\n{}",
        daemon.stderr_text()
    );
    assert!(
        !daemon.stderr_text().contains(TOKEN),
        "the token is never logged"
    );

    receiver.forget(); // tries the first relay made before the kill (all answered 503)
    receiver.set_default(Reply::Ok);
    // Same state and sinks, no listener: the record must come from the journal alone (and
    // the freed port may meanwhile belong to another test).
    write_config(dir.path(), &config_text(&server.url(), dir.path(), &sink));
    let mut daemon = Daemon::spawn(&args, dir.path(), "second");
    loop {
        let request = receiver.next().await;
        if request.records()[0]["type"] == "IntegrationDisabled" {
            break;
        }
    }
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0), "{}", daemon.stderr_text());
}

/// `simulate --webhook-url` posts General webhooks the relay takes in.
#[tokio::test]
async fn the_simulator_sends_webhooks() {
    let addr = free_port();
    let h = Harness::start_with(|c| webhooks(c, addr)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let config = mews_relay::simulator::SimulatorConfig {
        webhook_url: Some(url(addr, Some(TOKEN))),
        ..Default::default()
    };
    tokio::spawn(mews_relay::simulator::serve(listener, config, stop.clone()));
    let lines = wait_for_lines(&h.out, 1).await;
    assert_eq!(lines[0]["origin"], "webhook");
    assert_eq!(lines[0]["property"], "old-town");
    stop.cancel();
    h.relay.stop().await;
}

/// With `tls_cert` + `tls_key` the listener speaks HTTPS; a client that connects and never
/// starts its TLS handshake neither blocks the others (before: the accept loop waited on it)
/// nor stays past `header_timeout`.
#[tokio::test]
async fn the_listener_serves_https_with_its_own_certificate() {
    let ca = crate::pki::Ca::new("webhook CA");
    let server = ca.server();
    let addr = free_port();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, &server.key_pem).unwrap();
    let h = Harness::start_with(|c| {
        webhooks(c, addr)
            + &format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"\n\n[listeners]\nheader_timeout = \"1s\"\n",
                cert.display(),
                key.display()
            )
    })
    .await;
    crate::listeners::listening(addr).await;
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let roots = vec![CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap()];
    let tls = mews_relay::tls::client_config(&roots, None).unwrap();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .build()
        .unwrap();
    let https = format!(
        "https://127.0.0.1:{}/mews/webhooks?Token={TOKEN}",
        addr.port()
    );
    let answer = tokio::time::timeout(WAIT, post(&client, &https, general(&["tls-1"])))
        .await
        .expect("the HTTPS listener answers while a silent client is connected");
    assert_eq!(answer, StatusCode::ACCEPTED);
    assert_eq!(wait_for_lines(&h.out, 1).await[0]["id"], "tls-1");
    let held = crate::attack::until_closed(&mut silent, WAIT).await;
    assert!(held < WAIT, "the silent client was held {held:?}");
    h.relay.stop().await;
}

//! `wss://` through rustls: a test CA given as `ca_file` is trusted; a wrong CA is a clear,
//! retried error.

use std::path::Path;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::pki::Ca;
use crate::support::*;

/// A `wss://` server that sends one event on each connection and reports every TLS handshake.
async fn start_wss(
    server: rustls::ServerConfig,
) -> (String, mpsc::UnboundedReceiver<Result<(), String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "wss://127.0.0.1:{}/ws/connector",
        listener.local_addr().unwrap().port()
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(err) => return drop(tx.send(Err(err.to_string()))),
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                let _ = tx.send(Ok(()));
                let _ = ws.send(Message::Text(commands(0, 1).into())).await;
                while let Some(Ok(_)) = ws.next().await {}
            });
        }
    });
    (url, rx)
}

fn tls_config(dir: &Path, url: &str, ca_pem: &str) -> String {
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    config_text(url, dir, &file_sink(&dir.join("out.jsonl"))).replace(
        "[connection]\n",
        &format!("[connection]\nca_file = \"{}\"\n", ca.display()),
    )
}

/// With the test CA as `ca_file`, events arrive over `wss://`.
#[tokio::test]
async fn wss_works_with_a_test_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("mews-relay test CA");
    let (url, mut handshakes) = start_wss(ca.server_config(None)).await;
    let relay = Relay::start(&tls_config(dir.path(), &url, &ca.pem()));
    let handshake = tokio::time::timeout(WAIT, handshakes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(handshake, Ok(()));
    let lines = wait_for_lines(&dir.path().join("out.jsonl"), 1).await;
    assert_eq!(lines[0]["id"], "cmd-0");
    relay.stop().await;
}

/// Trusting another CA, the handshake fails with a clear error and is retried.
#[tokio::test]
async fn a_wrong_ca_fails_with_a_clear_error_and_keeps_retrying() {
    let dir = tempfile::tempdir().unwrap();
    let (url, mut handshakes) = start_wss(Ca::new("server CA").server_config(None)).await;
    let config = write_config(
        dir.path(),
        &tls_config(dir.path(), &url, &Ca::new("another CA").pem()),
    );
    let mut daemon = Daemon::spawn(
        &["run", "--config", config.to_str().unwrap()],
        dir.path(),
        "relay",
    );
    for _ in 0..3 {
        let attempt = tokio::time::timeout(WAIT, handshakes.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            attempt.is_err(),
            "the server's certificate must not be trusted"
        );
    }
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0));
    let stderr = daemon.stderr_text();
    assert!(
        stderr.contains("invalid peer certificate") && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
}

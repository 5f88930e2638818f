//! A rejected upgrade (bad tokens, events not enabled) is retried slowly and never leaks a token.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::*;

/// 401 is retried at the cap (backoff_max 400ms: every wait at least 200ms, where the normal
/// schedule starts at 20ms), logged once as an error with a hint, and no token reaches any
/// output.
#[tokio::test]
async fn a_401_is_retried_at_the_cap_and_no_token_is_ever_logged() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = RejectingServer::start(401).await;
    let config = dir.path().join("relay.toml");
    let text = config_text(&server.url(), dir.path(), "[[sink]]\ntype = \"stdout\"\n")
        .replace("backoff_max = \"200ms\"", "backoff_max = \"400ms\"");
    std::fs::write(&config, text).unwrap();
    let mut daemon = Daemon::spawn(
        &["run", "--config", config.to_str().unwrap()],
        dir.path(),
        "relay",
    );

    let mut attempts = vec![server.next().await];
    for _ in 0..3 {
        attempts.push(server.next().await);
    }
    for pair in attempts.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(190),
            "retried too fast after a 401: {gap:?}"
        );
    }
    assert!(
        attempts[0]
            .cookie
            .as_deref()
            .unwrap()
            .contains(CLIENT_TOKEN),
        "the tokens were sent"
    );

    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0));
    let stderr = daemon.stderr_text();
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("rejected the WebSocket upgrade"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "logged once per change of status:\n{stderr}"
    );
    assert!(
        errors[0].contains("401")
            && errors[0].contains("access_token")
            && errors[0].contains("old-town"),
        "{}",
        errors[0]
    );
    for output in [stderr.as_str(), daemon.stdout_text().as_str()] {
        for token in [CLIENT_TOKEN, ACCESS_TOKEN] {
            assert!(
                !output.contains(&token[..16]),
                "a token leaked into the output:\n{output}"
            );
        }
    }
}

/// A 404 on the upgrade is a wrong URL, not a token problem: the one ERROR says so and names
/// the path and the setting, without sending the admin after the tokens.
#[tokio::test]
async fn a_404_on_the_upgrade_names_the_url_not_the_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = RejectingServer::start(404).await;
    let config = stdout_config(dir.path(), &server.url());
    let mut daemon = Daemon::spawn(
        &["run", "--config", config.to_str().unwrap()],
        dir.path(),
        "relay",
    );
    // The second attempt comes after the first was logged.
    server.next().await;
    server.next().await;
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0));
    let stderr = daemon.stderr_text();
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("rejected the WebSocket upgrade"))
        .collect();
    assert_eq!(errors.len(), 1, "logged once:\n{stderr}");
    let line = errors[0];
    assert!(
        line.contains("404")
            && line.contains("the URL is wrong")
            && line.contains("mews.websocket_url")
            && line.contains("/ws/connector"),
        "{line}"
    );
    assert!(
        !line.contains("access_token") && !line.contains("enable WebSocket events"),
        "a 404 is no token problem: {line}"
    );
}

//! Configs: every shipped and valid fixture loads; every invalid one names its key; `check`
//! masks secrets and exits 64 on a bad file.

use std::path::{Path, PathBuf};

use mews_relay::config::{CredentialsDir, Settings};

use crate::support::*;

/// The fixture `name` (under tests/fixtures/config/valid/) written into `dir` with its state and
/// sink files under `dir` and its listeners on free ports, so `check`'s preflight (directories
/// writable, ports free) passes for any user on any machine; token files stay relative to the
/// working directory, as in the fixture.
fn local_fixture(dir: &Path, name: &str) -> PathBuf {
    let mut text = std::fs::read_to_string(format!("tests/fixtures/config/valid/{name}"))
        .unwrap()
        .replace(
            "/var/lib/mews-relay",
            &dir.join("state").display().to_string(),
        )
        .replace(
            "/var/log/mews-relay",
            &dir.join("log").display().to_string(),
        );
    for port in [
        "127.0.0.1:8088",
        "127.0.0.1:9288",
        "127.0.0.1:9187",
        "127.0.0.1:9188",
    ] {
        text = text.replace(port, &crate::receiver::free_port().to_string());
    }
    if !text.contains("[state]") {
        text.push_str(&format!(
            "\n[state]\ndir = \"{}\"\n",
            dir.join("state").display()
        ));
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn tomls(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no TOML files in {dir}");
    files
}

/// The shipped examples and the valid fixtures all load.
#[test]
fn shipped_and_valid_configs_load() {
    for path in tomls("config")
        .into_iter()
        .chain(tomls("tests/fixtures/config/valid"))
    {
        if let Err(err) = Settings::load(&path, &CredentialsDir::default()) {
            panic!("{} should be valid: {err}", path.display());
        }
    }
}

/// Each invalid fixture fails with one line naming the file and exactly the key in its
/// `# expect:` (a `[[property]]` or named `[[sink]]` by its name).
#[test]
fn invalid_configs_name_the_file_and_the_key() {
    for path in tomls("tests/fixtures/config/invalid") {
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .unwrap()
            .strip_prefix("# expect: ")
            .expect("fixture starts with # expect:");
        let err = match Settings::load(&path, &CredentialsDir::default()) {
            Ok(_) => panic!("{} should be invalid", path.display()),
            Err(err) => err,
        };
        // The key once (not `connection.ping_intervall.ping_intervall`), a line number aside.
        let key = match err.key.rsplit_once(" (line ") {
            Some((key, _)) if err.key.ends_with(')') && !err.key.starts_with('(') => key,
            _ => err.key.as_str(),
        };
        assert_eq!(
            key,
            expect,
            "{}: expected key {expect}, got {err}",
            path.display()
        );
        let line = err.to_string();
        assert!(line.starts_with(&path.display().to_string()), "{line}");
        assert!(!line.contains('\n'), "one line: {line}");
        assert!(
            !line.contains("E0D439EE522F4436") && !line.contains("C66EF7B2"),
            "no token in errors: {line}"
        );
    }
}

/// The full fixture's values, defaults and file-held tokens come through.
#[test]
fn values_defaults_and_token_files_are_applied() {
    let s = Settings::load(
        Path::new("tests/fixtures/config/valid/full.toml"),
        &CredentialsDir::default(),
    )
    .unwrap();
    assert_eq!(
        s.mews.client_token.expose(),
        CLIENT_TOKEN,
        "read from the file, newline trimmed"
    );
    assert_eq!(s.properties[0].access_token.expose(), ACCESS_TOKEN);
    assert_eq!(
        s.connection.backoff.max(),
        std::time::Duration::from_secs(120)
    );
    assert_eq!(s.connection.max_message_size, 2 << 20);
    assert_eq!(s.sinks[1].name, "archive");
    assert_eq!(
        s.sinks[1].redact,
        ["command.Data.Email", "command.Data.Telephone"]
    );
    assert_eq!(s.mews.client, "Hotel Chain Keys 2.1");
    assert_eq!(s.mews.rate_limit, 150);
    assert!(s.catch_up.reservations);
    assert_eq!(s.catch_up.margin, std::time::Duration::from_secs(600));
    assert_eq!(s.enrich.timeout, std::time::Duration::from_millis(1500));
    assert_eq!(
        s.commands.as_ref().unwrap().received_after.as_deref(),
        Some("archive")
    );
    let api = s.api.as_ref().unwrap();
    assert_eq!(api.listen.port(), 9288);
    assert_eq!(api.token.expose(), "api-token-of-the-full-fixture");
    assert_eq!(
        s.connection.message_timeout,
        std::time::Duration::from_secs(45)
    );
    assert_eq!(
        s.listeners.header_timeout,
        std::time::Duration::from_secs(5)
    );
    assert_eq!(s.listeners.body_timeout, std::time::Duration::from_secs(8));
    assert_eq!(s.listeners.idle_timeout, std::time::Duration::from_secs(90));
    assert_eq!(s.listeners.max_connections, 128);
    assert_eq!(s.listeners.max_body_in_flight, 16 << 20);
    let minimal = Settings::load(
        Path::new("tests/fixtures/config/valid/minimal.toml"),
        &CredentialsDir::default(),
    )
    .unwrap();
    assert_eq!(
        minimal.connection.ping_interval,
        mews_relay::config::defaults::PING_INTERVAL
    );
    assert_eq!(
        minimal.connection.connect_timeout,
        std::time::Duration::from_secs(10)
    );
    assert_eq!(minimal.connection.max_message_size, 1 << 20);
    {
        use mews_relay::config::defaults;
        assert_eq!(
            minimal.connection.message_timeout,
            defaults::MESSAGE_TIMEOUT
        );
        assert_eq!(minimal.listeners.header_timeout, defaults::HEADER_TIMEOUT);
        assert_eq!(minimal.listeners.body_timeout, defaults::BODY_TIMEOUT);
        assert_eq!(minimal.listeners.idle_timeout, defaults::IDLE_TIMEOUT);
        assert_eq!(minimal.listeners.max_connections, 256);
        assert_eq!(minimal.listeners.max_body_in_flight, 32 << 20);
    }
    assert_eq!(minimal.state.dir, Path::new("/var/lib/mews-relay"));
    assert_eq!(minimal.sinks[0].name, "stdout");
    // Mews's own hosts imply the REST address; catch-up of commands and enrichment are on.
    assert_eq!(
        minimal.mews.api_url.as_deref(),
        Some("https://api.mews-demo.com")
    );
    assert_eq!(
        minimal.mews.client,
        format!("mews-relay {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(minimal.mews.rate_limit, 200);
    assert!(minimal.catch_up.commands && !minimal.catch_up.reservations);
    assert!(minimal.enrich.commands);
    assert_eq!(minimal.enrich.timeout, std::time::Duration::from_secs(2));
    assert_eq!(
        minimal.catch_up.dedupe_window,
        std::time::Duration::from_secs(24 * 3600)
    );
}

/// Tokens missing from the file come from systemd's credentials directory.
#[test]
fn tokens_come_from_the_systemd_credentials_directory() {
    let text = "[mews]\nwebsocket_url = \"wss://ws.mews.com/ws/connector\"\n[[property]]\nname = \"old-town\"\n[[sink]]\ntype = \"stdout\"\n";
    let creds = CredentialsDir(Some(PathBuf::from("tests/fixtures/config/tokens")));
    let s = Settings::from_toml(text, Path::new("creds.toml"), &creds).unwrap();
    assert_eq!(s.mews.client_token.expose(), CLIENT_TOKEN);
    assert_eq!(s.properties[0].access_token.expose(), ACCESS_TOKEN);
    let err =
        Settings::from_toml(text, Path::new("creds.toml"), &CredentialsDir::default()).unwrap_err();
    assert!(err.problem.contains("LoadCredential"), "{err}");
}

/// `check` prints the effective config with secrets masked and exits 0.
#[test]
fn check_prints_the_config_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let full = local_fixture(dir.path(), "full.toml");
    // `Debug` of the settings (what a panic or a debug log would show) masks them too.
    let settings = Settings::load(&full, &CredentialsDir::default()).unwrap();
    let debug = format!("{settings:?}");
    assert!(
        !debug.contains("nats-url-password") && debug.contains("nats://***@127.0.0.1:4222"),
        "{debug}"
    );
    let (code, stdout, stderr) = run_binary(&["check", "--config", full.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("client_token = \"***\""), "{stdout}");
    assert!(stdout.contains("ping_interval = \"15s\""), "{stdout}");
    assert!(stdout.contains("connect_timeout = \"5s\""), "{stdout}");
    assert!(
        !stdout.contains("E0D439EE")
            && !stdout.contains("C66EF7B2")
            && !stdout.contains("CC150C35"),
        "{stdout}"
    );
    for secret in [
        "0123456789",
        "sig=abc",
        "nats-secret-password",
        "nats-url-password",
        "api-token-of-the-full-fixture",
    ] {
        assert!(
            !stdout.contains(secret),
            "header values, webhook token, URL query and NATS password are masked: {stdout}"
        );
    }
    assert!(
        stdout.contains("url = \"https://keys.example.com/mews?***\""),
        "{stdout}"
    );
    let reparsed: toml::Table = stdout.parse().expect("check prints valid TOML");
    assert!(reparsed.contains_key("sink") && reparsed.contains_key("webhooks"));
}

/// `check` and `run` exit 64 on a bad config with one line naming file and key.
#[test]
fn check_and_run_exit_64_naming_the_key() {
    let path = "tests/fixtures/config/invalid/bad_duration.toml";
    for command in ["check", "run"] {
        let (code, stdout, stderr) = run_binary(&[command, "--config", path]);
        assert_eq!(code, 64, "{command}: {stderr}");
        let line = stderr.trim();
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains(path)
                && line.contains("connection.ping_interval")
                && line.contains("\"20s\""),
            "{line}"
        );
        assert!(stdout.is_empty());
    }
    let (code, _, stderr) = run_binary(&["check", "--config", "/nonexistent/mews-relay.toml"]);
    assert_eq!(code, 64);
    assert!(stderr.contains("/nonexistent/mews-relay.toml"), "{stderr}");
}

/// Two properties with one AccessToken would hold two WebSockets for one enterprise: `check`
/// and `run` exit 64 naming both properties and the fix, without the token.
#[test]
fn two_properties_with_one_access_token_exit_64() {
    let path = "tests/fixtures/config/invalid/same_access_token.toml";
    for command in ["check", "run"] {
        let (code, stdout, stderr) = run_binary(&[command, "--config", path]);
        assert_eq!(code, 64, "{command}: {stderr}");
        let line = stderr.trim();
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains(path) && line.contains("property \"airport\".access_token"),
            "{line}"
        );
        assert!(
            line.contains("\"old-town\"") && line.contains("\"airport\""),
            "{line}"
        );
        assert!(line.contains("its own enterprise"), "the fix: {line}");
        assert!(!line.contains("C66EF7B2"), "no token: {line}");
        assert!(stdout.is_empty());
    }
}

/// Left at the default, `[mews] client` draws a warning from `check` on stderr (exit 0, the
/// printed config untouched) that quotes Mews; a config naming its own client gets none.
#[test]
fn check_warns_when_the_mews_client_is_left_at_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let minimal = local_fixture(dir.path(), "minimal.toml");
    let minimal = minimal.to_str().unwrap();
    let (code, stdout, stderr) = run_binary(&["check", "--config", minimal]);
    assert_eq!(code, 0, "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    let warning = warnings[0];
    assert!(
        warning.contains(minimal) && warning.contains("mews.client"),
        "{warning}"
    );
    assert!(
        warning.contains(concat!("\"mews-relay ", env!("CARGO_PKG_VERSION"), "\"")),
        "{warning}"
    );
    assert!(
        warning.contains("Name and version of the client application")
            && warning.contains("These parameters authenticate incoming requests."),
        "quotes Mews: {warning}"
    );
    assert!(warning.contains("client = \""), "the fix: {warning}");
    assert!(!stdout.contains("warning"), "stdout is the config only");
    stdout.parse::<toml::Table>().expect("still valid TOML");
    let full = local_fixture(dir.path(), "full.toml");
    let (code, _, stderr) = run_binary(&["check", "--config", full.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

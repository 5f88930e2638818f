//! `check` does what `run` would (issue 15): every invalid config exits 64 naming its key,
//! directories it cannot write, a read-only file system (with `ReadWritePaths=`), a listen
//! address in use (75), warnings (an unknown event type, a sink key caught in `[sink.headers]`,
//! a shadowed credential), `--quiet` and `--strict`, and no trace left behind. Also the
//! shell completions.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::listeners::{get, listening};
use crate::receiver::free_port;
use crate::support::*;

/// A config with one named file sink at `sink_path`, state in `state_dir`, and `extra`
/// appended; written to `<dir>/relay.toml`.
fn config(dir: &Path, state_dir: &Path, sink_path: &Path, extra: &str) -> PathBuf {
    let sink = format!(
        "[[sink]]\ntype = \"file\"\nname = \"events\"\npath = \"{}\"\n",
        sink_path.display()
    );
    write_config(dir, &(text(state_dir, &sink) + extra))
}

/// `config_text` naming its Mews client (left at the default, that is a warning of its own).
fn text(state_dir: &Path, sinks: &str) -> String {
    config_text("ws://127.0.0.1:9/ws/connector", state_dir, sinks).replacen(
        "[mews]\n",
        "[mews]\nclient = \"check-test 1.0\"\n",
        1,
    )
}

/// Runs the binary with `env` set (and nothing else of systemd's): exit code, stdout, stderr.
fn run_with_env(args: &[&str], env: &[(&str, &Path)]) -> (i32, String, String) {
    let mut command = Command::new(relay_bin());
    command.args(args).env_remove("CREDENTIALS_DIRECTORY");
    for (key, value) in env {
        command.env(key, value);
    }
    let out = command.output().expect("run mews-relay");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The one line of stderr, or a failure showing all of it.
fn one_line(stderr: &str) -> &str {
    let line = stderr.trim();
    assert!(
        !line.is_empty() && !line.contains('\n'),
        "one line: {stderr}"
    );
    line
}

/// The `warning: ` lines of stderr.
fn warnings(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect()
}

/// Every invalid fixture makes the binary's `check` exit 64 with one line naming the file and
/// its `# expect:` key: among them `[metrics]` and `[webhooks]` on one port, a relative
/// `state.dir` and sink path, two file sinks on one file, `websocket_url` without
/// `/ws/connector`, the API host as WebSocket host, demo and production mixed.
#[test]
fn check_exits_64_naming_the_key_of_every_invalid_fixture() {
    let mut files: Vec<PathBuf> = std::fs::read_dir("tests/fixtures/config/invalid")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    for case in [
        "listeners_on_one_address",
        "relative_state_dir",
        "relative_sink_path",
        "two_file_sinks_one_path",
        "websocket_without_path",
        "websocket_on_api_host",
        "demo_and_production_mixed",
    ] {
        assert!(
            files.iter().any(|f| f.file_stem().unwrap() == case),
            "fixture {case} is there"
        );
    }
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text.lines().next().unwrap().strip_prefix("# expect: ");
        let expect = expect.expect("fixture starts with # expect:");
        let file = path.to_str().unwrap();
        let (code, stdout, stderr) = run_binary(&["check", "--config", file]);
        assert_eq!(code, 64, "{file}: {stderr}");
        let line = one_line(&stderr);
        assert!(
            line.starts_with(&format!("mews-relay: config error: {file}: {expect}")),
            "{file} names {expect}: {line}"
        );
        assert!(stdout.is_empty(), "{file}: {stdout}");
    }
}

/// A sink file in a directory that cannot be made (a regular file is in the way: as root,
/// permissions never fail, so this is the case every user meets) or written (mode 0555, tried
/// only when not root): `check` and `run` exit 64 with one line naming the sink by its name,
/// and `run` stops before anything starts (no journal).
#[test]
fn a_sink_directory_that_cannot_be_written_exits_64_naming_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "x").unwrap();
    let state = dir.path().join("state");
    let mut cases = vec![(blocker.join("out/events.jsonl"), "is not a directory")];
    if !nix::unistd::geteuid().is_root() {
        let locked = dir.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
        cases.push((locked.join("events.jsonl"), "may not write in"));
    }
    for (sink_path, problem) in cases {
        let path = config(dir.path(), &state, &sink_path, "");
        for command in ["check", "run"] {
            let (code, stdout, stderr) = run_binary(&[command, "--config", path.to_str().unwrap()]);
            assert_eq!(code, 64, "{command}: {stderr}");
            let line = one_line(&stderr);
            assert!(
                line.contains(path.to_str().unwrap())
                    && line.contains("sink \"events\".path")
                    && line.contains(problem),
                "{command}: {line}"
            );
            assert!(stdout.is_empty(), "{stdout}");
            assert!(!state.exists(), "{command} started nothing");
        }
    }
}

/// Under `ProtectSystem=strict` the sink's directory is read-only: `check` names the sink and
/// the fix, `ReadWritePaths=` with the directory that exists. The read-only mount is made in
/// a mount namespace of its own (`unshare --mount`, root or a user namespace); where neither
/// is allowed the test says so and skips (the message itself is unit-tested in preflight).
#[test]
fn a_read_only_file_system_points_to_read_write_paths() {
    let dir = tempfile::tempdir().unwrap();
    let read_only = dir.path().join("ro");
    std::fs::create_dir(&read_only).unwrap();
    let state = dir.path().join("state");
    let path = config(dir.path(), &state, &read_only.join("out/events.jsonl"), "");
    let mut command = Command::new("unshare");
    command.arg("--mount");
    if !nix::unistd::geteuid().is_root() {
        command.arg("--map-root-user");
    }
    // Exit 99: the read-only mount could not be made, so the relay never ran.
    let script = r#"mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 99; exec "$2" check --config "$3""#;
    command
        .args(["sh", "-c", script, "sh"])
        .arg(&read_only)
        .arg(relay_bin())
        .arg(&path)
        .env_remove("CREDENTIALS_DIRECTORY");
    let out = match command.output() {
        Ok(out) => out,
        Err(err) => return eprintln!("no unshare here ({err}); skipping"),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(99) || stderr.starts_with("unshare:") {
        return eprintln!("cannot make a read-only mount here ({stderr}); skipping");
    }
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    let line = one_line(&stderr);
    assert!(
        line.contains("sink \"events\".path")
            && line.contains("read-only")
            && line.contains(&format!("ReadWritePaths={} ", read_only.display())),
        "{line}"
    );
    assert!(!state.exists(), "check made nothing");
}

/// `check` leaves no trace: a state.dir and a sink directory still to be made are tried (their
/// nearest existing directory takes a temporary directory) and not made; an existing sink
/// file is left as it was.
#[test]
fn check_makes_nothing_that_outlives_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("new/state");
    let sink_dir = dir.path().join("logs");
    let path = config(dir.path(), &state, &sink_dir.join("a/events.jsonl"), "");
    let (code, _, stderr) = run_binary(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["relay.toml"], "nothing made beside the config");
    let existing = dir.path().join("events.jsonl");
    std::fs::write(&existing, "{\"a\":1}\n").unwrap();
    let path = config(dir.path(), dir.path(), &existing, "");
    let (code, _, stderr) = run_binary(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "{\"a\":1}\n");
    assert!(!dir.path().join("journal.redb").exists(), "no journal made");
}

/// A listen address another program holds: `check` and `run` exit 75 (EX_TEMPFAIL, which
/// systemd's Restart= retries) with one line naming the key; free again, `check` passes.
#[test]
fn a_listen_address_in_use_exits_75_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let state = dir.path().join("state");
    let extra = format!("\n[metrics]\nlisten = \"{addr}\"\n");
    let path = config(dir.path(), &state, &dir.path().join("events.jsonl"), &extra);
    for command in ["check", "run"] {
        let (code, stdout, stderr) = run_binary(&[command, "--config", path.to_str().unwrap()]);
        assert_eq!(code, 75, "{command}: {stderr}");
        let line = one_line(&stderr);
        assert!(
            line.contains("metrics.listen")
                && line.contains(&addr.to_string())
                && line.contains("in use"),
            "{command}: {line}"
        );
        assert!(stdout.is_empty());
    }
    drop(taken);
    let (code, _, stderr) = run_binary(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
}

/// `check` beside the relay it checks (ExecStartPre= of a restart, or an admin's look): the
/// ports are the running relay's own, so they are not tried and `check` passes, saying so.
#[tokio::test]
async fn check_beside_the_running_relay_passes() {
    let dir = tempfile::tempdir().unwrap();
    let server = MockServer::start().await;
    let metrics = free_port();
    let text = config_text(&server.url(), dir.path(), "[[sink]]\ntype = \"stdout\"\n")
        + &format!("\n[metrics]\nlisten = \"{metrics}\"\n");
    let path = write_config(dir.path(), &text);
    let config = path.to_str().unwrap();
    let mut daemon = Daemon::spawn(&["run", "--config", config], dir.path(), "relay");
    listening(metrics).await;
    assert_eq!(get(metrics, "/healthz").await.0, 200);
    let (code, stdout, stderr) = run_binary(&["check", "--config", config]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!("mews-relay (pid {}) runs", daemon.child.id())),
        "{stderr}"
    );
    assert!(stdout.contains("valid"), "{stdout}");
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait().await, Some(0));
}

/// `events = ["DeviceComand"]` (a typo) is a warning naming the sink's key with "did you
/// mean": exit 0, the config still printed.
#[test]
fn an_unknown_event_type_is_a_warning_with_did_you_mean() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), dir.path(), &dir.path().join("e.jsonl"), "");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "name = \"events\"\n",
        "name = \"events\"\nevents = [\"DeviceComand\"]\n",
    );
    std::fs::write(&path, text).unwrap();
    let (code, stdout, stderr) = run_binary(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let warnings = warnings(&stderr);
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("sink \"events\".events[0]")
            && warnings[0].contains("\"DeviceComand\"")
            && warnings[0].contains("did you mean \"DeviceCommand\"?"),
        "{}",
        warnings[0]
    );
    assert!(stdout.contains("valid (secrets masked)"), "{stdout}");
}

/// `timeout = "2s"` written after `[sink.headers]` is a header named timeout (its value masked
/// in the output): a warning names it and says to move it above the table.
#[test]
fn a_sink_key_below_its_headers_table_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let sink = "[[sink]]\ntype = \"http\"\nname = \"keys\"\nurl = \"http://127.0.0.1:9/keys\"\n\n[sink.headers]\nAuthorization = \"Bearer abc\"\ntimeout = \"2s\"\n";
    let path = write_config(dir.path(), &text(dir.path(), sink));
    let (code, _, stderr) = run_binary(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let warnings = warnings(&stderr);
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("sink \"keys\".headers.timeout")
            && warnings[0].contains("move it above the [sink.headers] line"),
        "{}",
        warnings[0]
    );
}

/// An inline token shadowing the systemd credential of the same name is a warning naming the
/// key and the credential (and never the token).
#[test]
fn an_inline_token_shadowing_a_credential_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(
        credentials.join("client_token"),
        "OTHER-TOKEN-FROM-CREDENTIAL",
    )
    .unwrap();
    let path = config(dir.path(), dir.path(), &dir.path().join("e.jsonl"), "");
    let args = ["check", "--config", path.to_str().unwrap()];
    let (code, stdout, stderr) = run_with_env(&args, &[("CREDENTIALS_DIRECTORY", &credentials)]);
    assert_eq!(code, 0, "{stderr}");
    let warnings = warnings(&stderr);
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("mews.client_token")
            && warnings[0].contains("shadows the systemd credential \"client_token\""),
        "{}",
        warnings[0]
    );
    for text in [&stdout, &stderr] {
        assert!(
            !text.contains(CLIENT_TOKEN) && !text.contains("OTHER-TOKEN"),
            "{text}"
        );
    }
}

/// `--quiet` (for ExecStartPre=): nothing at all on success, even with a warning; errors
/// still print. `--strict`: the warning is an error, exit 64, printed even with `--quiet`.
#[test]
fn quiet_prints_only_errors_and_strict_makes_warnings_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), dir.path(), &dir.path().join("e.jsonl"), "");
    let config = path.to_str().unwrap();
    let (code, stdout, stderr) = run_binary(&["check", "--quiet", "--config", config]);
    assert_eq!((code, stdout.as_str(), stderr.as_str()), (0, "", ""));
    let (code, _, stderr) = run_binary(&["check", "--strict", "--config", config]);
    assert_eq!(code, 0, "no warning, no error: {stderr}");
    // A typo in events: a warning.
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "name = \"events\"\n",
        "name = \"events\"\nevents = [\"Reservaton\"]\n",
    );
    std::fs::write(&path, text).unwrap();
    let (code, stdout, stderr) = run_binary(&["check", "--quiet", "--config", config]);
    assert_eq!((code, stdout.as_str(), stderr.as_str()), (0, "", ""));
    for flags in [&["--strict"][..], &["--strict", "--quiet"]] {
        let args: Vec<&str> = ["check"]
            .iter()
            .chain(flags)
            .chain(&["--config", config])
            .copied()
            .collect();
        let (code, stdout, stderr) = run_binary(&args);
        assert_eq!(code, 64, "{flags:?}: {stderr}");
        let line = one_line(&stderr);
        assert!(
            line.contains("(--strict)")
                && line.contains("sink \"events\".events[0]")
                && line.contains("did you mean \"Reservation\"?"),
            "{line}"
        );
        assert!(stdout.is_empty(), "{stdout}");
    }
    let bad = "tests/fixtures/config/invalid/bad_duration.toml";
    let (code, _, stderr) = run_binary(&["check", "--quiet", "--config", bad]);
    assert_eq!(code, 64);
    assert!(
        one_line(&stderr).contains("connection.ping_interval"),
        "{stderr}"
    );
}

/// `completions bash|zsh|fish` print a script that knows the subcommands and check's flags
/// (each in its shell's own spelling).
#[test]
fn completions_generate_for_bash_zsh_and_fish() {
    for (shell, strict) in [
        ("bash", "--strict"),
        ("zsh", "'--strict["),
        ("fish", "-l strict"),
    ] {
        let (code, stdout, stderr) = run_binary(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {stderr}");
        for word in [
            "mews-relay",
            "check",
            "run",
            "dead-letters",
            "completions",
            strict,
        ] {
            assert!(stdout.contains(word), "{shell} completions lack {word}");
        }
    }
    let (code, _, stderr) = run_binary(&["completions", "tcsh"]);
    assert_eq!(code, 2, "clap refuses an unknown shell: {stderr}");
}

/// `[api]` on an address other than loopback is a warning (plain HTTP carries its token);
/// on loopback, the default, it is not.
#[test]
fn an_api_listening_beyond_loopback_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let api = |listen: &str| {
        let extra =
            format!("\n[api]\nlisten = \"{listen}\"\ntoken = \"an-api-token-of-24-chars\"\n");
        let path = config(dir.path(), dir.path(), &dir.path().join("e.jsonl"), &extra);
        let text = std::fs::read_to_string(&path).unwrap().replacen(
            "[mews]\n",
            "[mews]\napi_url = \"http://127.0.0.1:9\"\n",
            1,
        );
        std::fs::write(&path, text).unwrap();
        let (code, _, stderr) = run_binary(&["check", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{stderr}");
        warnings(&stderr)
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let far = api("0.0.0.0:0");
    assert_eq!(far.len(), 1, "{far:?}");
    assert!(
        far[0].contains("api.listen")
            && far[0].contains("plain HTTP")
            && !far[0].contains("an-api-token"),
        "{}",
        far[0]
    );
    assert_eq!(api("127.0.0.1:0"), Vec::<String>::new());
}

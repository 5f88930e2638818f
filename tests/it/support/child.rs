//! The relay binary as a child process: plain, or with a file-size limit that plays a full
//! disk; and running it to completion.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use super::WAIT;

/// The binary the child-process tests run: this build's, or `MEWS_RELAY_BIN` (to measure
/// another build under the same tests, e.g. the parent commit's).
pub fn relay_bin() -> PathBuf {
    std::env::var_os("MEWS_RELAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mews-relay")))
}

/// The relay binary as a child process, stdout and stderr captured in files.
pub struct Daemon {
    pub child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Daemon {
    pub fn spawn(args: &[&str], dir: &Path, tag: &str) -> Daemon {
        let stdout = dir.join(format!("{tag}.stdout"));
        let file = File::create(&stdout).unwrap();
        Self::spawn_with(args, dir, tag, Stdio::from(file))
    }

    /// The same with stdout piped to the test (`child.stdout`); `self.stdout` stays empty.
    pub fn spawn_piped(args: &[&str], dir: &Path, tag: &str) -> Daemon {
        Self::spawn_with(args, dir, tag, Stdio::piped())
    }

    /// The same with extra environment variables (stdout to a file).
    pub fn spawn_env(args: &[&str], dir: &Path, tag: &str, env: &[(&str, &str)]) -> Daemon {
        let file = File::create(dir.join(format!("{tag}.stdout"))).unwrap();
        Self::spawn_full(args, dir, tag, Stdio::from(file), env)
    }

    fn spawn_with(args: &[&str], dir: &Path, tag: &str, out: Stdio) -> Daemon {
        Self::spawn_full(args, dir, tag, out, &[])
    }

    /// The same, started by `sh -c '<shell> && exec mews-relay <args>'` (e.g. `ulimit -n 1024`
    /// or `umask 022`); stdout to a file.
    pub fn spawn_in_shell(shell: &str, args: &[&str], dir: &Path, tag: &str) -> Daemon {
        let file = File::create(dir.join(format!("{tag}.stdout"))).unwrap();
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("{shell} && exec \"$0\" \"$@\""))
            .arg(relay_bin())
            .args(args);
        Self::spawn_command(command, dir, tag, Stdio::from(file), &[])
    }

    fn spawn_full(
        args: &[&str],
        dir: &Path,
        tag: &str,
        out: Stdio,
        env: &[(&str, &str)],
    ) -> Daemon {
        let mut command = Command::new(relay_bin());
        command.args(args);
        Self::spawn_command(command, dir, tag, out, env)
    }

    fn spawn_command(
        mut command: Command,
        dir: &Path,
        tag: &str,
        out: Stdio,
        env: &[(&str, &str)],
    ) -> Daemon {
        let stdout = dir.join(format!("{tag}.stdout"));
        let stderr = dir.join(format!("{tag}.stderr"));
        let child = command
            .envs(env.iter().copied())
            .env("RUST_LOG", "debug")
            .env_remove("CREDENTIALS_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn mews-relay");
        Daemon {
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), signal).expect("send signal");
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait(&mut self) -> Option<i32> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "mews-relay did not exit in time; stderr:\n{}",
                    self.stderr_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion (for `check`), returning exit code, stdout and stderr.
pub fn run_binary(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(relay_bin())
        .args(args)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .expect("run mews-relay");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The relay binary as a child whose file-size limit (`RLIMIT_FSIZE`) is `limit` bytes: to
/// the journal, a full disk, until [`FullDisk::make_room`] lifts it. Stdout is piped (nobody
/// reads it until the test takes it), stderr goes to `<dir>/relay.stderr`. Killed on drop.
pub struct FullDisk {
    child: Option<Child>,
    pid: u32,
    stderr: PathBuf,
}

impl FullDisk {
    pub fn spawn(config: &Path, dir: &Path, limit: u64) -> FullDisk {
        use std::os::unix::process::CommandExt;

        let stderr = dir.join("relay.stderr");
        let mut command = Command::new(relay_bin());
        command
            .args(["run", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .env_remove("CREDENTIALS_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).unwrap());
        // SAFETY: only async-signal-safe calls (setrlimit, signal) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // The hard limit stays unlimited so the test can lift the soft one later.
                nix::sys::resource::setrlimit(
                    nix::sys::resource::Resource::RLIMIT_FSIZE,
                    limit,
                    nix::sys::resource::RLIM_INFINITY,
                )?;
                // Without this, passing the limit kills the process instead of failing the write.
                nix::sys::signal::signal(
                    nix::sys::signal::Signal::SIGXFSZ,
                    nix::sys::signal::SigHandler::SigIgn,
                )?;
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn mews-relay");
        FullDisk {
            pid: child.id(),
            child: Some(child),
            stderr,
        }
    }

    /// The relay's stdout, to read.
    pub fn take_stdout(&mut self) -> std::process::ChildStdout {
        self.child.as_mut().and_then(|c| c.stdout.take()).unwrap()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Lifts the limit, as an admin freeing disk space would.
    pub fn make_room(&self) {
        let lifted = Command::new("prlimit")
            .args([
                "--pid",
                &self.pid.to_string(),
                "--fsize=unlimited:unlimited",
            ])
            .status()
            .unwrap();
        assert!(lifted.success());
    }

    /// SIGTERM, and the exit code.
    pub async fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        tokio::task::spawn_blocking(move || child.wait().unwrap().code())
            .await
            .unwrap()
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        // Only while not reaped: the PID may be reused after.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

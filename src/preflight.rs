//! What `check` and `run` try after validation and before anything starts: the directories
//! and files the relay will write, the listen addresses, the TLS set-ups. It touches the disk
//! and the ports (validation does not), and nothing it does outlives it.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::config::{ConfigError, Settings};

/// Why the relay cannot start with these settings.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// The config names something the relay cannot use (a directory it cannot write, an
    /// address not on this machine): fix the config or the unit.
    #[error(transparent)]
    Config(ConfigError),
    /// A listen address is in use now; it may be free later.
    #[error(transparent)]
    Busy(ConfigError),
}

/// What the checks found worth saying that is no problem.
#[derive(Debug, Default)]
pub struct Preflight {
    /// One line each, for `check` to print.
    pub notes: Vec<String>,
}

/// Tries what `run` will need: `state.dir` and every file sink's file writable (or creatable),
/// every listen address bindable (bound and closed at once), the TLS set-ups buildable. The
/// first problem is the error, naming the file and the key like a config error.
pub fn preflight(settings: &Settings) -> Result<Preflight, PreflightError> {
    let err = |key: &str, problem: String| ConfigError {
        file: settings.origin.clone(),
        key: key.to_owned(),
        problem,
    };
    writable_dir(&settings.state.dir)
        .map_err(|problem| PreflightError::Config(err("state.dir", problem)))?;
    for (i, sink) in settings.sinks.iter().enumerate() {
        let Some(path) = sink.kind.file_path() else {
            continue;
        };
        let label = if sink.name == sink.kind.default_name() {
            format!("sink[{i}]")
        } else {
            format!("sink \"{}\"", sink.name)
        };
        writable_file(path)
            .map_err(|problem| PreflightError::Config(err(&format!("{label}.path"), problem)))?;
    }
    crate::tls::client_config(&settings.connection.extra_roots, None).map_err(|e| {
        PreflightError::Config(err(
            "connection.ca_file",
            format!(
                "TLS set-up failed: {e}; point it at the CA certificates Mews is reached through"
            ),
        ))
    })?;
    if let Some(identity) = settings.webhooks.as_ref().and_then(|w| w.tls.as_ref()) {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                b.with_no_client_auth()
                    .with_single_cert(identity.certs.clone(), identity.key.clone_key())
            })
            .map_err(|e| {
                PreflightError::Config(err(
                    "webhooks.tls_key",
                    format!("TLS set-up failed: {e}; the key must be the certificate's own"),
                ))
            })?;
    }
    let mut notes = Vec::new();
    let listeners: Vec<(&str, SocketAddr)> = [
        (
            "webhooks.listen",
            settings.webhooks.as_ref().map(|w| w.listen),
        ),
        (
            "metrics.listen",
            settings.metrics.as_ref().map(|m| m.listen),
        ),
        ("api.listen", settings.api.as_ref().map(|a| a.listen)),
    ]
    .into_iter()
    .filter_map(|(key, addr)| addr.map(|a| (key, a)))
    .collect();
    if listeners.is_empty() {
        return Ok(Preflight { notes });
    }
    match relay_on(&settings.state.dir) {
        // Its own addresses are in use by it: trying them would say nothing.
        Some(pid) => notes.push(format!(
            "{}: the listen addresses were not tried: mews-relay (pid {pid}) runs on this state.dir and holds its own",
            settings.origin.display()
        )),
        None => bind_all(&listeners).map_err(|(key, addr, e)| {
            let problem = bind_problem(addr, &e, key);
            if e.kind() == io::ErrorKind::AddrInUse {
                PreflightError::Busy(err(key, problem))
            } else {
                PreflightError::Config(err(key, problem))
            }
        })?,
    }
    Ok(Preflight { notes })
}

/// Binds every address at once (so two that clash are caught too), then closes them. With
/// SO_REUSEPORT, so that two `check`s at the same moment do not fail each other; the relay's
/// own listeners do not set it, so one that is running still makes this fail.
fn bind_all<'a>(
    listeners: &[(&'a str, SocketAddr)],
) -> Result<(), (&'a str, SocketAddr, io::Error)> {
    let mut bound = Vec::with_capacity(listeners.len());
    for (key, addr) in listeners {
        let socket = (|| {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(*addr),
                socket2::Type::STREAM,
                None,
            )?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            socket.bind(&(*addr).into())?;
            socket.listen(1)?;
            Ok(socket)
        })();
        bound.push(socket.map_err(|e| (*key, *addr, e))?);
    }
    Ok(())
}

/// What a failed bind means, and the fix.
fn bind_problem(addr: SocketAddr, err: &io::Error, key: &str) -> String {
    let fix = match err.kind() {
        io::ErrorKind::AddrInUse => format!(
            "another program (or another mews-relay) listens there; stop it, or change {key}"
        ),
        io::ErrorKind::AddrNotAvailable => format!(
            "that address is not one of this machine's; use one it has, like 127.0.0.1:{}",
            addr.port()
        ),
        io::ErrorKind::PermissionDenied => format!(
            "ports below 1024 need privileges the relay does not have; use a port above 1023 in {key}"
        ),
        _ => format!("change {key}"),
    };
    format!("cannot listen on {addr}: {err}; {fix}")
}

/// A directory the relay can write in, or create. Nothing made here outlives the call: an
/// existing directory takes an unnamed temporary file (`O_TMPFILE`: it never has a name and
/// is gone on close); for a directory still to be made, its nearest existing ancestor takes a
/// temporary directory (`.mews-relay-check-…`), removed before this returns. The missing
/// directories themselves are not made: `run` makes them, and `check` leaves no trace. (Only
/// the ancestor needs to be writable: everything below it the relay makes itself.) A kill
/// between making and removing the temporary directory would leave it behind; nothing else
/// can.
fn writable_dir(dir: &Path) -> Result<(), String> {
    let existing = existing_ancestor(dir)?;
    let tried = if existing == dir {
        tempfile::tempfile_in(dir).map(drop)
    } else {
        let probe = existing.join(format!(
            ".mews-relay-check-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        fs::create_dir(&probe).and_then(|()| fs::remove_dir(&probe))
    };
    tried.map_err(|e| io_problem(&existing, &existing, &e))
}

/// A file the relay can append to: it exists and opens as the file sink opens it (reading and
/// appending, not through a link, nothing written), or its directory is writable or can be
/// made. A problem names the file's directory for `ReadWritePaths=`: the relay makes the file
/// anew there after logrotate moved it.
fn writable_file(path: &Path) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(format!(
            "{} is a symbolic link, and the relay does not write through links; point path at the real file (or remove the link)",
            path.display()
        )),
        Ok(meta) if !meta.is_file() => Err(format!(
            "{} is not a regular file; point path at a file",
            path.display()
        )),
        Ok(_) => fs::OpenOptions::new()
            .read(true)
            .append(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(path)
            .map(drop)
            .map_err(|e| io_problem(path, dir, &e)),
        Err(e) if missing(&e) => writable_dir(dir),
        Err(e) => Err(io_problem(path, dir, &e)),
    }
}

/// `dir` itself or its nearest ancestor that exists, which must be a directory.
fn existing_ancestor(dir: &Path) -> Result<PathBuf, String> {
    let mut probe = dir;
    loop {
        match fs::metadata(probe) {
            Ok(meta) if meta.is_dir() => return Ok(probe.to_owned()),
            Ok(_) => {
                return Err(format!(
                    "cannot create {}: {} is not a directory; choose a path under a directory",
                    dir.display(),
                    probe.display()
                ));
            }
            Err(e) if missing(&e) => match probe.parent() {
                Some(parent) => probe = parent,
                None => return Err(io_problem(probe, probe, &e)),
            },
            Err(e) => return Err(io_problem(probe, probe, &e)),
        }
    }
}

/// The OS error number of `err`, or of the error it wraps (tempfile adds the path).
fn os_error(err: &io::Error) -> Option<i32> {
    err.raw_os_error().or_else(|| {
        let inner = std::error::Error::source(err.get_ref()?)?;
        inner.downcast_ref::<io::Error>()?.raw_os_error()
    })
}

/// Whether `err` says a path is not there: not found, or a file where a directory was
/// expected on the way (the walk up then finds that file and says so).
fn missing(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// `err` met at `at`, with the fix: a read-only file system under systemd is most often
/// `ProtectSystem=strict` without the directory in `ReadWritePaths=`. `rw_dir` is the
/// directory to name there: one that exists (systemd refuses to start a unit whose
/// `ReadWritePaths=` does not), the relay makes what is missing below it.
fn io_problem(at: &Path, rw_dir: &Path, err: &io::Error) -> String {
    let fix = match os_error(err) {
        Some(nix::libc::EROFS) => format!(
            "the file system is read-only here; under systemd (ProtectSystem=strict) add ReadWritePaths={} to the unit (systemctl edit mews-relay), or choose a writable path",
            rw_dir.display()
        ),
        // `check` tries as the user it runs as; under systemd ExecStartPre= runs it as the
        // service's user, by hand it may be another one.
        Some(nix::libc::EACCES | nix::libc::EPERM) => format!(
            "user {} may not write in {}: give the relay's user the directory (chown), or choose another path (by hand, run check as the relay's user; ExecStartPre= does)",
            nix::unistd::geteuid(),
            at.display()
        ),
        _ => "choose a path the relay can write".to_owned(),
    };
    format!("cannot write in {}: {err}; {fix}", at.display())
}

/// The process that holds the journal in `state_dir` (a running relay), from the kernel's
/// table of file locks. `None` when none does, or when that table cannot be read (under
/// systemd's `ProcSubset=pid`, where no other relay of the unit runs anyway).
fn relay_on(state_dir: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(state_dir.join(crate::journal::FILE_NAME)).ok()?;
    let dev = meta.dev();
    // Linux's encoding of a device number (glibc's gnu_dev_major and gnu_dev_minor).
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let wanted = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let locks = fs::read_to_string("/proc/locks").ok()?;
    locks
        .lines()
        .filter(|line| !line.contains("->"))
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // "1: FLOCK  ADVISORY  WRITE 1234 08:01:56789 0 EOF"
            (fields.get(5) == Some(&wanted.as_str()))
                .then(|| fields.get(4)?.parse().ok())
                .flatten()
        })
        .filter(|pid| *pid != std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_only_file_system_points_to_read_write_paths() {
        let err = io::Error::from_raw_os_error(nix::libc::EROFS);
        let problem = io_problem(
            Path::new("/srv/mews/events.jsonl"),
            Path::new("/srv/mews"),
            &err,
        );
        assert!(
            problem.contains("ReadWritePaths=/srv/mews ") && problem.contains("read-only"),
            "{problem}"
        );
        let err = io::Error::from_raw_os_error(nix::libc::EACCES);
        assert!(
            !io_problem(Path::new("/srv"), Path::new("/srv/x"), &err).contains("ReadWritePaths")
        );
    }

    #[test]
    fn directories_are_tried_without_a_trace() {
        let dir = tempfile::tempdir().unwrap();
        writable_dir(dir.path()).unwrap();
        writable_dir(&dir.path().join("a/b/c")).unwrap();
        writable_file(&dir.path().join("d/events.jsonl")).unwrap();
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing left behind"
        );
        let file = dir.path().join("file");
        fs::write(&file, "x").unwrap();
        let err = writable_dir(&file.join("state")).unwrap_err();
        assert!(err.contains("is not a directory"), "{err}");
        writable_file(&file).unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "x", "left as it was");
    }

    #[test]
    fn clashing_or_taken_addresses_fail_to_bind() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let (key, _, err) = bind_all(&[("metrics.listen", addr)]).unwrap_err();
        assert_eq!(
            (key, err.kind()),
            ("metrics.listen", io::ErrorKind::AddrInUse)
        );
        drop(taken);
        let free: SocketAddr = "127.0.0.1:0".parse().unwrap();
        bind_all(&[("a", free), ("b", free)]).unwrap();
    }
}

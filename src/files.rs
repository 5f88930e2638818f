//! Files the relay writes (journal.redb, sink files, rejected.jsonl, dead letters): never opened
//! through a symbolic link, created 0600 in directories created 0700, whatever the umask.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Mode of files the relay creates.
pub const FILE_MODE: u32 = 0o600;
/// Mode of directories the relay creates.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` and its missing parents with mode 0700; existing ones are left as they are.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Opens `path` for appending (and reading, with `read`), creating it with mode 0600. A
/// symbolic link at `path` is refused with an error that names the path: the relay does not
/// write through links, which could point it at a file it must not touch.
pub fn open_append(path: &Path, read: bool) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(read)
        .mode(FILE_MODE)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(|err| explain(err, path))
}

/// Opens `path` for reading and writing, never truncating it; with `create`, a missing file is
/// created with mode 0600. A symbolic link at `path` is refused (see [`open_append`]).
pub fn open_read_write(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(FILE_MODE)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(|err| explain(err, path))
}

/// Opens `path` read-only; a symbolic link at `path` is refused.
pub fn open_read(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(|err| explain(err, path))
}

/// Creates `path`, which must not exist yet (not even as a link), with mode 0600.
pub fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
}

/// Turns the error of a refused link (`ELOOP`) into one that says what to do.
fn explain(err: io::Error, path: &Path) -> io::Error {
    if err.raw_os_error() == Some(nix::libc::ELOOP) {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is a symbolic link, and the relay does not write through links; point the setting at the real file (or remove the link)",
                path.display()
            ),
        )
    } else {
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_are_private_and_links_refused() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        create_private_dir(&nested).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&nested), 0o700);
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        let file = nested.join("f.jsonl");
        drop(open_append(&file, false).unwrap());
        assert_eq!(mode(&file), 0o600);

        let target = dir.path().join("target");
        std::fs::write(&target, "keep me").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = open_append(&link, true).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(err.to_string().contains("link"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    }
}

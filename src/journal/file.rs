//! The journal file itself: opened by the relay (0600, never through a link) and handed to
//! redb, watched for being deleted or replaced, and put back from the open file if it was.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use redb::backends::FileBackend;
use redb::{Database, DatabaseError};

use super::JournalError;
use super::health::{FileProblem, held_name};
use crate::files;

/// Device and inode: which file the relay has open.
pub(super) type Identity = (u64, u64);

/// The open database, and a second, read-only descriptor of the same file: it keeps the data
/// reachable if the path is deleted, holds none of redb's locks, and tells the file's identity.
pub(super) struct Opened {
    pub db: Database,
    pub held: File,
    pub identity: Identity,
}

fn open_error(path: &Path, problem: String) -> JournalError {
    JournalError::Open {
        path: path.to_owned(),
        problem,
    }
}

/// Why the file itself could not be opened.
fn io_problem(path: &Path, err: &io::Error) -> String {
    let link = std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_symlink());
    if link {
        "is a symbolic link, and the relay does not open its journal through links; remove the link (the journal belongs in state.dir itself)".to_owned()
    } else {
        format!(
            "cannot be opened: {err}; check free space and that the mews-relay user owns the state directory"
        )
    }
}

/// Opens (creating it if missing) the journal: mode 0600 whatever the umask, a symbolic link
/// refused; a journal of an older version with another mode is made 0600.
pub(super) fn open(path: &Path) -> Result<Opened, JournalError> {
    let file = files::open_read_write(path, true)
        .map_err(|err| open_error(path, io_problem(path, &err)))?;
    let meta = regular(path, &file)?;
    if meta.permissions().mode() & 0o777 != files::FILE_MODE {
        match file.set_permissions(std::fs::Permissions::from_mode(files::FILE_MODE)) {
            Ok(()) => tracing::info!(
                path = %path.display(),
                was = format!("{:o}", meta.permissions().mode() & 0o777),
                "the journal is now readable by the relay's user only (0600)"
            ),
            Err(err) => tracing::warn!(
                error = %err,
                path = %path.display(),
                "cannot make the journal 0600; chmod 600 it (it holds guests' data)"
            ),
        }
    }
    finish(path, file, (meta.dev(), meta.ino()))
}

/// Opens the journal again (after an I/O error) only if the path still holds the same file:
/// a missing or replaced one is not created or adopted behind the relay's back.
pub(super) fn reopen(path: &Path, identity: Identity) -> Result<Opened, JournalError> {
    let file = files::open_read_write(path, false).map_err(|err| {
        if err.kind() == io::ErrorKind::NotFound {
            open_error(path, "was deleted while the relay runs".into())
        } else {
            open_error(path, io_problem(path, &err))
        }
    })?;
    let meta = regular(path, &file)?;
    if (meta.dev(), meta.ino()) != identity {
        return Err(open_error(
            path,
            "was replaced by another file while the relay runs".into(),
        ));
    }
    finish(path, file, identity)
}

fn regular(path: &Path, file: &File) -> Result<std::fs::Metadata, JournalError> {
    let meta = file
        .metadata()
        .map_err(|err| open_error(path, io_problem(path, &err)))?;
    if !meta.is_file() {
        return Err(open_error(
            path,
            "is not a regular file; move it out of state.dir".into(),
        ));
    }
    Ok(meta)
}

/// Hands the file to redb and opens the second descriptor.
fn finish(path: &Path, file: File, identity: Identity) -> Result<Opened, JournalError> {
    let db = FileBackend::new(file)
        .and_then(|backend| Database::builder().create_with_backend(backend))
        .map_err(|err| open_error(path, db_problem(path, err)))?;
    let held = files::open_read(path).map_err(|err| open_error(path, io_problem(path, &err)))?;
    let meta = held
        .metadata()
        .map_err(|err| open_error(path, io_problem(path, &err)))?;
    if (meta.dev(), meta.ino()) != identity {
        return Err(open_error(
            path,
            "was replaced by another file while it was being opened; start the relay again".into(),
        ));
    }
    Ok(Opened { db, held, identity })
}

fn db_problem(path: &Path, err: DatabaseError) -> String {
    match err {
        DatabaseError::DatabaseAlreadyOpen => {
            "is in use by another mews-relay process; stop it, or give this one its own state.dir"
                .to_owned()
        }
        DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() != io::ErrorKind::InvalidData =>
        {
            format!(
                "cannot be opened: {io}; check free space and that the mews-relay user owns the state directory"
            )
        }
        other => format!(
            "cannot be read ({other}); move it aside (mv {p} {p}.broken) and start again: the relay then starts with an empty journal, and records in the old file that no sink had delivered are not sent",
            p = path.display()
        ),
    }
}

/// Whether the path still holds the file the relay has open. `None` also when it cannot tell
/// (the next commit says what is wrong then).
pub(super) fn check(path: &Path, identity: Identity) -> Option<FileProblem> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if (meta.dev(), meta.ino()) == identity => None,
        Ok(_) => Some(FileProblem::Replaced(path.to_owned())),
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Some(FileProblem::Deleted(path.to_owned()))
        }
        Err(err) => {
            tracing::debug!(error = %err, path = %path.display(), "cannot look at the journal file");
            None
        }
    }
}

/// Copies the journal the relay held (through `held`, after redb closed it) to `path` if
/// nothing is there, else beside it (`journal.redb.held-<unix time>`); never over a file.
/// Returns where it went.
pub(super) fn put_back(path: &Path, held: &File) -> io::Result<PathBuf> {
    let target = match std::fs::symlink_metadata(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => path.to_owned(),
        Err(err) => return Err(err),
        Ok(_) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            held_name(path, now)
        }
    };
    // The whole state directory may have gone (a clean-up job): it is made again, 0700.
    if let Some(dir) = path.parent() {
        files::create_private_dir(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".restoring");
    let tmp = PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    let mut out = files::create_new(&tmp)?;
    let mut input = held;
    let copied = input
        .seek(SeekFrom::Start(0))
        .and_then(|_| io::copy(&mut input, &mut out))
        .and_then(|_| out.sync_all())
        // A link fails if anything appeared at the target meanwhile: nothing is overwritten.
        .and_then(|()| std::fs::hard_link(&tmp, &target));
    let removed = std::fs::remove_file(&tmp);
    copied?;
    removed?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_or_replaced_journal_is_noticed_and_put_back_never_over_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let opened = open(&path).unwrap();
        assert_eq!(check(&path, opened.identity), None);
        let Opened { db, held, identity } = opened;
        drop(db);
        let size = held.metadata().unwrap().len();

        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            check(&path, identity),
            Some(FileProblem::Deleted(path.clone()))
        );
        assert_eq!(put_back(&path, &held).unwrap(), path);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
        assert_eq!(
            check(&path, identity),
            Some(FileProblem::Replaced(path.clone())),
            "a copy is another file"
        );
        let other = put_back(&path, &held).unwrap();
        assert!(
            other.to_string_lossy().contains("journal.redb.held-"),
            "{}",
            other.display()
        );
        assert!(!dir.path().join("journal.redb.restoring").exists());
        drop(open(&path).unwrap().db);
        drop(open(&other).unwrap().db);

        std::fs::remove_dir_all(dir.path()).unwrap();
        assert_eq!(
            put_back(&path, &held).unwrap(),
            path,
            "state.dir made again"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
    }

    #[test]
    fn reopening_adopts_no_other_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let Opened { db, identity, .. } = open(&path).unwrap();
        drop(db);
        drop(reopen(&path, identity).unwrap());
        std::fs::rename(&path, dir.path().join("old")).unwrap();
        let err = reopen(&path, identity).err().unwrap().to_string();
        assert!(err.contains("was deleted"), "{err}");
        assert!(!path.exists(), "not created again");
        drop(open(&path).unwrap());
        let err = reopen(&path, identity).err().unwrap().to_string();
        assert!(err.contains("was replaced"), "{err}");
    }
}

//! Whether the journal can store anything: set by the writer, read by `/readyz`, the webhook
//! receiver and systemd's STATUS= (no disk access on their side).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// The journal file at `state.dir` is not the one the relay has open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileProblem {
    /// Nothing is at the path any more (deleted, or moved away).
    Deleted(PathBuf),
    /// Another file (or a link) is at the path now.
    Replaced(PathBuf),
}

impl std::fmt::Display for FileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileProblem::Deleted(path) => write!(
                f,
                "journal {} was deleted while the relay runs, so nothing is stored any more; restart the relay (or reload it): on the way out it writes the journal it still holds back to that path and goes on from it (to start with an empty journal, stop the relay before removing the file)",
                path.display()
            ),
            FileProblem::Replaced(path) => write!(
                f,
                "journal {} was replaced by another file while the relay runs, so nothing is stored any more; restart (or reload) the relay to use the file now at that path: on the way out it keeps the journal it held beside it as {}.held-<unix time>",
                path.display(),
                path.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            ),
        }
    }
}

/// The journal's health: what is wrong with it, if anything.
#[derive(Debug, Default)]
pub struct JournalHealth {
    /// Set while anything is wrong: the one load the webhook path pays.
    troubled: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    file: Option<FileProblem>,
    /// The last commit failed with this (disk full, I/O error), and none has worked since.
    writes: Option<String>,
}

impl JournalHealth {
    /// Whether the journal stores records now.
    pub fn is_ok(&self) -> bool {
        !self.troubled.load(Ordering::Acquire)
    }

    /// Why the journal stores nothing now (one line, with the fix), or `None`.
    pub fn problem(&self) -> Option<String> {
        if self.is_ok() {
            return None;
        }
        let state = self.lock();
        match (&state.file, &state.writes) {
            (Some(file), _) => Some(file.to_string()),
            (None, Some(error)) => Some(format!(
                "journal writes fail ({error}); free space on the state directory"
            )),
            (None, None) => None,
        }
    }

    /// The file problem, if any.
    pub fn file_problem(&self) -> Option<FileProblem> {
        if self.is_ok() {
            return None;
        }
        self.lock().file.clone()
    }

    /// Whether commits are failing.
    pub fn writes_failing(&self) -> bool {
        !self.is_ok() && self.lock().writes.is_some()
    }

    /// Records what the file check found; true if that changed.
    pub(crate) fn set_file(&self, problem: Option<FileProblem>) -> bool {
        self.update(|state| {
            let changed = state.file != problem;
            state.file = problem;
            changed
        })
    }

    /// Records that commits fail (`Some(error)`) or work again (`None`); true if that changed
    /// whether they fail.
    pub(crate) fn set_writes(&self, error: Option<String>) -> bool {
        if error.is_none() && self.is_ok() {
            return false; // every successful commit comes here: no lock then
        }
        self.update(|state| {
            let changed = state.writes.is_some() != error.is_some();
            state.writes = error;
            changed
        })
    }

    fn update(&self, change: impl FnOnce(&mut State) -> bool) -> bool {
        let mut state = self.lock();
        let changed = change(&mut state);
        self.troubled.store(
            state.file.is_some() || state.writes.is_some(),
            Ordering::Release,
        );
        changed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The name the journal a relay held is kept under when another file took its place.
pub fn held_name(path: &Path, unix_secs: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".held-{unix_secs}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_problem_outranks_failing_writes_and_both_clear() {
        let health = JournalHealth::default();
        assert!(health.is_ok() && health.problem().is_none());
        assert!(health.set_writes(Some("no space left on device".into())));
        assert!(!health.set_writes(Some("still no space".into())));
        let problem = health.problem().unwrap();
        assert!(problem.contains("still no space"), "{problem}");
        assert!(problem.contains("free space"), "{problem}");
        let path = PathBuf::from("/state/journal.redb");
        assert!(health.set_file(Some(FileProblem::Deleted(path.clone()))));
        let problem = health.problem().unwrap();
        assert!(
            problem.contains("/state/journal.redb was deleted"),
            "{problem}"
        );
        assert!(problem.contains("restart the relay"), "{problem}");
        assert!(health.set_writes(None));
        assert!(!health.is_ok());
        assert!(health.set_file(None));
        assert!(health.is_ok() && health.problem().is_none());
        assert_eq!(
            held_name(&path, 7),
            PathBuf::from("/state/journal.redb.held-7")
        );
    }
}

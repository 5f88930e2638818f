//! When the journal cannot store: failed commits (disk full), a journal file deleted or
//! replaced under the running relay, and getting back to storing. The writer records each in
//! [`crate::journal::JournalHealth`], logs one error with the fix, and counts only what is lost.

use std::time::{Duration, Instant};

use super::{Core, Note, Settle, Waiter};
use crate::journal::JournalError;
use crate::journal::health::FileProblem;
use crate::journal::store::Commit;
use crate::record::Record;
use crate::stats::Stats;

/// A run of failed commits, reported once at its start, then every [`REPORT_EVERY`].
pub(super) struct Outage {
    /// Records lost since it began (see [`Core::failed`]).
    pub lost: u64,
    last_report: Instant,
    /// The last failure, for a flush that asks whether everything is stored.
    pub error: String,
}

/// While commits keep failing, a summary is logged this often.
const REPORT_EVERY: Duration = Duration::from_secs(10);

impl Core {
    /// After a failed commit. Records nobody waits for (WebSocket events) are lost and counted
    /// in `records_lost`; those whose sender is told (a webhook answered 503, a catch-up step,
    /// a dead-letter replay) are counted in `records_refused` and come again. Waiters are
    /// told, settles handed back to be tried again, redb reopened after an I/O error.
    pub(super) fn failed(
        &mut self,
        err: &JournalError,
        commit: &Commit,
        unwaited: u64,
        waiters: Vec<(Waiter, usize)>,
        settled: Vec<Settle>,
    ) {
        let lost = unwaited;
        let refused = commit.entries.len() as u64 - unwaited;
        let lost_total = Stats::add(&self.stats.records_lost, lost);
        let refused_total = Stats::add(&self.stats.records_refused, refused);
        // A missing or replaced file was reported once when it was noticed.
        let gone = matches!(err, JournalError::Gone(_));
        if !gone {
            self.stats.journal.set_writes(Some(err.to_string()));
        }
        match &mut self.outage {
            None => {
                if !gone {
                    tracing::error!(
                        error = %err,
                        lost,
                        refused,
                        lost_total,
                        refused_total,
                        "cannot write to the journal: /readyz answers 503 and webhooks 503 (Mews sends them again) until a write works; WebSocket events that arrive meanwhile are lost (counted in mews_relay_records_lost_total); free space on the state directory"
                    );
                }
                self.outage = Some(Outage {
                    lost,
                    last_report: Instant::now(),
                    error: err.to_string(),
                });
            }
            Some(outage) => {
                outage.lost += lost;
                outage.error = err.to_string();
                if !gone && outage.last_report.elapsed() >= REPORT_EVERY {
                    tracing::error!(error = %err, lost = outage.lost, lost_total, refused_total, "still cannot write to the journal; free space on the state directory");
                    outage.last_report = Instant::now();
                } else {
                    tracing::debug!(error = %err, lost, refused, lost_total, "journal commit failed");
                }
            }
        }
        for (waiter, _) in waiters {
            let told = match err {
                JournalError::Gone(problem) => JournalError::Gone(problem.clone()),
                other => JournalError::Write(other.to_string()),
            };
            let _ = waiter.send(Err(told));
        }
        // A settle that was not written is still pending: its enricher gets it again — once
        // the file is back if it is gone (else it would only ask Mews again and again).
        let notes = settled.into_iter().map(|settle| Note {
            seq: settle.seq,
            record: Record {
                command: None,
                enrich_error: None,
                ..settle.record
            },
        });
        if gone {
            self.parked.extend(notes);
        } else {
            for note in notes {
                self.route(note);
            }
            // A failed commit may be the first sign of a file that is gone.
            let problem = self.store.check_file();
            self.file_checked(problem);
        }
        self.reopen_after(err);
    }

    /// redb refuses every later write after an I/O error until the file is reopened.
    fn reopen_after(&self, err: &JournalError) {
        if !matches!(
            err,
            JournalError::Storage {
                source: redb::Error::Io(_) | redb::Error::PreviousIo,
                ..
            }
        ) {
            return;
        }
        match self.store.reopen() {
            Ok(()) => tracing::debug!("journal reopened after an I/O error"),
            Err(err) => tracing::debug!(error = %err, "cannot reopen the journal yet"),
        }
    }

    /// A commit that stored records, or a probe, worked: the journal is healthy again (as far
    /// as writes go).
    pub(super) fn writes_work(&mut self) {
        if self.stats.journal.set_writes(None) {
            tracing::warn!(
                path = %self.store.path().display(),
                lost = self.outage.as_ref().map_or(0, |o| o.lost),
                "journal writes work again"
            );
        }
    }

    /// Every [`super::CHECK_EVERY`]: is the file still the one at the path, and while commits
    /// fail, would one be stored now?
    pub(super) fn check(&mut self) {
        let problem = self.store.check_file();
        let fine = problem.is_none();
        self.file_checked(problem);
        if fine && self.stats.journal.writes_failing() {
            match self.store.probe() {
                Ok(()) => {
                    self.writes_work();
                    self.outage = None;
                }
                Err(err) => {
                    tracing::debug!(error = %err, "the journal still cannot be written");
                    self.reopen_after(&err);
                }
            }
        }
    }

    /// Records what a file check found; a change is logged, a new problem as one error that
    /// says what to do.
    pub(super) fn file_checked(&mut self, problem: Option<FileProblem>) {
        if !self.stats.journal.set_file(problem.clone()) {
            return;
        }
        match problem {
            Some(problem) => tracing::error!(
                last_seq = self.last_seq,
                undelivered = self.last_seq.saturating_sub(self.min_cursor()),
                "{problem}; meanwhile /readyz answers 503, webhooks 503 (Mews sends them again), WebSocket events are lost (counted), and sinks go on delivering what the journal holds"
            ),
            None => {
                tracing::warn!(
                    path = %self.store.path().display(),
                    "the journal file is back at its path; records are stored again"
                );
                for note in std::mem::take(&mut self.parked) {
                    self.route(note);
                }
            }
        }
    }

    /// At the end: if the journal file was deleted or replaced, its contents (every record,
    /// cursor and pending update the relay held) are written back to the path, or beside the
    /// file now there, so the next start loses nothing.
    pub(super) fn put_back_if_gone(&mut self) {
        let problem = self.store.check_file();
        self.file_checked(problem);
        if self.stats.journal.file_problem().is_none() {
            return;
        }
        let path = self.store.path().to_owned();
        match self.store.put_back() {
            Ok(saved) if saved == path => tracing::warn!(
                path = %path.display(),
                last_seq = self.last_seq,
                "the journal this relay held is back at its path; the next start goes on from it"
            ),
            Ok(saved) => tracing::warn!(
                path = %path.display(),
                kept = %saved.display(),
                "the journal this relay held is kept beside the file that replaced it; the next start uses the file at the path (to go on from the kept one instead, stop the relay and move it there)"
            ),
            Err(err) => tracing::error!(
                error = %err,
                path = %path.display(),
                "cannot write back the journal this relay held; what it held and no sink had delivered is lost"
            ),
        }
    }
}

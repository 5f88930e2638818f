//! A run of failures, logged once: the first failure, again only when its kind changes, and the
//! recovery. The caller logs, with its own words and fields; [`FailureLog`] says how loudly.

/// What a failure is to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The first failure of a run: log it at its level.
    First,
    /// Another kind of failure than the last one: log it at its level too.
    Changed,
    /// The same kind again: at debug, with the count.
    Again,
}

impl Seen {
    /// Whether the failure is news (first, or a new kind): logged at its level.
    pub fn is_news(self) -> bool {
        self != Seen::Again
    }
}

/// Consecutive failures and the kind of the last one.
#[derive(Debug, Default)]
pub struct FailureLog {
    kind: Option<String>,
    count: u64,
}

impl FailureLog {
    /// Counts a failure of `kind` (a coarse class, e.g. "connect refused", "HTTP 503").
    pub fn failed(&mut self, kind: &str) -> Seen {
        self.count += 1;
        let seen = match self.kind.as_deref() {
            None => Seen::First,
            Some(last) if last != kind => Seen::Changed,
            Some(_) => Seen::Again,
        };
        if seen != Seen::Again {
            self.kind = Some(kind.to_owned());
        }
        seen
    }

    /// Ends the run: how many failures it had, if there was one (then log the recovery).
    pub fn recovered(&mut self) -> Option<u64> {
        self.kind.take()?;
        Some(std::mem::take(&mut self.count))
    }

    /// Failures in the current run.
    pub fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_news_at_its_start_and_at_each_change_of_kind() {
        let mut log = FailureLog::default();
        assert_eq!(log.recovered(), None, "no run, nothing to report");
        assert_eq!(log.failed("refused"), Seen::First);
        assert_eq!(log.failed("refused"), Seen::Again);
        assert_eq!(log.failed("timeout"), Seen::Changed);
        assert_eq!(log.failed("timeout"), Seen::Again);
        assert_eq!(log.count(), 4);
        assert_eq!(log.recovered(), Some(4));
        assert_eq!(log.recovered(), None);
        assert_eq!(log.failed("timeout"), Seen::First, "a new run");
    }
}

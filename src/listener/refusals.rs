//! Refusal logs that a flood cannot turn into a flood of log lines: the first refusal of each
//! kind is logged in full, the rest are counted and summed up once per interval.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::stats::Stats;

/// How often the counted refusals are summed up in one line.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// The refusals of one listener.
#[derive(Debug)]
pub struct Refusals {
    listener: &'static str,
    /// Per kind: whether it was logged in this interval, and how many were not.
    kinds: Mutex<BTreeMap<&'static str, u64>>,
}

impl Refusals {
    /// Refusals of the listener named `listener` (`webhooks`, `metrics`, `api`).
    pub fn new(listener: &'static str) -> Self {
        Refusals {
            listener,
            kinds: Mutex::new(BTreeMap::new()),
        }
    }

    /// The listener's name.
    pub fn listener(&self) -> &'static str {
        self.listener
    }

    /// Counts a refusal of `kind` in `stats` and calls `log` when it is the first of its kind
    /// since the last summary.
    pub fn refused(&self, stats: &Stats, kind: &'static str, log: impl FnOnce()) {
        stats.listener_refused(self.listener, kind);
        let first = {
            let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
            match kinds.get_mut(kind) {
                Some(quiet) => {
                    *quiet += 1;
                    false
                }
                None => {
                    kinds.insert(kind, 0);
                    true
                }
            }
        };
        if first {
            log();
        }
    }

    /// Logs one line for what was counted and not logged since the last call, and starts a new
    /// interval: the next refusal of each kind is logged in full again.
    pub fn summarize(&self) {
        let kinds = std::mem::take(&mut *self.kinds.lock().unwrap_or_else(|p| p.into_inner()));
        let quiet: Vec<String> = kinds
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(kind, n)| format!("{kind} × {n}"))
            .collect();
        if !quiet.is_empty() {
            tracing::warn!(
                listener = self.listener,
                refused = %quiet.join(", "),
                "more refusals since the first of each kind was logged (counted in mews_relay_listener_refusals_total)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_each_kind_is_logged_then_counted() {
        let stats = Stats::default();
        let refusals = Refusals::new("webhooks");
        let mut logged = 0;
        for _ in 0..1000 {
            refusals.refused(&stats, "unauthorized", || logged += 1);
        }
        refusals.refused(&stats, "malformed", || logged += 1);
        assert_eq!(logged, 2);
        assert_eq!(
            stats.listener_refusals(),
            vec![
                (("webhooks", "malformed"), 1),
                (("webhooks", "unauthorized"), 1000)
            ]
        );
        refusals.summarize();
        refusals.refused(&stats, "unauthorized", || logged += 1);
        assert_eq!(logged, 3, "a new interval logs the first one again");
    }
}

//! Retries: a [`RetryPolicy`] (capped exponential backoff with full jitter, checked once when
//! made), the [`schedules`] the relay uses, and [`Backoff`], the running state drawn from a
//! policy: a pure iterator of delays.

use std::time::Duration;

/// A retry schedule from `min` (the first delay, above zero) to `max` (the largest, at least
/// `min`), checked when made: whoever holds one cannot hold an invalid one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    min: Duration,
    max: Duration,
}

/// Why a [`RetryPolicy`] cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPolicy {
    /// A zero first delay would retry in a hot loop.
    #[error("the first delay must be longer than zero")]
    ZeroMin,
    /// The first delay is larger than the largest.
    #[error("the first delay ({min:?}) is larger than the largest ({max:?})")]
    MinAboveMax {
        /// The first delay.
        min: Duration,
        /// The largest.
        max: Duration,
    },
}

impl RetryPolicy {
    /// A policy from `min` to `max`, or why not.
    pub fn try_new(min: Duration, max: Duration) -> Result<Self, InvalidPolicy> {
        if min.is_zero() {
            Err(InvalidPolicy::ZeroMin)
        } else if min > max {
            Err(InvalidPolicy::MinAboveMax { min, max })
        } else {
            Ok(RetryPolicy { min, max })
        }
    }

    /// A built-in policy, checked when the crate compiles.
    const fn fixed(min: Duration, max: Duration) -> Self {
        assert!(!min.is_zero() && min.as_nanos() <= max.as_nanos());
        RetryPolicy { min, max }
    }

    /// The first delay.
    pub fn min(&self) -> Duration {
        self.min
    }

    /// The largest delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// A fresh schedule of delays under this policy.
    pub fn backoff(&self) -> Backoff {
        self.backoff_with_rng(fastrand::Rng::new())
    }

    /// The same with a seeded generator, for tests.
    pub fn backoff_with_rng(&self, rng: fastrand::Rng) -> Backoff {
        Backoff {
            min: self.min,
            max: self.max,
            attempt: 0,
            rng,
        }
    }
}

/// The relay's own retry schedules, in one place. Two more come from the config:
/// `[connection] backoff_min`/`backoff_max` (reconnects) and an HTTP sink's
/// `retry_min`/`retry_max`.
pub mod schedules {
    use std::time::Duration;

    use super::RetryPolicy;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A sink that failed to deliver (its driver retries the batch), or that cannot read the
    /// journal.
    pub const SINK: RetryPolicy = RetryPolicy::fixed(ms(100), secs(30));
    /// A Mews REST request that failed in a way worth retrying (5xx, 408, lost connection).
    pub const REST: RetryPolicy = RetryPolicy::fixed(ms(250), secs(30));
    /// A 429 without `Retry-After`: waits that only grow ([`super::Backoff::next_growing`]);
    /// Mews says to "fall back to an exponential backoff strategy", and "Pausing for a fixed
    /// amount of time is never recommended".
    pub const REST_THROTTLED: RetryPolicy = RetryPolicy::fixed(ms(500), secs(30));
    /// A catch-up step that failed, while the connection lasts.
    pub const CATCH_UP: RetryPolicy = RetryPolicy::fixed(secs(1), secs(60));
    /// Probes of a REST API that fails enrichment.
    pub const ENRICH_PROBE: RetryPolicy = RetryPolicy::fixed(secs(1), secs(30));
    /// A command update while Mews refuses the property's tokens (401).
    pub const UPDATE_REFUSED: RetryPolicy = RetryPolicy::fixed(secs(5), secs(300));
}

/// Delays for attempt n (from 0) are drawn uniformly from `[min, min(max, min * 2^(n+1))]`:
/// even the first retry is jittered, so connections dropped together (a Mews restart, a
/// thousand properties) do not come back together.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// The ceiling of the current step: `min * 2^(attempt+1)`, capped at `max`.
    fn ceiling(&self) -> Duration {
        let factor = 1u32
            .checked_shl(self.attempt.saturating_add(1).min(31))
            .unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let (low, high) = (low.as_nanos() as u64, high.as_nanos() as u64);
        Duration::from_nanos(if high > low {
            self.rng.u64(low..=high)
        } else {
            low
        })
    }

    /// The delay before the next attempt; each call moves one step up the schedule.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        self.between(self.min, ceiling)
    }

    /// The delay before the next attempt drawn from the upper half of the step's ceiling
    /// (`[ceiling/2, ceiling]`, never below `min`): still jittered, but until the cap each wait
    /// is at least as long as the one before, for a server that asked to back off (a 429
    /// without `Retry-After`); at the cap they stay in its upper half. Moves one step up.
    pub fn next_growing(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        self.between((ceiling / 2).max(self.min), ceiling)
    }

    /// A delay at the cap, jittered over its upper half: for a rejected upgrade, which a quick
    /// retry will not fix. Also moves the schedule to its cap.
    pub fn at_cap(&mut self) -> Duration {
        while self.ceiling() < self.max {
            self.attempt += 1;
        }
        self.between(self.max / 2, self.max)
    }

    /// Back to the first step, after a healthy session.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Iterator for Backoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn schedule(seed: u64) -> Backoff {
        RetryPolicy::try_new(500 * MS, 60_000 * MS)
            .unwrap()
            .backoff_with_rng(fastrand::Rng::with_seed(seed))
    }

    #[test]
    fn delays_stay_between_min_and_a_doubling_ceiling() {
        for seed in 0..50 {
            let delays: Vec<_> = schedule(seed).take(12).collect();
            for (n, d) in delays.iter().enumerate() {
                let ceiling = (500 * MS * 2u32.pow(n as u32 + 1)).min(60_000 * MS);
                assert!(
                    *d >= 500 * MS && *d <= ceiling,
                    "attempt {n}: {d:?} > {ceiling:?}"
                );
            }
        }
    }

    #[test]
    fn the_cap_is_reached_and_never_passed() {
        let mut b = schedule(1);
        let late: Vec<_> = b.by_ref().skip(10).take(100).collect();
        assert!(late.iter().all(|d| *d <= 60_000 * MS));
        // Full jitter: the late delays spread over the whole range, not all at the cap.
        assert!(late.iter().any(|d| *d < 30_000 * MS));
        assert!(late.iter().any(|d| *d > 45_000 * MS));
    }

    #[test]
    fn jitter_spreads_relays_that_start_together() {
        let later: std::collections::HashSet<_> = (0..20).map(|s| schedule(s).nth(5)).collect();
        assert!(later.len() > 15, "{later:?}");
        // The very first retry too: a thousand connections dropped at once spread over
        // [min, 2·min] instead of all coming back after exactly `min`.
        let firsts: Vec<Duration> = (0..1000).map(|s| schedule(s).next_delay()).collect();
        assert!(firsts.iter().all(|d| *d >= 500 * MS && *d <= 1_000 * MS));
        let early = firsts.iter().filter(|d| **d < 750 * MS).count();
        assert!(
            (400..=600).contains(&early),
            "{early} of 1000 in the first half"
        );
    }

    #[test]
    fn reset_returns_to_the_first_step() {
        let mut b = schedule(2);
        b.by_ref().take(8).for_each(drop);
        b.reset();
        let d = b.next_delay();
        assert!(d >= 500 * MS && d <= 1_000 * MS, "{d:?}");
        let d = b.next_delay();
        assert!(d <= 2_000 * MS, "{d:?}");
    }

    #[test]
    fn a_rejected_upgrade_waits_in_the_upper_half_of_the_cap() {
        let mut b = schedule(3);
        for _ in 0..100 {
            let d = b.at_cap();
            assert!(d >= 30_000 * MS && d <= 60_000 * MS, "{d:?}");
        }
        // And the schedule stays at the cap afterwards.
        assert!(b.ceiling() == 60_000 * MS);
    }

    #[test]
    fn growing_delays_never_shrink_and_double_their_range() {
        for seed in 0..50 {
            let mut b = schedule(seed);
            let delays: Vec<Duration> = (0..10).map(|_| b.next_growing()).collect();
            // Ceilings 1 s, 2 s, … 32 s, then the 60 s cap: growing up to there.
            for (n, pair) in delays[..7].windows(2).enumerate() {
                assert!(pair[1] >= pair[0], "seed {seed}, step {n}: {delays:?}");
            }
            for (n, d) in delays.iter().enumerate() {
                let ceiling = (500 * MS * 2u32.pow(n as u32 + 1)).min(60_000 * MS);
                assert!(
                    *d >= (ceiling / 2).max(500 * MS) && *d <= ceiling,
                    "{n}: {d:?}"
                );
            }
        }
        let spread: std::collections::HashSet<_> =
            (0..20).map(|s| schedule(s).next_growing()).collect();
        assert!(spread.len() > 15, "jittered: {spread:?}");
    }

    #[test]
    fn policies_are_checked_when_made() {
        assert_eq!(
            RetryPolicy::try_new(Duration::ZERO, MS),
            Err(InvalidPolicy::ZeroMin)
        );
        assert_eq!(
            RetryPolicy::try_new(2 * MS, MS),
            Err(InvalidPolicy::MinAboveMax {
                min: 2 * MS,
                max: MS
            })
        );
        let policy = RetryPolicy::try_new(MS, 2 * MS).unwrap();
        assert_eq!((policy.min(), policy.max()), (MS, 2 * MS));
    }

    #[test]
    fn equal_min_and_max_give_a_fixed_delay() {
        let mut b = RetryPolicy::try_new(MS, MS)
            .unwrap()
            .backoff_with_rng(fastrand::Rng::with_seed(0));
        assert_eq!(b.next_delay(), MS);
        assert_eq!(b.next_delay(), MS);
    }
}

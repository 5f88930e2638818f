//! A local rate limiter per AccessToken: Mews allows 200 requests per AccessToken within a
//! sliding 30 s window; each request reserves a start time that keeps under it, and a 429's
//! `Retry-After` holds back every later start.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};

/// Keeps requests under `limit` per `window` (sliding): each request reserves a start time.
#[derive(Debug)]
pub struct Limiter {
    state: Mutex<LimiterState>,
}

#[derive(Debug)]
struct LimiterState {
    limit: usize,
    window: Duration,
    /// Start times of the last `limit` requests (some may be in the future), oldest first.
    starts: VecDeque<Instant>,
    /// Nothing starts before this (a 429's `Retry-After`).
    blocked_until: Option<Instant>,
}

impl LimiterState {
    /// The earliest start from `now` that keeps the budget and `Retry-After`.
    fn earliest(&self, now: Instant) -> Instant {
        let mut at = now;
        if let Some(until) = self.blocked_until {
            at = at.max(until);
        }
        if let Some(last) = self.starts.back() {
            at = at.max(*last);
        }
        if self.starts.len() >= self.limit
            && let Some(oldest) = self.starts.front()
        {
            at = at.max(*oldest + self.window);
        }
        at
    }

    /// Records a start at `at` (the oldest leaves once the budget is full).
    fn take(&mut self, at: Instant) {
        if self.starts.len() >= self.limit {
            self.starts.pop_front();
        }
        self.starts.push_back(at);
    }
}

impl Limiter {
    /// At most `limit` requests in any `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        Limiter {
            state: Mutex::new(LimiterState {
                limit: limit.max(1) as usize,
                window,
                starts: VecDeque::new(),
                blocked_until: None,
            }),
        }
    }

    /// Reserves the earliest start that keeps the budget; the caller waits until then.
    pub fn reserve(&self) -> Instant {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let at = s.earliest(Instant::now());
        s.take(at);
        at
    }

    /// The earliest a request could start now (budget and `Retry-After`), without reserving it.
    pub fn next_start(&self) -> Instant {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.earliest(Instant::now())
    }

    /// Nothing starts before `until` (Mews said 429 with `Retry-After`).
    pub fn block_until(&self, until: Instant) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.blocked_until = Some(s.blocked_until.map_or(until, |b| b.max(until)));
    }

    /// Waits for a slot.
    pub async fn acquire(&self) {
        sleep_until(self.reserve()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts starts in every window beginning at a start.
    fn max_in_window(starts: &[Instant], window: Duration) -> usize {
        starts
            .iter()
            .map(|a| {
                starts
                    .iter()
                    .filter(|b| **b >= *a && **b < *a + window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_stays_under_the_budget_in_every_window() {
        let limiter = Limiter::new(200, Duration::from_secs(30));
        let starts: Vec<Instant> = (0..500).map(|_| limiter.reserve()).collect();
        assert_eq!(max_in_window(&starts, Duration::from_secs(30)), 200);
        // The first 200 go at once; the rest wait for the window to move on.
        let t0 = starts[0];
        assert_eq!(starts[199], t0);
        assert_eq!(starts[200], t0 + Duration::from_secs(30));
        assert_eq!(starts[499], t0 + Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_blocks_every_later_start() {
        let limiter = Limiter::new(10, Duration::from_secs(1));
        let t0 = Instant::now();
        limiter.block_until(t0 + Duration::from_secs(7));
        assert_eq!(limiter.reserve(), t0 + Duration::from_secs(7));
        assert_eq!(limiter.reserve(), t0 + Duration::from_secs(7));
    }
}

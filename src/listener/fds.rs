//! File descriptors: the soft limit is raised to the hard one at start, and listeners get only
//! what is left after a reserve for WebSockets, REST calls, sinks and the journal.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors kept for everything but the listeners: standard streams, the runtime, the
/// journal, rejected.jsonl, the log socket and slack.
pub const RESERVE_BASE: u64 = 128;
/// Kept per property (its WebSocket, REST connections) and per sink (its file, connection pool
/// or NATS connection, dead-letter file).
pub const RESERVE_EACH: u64 = 8;
/// No listener is given fewer connections than this, however low the limit.
pub const MIN_PER_LISTENER: usize = 8;

/// The soft `RLIMIT_NOFILE` now.
pub fn soft_limit() -> Option<u64> {
    getrlimit(Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. Returns (before, after), or why not.
pub fn raise_limit() -> Result<(u64, u64), nix::Error> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= hard {
        return Ok((soft, soft));
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok((soft, hard))
}

/// [`raise_limit`], logged: systemd's default soft limit is 1,024, and listeners fit their
/// connection caps to what it is afterwards.
pub fn raise_limit_logged() {
    match raise_limit() {
        Ok((before, after)) if before != after => {
            tracing::debug!(
                before,
                after,
                "raised the soft descriptor limit (RLIMIT_NOFILE)"
            )
        }
        Ok(_) => {}
        Err(err) => {
            tracing::warn!(error = %err, "cannot raise the descriptor limit (RLIMIT_NOFILE); listeners keep within the current one")
        }
    }
}

/// Descriptors kept out of the listeners' reach for this many properties and sinks.
pub fn reserve(properties: usize, sinks: usize) -> u64 {
    RESERVE_BASE + RESERVE_EACH * (properties + sinks) as u64
}

/// Connections each of `listeners` may hold: `configured`, lowered so that all listeners
/// together leave `reserve` descriptors of `limit` free.
pub fn per_listener(
    configured: usize,
    listeners: usize,
    limit: Option<u64>,
    reserve: u64,
) -> usize {
    let Some(limit) = limit else {
        return configured;
    };
    let share = limit.saturating_sub(reserve) / listeners.max(1) as u64;
    let share = usize::try_from(share).unwrap_or(usize::MAX);
    configured.min(share).max(MIN_PER_LISTENER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_share_what_the_reserve_leaves() {
        let reserve = reserve(1, 1);
        assert_eq!(reserve, 144);
        assert_eq!(per_listener(256, 2, Some(1024), reserve), 256);
        assert_eq!(per_listener(1000, 2, Some(1024), reserve), 440);
        assert_eq!(per_listener(256, 2, Some(256), reserve), 56);
        assert_eq!(per_listener(256, 2, Some(64), reserve), MIN_PER_LISTENER);
        assert_eq!(per_listener(256, 2, None, reserve), 256);
    }

    #[test]
    fn the_soft_limit_can_be_raised_to_the_hard_one() {
        let (_, after) = raise_limit().unwrap();
        assert_eq!(Some(after), soft_limit());
    }
}

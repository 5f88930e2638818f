//! Sinks that come and go while the journal stays open (a reload): their positions, durable
//! cursors and shed signals. See `journal/positions.rs` for why positions can grow.

use std::collections::HashMap;

use tokio::sync::watch;

use super::{Core, SinksSet};

impl Core {
    /// Makes `names` the sinks: a new one starts after the last committed record (stored
    /// durably first, as at open); one no longer listed holds nothing back any more.
    pub(super) fn set_sinks(&mut self, names: Vec<String>) -> SinksSet {
        let stored = self.store.set_sinks(&names, self.last_seq)?;
        let last_seq = self.last_seq;
        let added = self
            .positions
            .set(&names, |name| stored.get(name).copied().unwrap_or(last_seq));
        self.synced.retain(|name, _| names.contains(name));
        self.shed.retain(|name, _| names.contains(name));
        let mut started = HashMap::new();
        for name in added {
            let cursor = self.positions.get(&name).unwrap_or(last_seq);
            self.synced.insert(name.clone(), cursor);
            let (tx, shed) = watch::channel(0);
            self.shed.insert(name.clone(), tx);
            started.insert(name, crate::journal::SinkStart { cursor, shed });
        }
        Ok(started)
    }
}

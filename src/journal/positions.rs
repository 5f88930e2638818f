//! Each sink's position in the journal, shared between the sinks (which move their own without
//! a message to the writer) and the writer (which stores them all with its next state
//! transaction and prunes behind the slowest).
//!
//! The set of sinks is not fixed for the life of the journal: a reload can add or remove a
//! sink while the journal stays open (see `Journal::set_sinks`). So the map sits behind a
//! `RwLock` and holds one `Arc<AtomicU64>` per sink: moving a position takes only the read lock
//! (uncontended but for a reload), and only the writer, when it takes a sink on or drops one,
//! takes the write lock. A sink that was dropped and moves late changes nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Each sink's position; cheap to clone (shared).
#[derive(Clone, Debug, Default)]
pub(crate) struct Positions(Arc<RwLock<HashMap<String, Arc<AtomicU64>>>>);

impl Positions {
    /// Positions starting at `cursors`.
    pub fn new(cursors: &HashMap<String, u64>) -> Positions {
        let map = cursors
            .iter()
            .map(|(name, at)| (name.clone(), Arc::new(AtomicU64::new(*at))))
            .collect();
        Positions(Arc::new(RwLock::new(map)))
    }

    /// Moves `sink` to `seq` unless it is already further (or not a sink any more).
    pub fn advance(&self, sink: &str, seq: u64) {
        let map = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(at) = map.get(sink) {
            at.fetch_max(seq, Ordering::AcqRel);
        }
    }

    /// Where `sink` stands, if it is one.
    pub fn get(&self, sink: &str) -> Option<u64> {
        let map = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(sink).map(|at| at.load(Ordering::Acquire))
    }

    /// Every sink's position now.
    pub fn snapshot(&self) -> HashMap<String, u64> {
        let map = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter()
            .map(|(name, at)| (name.clone(), at.load(Ordering::Acquire)))
            .collect()
    }

    /// The slowest sink's position, if there is a sink.
    pub fn min(&self) -> Option<u64> {
        let map = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.values().map(|at| at.load(Ordering::Acquire)).min()
    }

    /// Keeps only the sinks in `names`; one not yet here starts at `start(name)`.
    /// Returns the names taken on.
    pub fn set(&self, names: &[String], start: impl Fn(&str) -> u64) -> Vec<String> {
        let mut map = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|name, _| names.contains(name));
        let mut added = Vec::new();
        for name in names {
            if !map.contains_key(name) {
                map.insert(name.clone(), Arc::new(AtomicU64::new(start(name))));
                added.push(name.clone());
            }
        }
        added
    }
}

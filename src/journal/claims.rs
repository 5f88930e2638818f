//! Work the journal hands out by property: each property's worker claims its share (pending
//! records for an enricher, outgoing updates for an updater); what nobody claimed yet waits.

use std::collections::HashMap;

use tokio::sync::mpsc;

/// Something that belongs to a property.
pub(super) trait ByProperty {
    fn property(&self) -> &str;
}

impl ByProperty for super::Note {
    fn property(&self) -> &str {
        &self.record.property
    }
}

impl ByProperty for super::commands::Outgoing {
    fn property(&self) -> &str {
        &self.property
    }
}

/// Inboxes by property, and what waits for one.
pub(super) struct Claims<T> {
    inboxes: HashMap<String, mpsc::UnboundedSender<T>>,
    unclaimed: Vec<T>,
}

impl<T: ByProperty> Claims<T> {
    /// Starts with `unclaimed` (e.g. what the journal held when it was opened).
    pub fn new(unclaimed: Vec<T>) -> Self {
        Claims {
            inboxes: HashMap::new(),
            unclaimed,
        }
    }

    /// A worker for `property` takes what waits for it, then each new item.
    pub fn claim(&mut self, property: String) -> mpsc::UnboundedReceiver<T> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (mine, rest): (Vec<T>, Vec<T>) = std::mem::take(&mut self.unclaimed)
            .into_iter()
            .partition(|item| item.property() == property);
        self.unclaimed = rest;
        for item in mine {
            let _ = tx.send(item);
        }
        self.inboxes.insert(property, tx);
        rx
    }

    /// Hands an item to its property's worker, or keeps it until one claims it.
    pub fn route(&mut self, item: T) {
        let item = match self.inboxes.get(item.property()) {
            Some(inbox) => match inbox.send(item) {
                Ok(()) => return,
                Err(mpsc::error::SendError(item)) => {
                    self.inboxes.remove(item.property());
                    item
                }
            },
            None => item,
        };
        self.unclaimed.push(item);
    }

    /// What nobody claimed.
    pub fn take_unclaimed(&mut self) -> Vec<T> {
        std::mem::take(&mut self.unclaimed)
    }

    /// How many items wait for a worker.
    pub fn unclaimed(&self) -> usize {
        self.unclaimed.len()
    }
}

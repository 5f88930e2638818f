//! Reload requests: SIGHUP, the API's `POST /v1/reload` or a test hands the running relay a new
//! config (or why the file was refused), numbered; the relay applies what changed and notes the
//! outcome under that number in [`Stats`](crate::stats::Stats) (`last_reload`), where
//! `mews-relay reload`, `status` and `STATUS=` read it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Mutex, mpsc};

use crate::config::{CredentialsDir, Settings};

/// A config for the running relay: valid settings, or why the file was refused.
pub(crate) struct Request {
    /// Its number (from 1): the outcome is noted under it.
    pub generation: u64,
    /// The new settings, or the config error.
    pub config: Result<Arc<Settings>, String>,
}

/// Where reload requests go; cheap to clone. The relay (`app::run`) takes them.
#[derive(Clone)]
pub struct Reloads {
    tx: mpsc::UnboundedSender<Request>,
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Request>>>,
    generation: Arc<AtomicU64>,
}

impl Default for Reloads {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Reloads {
            tx,
            rx: Arc::new(Mutex::new(rx)),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Reloads {
    /// Reads and validates `path` (with systemd's credentials), then hands it over; returns
    /// the request's number and, when the file was refused, why.
    pub fn reload_file(&self, path: &Path) -> (u64, Option<String>) {
        let config = Settings::load(path, &CredentialsDir::from_env())
            .map(Arc::new)
            .map_err(|err| err.to_string());
        let refused = config.as_ref().err().cloned();
        (self.request(config), refused)
    }

    /// Hands a config (or why it was refused) to the relay; returns the request's number.
    pub fn request(&self, config: Result<Arc<Settings>, String>) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        // Nobody takes requests only once the relay has ended; then there is nothing to reload.
        let _ = self.tx.send(Request { generation, config });
        generation
    }

    /// The next request (for the relay's supervisor); `None` never comes while a handle lives.
    pub(crate) async fn next(&self) -> Option<Request> {
        self.rx.lock().await.recv().await
    }
}

//! Long-lived tasks of one kind (sources, sinks, …), each under a name and with a token of its
//! own, so that a reload can stop one and start its successor. A task that ends without being
//! told is a bug the supervisor hears of ([`Crew::ended`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::time::Duration;

use tokio::task::{AbortHandle, Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

/// A task that ended without being told to.
pub(super) struct Unbidden {
    /// Its kind (`source`, `sink`, …).
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// A panic, or `None` for a plain return.
    pub error: Option<JoinError>,
}

/// One named task: its token, and how to abort it.
struct Member {
    task: AbortHandle,
    stop: CancellationToken,
}

/// The tasks of one kind, by name.
pub(super) struct Crew<T> {
    kind: &'static str,
    set: JoinSet<T>,
    /// The current task of each name.
    members: HashMap<String, Member>,
    /// Every task not joined yet, by id.
    names: HashMap<Id, String>,
    /// Tasks told to stop whose end is expected.
    leaving: HashSet<Id>,
    /// Tasks that ended unbidden while a stop waited for another.
    unbidden: VecDeque<Unbidden>,
}

impl<T: Send + 'static> Crew<T> {
    /// An empty crew of `kind`.
    pub fn new(kind: &'static str) -> Self {
        Crew {
            kind,
            set: JoinSet::new(),
            members: HashMap::new(),
            names: HashMap::new(),
            leaving: HashSet::new(),
            unbidden: VecDeque::new(),
        }
    }

    /// Starts `task` as `name`; `stop` is what [`Crew::stop`] and [`Crew::retire`] cancel. A
    /// task already running as `name` is told to stop (as by [`Crew::retire`]): two of one
    /// name would both drive the same sink or connection.
    pub fn spawn<F>(&mut self, name: &str, stop: CancellationToken, task: F)
    where
        F: Future<Output = T> + Send + 'static,
    {
        self.retire(name);
        let task = self.set.spawn(task);
        self.names.insert(task.id(), name.to_owned());
        self.members.insert(name.to_owned(), Member { task, stop });
    }

    /// Cancels `name`'s token and lets it end in its own time (its end is expected).
    pub fn retire(&mut self, name: &str) {
        if let Some(member) = self.members.remove(name) {
            member.stop.cancel();
            self.leaving.insert(member.task.id());
        }
    }

    /// Cancels `name`'s token and waits for it to end, aborting it after `grace`: its output
    /// (`None` if it was not there, panicked or was aborted).
    pub async fn stop(&mut self, name: &str, grace: Duration) -> Option<T> {
        let member = self.members.remove(name)?;
        let target = member.task.id();
        member.stop.cancel();
        self.leaving.insert(target);
        let deadline = tokio::time::Instant::now() + grace;
        let mut aborted = false;
        loop {
            let joined = tokio::select! {
                joined = self.set.join_next_with_id() => joined?,
                () = tokio::time::sleep_until(deadline), if !aborted => {
                    tracing::warn!(task = self.kind, name, ?grace, "did not stop within the grace period; aborted");
                    member.task.abort();
                    aborted = true;
                    continue;
                }
            };
            let (id, result) = match joined {
                Ok((id, output)) => (id, Ok(output)),
                Err(err) => (err.id(), Err(err)),
            };
            let name = self.names.remove(&id).unwrap_or_default();
            if self.leaving.remove(&id) {
                if id == target {
                    return result.ok();
                }
                continue;
            }
            self.members.remove(&name);
            self.unbidden.push_back(Unbidden {
                kind: self.kind,
                name,
                error: result.err(),
            });
        }
    }

    /// The next task that ended unbidden; pending forever while none does.
    pub async fn ended(&mut self) -> Unbidden {
        loop {
            if let Some(unbidden) = self.unbidden.pop_front() {
                return unbidden;
            }
            let Some(joined) = self.set.join_next_with_id().await else {
                return std::future::pending().await;
            };
            let (id, error) = match joined {
                Ok((id, _)) => (id, None),
                Err(err) => (err.id(), Some(err)),
            };
            let name = self.names.remove(&id).unwrap_or_default();
            if self.leaving.remove(&id) {
                continue;
            }
            self.members.remove(&name);
            return Unbidden {
                kind: self.kind,
                name,
                error,
            };
        }
    }

    /// Cancels every task's token.
    pub fn cancel_all(&mut self) {
        for (_, member) in self.members.drain() {
            member.stop.cancel();
            self.leaving.insert(member.task.id());
        }
    }

    /// Waits for every task (told or not) to end; returns each output with its name.
    pub async fn join_all(&mut self) -> Vec<(String, T)> {
        let mut outputs = Vec::new();
        while let Some(joined) = self.set.join_next_with_id().await {
            if let Ok((id, output)) = joined {
                outputs.push((self.names.remove(&id).unwrap_or_default(), output));
            }
        }
        self.members.clear();
        self.names.clear();
        self.leaving.clear();
        outputs
    }

    /// Aborts every task and waits for them.
    pub async fn abort_all(&mut self) {
        self.set.abort_all();
        self.join_all().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_started_under_a_taken_name_stops_the_one_before() {
        let mut crew = Crew::new("sink");
        let (first_stop, second_stop) = (CancellationToken::new(), CancellationToken::new());
        let token = first_stop.clone();
        crew.spawn("file", first_stop.clone(), async move {
            token.cancelled().await;
            "first"
        });
        let token = second_stop.clone();
        crew.spawn("file", second_stop.clone(), async move {
            token.cancelled().await;
            "second"
        });
        assert!(
            first_stop.is_cancelled(),
            "the replaced task is told to stop"
        );
        assert!(!second_stop.is_cancelled());
        assert_eq!(
            crew.stop("file", Duration::from_secs(5)).await,
            Some("second")
        );
        // The first one ends too, and its end was expected.
        tokio::time::timeout(Duration::from_secs(5), crew.join_all())
            .await
            .expect("the replaced task ended");
        assert!(
            crew.unbidden.is_empty(),
            "the replaced task's end is not unbidden"
        );
    }
}

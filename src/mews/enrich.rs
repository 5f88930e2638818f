//! Enrichment of live events: a DeviceCommand event carries only `Id` and `State`; the record
//! gets `command` (Device, Data, CreatedUtc, Creator) from `commands/getAllByIds`.
//!
//! One task per property sits between the WebSocket reader and the journal, so records keep
//! their order. Whatever queued up while a call was out is coalesced into the next call. A
//! record never waits longer than `enrich.timeout` from its arrival: then it goes on without
//! `command` and with `enrich_error`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};
use tracing::Instrument;

use super::{Rest, RestError, details_by_id};
use crate::journal::Journal;
use crate::record::Record;
use crate::stats::Stats;

/// Messages queued for enrichment before the reader waits.
const QUEUE: usize = 1024;
/// At most this many records are coalesced into one round.
const MAX_ROUND: usize = 4096;
/// `CommandIds` takes at most this many ids.
const MAX_IDS: usize = 1000;
/// The event type that is enriched.
pub const DEVICE_COMMAND: &str = "DeviceCommand";

/// Records of one message and when they arrived.
pub struct Pending {
    /// The decoded records, in order.
    pub records: Vec<Record>,
    /// When the message was read.
    pub arrived: Instant,
}

/// One property's enrichment task.
pub struct Enricher {
    /// Its REST client.
    pub rest: Arc<Rest>,
    /// Where records go afterwards.
    pub journal: Journal,
    /// `enrich.timeout`
    pub timeout: Duration,
    /// Counters.
    pub stats: Arc<Stats>,
}

impl Enricher {
    /// Starts the task; it ends, after journaling everything queued, when the sender is dropped.
    pub fn spawn(self) -> (mpsc::Sender<Pending>, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let span = tracing::Span::current();
        (tx, tokio::spawn(self.run(rx).instrument(span)))
    }

    async fn run(self, mut inbox: mpsc::Receiver<Pending>) {
        let mut failing = false;
        while let Some(first) = inbox.recv().await {
            let deadline = first.arrived + self.timeout;
            let mut records = first.records;
            while records.len() < MAX_ROUND {
                match inbox.try_recv() {
                    Ok(more) => records.extend(more.records),
                    Err(_) => break,
                }
            }
            self.enrich(&mut records, deadline, &mut failing).await;
            if self.journal.append(records).await.is_err() {
                break;
            }
        }
    }

    async fn enrich(&self, records: &mut [Record], deadline: Instant, failing: &mut bool) {
        let mut ids: Vec<String> = records
            .iter()
            .filter(|r| wants(r))
            .filter_map(|r| r.id.clone())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return;
        }
        let fetched = match timeout_at(deadline, self.fetch(&ids)).await {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(err)) => Err(format!("commands/getAllByIds failed: {err}")),
            Err(_) => Err(format!(
                "no answer from commands/getAllByIds within enrich.timeout ({})",
                humantime::format_duration(self.timeout)
            )),
        };
        let mut failed = 0u64;
        for record in records.iter_mut().filter(|r| wants(r)) {
            let id = record.id.as_deref().unwrap_or_default();
            match &fetched {
                Ok(found) => match found.get(id) {
                    Some(details) => record.command = Some(details.clone()),
                    None => {
                        record.enrich_error =
                            Some("the command was not returned by commands/getAllByIds".into());
                        failed += 1;
                    }
                },
                Err(err) => {
                    record.enrich_error = Some(err.clone());
                    failed += 1;
                }
            }
        }
        Stats::add(&self.stats.enrich_failed, failed);
        match &fetched {
            Err(err) if !*failing => {
                *failing = true;
                tracing::warn!(error = %err, records = failed, "DeviceCommand records go on without details (enrich_error set) until the Mews REST API answers");
            }
            Ok(_) if *failing => {
                *failing = false;
                tracing::info!("DeviceCommand records are enriched again");
            }
            _ => {}
        }
    }

    /// Details of these commands, in as few calls as `CommandIds` allows, made together.
    async fn fetch(&self, ids: &[String]) -> Result<HashMap<String, Box<RawValue>>, RestError> {
        let calls = ids.chunks(MAX_IDS).map(|chunk| async move {
            let mut body = Map::new();
            body.insert(
                "CommandIds".into(),
                Value::Array(chunk.iter().cloned().map(Value::String).collect()),
            );
            let bytes = self.rest.call("commands/getAllByIds", body).await?;
            details_by_id(&bytes)
        });
        let mut found = HashMap::with_capacity(ids.len());
        for result in join_all(calls).await {
            found.extend(result?);
        }
        Ok(found)
    }
}

/// A live DeviceCommand record without details yet.
fn wants(record: &Record) -> bool {
    record.kind.as_deref() == Some(DEVICE_COMMAND)
        && record.id.is_some()
        && record.command.is_none()
}

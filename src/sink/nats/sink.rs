//! The NATS sink: publishes records into a JetStream stream, each with `Nats-Msg-Id` set to the
//! record key so the stream drops a redelivery; the cursor moves only after the acks.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use async_nats::{ConnectOptions, Event, HeaderMap};

use super::{NatsAuth, NatsSettings};
use crate::failures::FailureLog;
use crate::journal::StoredRecord;
use crate::sink::Sink;

/// Records per write (the cursor moves after each).
const BATCH: usize = 1024;

/// Publishes to one stream through one connection (reconnected by the client).
pub struct NatsSink {
    settings: NatsSettings,
    jetstream: jetstream::Context,
    stream_ready: bool,
    duplicates: u64,
}

impl NatsSink {
    /// Connects in the background: a server that is down now is retried, not fatal.
    pub async fn new(name: &str, settings: &NatsSettings) -> io::Result<Self> {
        let sink_name: Arc<str> = Arc::from(name);
        // The connection's troubles, so each change is logged once, not each reconnect attempt.
        let log = Arc::new(Mutex::new(FailureLog::default()));
        let mut options = ConnectOptions::new()
            .name(concat!("mews-relay ", env!("CARGO_PKG_VERSION")))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .event_callback(move |event| {
                let (sink, log) = (Arc::clone(&sink_name), Arc::clone(&log));
                async move { log_event(&sink, &log, &event) }
            });
        options = match &settings.auth {
            NatsAuth::None => options,
            NatsAuth::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.expose().to_owned())
            }
            NatsAuth::Token(token) => options.token(token.expose().to_owned()),
            NatsAuth::Nkey(seed) => options.nkey(seed.expose().to_owned()),
            NatsAuth::CredsFile(path) => options.credentials_file(path).await?,
        };
        if settings
            .servers
            .iter()
            .any(|s| s.as_str().starts_with("tls://"))
            || !settings.tls.extra_roots.is_empty()
            || settings.tls.client_auth.is_some()
        {
            let tls = settings.tls.client_config().map_err(io::Error::other)?;
            options = options.require_tls(true).tls_client_config((*tls).clone());
        }
        let servers: Vec<async_nats::ServerAddr> = settings
            .servers
            .iter()
            .map(|s| {
                s.as_str().parse().map_err(|err| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("{s}: {err}"))
                })
            })
            .collect::<Result<_, _>>()?;
        let client = options.connect(servers).await.map_err(io::Error::other)?;
        let mut context = jetstream::new(client);
        context.set_timeout(settings.ack_timeout);
        Ok(NatsSink {
            settings: settings.clone(),
            jetstream: context,
            stream_ready: false,
            duplicates: 0,
        })
    }

    /// Finds the stream, or creates it when allowed.
    async fn ensure_stream(&mut self) -> io::Result<()> {
        if self.stream_ready {
            return Ok(());
        }
        let name = &self.settings.stream;
        let result = if self.settings.create_stream {
            self.jetstream
                .get_or_create_stream(stream::Config {
                    name: name.clone(),
                    subjects: vec![stream_subjects(&self.settings.subject)],
                    max_age: self.settings.max_age,
                    duplicate_window: self.settings.duplicate_window,
                    ..Default::default()
                })
                .await
                .map(drop)
                .map_err(|err| format!("cannot create stream \"{name}\": {err}"))
        } else {
            self.jetstream
                .get_stream(name)
                .await
                .map(drop)
                .map_err(|err| format!("stream \"{name}\" is not available ({err}); create it (subjects covering the sink's subject) or set create_stream = true"))
        };
        result.map_err(io::Error::other)?;
        self.stream_ready = true;
        Ok(())
    }

    async fn await_ack(&mut self, ack: PublishAckFuture) -> io::Result<()> {
        let ack = ack
            .await
            .map_err(|err| io::Error::other(format!("no publish acknowledgement: {err}")))?;
        if ack.duplicate {
            self.duplicates += 1;
            tracing::debug!(
                stream_seq = ack.sequence,
                duplicates = self.duplicates,
                "redelivery dropped by the stream as a duplicate"
            );
        }
        Ok(())
    }
}

/// Logs a connection event: a connect, and each change of trouble once.
fn log_event(sink: &str, log: &Mutex<FailureLog>, event: &Event) {
    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
    if let Event::Connected = event {
        log.recovered();
        return tracing::info!(sink, "NATS connected");
    }
    let state = match event {
        Event::ClientError(err) => format!("error: {err}"),
        Event::ServerError(err) => format!("server error: {err}"),
        other => other.to_string(),
    };
    if !log.failed(&state).is_news() {
        return tracing::debug!(sink, event = %state, "NATS event again");
    }
    match event {
        Event::Disconnected => tracing::warn!(
            sink,
            "NATS disconnected; reconnecting (records wait in the journal)"
        ),
        Event::ClientError(_) | Event::ServerError(_) if state.contains("authorization") => {
            tracing::error!(
                sink,
                error = %state,
                "NATS refused the credentials: check the sink's user/password, token, nkey_seed_file or creds_file; retrying"
            )
        }
        Event::ClientError(_) | Event::ServerError(_) => {
            tracing::error!(sink, error = %state, "NATS connection error; retrying")
        }
        _ => tracing::debug!(sink, event = %state, "NATS event"),
    }
}

/// The subjects a created stream covers: the template's fixed leading tokens, then `>`.
pub fn stream_subjects(template: &str) -> String {
    let fixed: Vec<&str> = template
        .split('.')
        .take_while(|t| !t.contains('{'))
        .collect();
    if fixed.is_empty() {
        ">".into()
    } else {
        format!("{}.>", fixed.join("."))
    }
}

/// Fills the subject template; characters NATS does not allow in a token become `_`.
pub fn subject(template: &str, record: &StoredRecord) -> String {
    let token = |value: &str| -> String {
        let cleaned: String = value
            .chars()
            .map(|c| {
                if c.is_whitespace() || matches!(c, '.' | '*' | '>') || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        if cleaned.is_empty() {
            "_".into()
        } else {
            cleaned
        }
    };
    template
        .replace("{property}", &token(&record.property))
        .replace(
            "{type}",
            &token(record.kind.as_deref().unwrap_or("unknown")),
        )
}

impl Sink for NatsSink {
    fn batch_limit(&self) -> usize {
        BATCH
    }

    async fn write(&mut self, records: &[&StoredRecord]) -> io::Result<()> {
        self.ensure_stream().await?;
        let mut in_flight: VecDeque<PublishAckFuture> =
            VecDeque::with_capacity(self.settings.max_in_flight);
        for record in records {
            if in_flight.len() >= self.settings.max_in_flight {
                let oldest = in_flight
                    .pop_front()
                    .ok_or_else(|| io::Error::other("empty queue"))?;
                self.await_ack(oldest).await?;
            }
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", record.key().as_str());
            let ack = self
                .jetstream
                .publish_with_headers(
                    subject(&self.settings.subject, record),
                    headers,
                    record.json.clone(),
                )
                .await
                .map_err(|err| io::Error::other(format!("cannot publish: {err}")))?;
            in_flight.push_back(ack);
        }
        while let Some(ack) = in_flight.pop_front() {
            self.await_ack(ack).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_replace_characters_nats_does_not_allow() {
        let mut record = crate::sink::stdout::test_record("{}");
        record.property = "old town".into();
        record.kind = Some("Odd.Type*>".into());
        assert_eq!(
            subject("mews.{property}.{type}", &record),
            "mews.old_town.Odd_Type__"
        );
        record.kind = None;
        assert_eq!(
            subject("hotels.{property}.{type}", &record),
            "hotels.old_town.unknown"
        );
    }
}

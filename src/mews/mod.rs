//! The Mews REST side: a client per property (rate limited), the catch-up after every
//! (re)connect, and the enrichment of live DeviceCommand events.

pub mod catch_up;
pub mod client;
pub mod enrich;
mod limiter;
mod lookup;
pub mod update;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use catch_up::CatchUpJob;
pub use client::{Rest, RestError, RestSetup, http_client};
pub use enrich::Enricher;
pub use limiter::Limiter;

use crate::config::{Property, Settings};
use crate::stats::Stats;

/// Whether catch-up, enrichment or the command loop will call the REST API (`api_url` known,
/// one of them on).
pub fn wanted(settings: &Settings) -> bool {
    settings.mews.api_url.is_some()
        && (settings.catch_up.commands
            || settings.catch_up.reservations
            || settings.enrich.commands
            || settings.command_loop())
}

/// The REST client for one property, sharing `http` (see [`http_client`]).
pub fn rest_for(
    settings: &Settings,
    property: &Property,
    http: &reqwest::Client,
    stats: &Arc<Stats>,
) -> Option<Arc<Rest>> {
    let api_url = settings
        .mews
        .api_url
        .as_deref()
        .filter(|_| wanted(settings))?;
    Some(Arc::new(Rest::new(RestSetup {
        api_url,
        client_token: settings.mews.client_token.clone(),
        access_token: property.access_token.clone(),
        client: &settings.mews.client,
        limiter: Limiter::new(settings.mews.rate_limit, settings.mews.rate_window),
        http: http.clone(),
        stats: Arc::clone(stats),
    })))
}

/// The dedupe key of a command state: live and catch-up records of it are journaled once.
pub fn command_key(property: &str, id: &str, state: &str) -> String {
    format!("{}{id}\u{1f}{state}", command_key_prefix(property))
}

/// What every command key of `property` starts with.
pub fn command_key_prefix(property: &str) -> String {
    format!("c\u{1f}{property}\u{1f}")
}

/// The dedupe key of a reservation version seen by catch-up.
pub fn reservation_key(property: &str, id: &str, updated: &str) -> String {
    format!("r\u{1f}{property}\u{1f}{id}\u{1f}{updated}")
}

/// `{"Commands":[…],"Cursor":…}` from `commands/getAllActive` and `commands/getAllByIds`.
#[derive(Deserialize)]
struct CommandsPage<'a> {
    #[serde(rename = "Commands", borrow)]
    commands: Vec<&'a RawValue>,
}

/// The parts of a Mews Command the relay reads.
#[derive(Deserialize)]
struct Command<'a> {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "State")]
    state: Option<String>,
    #[serde(rename = "Device", borrow, default)]
    device: Option<&'a RawValue>,
    #[serde(rename = "Data", borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(rename = "CreatedUtc", borrow, default)]
    created_utc: Option<&'a RawValue>,
    #[serde(rename = "Creator", borrow, default)]
    creator: Option<&'a RawValue>,
}

/// A record's `command`: the command's state in Mews when it was fetched, and what a key
/// cutter needs, as Mews sent it.
#[derive(Serialize)]
struct Details<'a> {
    #[serde(rename = "State", skip_serializing_if = "Option::is_none")]
    state: Option<&'a str>,
    #[serde(rename = "Device", skip_serializing_if = "Option::is_none")]
    device: Option<&'a RawValue>,
    #[serde(rename = "Data", skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(rename = "CreatedUtc", skip_serializing_if = "Option::is_none")]
    created_utc: Option<&'a RawValue>,
    #[serde(rename = "Creator", skip_serializing_if = "Option::is_none")]
    creator: Option<&'a RawValue>,
}

impl Command<'_> {
    fn details(&self) -> Result<Box<RawValue>, RestError> {
        let details = Details {
            state: self.state.as_deref(),
            device: self.device,
            data: self.data,
            created_utc: self.created_utc,
            creator: self.creator,
        };
        serde_json::value::to_raw_value(&details).map_err(|err| RestError::Decode(err.to_string()))
    }
}

/// One command of a response: id, state, and the details for the record's `command`.
type Parsed = (String, Option<String>, Box<RawValue>);

/// Parses a commands response.
fn parse_commands(body: &[u8]) -> Result<Vec<Parsed>, RestError> {
    let page: CommandsPage<'_> =
        serde_json::from_slice(body).map_err(|err| RestError::Decode(err.to_string()))?;
    page.commands
        .into_iter()
        .map(|raw| {
            let command: Command<'_> = serde_json::from_str(raw.get())
                .map_err(|err| RestError::Decode(format!("a command: {err}")))?;
            let details = command.details()?;
            Ok((command.id, command.state, details))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_details_keep_what_a_key_cutter_needs() {
        let body = br#"{"Commands":[{"Id":"a","State":"Pending","CreatedUtc":"2026-11-23T10:00:00Z",
            "Creator":{"LastName":"Desk"},"Device":{"Id":"d","Name":"Cutter","Type":"KeyCutter"},
            "Data":{"KeyCount":2,"LockIds":["101"],"LastName":"Novak","Email":"j@example.com"}}],"Cursor":null}"#;
        let commands = parse_commands(body).unwrap();
        assert_eq!(commands.len(), 1);
        let (id, state, details) = &commands[0];
        assert_eq!((id.as_str(), state.as_deref()), ("a", Some("Pending")));
        let details: serde_json::Value = serde_json::from_str(details.get()).unwrap();
        assert_eq!(details["State"], "Pending");
        assert_eq!(details["Device"]["Type"], "KeyCutter");
        assert_eq!(details["Data"]["LockIds"][0], "101");
        assert_eq!(details["CreatedUtc"], "2026-11-23T10:00:00Z");
        assert_eq!(details["Creator"]["LastName"], "Desk");
        assert!(details.get("Id").is_none());
    }

    #[test]
    fn a_response_without_commands_is_an_error() {
        assert!(matches!(parse_commands(b"{}"), Err(RestError::Decode(_))));
        assert!(matches!(
            parse_commands(b"<html>"),
            Err(RestError::Decode(_))
        ));
    }
}

//! What a reload changes: the running config and the new one compared, section by section, into
//! the properties to reconnect, the sinks to restart, the listeners to bind again — or the
//! reason everything must start again (the journal's own settings changed).

use std::collections::BTreeMap;

use crate::config::Settings;

/// Names to stop and to start; a changed one is in both.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Changes {
    /// Running ones that go (removed or changed).
    pub stop: Vec<String>,
    /// New ones to start (added or changed).
    pub start: Vec<String>,
}

impl Changes {
    /// `old` and `new` items by name, compared with `same`.
    fn between<T>(
        old: &BTreeMap<&str, &T>,
        new: &BTreeMap<&str, &T>,
        same: impl Fn(&T, &T) -> bool,
    ) -> Changes {
        let stop = old
            .iter()
            .filter(|(name, was)| new.get(*name).is_none_or(|now| !same(was, now)))
            .map(|(name, _)| (*name).to_owned())
            .collect();
        let start = new
            .iter()
            .filter(|(name, now)| old.get(*name).is_none_or(|was| !same(was, now)))
            .map(|(name, _)| (*name).to_owned())
            .collect();
        Changes { stop, start }
    }

    fn is_empty(&self) -> bool {
        self.stop.is_empty() && self.start.is_empty()
    }

    /// `"added: a; changed: b; removed: c"`.
    fn describe(&self) -> String {
        let changed: Vec<&str> = self
            .start
            .iter()
            .filter(|n| self.stop.contains(n))
            .map(String::as_str)
            .collect();
        let added: Vec<&str> = self
            .start
            .iter()
            .filter(|n| !self.stop.contains(n))
            .map(String::as_str)
            .collect();
        let removed: Vec<&str> = self
            .stop
            .iter()
            .filter(|n| !self.start.contains(n))
            .map(String::as_str)
            .collect();
        [("added", added), ("changed", changed), ("removed", removed)]
            .into_iter()
            .filter(|(_, names)| !names.is_empty())
            .map(|(what, names)| format!("{what} {}", names.join(", ")))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A listener of the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum ListenerKind {
    /// `[webhooks]`
    Webhooks,
    /// `[metrics]`
    Metrics,
    /// `[api]`
    Api,
}

impl ListenerKind {
    /// Its name in logs and plans.
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Webhooks => "webhooks",
            ListenerKind::Metrics => "metrics",
            ListenerKind::Api => "api",
        }
    }

    /// Every listener.
    pub const ALL: [ListenerKind; 3] = [
        ListenerKind::Webhooks,
        ListenerKind::Metrics,
        ListenerKind::Api,
    ];
}

/// What a reload does.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Why everything stops and starts again, if it must.
    pub restart_all: Option<String>,
    /// Properties (each its WebSocket, enricher and updater) to stop and start.
    pub properties: Changes,
    /// Sinks to stop and start.
    pub sinks: Changes,
    /// Listeners to stop and start (or only stop, or only start).
    pub listeners: Vec<ListenerKind>,
}

impl Plan {
    /// From `old`, running, to `new`. `journal_lost`: the journal file was deleted or replaced
    /// (a full restart puts it back).
    pub fn between(old: &Settings, new: &Settings, journal_lost: bool) -> Plan {
        if let Some(why) = restart_all(old, new, journal_lost) {
            return Plan {
                restart_all: Some(why),
                ..Plan::default()
            };
        }
        Plan {
            restart_all: None,
            properties: properties(old, new),
            sinks: sinks(old, new),
            listeners: ListenerKind::ALL
                .into_iter()
                .filter(|kind| listener_changed(*kind, old, new))
                .collect(),
        }
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.restart_all.is_none()
            && self.properties.is_empty()
            && self.sinks.is_empty()
            && self.listeners.is_empty()
    }

    /// What it does, in a line: `properties: changed old-town; sinks: added keys`.
    pub fn describe(&self) -> String {
        if let Some(why) = &self.restart_all {
            return format!("everything restarted ({why})");
        }
        if self.is_empty() {
            return "nothing changed".into();
        }
        let mut parts = Vec::new();
        if !self.properties.is_empty() {
            parts.push(format!(
                "properties (reconnected): {}",
                self.properties.describe()
            ));
        }
        if !self.sinks.is_empty() {
            parts.push(format!("sinks: {}", self.sinks.describe()));
        }
        if !self.listeners.is_empty() {
            let names: Vec<&str> = self.listeners.iter().map(|l| l.name()).collect();
            parts.push(format!("listeners restarted: {}", names.join(", ")));
        }
        parts.join("; ")
    }
}

/// Why the journal must be opened again (and so everything restarts), if it must: where it
/// lives and its size, the dedupe window and the command loop are set when it opens.
fn restart_all(old: &Settings, new: &Settings, journal_lost: bool) -> Option<String> {
    if journal_lost {
        return Some("the journal file was deleted or replaced: it is put back".into());
    }
    if old.state != new.state {
        return Some("[state] changed".into());
    }
    if old.catch_up.dedupe_window != new.catch_up.dedupe_window {
        return Some("catch_up.dedupe_window changed".into());
    }
    if old.command_loop() != new.command_loop() {
        return Some("the command loop was turned on or off ([commands], [api])".into());
    }
    None
}

/// Properties to reconnect: each whose own table changed, and all of them when what every
/// connection uses changed (`[mews]`, `[connection]`, `[catch_up]`, `[enrich]`).
fn properties(old: &Settings, new: &Settings) -> Changes {
    let shared_changed = old.mews != new.mews
        || old.connection != new.connection
        || old.catch_up != new.catch_up
        || old.enrich != new.enrich;
    fn by_name(s: &Settings) -> BTreeMap<&str, &crate::config::Property> {
        s.properties.iter().map(|p| (p.name.as_str(), p)).collect()
    }
    Changes::between(&by_name(old), &by_name(new), |a, b| {
        !shared_changed && a == b
    })
}

/// Sinks to restart: each whose table changed, the one `[commands] received_after` names when
/// that changes, all of them when `state.dir` moves (their dead letters live there).
fn sinks(old: &Settings, new: &Settings) -> Changes {
    let acks = |s: &Settings| -> Option<String> {
        s.commands.as_ref().and_then(|c| c.received_after.clone())
    };
    let (old_acks, new_acks) = (acks(old), acks(new));
    fn by_name(s: &Settings) -> BTreeMap<&str, &crate::sink::SinkSettings> {
        s.sinks.iter().map(|k| (k.name.as_str(), k)).collect()
    }
    Changes::between(&by_name(old), &by_name(new), |a, b| {
        let acks_moved = old_acks != new_acks
            && [&old_acks, &new_acks]
                .iter()
                .any(|named| named.as_deref() == Some(a.name.as_str()));
        a == b && !acks_moved
    })
}

/// Whether `kind` must be bound again: its table, `[listeners]`, or what it serves changed.
fn listener_changed(kind: ListenerKind, old: &Settings, new: &Settings) -> bool {
    if old.listeners != new.listeners {
        return true;
    }
    match kind {
        ListenerKind::Webhooks => {
            let enterprises = |s: &Settings| -> Vec<(String, Option<String>)> {
                s.properties
                    .iter()
                    .map(|p| (p.name.clone(), p.enterprise_id.clone()))
                    .collect()
            };
            old.webhooks != new.webhooks
                || (new.webhooks.is_some() && enterprises(old) != enterprises(new))
        }
        ListenerKind::Metrics => old.metrics != new.metrics,
        // The API reads the running config for everything else.
        ListenerKind::Api => old.api != new.api,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CredentialsDir;
    use std::path::Path;

    const CLIENT: &str = "E0D439EE522F44368DC78E1BFB03710C-D24FB11DBE31D4621C4817E028D9E1D";
    const TOKEN_A: &str = "C66EF7B239D24632943D115EDE9CB810-EA00F8FD8294692C940F6B5A8F9453D";
    const TOKEN_B: &str = "D66EF7B239D24632943D115EDE9CB810-EA00F8FD8294692C940F6B5A8F9453D";

    fn config(extra: &str) -> Settings {
        let text = format!(
            "[mews]\nwebsocket_url = \"wss://ws.mews-demo.com/ws/connector\"\nclient_token = \"{CLIENT}\"\n\
             [[property]]\nname = \"a\"\naccess_token = \"{TOKEN_A}\"\n\
             [[property]]\nname = \"b\"\naccess_token = \"{TOKEN_B}\"\n\
             [state]\ndir = \"/tmp/plan\"\n\
             [[sink]]\ntype = \"stdout\"\n{extra}"
        );
        Settings::from_toml(&text, Path::new("t.toml"), &CredentialsDir::default()).unwrap()
    }

    #[test]
    fn the_same_config_changes_nothing() {
        let plan = Plan::between(&config(""), &config(""), false);
        assert!(plan.is_empty(), "{plan:?}");
        assert_eq!(plan.describe(), "nothing changed");
    }

    #[test]
    fn an_added_sink_starts_alone() {
        let plan = Plan::between(
            &config(""),
            &config("[[sink]]\ntype = \"file\"\nname = \"keys\"\npath = \"/tmp/k.jsonl\"\n"),
            false,
        );
        assert!(plan.properties.is_empty() && plan.listeners.is_empty());
        assert_eq!(plan.sinks.start, ["keys"]);
        assert!(plan.sinks.stop.is_empty());
        assert_eq!(plan.describe(), "sinks: added keys");
    }

    #[test]
    fn a_changed_token_reconnects_that_property_only() {
        let old = config("");
        let mut new = config("");
        new.properties[1].access_token = crate::secret::Secret::new(
            "E66EF7B239D24632943D115EDE9CB810-EA00F8FD8294692C940F6B5A8F9453D",
        );
        let plan = Plan::between(&old, &new, false);
        assert_eq!(
            plan.properties,
            Changes {
                stop: vec!["b".into()],
                start: vec!["b".into()]
            }
        );
        assert!(plan.sinks.is_empty());
        assert_eq!(plan.describe(), "properties (reconnected): changed b");
    }

    #[test]
    fn what_every_connection_uses_reconnects_all_and_the_journal_restarts_everything() {
        let old = config("");
        let new = config("[connection]\nping_interval = \"7s\"\n");
        let plan = Plan::between(&old, &new, false);
        assert_eq!(plan.properties.start, ["a", "b"]);
        let moved = config("").clone();
        let mut moved2 = moved.clone();
        moved2.state.dir = "/tmp/elsewhere".into();
        assert!(Plan::between(&moved, &moved2, false).restart_all.is_some());
        assert!(Plan::between(&old, &old, true).restart_all.is_some());
        let api = config(
            "[api]\nlisten = \"127.0.0.1:9188\"\ntoken = \"0123456789abcdef0123456789abcdef\"\n",
        );
        assert!(
            Plan::between(&old, &api, false).restart_all.is_some(),
            "the command loop starts"
        );
    }

    #[test]
    fn listeners_restart_when_their_table_changes() {
        let old = config("[metrics]\nlisten = \"127.0.0.1:9187\"\n");
        let new = config("[metrics]\nlisten = \"127.0.0.1:9190\"\n");
        let plan = Plan::between(&old, &new, false);
        assert_eq!(plan.listeners, [ListenerKind::Metrics]);
        assert!(plan.properties.is_empty() && plan.sinks.is_empty());
    }
}

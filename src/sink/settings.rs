//! The `[[sink]]` tables: the keys every sink has (`name`, `type`, `events`, `properties`,
//! `redact`) read and checked here, once; `type` hands the rest to that type's settings.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::registry::{At, BuildEnv, SinkType};
use super::{AnySink, BuildError, SinkKind, TYPES};
use crate::config::shared::{ConfigError, Ctx, check_name, fields_of};
use crate::config::suggest;
use crate::journal::StoredRecord;
use crate::stats::Stats;

/// One `[[sink]]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SinkSettings {
    /// Unique name; it keys the sink's cursor in the journal.
    pub name: String,
    /// What kind of sink, with its own settings.
    #[serde(flatten)]
    pub kind: SinkKind,
    /// Only these event types (`Type`); empty means all.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// Only these properties; empty means all.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<String>,
    /// JSON paths in the record (`command.Data.Email`) replaced by `"***"` for this sink.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
}

/// The shared keys serde reads (`type` and `redact` are taken out of the table first).
#[derive(Debug, Deserialize)]
pub(crate) struct SharedKeys {
    name: Option<String>,
    events: Option<Vec<String>>,
    properties: Option<Vec<String>>,
}

/// Validates the `[[sink]]` tables; `properties` are the configured property names.
pub(crate) fn validate(
    ctx: &Ctx<'_>,
    raw: Vec<toml::Table>,
    properties: &HashSet<&str>,
) -> Result<Vec<SinkSettings>, ConfigError> {
    if raw.is_empty() {
        return Err(ctx.err(
            "sink",
            r#"no [[sink]] is configured; add one, e.g. [[sink]] type = "stdout""#,
        ));
    }
    let mut out: Vec<SinkSettings> = Vec::with_capacity(raw.len());
    for (i, table) in raw.into_iter().enumerate() {
        let prefix = ctx.label("sink", i);
        let sink = one(
            &At {
                ctx,
                prefix: &prefix,
            },
            table,
            properties,
            &out,
        )?;
        out.push(sink);
    }
    Ok(out)
}

/// The Type values sinks can filter on: Mews's documented WebSocket events (and `Space`, the
/// one Resource replaced in 2020, which Mews still lists as not discontinued), the
/// Discriminators of General webhooks and the Actions of Integration webhooks (mews-api.md
/// §2.2, §2.3 and §5).
pub(crate) const KNOWN_EVENTS: &[&str] = &[
    "DeviceCommand",
    "Reservation",
    "Resource",
    "PriceUpdate",
    "Space",
    "ServiceOrderUpdated",
    "ResourceUpdated",
    "MessageAdded",
    "ResourceBlockUpdated",
    "CustomerAdded",
    "CustomerUpdated",
    "PaymentUpdated",
    "IntegrationCreated",
    "IntegrationEnabled",
    "IntegrationDisabled",
    "IntegrationCanceled",
    "IntegrationReinstated",
    "IntegrationDeleted",
    "IntegrationApiKeyCreated",
];

/// Two file sinks on one file would interleave their lines (and cut back each other's).
fn one_file_each(at: &At<'_>, kind: &SinkKind, before: &[SinkSettings]) -> Result<(), ConfigError> {
    let Some(path) = kind.file_path() else {
        return Ok(());
    };
    let path = normal(path);
    if let Some(twin) = before
        .iter()
        .find(|s| s.kind.file_path().is_some_and(|p| normal(p) == path))
    {
        return Err(at.err(
            "path",
            format!(
                r#""{}" is also the file of sink "{}": two sinks writing one file would mix and cut back each other's lines; give each sink its own file"#,
                path.display(),
                twin.name
            ),
        ));
    }
    Ok(())
}

/// `path` with `.` and repeated separators gone (lexically: links are not followed).
fn normal(path: &Path) -> std::path::PathBuf {
    path.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// One `[[sink]]` table; `before` are the sinks of the tables before it.
fn one(
    at: &At<'_>,
    mut table: toml::Table,
    properties: &HashSet<&str>,
    before: &[SinkSettings],
) -> Result<SinkSettings, ConfigError> {
    let types = quoted_list(TYPES);
    let kind = match table.remove("type") {
        Some(toml::Value::String(kind)) => kind,
        Some(_) => return Err(at.err("type", format!("must be a string: {types}"))),
        None => return Err(at.err("type", format!("missing; set type = {types}"))),
    };
    let redact = redact_paths(at, table.remove("redact"))?;
    let Some(read) = SinkKind::read(&kind, table, at) else {
        return Err(at.err(
            "type",
            format!(
                r#"unknown sink type "{kind}"; use {types}{}"#,
                suggest::value_hint(&kind, TYPES.iter().copied())
            ),
        ));
    };
    let (shared, kind) = read?;
    one_file_each(at, &kind, before)?;
    let name = shared.name.unwrap_or_else(|| kind.default_name());
    if before.iter().any(|s| s.name == name) {
        return Err(at.err(
            "name",
            format!(r#"two sinks are named "{name}"; set name = "…" to tell them apart (it keys the sink's position in the journal)"#),
        ));
    }
    let events = shared.events.unwrap_or_default();
    if let Some(bad) = events.iter().position(String::is_empty) {
        return Err(at.err(
            &format!("events[{bad}]"),
            "is empty; write an event Type like \"DeviceCommand\"",
        ));
    }
    for (i, event) in events.iter().enumerate() {
        if !KNOWN_EVENTS.contains(&event.as_str()) {
            at.ctx.warn(
                &at.key(&format!("events[{i}]")),
                format!(
                    r#""{event}" is no event type Mews documents, so this sink may never get a record{}; the WebSocket sends "DeviceCommand", "Reservation", "Resource" and "PriceUpdate", webhooks their Discriminator or Action (README, "The record")"#,
                    suggest::value_hint(event, KNOWN_EVENTS.iter().copied())
                ),
            );
        }
    }
    let props = shared.properties.unwrap_or_default();
    if let Some(unknown) = props.iter().find(|p| !properties.contains(p.as_str())) {
        let mut names: Vec<&str> = properties.iter().copied().collect();
        names.sort_unstable();
        return Err(at.err(
            "properties",
            format!(
                r#"names "{unknown}", which is no [[property]]{}; use one of the configured property names ({})"#,
                suggest::value_hint(unknown, names.iter().copied()),
                names.join(", ")
            ),
        ));
    }
    Ok(SinkSettings {
        name,
        kind,
        events,
        properties: props,
        redact,
    })
}

/// `"stdout", "file", "http" or "nats"`
fn quoted_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.join(""),
    }
}

/// Reads a table of type `T`: the shared keys, then the type's own, each checked.
pub(crate) fn read<T: SinkType>(
    mut table: toml::Table,
    at: &At<'_>,
) -> Result<(SharedKeys, T), ConfigError> {
    let own = fields_of::<T::File>();
    if let Some(unknown) = table
        .keys()
        .find(|k| !own.contains(&k.as_str()) && !SHARED.contains(&k.as_str()))
    {
        // Listed as one struct would list them: the name first, the filters last.
        let expected: Vec<&str> = ["name"]
            .into_iter()
            .chain(own.iter().copied())
            .chain(["events", "properties"])
            .collect();
        return Err(at.ctx.unknown_key(at.prefix, unknown, &expected));
    }
    warn_of_stray_keys(&table, own, at);
    let mut shared = toml::Table::new();
    for key in SHARED {
        if let Some(value) = table.remove(*key) {
            shared.insert((*key).to_owned(), value);
        }
    }
    let shared: SharedKeys = at.ctx.deserialize(toml::Value::Table(shared), at.prefix)?;
    let file: T::File = at.ctx.deserialize(toml::Value::Table(table), at.prefix)?;
    if let Some(name) = &shared.name {
        check_name(at.ctx, &at.key("name"), name)?;
    }
    Ok((shared, T::validate(file, at)?))
}

/// The shared keys serde reads.
const SHARED: &[&str] = &["name", "events", "properties"];

/// Warns of a key of the sink inside one of its tables (`[sink.headers]`): TOML puts every
/// key after a table header into that table, so `timeout = "2s"` written below
/// `[sink.headers]` becomes a header named `timeout`, and `check` masks header values.
fn warn_of_stray_keys(table: &toml::Table, own: &[&str], at: &At<'_>) {
    let sink_keys = || own.iter().chain(SHARED).chain(&["type", "redact"]);
    for (name, value) in table {
        let toml::Value::Table(inner) = value else {
            continue;
        };
        for key in inner.keys() {
            if sink_keys().any(|k| k == key) {
                at.ctx.warn(
                    &at.key(&format!("{name}.{key}")),
                    format!(
                        r#"is read as an entry of {name} named "{key}", not as the sink's own `{key}`: in TOML every key after a [sink.{name}] line belongs to that table; if you meant the sink's `{key}`, move it above the [sink.{name}] line"#
                    ),
                );
            }
        }
    }
}

/// `redact = ["command.Data.Email", …]`: dot-separated paths from the record's top level.
fn redact_paths(at: &At<'_>, value: Option<toml::Value>) -> Result<Vec<String>, ConfigError> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let toml::Value::Array(items) = value else {
        return Err(at.err(
            "redact",
            r#"must be a list of JSON paths, like ["command.Data.Email", "command.Data.Telephone"]"#,
        ));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            toml::Value::String(path)
                if !path.is_empty() && path.split('.').all(|part| !part.is_empty()) =>
            {
                Ok(path)
            }
            _ => Err(at.err(
                &format!("redact[{i}]"),
                r#"must be a dot-separated path into the record, like "command.Data.Email""#,
            )),
        })
        .collect()
}

impl SinkKind {
    /// The file a `type = "file"` sink appends to.
    pub(crate) fn file_path(&self) -> Option<&Path> {
        match self {
            SinkKind::File(file) => Some(&file.path),
            _ => None,
        }
    }
}

impl SinkSettings {
    /// Opens the sink's output; the only way to get a running sink. Dead letters go under
    /// `state_dir`.
    pub(crate) async fn build(
        &self,
        state_dir: &Path,
        stats: &Arc<Stats>,
    ) -> Result<AnySink, BuildError> {
        let env = BuildEnv {
            name: &self.name,
            state_dir,
            stats,
        };
        self.kind.build(&env).await.map_err(|source| BuildError {
            name: self.name.clone(),
            source,
        })
    }

    pub(super) fn filter(&self) -> Filter {
        Filter {
            sink: self.name.clone(),
            events: self.events.iter().cloned().collect(),
            properties: self.properties.iter().cloned().collect(),
        }
    }
}

/// `events` and `properties` of a sink; empty sets let everything through. A replayed dead
/// letter passes only its own sink.
pub(super) struct Filter {
    sink: String,
    events: HashSet<String>,
    properties: HashSet<String>,
}

impl Filter {
    pub(super) fn matches(&self, record: &StoredRecord) -> bool {
        record
            .only_sink
            .as_ref()
            .is_none_or(|only| *only == self.sink)
            && (self.events.is_empty()
                || record
                    .kind
                    .as_ref()
                    .is_some_and(|k| self.events.iter().any(|e| **e == **k)))
            && (self.properties.is_empty()
                || self.properties.iter().any(|p| **p == *record.property))
    }
}

#[cfg(test)]
mod tests {
    use super::quoted_list;

    #[test]
    fn types_are_listed_as_a_sentence() {
        assert_eq!(
            quoted_list(&["stdout", "file", "http", "nats"]),
            r#""stdout", "file", "http" or "nats""#
        );
        assert_eq!(quoted_list(&["stdout"]), r#""stdout""#);
    }
}

//! `[[sink]]` tables: `type` picks the struct, then names, filters and per-type settings.

use std::collections::HashSet;

use super::file::{FileSinkFile, FsyncFile, StdoutSinkFile};
use super::validate::{Ctx, check_name};
use super::{ConfigError, Fsync, SinkKind, SinkSettings, defaults};

/// Validates the `[[sink]]` tables; `properties` are the configured property names.
pub(super) fn validate(
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
    for (i, mut table) in raw.into_iter().enumerate() {
        let prefix = format!("sink[{i}]");
        let kind = match table.remove("type") {
            Some(toml::Value::String(kind)) => kind,
            Some(_) => {
                return Err(ctx.err(
                    format!("{prefix}.type"),
                    r#"must be a string: "stdout" or "file""#,
                ));
            }
            None => {
                return Err(ctx.err(
                    format!("{prefix}.type"),
                    r#"missing; set type = "stdout" or type = "file""#,
                ));
            }
        };
        let value = toml::Value::Table(table);
        let (name, kind, events, props) = match kind.as_str() {
            "stdout" => {
                let s: StdoutSinkFile = ctx.deserialize(value, &prefix)?;
                if let Some(name) = &s.name {
                    check_name(ctx, &format!("{prefix}.name"), name)?;
                }
                let name = s.name.unwrap_or_else(|| "stdout".into());
                (name, SinkKind::Stdout, s.events, s.properties)
            }
            "file" => {
                let s: FileSinkFile = ctx.deserialize(value, &prefix)?;
                file_sink(ctx, &prefix, s)?
            }
            other => {
                return Err(ctx.err(
                    format!("{prefix}.type"),
                    format!(r#"unknown sink type "{other}"; use "stdout" or "file""#),
                ));
            }
        };
        if out.iter().any(|s| s.name == name) {
            return Err(ctx.err(
                format!("{prefix}.name"),
                format!(r#"two sinks are named "{name}"; set name = "…" to tell them apart (it keys the sink's position in the journal)"#),
            ));
        }
        let events = events.unwrap_or_default();
        if let Some(bad) = events.iter().position(String::is_empty) {
            return Err(ctx.err(
                format!("{prefix}.events[{bad}]"),
                "is empty; write an event Type like \"DeviceCommand\"",
            ));
        }
        let props = props.unwrap_or_default();
        if let Some(unknown) = props.iter().find(|p| !properties.contains(p.as_str())) {
            return Err(ctx.err(
                format!("{prefix}.properties"),
                format!(r#"names "{unknown}", which is no [[property]]; use one of the configured property names"#),
            ));
        }
        out.push(SinkSettings {
            name,
            kind,
            events,
            properties: props,
        });
    }
    Ok(out)
}

type SinkParts = (String, SinkKind, Option<Vec<String>>, Option<Vec<String>>);

fn file_sink(ctx: &Ctx<'_>, prefix: &str, s: FileSinkFile) -> Result<SinkParts, ConfigError> {
    if s.path.as_os_str().is_empty() {
        return Err(ctx.err(
            format!("{prefix}.path"),
            "is empty; set the file to append to",
        ));
    }
    if let Some(name) = &s.name {
        check_name(ctx, &format!("{prefix}.name"), name)?;
    }
    let fsync = match s.fsync.unwrap_or(FsyncFile::Interval) {
        FsyncFile::Always => Fsync::Always,
        FsyncFile::Interval => Fsync::Interval,
        FsyncFile::Never => Fsync::Never,
    };
    let fsync_interval = s.fsync_interval.map_or(defaults::FSYNC_INTERVAL, |d| d.0);
    if fsync_interval.is_zero() {
        return Err(ctx.err(
            format!("{prefix}.fsync_interval"),
            "must be longer than zero; for a sync after every write use fsync = \"always\"",
        ));
    }
    let name = s
        .name
        .unwrap_or_else(|| format!("file:{}", s.path.display()));
    Ok((
        name,
        SinkKind::File {
            path: s.path,
            fsync,
            fsync_interval,
        },
        s.events,
        s.properties,
    ))
}

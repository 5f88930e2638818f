//! `[[sink]]` tables: `type` picks the struct, then names, filters and per-type settings.

use std::collections::HashSet;

use std::collections::BTreeMap;

use http::Uri;

use super::file::{FileSinkFile, FsyncFile, HttpSinkFile, NatsSinkFile, StdoutSinkFile};
use super::validate::{Ctx, check_name, client_tls, is_cookie_safe, read_secret};
use super::{ConfigError, Fsync, HttpSettings, SinkKind, SinkSettings, defaults};
use crate::secret::Secret;

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
                    r#"must be a string: "stdout", "file", "http" or "nats""#,
                ));
            }
            None => {
                return Err(ctx.err(
                    format!("{prefix}.type"),
                    r#"missing; set type = "stdout", "file", "http" or "nats""#,
                ));
            }
        };
        let redact = redact_paths(ctx, &prefix, table.remove("redact"))?;
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
            "http" => {
                let s: HttpSinkFile = ctx.deserialize(value, &prefix)?;
                http_sink(ctx, &prefix, s)?
            }
            "nats" => {
                let s: NatsSinkFile = ctx.deserialize(value, &prefix)?;
                super::nats::nats_sink(ctx, &prefix, s)?
            }
            other => {
                return Err(ctx.err(
                    format!("{prefix}.type"),
                    format!(
                        r#"unknown sink type "{other}"; use "stdout", "file", "http" or "nats""#
                    ),
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
            redact,
        });
    }
    Ok(out)
}

/// `redact = ["command.Data.Email", …]`: dot-separated paths from the record's top level.
fn redact_paths(
    ctx: &Ctx<'_>,
    prefix: &str,
    value: Option<toml::Value>,
) -> Result<Vec<String>, ConfigError> {
    let key = format!("{prefix}.redact");
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let toml::Value::Array(items) = value else {
        return Err(ctx.err(
            key,
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
            _ => Err(ctx.err(
                format!("{key}[{i}]"),
                r#"must be a dot-separated path into the record, like "command.Data.Email""#,
            )),
        })
        .collect()
}

pub(super) type SinkParts = (String, SinkKind, Option<Vec<String>>, Option<Vec<String>>);

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

fn http_sink(ctx: &Ctx<'_>, prefix: &str, s: HttpSinkFile) -> Result<SinkParts, ConfigError> {
    let key = |k: &str| format!("{prefix}.{k}");
    if let Some(name) = &s.name {
        check_name(ctx, &key("name"), name)?;
    }
    let uri: Uri = s.url.parse().map_err(|err| {
        ctx.err(
            key("url"),
            format!(r#"is not a URL ({err}); write it like "https://keys.example.com/mews""#),
        )
    })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none_or(str::is_empty) {
        return Err(ctx.err(key("url"), r#"must be an http:// or https:// URL with a host, like "https://keys.example.com/mews""#));
    }
    let method = s
        .method
        .unwrap_or_else(|| "POST".into())
        .to_ascii_uppercase();
    if !matches!(method.as_str(), "POST" | "PUT" | "PATCH") {
        return Err(ctx.err(
            key("method"),
            format!(r#""{method}" cannot carry a body; use "POST", "PUT" or "PATCH""#),
        ));
    }
    let mut headers = BTreeMap::new();
    for (name, value) in s.headers.unwrap_or_default() {
        headers.insert(name, Secret::new(value));
    }
    if let Some(path) = &s.headers_file {
        let text = read_secret(ctx, &key("headers_file"), path)?;
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        {
            let Some((name, value)) = line.split_once(':') else {
                return Err(ctx.err(
                    key("headers_file"),
                    format!(
                        "line {} of {} is not \"Name: value\"; write one header per line",
                        n + 1,
                        path.display()
                    ),
                ));
            };
            headers.insert(name.trim().to_owned(), Secret::new(value.trim()));
        }
    }
    for (name, value) in &headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(ctx.err(
                key("headers"),
                format!(r#""{name}" is not a valid header name"#),
            ));
        }
        if value
            .expose()
            .chars()
            .any(|c| !(is_cookie_safe(c) || c == ' ' || c == ',' || c == ';' || c == '"'))
        {
            return Err(ctx.err(
                key("headers"),
                format!(r#"the value of "{name}" holds characters a header cannot carry"#),
            ));
        }
        if matches!(
            name.to_ascii_lowercase().as_str(),
            "idempotency-key" | "content-type" | "content-length" | "host"
        ) {
            return Err(ctx.err(
                key("headers"),
                format!(r#""{name}" is set by mews-relay; remove it"#),
            ));
        }
    }
    use super::file::pick;
    let timeout = pick(s.timeout, defaults::HTTP_TIMEOUT);
    let retry_min = pick(s.retry_min, defaults::HTTP_RETRY_MIN);
    let retry_max = pick(s.retry_max, defaults::HTTP_RETRY_MAX);
    let give_up_after = pick(s.give_up_after, defaults::HTTP_GIVE_UP_AFTER);
    for (k, v) in [
        ("timeout", timeout),
        ("retry_min", retry_min),
        ("retry_max", retry_max),
        ("give_up_after", give_up_after),
    ] {
        if v.is_zero() {
            return Err(ctx.err(key(k), "must be longer than zero"));
        }
    }
    if retry_min > retry_max {
        return Err(ctx.err(
            key("retry_min"),
            "is larger than retry_max; make retry_min <= retry_max",
        ));
    }
    let batch_max = s.batch_max.unwrap_or(1);
    if !(1..=10_000).contains(&batch_max) {
        return Err(ctx.err(
            key("batch_max"),
            "must be between 1 (one record per request) and 10000",
        ));
    }
    let tls = client_tls(
        ctx,
        prefix,
        s.ca_file.clone(),
        s.client_cert.clone(),
        s.client_key.clone(),
    )?;
    // The default name leaves out user info and query, which may hold secrets.
    let name = s.name.unwrap_or_else(|| {
        format!(
            "http:{}{}",
            uri.authority()
                .map_or("", |a| a.as_str().rsplit('@').next().unwrap_or_default()),
            uri.path()
        )
    });
    Ok((
        name,
        SinkKind::Http(Box::new(HttpSettings {
            url: s.url,
            method,
            headers,
            timeout,
            batch_max: batch_max as usize,
            retry_min,
            retry_max,
            give_up_after,
            tls,
        })),
        s.events,
        s.properties,
    ))
}

//! `[[sink]] type = "nats"`: servers, subject template, stream, credentials, TLS.

use super::file::NatsSinkFile;
use super::sinks::SinkParts;
use super::validate::{Ctx, check_name, client_tls, read_secret};
use super::{ConfigError, NatsAuth, NatsSettings, SinkKind, defaults};
use crate::secret::Secret;

pub(super) fn nats_sink(
    ctx: &Ctx<'_>,
    prefix: &str,
    s: NatsSinkFile,
) -> Result<SinkParts, ConfigError> {
    let key = |k: &str| format!("{prefix}.{k}");
    if let Some(name) = &s.name {
        check_name(ctx, &key("name"), name)?;
    }
    if s.servers.is_empty() {
        return Err(ctx.err(
            key("servers"),
            r#"is empty; list at least one, like ["nats://127.0.0.1:4222"]"#,
        ));
    }
    for server in &s.servers {
        let ok = ["nats://", "tls://"].iter().any(|scheme| {
            server
                .strip_prefix(scheme)
                .is_some_and(|rest| !rest.is_empty())
        });
        if !ok {
            return Err(ctx.err(
                key("servers"),
                format!(r#""{server}" is not a nats:// or tls:// URL"#),
            ));
        }
    }
    let auth = auth(ctx, prefix, &s)?;
    let subject = s
        .subject
        .unwrap_or_else(|| defaults::NATS_SUBJECT.to_owned());
    let sample = subject.replace("{property}", "p").replace("{type}", "t");
    let token_ok = |t: &str| !t.is_empty() && !t.contains(['*', '>', ' ', '\t', '{', '}']);
    if !sample.split('.').all(token_ok) {
        return Err(ctx.err(
            key("subject"),
            format!(r#""{subject}" is not a subject template: dot-separated tokens, no wildcards, placeholders {{property}} and {{type}}"#),
        ));
    }
    if s.create_stream == Some(true) && subject.starts_with('{') {
        return Err(ctx.err(
            key("create_stream"),
            "cannot cover a subject that starts with a placeholder; start it with a fixed token (\"mews.{property}.{type}\") or create the stream yourself",
        ));
    }
    if s.stream.is_empty() || s.stream.contains(['.', '*', '>', ' ', '/', '\\']) {
        return Err(ctx.err(
            key("stream"),
            format!(
                r#""{}" is not a stream name; use letters, digits, '-' or '_'"#,
                s.stream
            ),
        ));
    }
    use super::file::pick;
    let ack_timeout = pick(s.ack_timeout, defaults::NATS_ACK_TIMEOUT);
    if ack_timeout.is_zero() {
        return Err(ctx.err(key("ack_timeout"), "must be longer than zero"));
    }
    let max_in_flight = s
        .max_in_flight
        .map_or(defaults::NATS_MAX_IN_FLIGHT as u64, |n| n);
    if !(1..=4096).contains(&max_in_flight) {
        return Err(ctx.err(key("max_in_flight"), "must be between 1 and 4096"));
    }
    let tls = client_tls(
        ctx,
        prefix,
        s.ca_file.clone(),
        s.client_cert.clone(),
        s.client_key.clone(),
    )?;
    let name = s.name.unwrap_or_else(|| format!("nats:{}", s.stream));
    Ok((
        name,
        SinkKind::Nats(Box::new(NatsSettings {
            servers: s.servers,
            subject,
            stream: s.stream,
            create_stream: s.create_stream.unwrap_or(false),
            max_age: pick(s.max_age, defaults::NATS_MAX_AGE),
            duplicate_window: pick(s.duplicate_window, defaults::NATS_DUPLICATE_WINDOW),
            auth,
            tls,
            ack_timeout,
            max_in_flight: max_in_flight as usize,
        })),
        s.events,
        s.properties,
    ))
}

/// One way to authenticate, secrets read from their files.
fn auth(ctx: &Ctx<'_>, prefix: &str, s: &NatsSinkFile) -> Result<NatsAuth, ConfigError> {
    let key = |k: &str| format!("{prefix}.{k}");
    let secret = |inline: &Option<String>,
                  file: &Option<std::path::PathBuf>,
                  name: &str|
     -> Result<Option<Secret>, ConfigError> {
        match (inline, file) {
            (Some(_), Some(_)) => Err(ctx.err(
                key(name),
                format!("is set twice; keep either {name} or {name}_file"),
            )),
            (Some(value), None) => Ok(Some(Secret::new(value.clone()))),
            (None, Some(path)) => Ok(Some(Secret::new(read_secret(
                ctx,
                &key(&format!("{name}_file")),
                path,
            )?))),
            (None, None) => Ok(None),
        }
    };
    let password = secret(&s.password, &s.password_file, "password")?;
    let token = secret(&s.token, &s.token_file, "token")?;
    let nkey = match &s.nkey_seed_file {
        Some(path) => Some(Secret::new(read_secret(ctx, &key("nkey_seed_file"), path)?)),
        None => None,
    };
    let chosen = [
        s.user.is_some() || password.is_some(),
        token.is_some(),
        nkey.is_some(),
        s.creds_file.is_some(),
    ]
    .iter()
    .filter(|set| **set)
    .count();
    if chosen > 1 {
        return Err(ctx.err(key("user"), "more than one way to authenticate; use one of user + password, token, nkey_seed_file or creds_file"));
    }
    Ok(match (&s.user, password, token, nkey, &s.creds_file) {
        (Some(user), Some(password), ..) => NatsAuth::UserPassword {
            user: user.clone(),
            password,
        },
        (Some(_), None, ..) => {
            return Err(ctx.err(
                key("password"),
                "missing; user needs password or password_file",
            ));
        }
        (None, Some(_), ..) => return Err(ctx.err(key("user"), "missing; password needs a user")),
        (_, _, Some(token), ..) => NatsAuth::Token(token),
        (_, _, _, Some(seed), _) => NatsAuth::Nkey(seed),
        (_, _, _, _, Some(path)) => {
            if !path.is_file() {
                return Err(ctx.err(
                    key("creds_file"),
                    format!("{} is not a readable file", path.display()),
                ));
            }
            NatsAuth::CredsFile(path.clone())
        }
        _ => NatsAuth::None,
    })
}

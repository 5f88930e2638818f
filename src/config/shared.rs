//! What every section's checks share: errors that name the file and the key, names, secrets
//! (inline, in a file, or a systemd credential) and TLS material read from PEM files. A leaf:
//! it uses nothing else of `config` but the `suggest` leaf.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use serde::de::{self, DeserializeOwned, Visitor};

use super::suggest;
use crate::secret::Secret;
use crate::tls::Identity;

/// A config that failed to load: one line naming the file, the key and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {problem}", file = .file.display())]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// The key, as a TOML path (`connection.ping_interval`, `sink "keys".url`, `sink[1].type`
    /// for a sink without a name).
    pub key: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

/// systemd's `$CREDENTIALS_DIRECTORY` (set by `LoadCredential=`), if any.
#[derive(Debug, Clone, Default)]
pub struct CredentialsDir(pub Option<PathBuf>);

impl CredentialsDir {
    /// Reads `$CREDENTIALS_DIRECTORY`.
    pub fn from_env() -> Self {
        Self(std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from))
    }
}

/// Errors and warnings for one file.
pub struct Ctx<'a> {
    origin: &'a Path,
    text: &'a str,
    /// `("property", 0)` -> `property "old-town"`, for tables that have a plain, unique name.
    labels: HashMap<(&'static str, usize), String>,
    warnings: RefCell<Vec<String>>,
}

/// Arrays of tables whose entries are named by their `name` in keys.
const NAMED_ARRAYS: [&str; 2] = ["property", "sink"];

impl<'a> Ctx<'a> {
    /// Errors naming `origin`, whose text is `text` (for line numbers and table names).
    pub fn new(origin: &'a Path, text: &'a str) -> Self {
        Ctx {
            origin,
            text,
            labels: labels(text),
            warnings: RefCell::new(Vec::new()),
        }
    }

    /// The file the errors name.
    pub fn origin(&self) -> &Path {
        self.origin
    }

    /// The error for `key`.
    pub fn err(&self, key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.origin.to_owned(),
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// A warning line for `key`, naming the file like an error does.
    pub fn warning(&self, key: &str, advice: impl std::fmt::Display) -> String {
        format!("{}: {key}: {advice}", self.origin.display())
    }

    /// Notes a warning for `key` ([`Ctx::take_warnings`] hands them to the settings).
    pub fn warn(&self, key: &str, advice: impl std::fmt::Display) {
        let line = self.warning(key, advice);
        self.warnings.borrow_mut().push(line);
    }

    /// The warnings noted so far, in the order they were found.
    pub fn take_warnings(&self) -> Vec<String> {
        self.warnings.take()
    }

    /// How keys name entry `index` of the array of tables `array`: `sink "keys"` when its
    /// table has a plain name no other entry has, else `sink[1]`.
    pub fn label(&self, array: &str, index: usize) -> String {
        NAMED_ARRAYS
            .iter()
            .find(|a| **a == array)
            .and_then(|a| self.labels.get(&(*a, index)))
            .cloned()
            .unwrap_or_else(|| format!("{array}[{index}]"))
    }

    /// `key` with a leading `property[0]` or `sink[1]` replaced by its label.
    fn relabel(&self, key: String) -> String {
        for array in NAMED_ARRAYS {
            let Some(rest) = key.strip_prefix(array).and_then(|r| r.strip_prefix('[')) else {
                continue;
            };
            let Some((index, tail)) = rest.split_once(']') else {
                continue;
            };
            if let Ok(index) = index.parse::<usize>() {
                return format!("{}{tail}", self.label(array, index));
            }
        }
        key
    }

    /// The line of a byte offset in the text.
    pub fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    /// Deserializes with the failing key's path in the error.
    pub fn deserialize<'de, T, D>(&self, de: D, prefix: &str) -> Result<T, ConfigError>
    where
        T: DeserializeOwned,
        D: serde::Deserializer<'de, Error = toml::de::Error>,
    {
        serde_path_to_error::deserialize(de).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let line = inner.span().map(|span| self.line_of(span.start));
            self.serde_error(prefix, path, inner.message(), line)
        })
    }

    /// The error serde gives for `field` where no such key exists: `expected` are the keys
    /// there are. For tables read in parts (a sink's shared keys, then its type's own).
    pub fn unknown_key(&self, prefix: &str, field: &str, expected: &[&str]) -> ConfigError {
        let expected = match expected {
            [] => "there are no fields".to_owned(),
            [one] => format!("expected `{one}`"),
            [a, b] => format!("expected `{a}` or `{b}`"),
            many => format!(
                "expected one of {}",
                many.iter()
                    .map(|name| format!("`{name}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let message = format!("unknown field `{field}`, {expected}");
        self.serde_error(prefix, field.to_owned(), &message, None)
    }

    /// Serde's `message` at `path` below `prefix`, as one line naming the key once.
    fn serde_error(
        &self,
        prefix: &str,
        key: String,
        message: &str,
        line: Option<usize>,
    ) -> ConfigError {
        let mut key = join(prefix, &key);
        for start in ["unknown field `", "missing field `"] {
            if let Some(field) = message
                .strip_prefix(start)
                .and_then(|rest| rest.split('`').next())
            {
                // The path may point at the table rather than the key: name the key itself,
                // once.
                let last = key.rsplit('.').next().unwrap_or_default();
                if last != field {
                    key = join(&key, field);
                }
            }
        }
        key = self.relabel(key);
        if key.is_empty() || key == "." {
            key = "(file)".into();
        }
        if let Some(line) = line {
            key = format!("{key} (line {line})");
        }
        self.err(key, fix_for(message))
    }
}

/// The names of the `[[property]]` and `[[sink]]` tables that can stand for their index: a
/// plain name (see [`check_name`]) that no other table of the array has.
fn labels(text: &str) -> HashMap<(&'static str, usize), String> {
    let mut out = HashMap::new();
    let Ok(table) = text.parse::<toml::Table>() else {
        return out;
    };
    for array in NAMED_ARRAYS {
        let Some(toml::Value::Array(items)) = table.get(array) else {
            continue;
        };
        let names: Vec<Option<&str>> = items
            .iter()
            .map(|item| item.get("name").and_then(toml::Value::as_str))
            .collect();
        for (i, name) in names.iter().enumerate() {
            if let Some(name) = name.filter(|n| is_plain_name(n))
                && names.iter().filter(|n| **n == Some(name)).count() == 1
            {
                out.insert((array, i), format!("{array} \"{name}\""));
            }
        }
    }
    out
}

fn join(prefix: &str, key: &str) -> String {
    match (
        prefix.is_empty() || prefix == ".",
        key.is_empty() || key == ".",
    ) {
        (true, _) => key.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) => format!("{prefix}.{key}"),
    }
}

/// Adds the fix to serde's own message where it does not say it: the closest known key or
/// value when one is close, else how to go on.
fn fix_for(message: &str) -> String {
    let message = message.trim();
    // "unknown field `x`, expected one of `a`, `b`": `x`, then the known ones.
    let mut quoted = message.split('`').skip(1).step_by(2);
    let (word, known): (Option<&str>, Vec<&str>) = (quoted.next(), quoted.collect());
    if message.starts_with("unknown field") {
        let hint = word.map_or_else(String::new, |w| suggest::key_hint(w, known));
        if hint.is_empty() {
            format!("{message}; remove it or fix its spelling")
        } else {
            format!("{message}{hint}")
        }
    } else if message.starts_with("unknown variant") {
        let hint = word.map_or_else(String::new, |w| suggest::value_hint(w, known));
        format!("{message}{hint}")
    } else if message.starts_with("missing field") {
        format!("{message}; add it")
    } else {
        message.to_owned()
    }
}

/// The keys a struct deserialized by serde reads (what `deny_unknown_fields` lists).
pub fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    /// A deserializer that only notes the fields it is asked for.
    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("probed"))
        }

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// Names end up in records, file names and credential names: keep them plain.
pub fn check_name(ctx: &Ctx<'_>, key: &str, name: &str) -> Result<(), ConfigError> {
    if is_plain_name(name) {
        Ok(())
    } else {
        Err(ctx.err(
            key,
            format!(
                r#""{name}" is not a valid name; use 1 to 64 letters, digits, '-', '_' or '.'"#
            ),
        ))
    }
}

/// 1 to 64 letters, digits, '-', '_' or '.'.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Resolves a token given inline, in a file, or as a systemd credential; a credential that
/// the config shadows is a warning.
pub fn secret(
    ctx: &Ctx<'_>,
    key: &str,
    inline: Option<String>,
    file: Option<PathBuf>,
    credential: &str,
    credentials: &CredentialsDir,
) -> Result<Secret, ConfigError> {
    let file_key = format!("{key}_file");
    // The fixes name the keys as they are written in their table.
    let leaf = key.rsplit('.').next().unwrap_or(key);
    let loaded = credentials
        .0
        .as_deref()
        .map(|dir| dir.join(credential))
        .filter(|path| path.exists());
    let (value, used_key) = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(ctx.err(
                key,
                format!("is set twice; keep either {leaf} or {leaf}_file"),
            ));
        }
        (Some(value), None) => (value, key.to_owned()),
        (None, Some(path)) => (read_secret(ctx, &file_key, &path)?, file_key),
        (None, None) => match loaded.as_deref() {
            Some(path) => (
                read_secret(ctx, &format!("{key} (credential {credential})"), path)?,
                format!("{key} (credential {credential})"),
            ),
            None => {
                return Err(ctx.err(
                    key,
                    format!(
                        r#"missing; set {leaf} = "…", {leaf}_file = "/path/to/file", or pass the systemd credential "{credential}" with LoadCredential="#
                    ),
                ));
            }
        },
    };
    if loaded.is_some() && !used_key.ends_with(')') {
        ctx.warn(
            &used_key,
            format!(
                r#"shadows the systemd credential "{credential}" that LoadCredential= passes: the value in the config file is used; remove {used_leaf} from the config to use the credential, or drop the LoadCredential= line"#,
                used_leaf = used_key.rsplit('.').next().unwrap_or(&used_key)
            ),
        );
    }
    if value.is_empty() {
        return Err(ctx.err(used_key, "is empty; paste the token Mews gave you"));
    }
    if let Some(bad) = value.chars().find(|c| !is_cookie_safe(*c)) {
        let what = if bad.is_whitespace() {
            "whitespace".to_owned()
        } else {
            format!("'{}'", bad.escape_default())
        };
        return Err(ctx.err(
            used_key,
            format!("contains {what}, which a cookie cannot carry; check that the whole token and nothing else was copied"),
        ));
    }
    Ok(Secret::new(value))
}

/// Characters allowed in a cookie value (RFC 6265 `cookie-octet`).
pub fn is_cookie_safe(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '"' | ',' | ';' | '\\')
}

/// Reads a file holding a secret, trimmed.
pub fn read_secret(ctx: &Ctx<'_>, key: &str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|err| {
            ctx.err(
                key,
                format!(
                    "cannot read {}: {err}; check the path and that the mews-relay user may read it",
                    path.display()
                ),
            )
        })
}

/// Reads PEM certificates (a CA bundle or a client chain) for `key`.
pub fn read_certs(
    ctx: &Ctx<'_>,
    key: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|err| {
            ctx.err(
                key,
                format!("cannot read PEM certificates from {}: {err}; point it at a PEM file of certificates", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(ctx.err(
            key,
            format!("{} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\"); point it at a PEM file of certificates", path.display()),
        ));
    }
    Ok(certs)
}

/// Reads a PEM private key for `key`.
fn read_key(ctx: &Ctx<'_>, key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|err| {
        ctx.err(
            key,
            format!("cannot read a PEM private key from {}: {err}; point it at the key of the client certificate", path.display()),
        )
    })
}

/// A certificate and its key given as a pair of keys (both or neither).
pub fn identity(
    ctx: &Ctx<'_>,
    (cert_key, cert): (&str, Option<&Path>),
    (key_key, key): (&str, Option<&Path>),
) -> Result<Option<Identity>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(Identity {
            certs: read_certs(ctx, cert_key, cert)?,
            key: read_key(ctx, key_key, key)?,
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ctx.err(key_key, "missing; the certificate needs its key")),
        (None, Some(_)) => Err(ctx.err(cert_key, "missing; the key needs its certificate")),
    }
}

/// TLS of a sink's client: an extra CA and an optional client certificate (mTLS).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ClientTls {
    /// Extra CA certificates (PEM) besides the system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// Its key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// Certificates read from `ca_file`.
    #[serde(skip)]
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Read from `client_cert` and `client_key`.
    #[serde(skip)]
    pub client_auth: Option<Identity>,
}

impl ClientTls {
    /// `ca_file`, `client_cert` and `client_key` of the table at `prefix`, files read.
    pub fn read(
        ctx: &Ctx<'_>,
        prefix: &str,
        ca_file: Option<PathBuf>,
        client_cert: Option<PathBuf>,
        client_key: Option<PathBuf>,
    ) -> Result<ClientTls, ConfigError> {
        let key = |k: &str| format!("{prefix}.{k}");
        let extra_roots = match &ca_file {
            Some(path) => read_certs(ctx, &key("ca_file"), path)?,
            None => Vec::new(),
        };
        let client_auth = identity(
            ctx,
            (&key("client_cert"), client_cert.as_deref()),
            (&key("client_key"), client_key.as_deref()),
        )?;
        Ok(ClientTls {
            ca_file,
            client_cert,
            client_key,
            extra_roots,
            client_auth,
        })
    }

    /// The rustls config for this client.
    pub fn client_config(&self) -> Result<std::sync::Arc<rustls::ClientConfig>, rustls::Error> {
        crate::tls::client_config(&self.extra_roots, self.client_auth.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Two {
        path: String,
        fsync: Option<bool>,
    }

    #[test]
    fn fields_are_read_from_the_struct() {
        assert_eq!(fields_of::<Two>(), ["path", "fsync"]);
    }

    #[test]
    fn unknown_keys_read_like_serde_says_them() {
        let ctx = Ctx::new(Path::new("f.toml"), "");
        let err = ctx.unknown_key("sink[0]", "x", &["a", "b", "c"]);
        assert_eq!(
            err.to_string(),
            "f.toml: sink[0].x: unknown field `x`, expected one of `a`, `b`, `c`; remove it or fix its spelling",
            "the key once"
        );
        let err = ctx.unknown_key("s", "x", &["a"]);
        assert!(err.problem.starts_with("unknown field `x`, expected `a`;"));
        let err = ctx.unknown_key("s", "fsync_intervall", &["path", "fsync_interval"]);
        assert_eq!(err.key, "s.fsync_intervall");
        assert!(
            err.problem.ends_with("; did you mean `fsync_interval`?"),
            "{err}"
        );
    }

    #[test]
    fn tables_with_a_unique_plain_name_are_named_by_it() {
        let text = "[[property]]\nname = \"old-town\"\n[[sink]]\nname = \"keys\"\n[[sink]]\ntype = \"stdout\"\n[[sink]]\nname = \"a\"\n[[sink]]\nname = \"a\"\n";
        let ctx = Ctx::new(Path::new("f.toml"), text);
        assert_eq!(ctx.label("property", 0), "property \"old-town\"");
        assert_eq!(ctx.label("sink", 0), "sink \"keys\"");
        assert_eq!(ctx.label("sink", 1), "sink[1]", "no name");
        assert_eq!(ctx.label("sink", 2), "sink[2]", "a name used twice");
        assert_eq!(
            ctx.relabel("property[0].access_tokn".into()),
            "property \"old-town\".access_tokn"
        );
    }
}

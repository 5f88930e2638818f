//! The whole file: its sections as serde reads them, the [`Settings`] they validate into, and
//! the order the checks run in.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::catch_up::{CatchUp, CatchUpFile};
use super::commands::{Api, ApiFile, Commands, CommandsFile};
use super::connection::{Connection, ConnectionFile};
use super::enrich::{Enrich, EnrichFile};
use super::listeners::{Listeners, ListenersFile};
use super::metrics::{Metrics, MetricsFile};
use super::mews::{Mews, MewsFile};
use super::property::{self, Property, PropertyFile};
use super::shared::{ConfigError, CredentialsDir, Ctx};
use super::shutdown::{Shutdown, ShutdownFile};
use super::state::{State, StateFile};
use super::webhooks::{Webhooks, WebhooksFile};
use crate::sink::{self, SinkSettings};

/// The whole config file, every section strict, every value still optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    mews: MewsFile,
    #[serde(default, rename = "property")]
    properties: Vec<PropertyFile>,
    #[serde(default)]
    connection: ConnectionFile,
    #[serde(default)]
    state: StateFile,
    #[serde(default)]
    shutdown: ShutdownFile,
    webhooks: Option<WebhooksFile>,
    metrics: Option<MetricsFile>,
    #[serde(default)]
    listeners: ListenersFile,
    #[serde(default)]
    catch_up: CatchUpFile,
    #[serde(default)]
    enrich: EnrichFile,
    commands: Option<CommandsFile>,
    api: Option<ApiFile>,
    /// Sinks stay tables here: `type` picks the struct they are read into, so errors name it.
    #[serde(default, rename = "sink")]
    sinks: Vec<toml::Table>,
}

/// The validated config the daemon runs with.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Where this config came from (for messages).
    #[serde(skip)]
    pub origin: PathBuf,
    /// `[mews]`
    pub mews: Mews,
    /// `[[property]]`, at least one.
    #[serde(rename = "property")]
    pub properties: Vec<Property>,
    /// `[connection]`
    pub connection: Connection,
    /// `[state]`
    pub state: State,
    /// `[shutdown]`
    pub shutdown: Shutdown,
    /// `[webhooks]`, when Mews webhooks are received too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<Webhooks>,
    /// `[metrics]`, when /metrics, /healthz and /readyz are served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// `[listeners]`: bounds of every HTTP listener (webhooks, metrics).
    pub listeners: Listeners,
    /// `[catch_up]`
    pub catch_up: CatchUp,
    /// `[enrich]`
    pub enrich: Enrich,
    /// `[commands]`, when the relay acknowledges delivered commands in Mews.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commands: Option<Commands>,
    /// `[api]`, when the key system reports command states through the local API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<Api>,
    /// `[[sink]]`, at least one.
    #[serde(rename = "sink")]
    pub sinks: Vec<SinkSettings>,
    /// What validation found questionable but not wrong, one line each (file, key, advice):
    /// `check` prints them, `run` logs them at WARN.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

impl Settings {
    /// Reads and validates a config file. `credentials` is systemd's `$CREDENTIALS_DIRECTORY`.
    pub fn load(path: &Path, credentials: &CredentialsDir) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
            file: path.to_owned(),
            key: "(file)".into(),
            problem: format!(
                "cannot read the config file: {err}; check the path given to --config"
            ),
        })?;
        Self::from_toml(&text, path, credentials)
    }

    /// Validates config text; `origin` names it in errors.
    pub fn from_toml(
        text: &str,
        origin: &Path,
        credentials: &CredentialsDir,
    ) -> Result<Settings, ConfigError> {
        let ctx = Ctx::new(origin, text);
        let de = toml::Deserializer::parse(text).map_err(|err| {
            let key = match err.span() {
                Some(span) => format!("(syntax, line {})", ctx.line_of(span.start)),
                None => "(syntax)".into(),
            };
            ctx.err(
                key,
                format!("{}; fix the TOML syntax", err.message().trim()),
            )
        })?;
        let raw: ConfigFile = ctx.deserialize(de, "")?;
        raw.validate(&ctx, credentials)
    }

    /// The effective config as TOML, secrets masked (what `check` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|err| format!("# cannot render the config: {err}\n"))
    }

    /// Whether the command loop runs (commands are tracked and updates sent to Mews).
    pub fn command_loop(&self) -> bool {
        self.commands.is_some() || self.api.is_some()
    }
}

impl ConfigFile {
    /// Each section in turn; the first problem found is the error.
    fn validate(
        self,
        ctx: &Ctx<'_>,
        credentials: &CredentialsDir,
    ) -> Result<Settings, ConfigError> {
        let mews = self.mews.validate(ctx, credentials)?;
        let properties = property::validate(ctx, self.properties, credentials)?;
        let connection = self.connection.validate(ctx)?;
        let state = self.state.validate(ctx)?;
        let shutdown = self.shutdown.validate();
        let webhooks = match self.webhooks {
            Some(w) => Some(w.validate(ctx, credentials)?),
            None => None,
        };
        let metrics = match self.metrics {
            Some(m) => Some(m.validate(ctx)?),
            None => None,
        };
        let listeners = self.listeners.validate(ctx)?;
        let catch_up = self.catch_up.validate(ctx)?;
        let enrich = self.enrich.validate(ctx)?;
        let names: HashSet<&str> = properties.iter().map(|p| p.name.as_str()).collect();
        let sinks = sink::validate(ctx, self.sinks, &names)?;
        let sink_names: Vec<&str> = sinks.iter().map(|s| s.name.as_str()).collect();
        let commands = match self.commands {
            Some(c) => Some(c.validate(ctx, &sink_names, &mews)?),
            None => None,
        };
        let api = match self.api {
            Some(a) => Some(a.validate(ctx, &mews, credentials)?),
            None => None,
        };
        distinct_listeners(
            ctx,
            &[
                ("webhooks.listen", webhooks.as_ref().map(|w| w.listen)),
                ("metrics.listen", metrics.as_ref().map(|m| m.listen)),
                ("api.listen", api.as_ref().map(|a| a.listen)),
            ],
        )?;
        let mut warnings: Vec<String> = mews.client_warning(ctx).into_iter().collect();
        warnings.extend(ctx.take_warnings());
        Ok(Settings {
            origin: ctx.origin().to_owned(),
            mews,
            properties,
            connection,
            state,
            shutdown,
            webhooks,
            metrics,
            listeners,
            catch_up,
            enrich,
            commands,
            api,
            sinks,
            warnings,
        })
    }
}

/// The listeners in use must not share an address: the second would fail to bind. Port 0 (any
/// free port) never clashes; an unspecified address (`0.0.0.0`) clashes with every address of
/// its family on the same port.
fn distinct_listeners(
    ctx: &Ctx<'_>,
    listeners: &[(&str, Option<SocketAddr>)],
) -> Result<(), ConfigError> {
    let used: Vec<(&str, SocketAddr)> = listeners
        .iter()
        .filter_map(|(key, addr)| addr.map(|a| (*key, a)))
        .collect();
    for (i, (key, addr)) in used.iter().enumerate() {
        if let Some((first, other)) = used[..i].iter().find(|(_, other)| {
            addr.port() != 0
                && other.port() == addr.port()
                && other.is_ipv4() == addr.is_ipv4()
                && (other.ip() == addr.ip()
                    || other.ip().is_unspecified()
                    || addr.ip().is_unspecified())
        }) {
            return Err(ctx.err(
                *key,
                format!(
                    "{addr} is also {first} ({other}): two listeners cannot share an address; give each its own port"
                ),
            ));
        }
    }
    Ok(())
}

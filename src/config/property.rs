//! `[[property]]`: one hotel (Mews enterprise), one WebSocket.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::shared::{ConfigError, CredentialsDir, Ctx, check_name, secret};
use crate::secret::Secret;

/// One `[[property]]` as the file has it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PropertyFile {
    name: String,
    enterprise_id: Option<String>,
    access_token: Option<String>,
    access_token_file: Option<PathBuf>,
}

/// One `[[property]]`: one WebSocket connection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Property {
    /// Label used in records, logs and file names.
    pub name: String,
    /// The Mews enterprise id, to label webhook events with this property's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enterprise_id: Option<String>,
    /// The enterprise's AccessToken.
    pub access_token: Secret,
}

/// Every `[[property]]`: at least one, names unique, one AccessToken each.
pub(crate) fn validate(
    ctx: &Ctx<'_>,
    raw: Vec<PropertyFile>,
    credentials: &CredentialsDir,
) -> Result<Vec<Property>, ConfigError> {
    if raw.is_empty() {
        return Err(ctx.err(
            "property",
            r#"no [[property]] is configured; add one with name = "…" and access_token = "…""#,
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, p) in raw.into_iter().enumerate() {
        let key = format!("property[{i}].name");
        check_name(ctx, &key, &p.name)?;
        if !seen.insert(p.name.clone()) {
            return Err(ctx.err(
                key,
                format!(
                    r#""{}" is used twice; give each property its own name"#,
                    p.name
                ),
            ));
        }
        // Named by its name from here on (the name is plain and unique now).
        let label = ctx.label("property", i);
        let access_token = secret(
            ctx,
            &format!("{label}.access_token"),
            p.access_token,
            p.access_token_file,
            &format!("{}.access_token", p.name),
            credentials,
        )?;
        if p.enterprise_id
            .as_deref()
            .is_some_and(|id| id.trim().is_empty())
        {
            return Err(ctx.err(
                format!("{label}.enterprise_id"),
                "is empty; write the enterprise's Mews id or leave it out",
            ));
        }
        // One token is one enterprise: two properties with it would hold two WebSockets for
        // it (every event twice) and split one rate limit between them.
        if let Some(twin) = out
            .iter()
            .position(|q: &Property| q.access_token.expose() == access_token.expose())
        {
            let (first, second) = (&out[twin].name, &p.name);
            return Err(ctx.err(
                format!("{label}.access_token"),
                format!(
                    r#"is the AccessToken of property "{first}" too: "{first}" and "{second}" would open two WebSockets for one enterprise (every event twice) and share one Mews rate limit; give each property the AccessToken of its own enterprise, or remove one of them"#
                ),
            ));
        }
        out.push(Property {
            name: p.name,
            enterprise_id: p.enterprise_id,
            access_token,
        });
    }
    Ok(out)
}

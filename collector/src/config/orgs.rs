//! `[[orgs]]`: the organisations allowed to send, each with its credentials.
//!
//! Owns: the section's keys and checks, and the orgs parsed for `control::auth`, which builds
//! its directory from them (`OrgDirectory::from_config`). The org-id alphabet is the sinks'
//! (`data::sink::identity::valid_org_id`: an id names their directories, subjects and topics).
//! Must never: authenticate anyone.

use std::collections::HashSet;

use ringflow_ops::ConfigError;
use serde::Deserialize;

use super::credentials::{NamePattern, TokenHash};
use super::tls::TlsConfig;
use crate::data::sink::identity::valid_org_id;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgConfig {
    /// Org id: 1-64 characters of `a-z 0-9 - _` (it names a directory and a subject).
    pub id: String,
    /// `sha256:<64 hex>` lines printed by `collector token`. Several allow rotation.
    #[serde(default)]
    pub token_hashes: Vec<String>,
    /// Client-certificate DNS names that prove this org (needs `tls.client_ca`): exact names, or
    /// `*.suffix` for any name under `suffix`.
    #[serde(default)]
    pub client_names: Vec<String>,
}

/// Organisations allowed to send, each with the hashes of its valid tokens. Default: none, and
/// a config without one is refused (no meter could ever send).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct OrgsConfig(pub Vec<OrgConfig>);

/// One org with its credentials parsed.
#[derive(Debug, Clone)]
pub struct Org {
    pub id: String,
    pub token_hashes: Vec<TokenHash>,
    pub client_names: Vec<NamePattern>,
}

impl OrgsConfig {
    /// Checks `[[orgs]]`; `tls` says whether client certificates can prove an org.
    pub fn validate(&self, tls: &TlsConfig) -> Result<(), ConfigError> {
        self.parse(tls).map(drop)
    }

    /// Every org with its credentials parsed, in file order; the first problem is reported with
    /// its key.
    pub fn parse(&self, tls: &TlsConfig) -> Result<Vec<Org>, ConfigError> {
        let mut seen = HashSet::new();
        let mut orgs = Vec::with_capacity(self.0.len());
        for (i, org) in self.0.iter().enumerate() {
            let key = format!("orgs[{i}]");
            let parsed = org.parse(&key, tls)?;
            if !seen.insert(org.id.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{key}.id"),
                    format!("org {:?} is listed twice", org.id),
                ));
            }
            orgs.push(parsed);
        }
        if orgs.is_empty() {
            return Err(ConfigError::invalid(
                "orgs",
                "no org is configured, so no meter could ever send; add an [[orgs]] entry (see `collector token`)",
            ));
        }
        Ok(orgs)
    }
}

impl OrgConfig {
    /// This org, known in the file as `key` (`orgs[i]`), checked and parsed.
    fn parse(&self, key: &str, tls: &TlsConfig) -> Result<Org, ConfigError> {
        if !valid_org_id(&self.id) {
            return Err(ConfigError::invalid(
                format!("{key}.id"),
                format!(
                    "{:?} is not a valid org id: use 1-64 characters of a-z, 0-9, '-' and '_'",
                    self.id
                ),
            ));
        }
        if self.token_hashes.is_empty() && self.client_names.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.token_hashes"),
                "needs at least one hash (create one with `collector token --org ID`), or client_names with tls.client_ca",
            ));
        }
        if !self.client_names.is_empty() && tls.client_ca.is_none() {
            return Err(ConfigError::invalid(
                format!("{key}.client_names"),
                "needs tls.client_ca, the CA that signs meters' client certificates",
            ));
        }
        Ok(Org {
            id: self.id.clone(),
            client_names: parse_each(&self.client_names, &format!("{key}.client_names"))?,
            token_hashes: parse_each(&self.token_hashes, &format!("{key}.token_hashes"))?,
        })
    }
}

/// Parses every value of the list at `key`, naming the first that does not parse (`key[j]`).
fn parse_each<T>(values: &[String], key: &str) -> Result<Vec<T>, ConfigError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    values
        .iter()
        .enumerate()
        .map(|(j, v)| {
            v.parse::<T>()
                .map_err(|e| ConfigError::invalid(format!("{key}[{j}]"), e.to_string()))
        })
        .collect()
}

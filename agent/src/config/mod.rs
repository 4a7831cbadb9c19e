//! The meter's configuration: one typed [`Config`], loaded from TOML and validated before
//! anything starts.
//!
//! Owns: the top-level keys (identity, credentials, collectors, TLS files), loading (relative
//! paths resolved against the file's directory) and the order the sections are checked in; each
//! section's struct, defaults (with why) and checks live side by side in its own module.
//! [`EXAMPLE_CONFIG`] (printed by `meter example-config`) is kept equal to the defaults by a test.
//! Must never: open sockets or read files other than the config file and the token file it
//! names; import from the rest of the meter (config sits below everything that reads it: the
//! modules that need their own form of a section convert it themselves).

mod admin;
mod batch;
mod fleet;
mod reconnect;
mod shutdown;
mod sources;
mod spool;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use admin::AdminConfig;
pub use batch::BatchConfig;
pub use fleet::FleetConfig;
pub use reconnect::ReconnectConfig;
pub use ringflow_ops::ConfigError;
pub use shutdown::ShutdownConfig;
pub use sources::{
    BpfConfig, BpfMode, InterfacesConfig, NetflowConfig, SocketsConfig, SourcesConfig, SyntheticConfig,
};
pub use spool::{FsyncMode, SpoolConfig};

use ringflow_ops::{parse_toml, read_toml, resolve_paths};

pub const EXAMPLE_CONFIG: &str = include_str!("../example-config.toml");

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::invalid(key, message)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Stable id of this meter. Default: generated on first start and kept in `state_dir`.
    #[serde(default)]
    pub meter_id: Option<String>,
    /// Where the meter keeps its id, sequence numbers, last-known fleet and spool. Default
    /// `/var/lib/ringflow/meter`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Org this meter sends for.
    pub org_id: String,
    /// The org's token (from `collector token`). Prefer `org_token_file` so the secret is not in
    /// the config file.
    #[serde(default)]
    pub org_token: Option<String>,
    /// File holding the org token (first line).
    #[serde(default)]
    pub org_token_file: Option<PathBuf>,
    /// Static collector addresses, `host:port`, used together with (or instead of) the fleet
    /// found through DNS.
    #[serde(default)]
    pub collectors: Vec<String>,
    /// Name the collectors' certificates must carry. Default: `fleet.name`, or for a static
    /// address without a fleet name, its host part.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM CA certificate(s) that sign collector certificates. There is no way to skip this check.
    pub ca_file: PathBuf,
    /// PEM client certificate chain (leaf first) presented to collectors that ask for one
    /// (mTLS). Its DNS names map the meter to an org at the collector (`orgs[].client_names`);
    /// with it, `org_token` is optional. Set together with `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    #[serde(default)]
    pub fleet: FleetConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub spool: SpoolConfig,
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    #[serde(default)]
    pub sources: SourcesConfig,
    #[serde(default)]
    pub admin: AdminConfig,
}

/// The packaged meter's state directory (FHS: variable state of a service under /var/lib).
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/ringflow/meter")
}

impl Config {
    /// Reads, parses and validates a config file; relative paths are taken relative to its
    /// directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = read_toml(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        resolve_paths(
            base,
            [
                Some(&mut config.state_dir),
                Some(&mut config.ca_file),
                config.org_token_file.as_mut(),
                config.client_cert.as_mut(),
                config.client_key.as_mut(),
            ]
            .into_iter()
            .flatten(),
        );
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates TOML text (paths left as written).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = parse_toml(text, Path::new("<text>"))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the top-level keys, then each section; the first problem found is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_identity()?;
        self.validate_collectors()?;
        self.batch.validate()?;
        self.spool.validate(&self.batch)?;
        self.admin.validate()?;
        self.reconnect.validate()?;
        self.fleet.validate()?;
        self.shutdown.validate()?;
        self.sources.validate()
    }

    /// `meter_id`, `org_id`, and how the meter proves its org (a token, a client certificate).
    fn validate_identity(&self) -> Result<(), ConfigError> {
        if let Some(id) = &self.meter_id
            && !valid_meter_id(id)
        {
            return Err(invalid(
                "meter_id",
                "must be 1-128 characters of A-Z a-z 0-9 . _ : - (or leave it out to generate one)",
            ));
        }
        if self.org_id.is_empty() {
            return Err(invalid("org_id", "must not be empty"));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(invalid(
                if self.client_cert.is_some() {
                    "client_key"
                } else {
                    "client_cert"
                },
                "client_cert and client_key go together",
            ));
        }
        match (&self.org_token, &self.org_token_file) {
            (Some(_), Some(_)) => Err(invalid("org_token", "set org_token or org_token_file, not both")),
            (None, None) if self.client_cert.is_none() => Err(invalid(
                "org_token_file",
                "the org's token is required: set org_token_file (or org_token), or a client certificate (client_cert, client_key)",
            )),
            (Some(t), None) if t.trim().is_empty() => Err(invalid("org_token", "is empty")),
            _ => Ok(()),
        }
    }

    /// Where the collectors are: a fleet name (a DNS name) or static `host:port` addresses.
    fn validate_collectors(&self) -> Result<(), ConfigError> {
        if self.collectors.is_empty() && self.fleet.name.is_none() {
            return Err(invalid(
                "fleet.name",
                "no collector is configured: set fleet.name (the fleet's DNS name) or list collectors as \"host:port\"",
            ));
        }
        self.fleet.validate_name()?;
        for (i, c) in self.collectors.iter().enumerate() {
            if split_host_port(c).is_none() {
                return Err(invalid(
                    &format!("collectors[{i}]"),
                    format!("{c:?} is not \"host:port\" (IPv6: \"[::1]:4433\")"),
                ));
            }
        }
        Ok(())
    }

    /// The client certificate and its key, if configured (validation makes sure they come
    /// together).
    pub fn client_cert_and_key(&self) -> Option<(&Path, &Path)> {
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        }
    }

    /// The org token, read from `org_token` or the first line of `org_token_file`; empty for a
    /// meter that proves its org with a client certificate alone.
    pub fn org_token(&self) -> Result<String, ConfigError> {
        if let Some(t) = &self.org_token {
            return Ok(t.trim().to_owned());
        }
        if self.org_token_file.is_none() && self.client_cert.is_some() {
            return Ok(String::new());
        }
        let path = self.org_token_file.as_deref().unwrap_or(Path::new(""));
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            what: "org_token_file =",
            path: path.to_owned(),
            source,
        })?;
        let token = text.lines().next().unwrap_or("").trim().to_owned();
        if token.is_empty() {
            return Err(invalid("org_token_file", format!("{} is empty", path.display())));
        }
        Ok(token)
    }

    /// The name a collector's certificate must carry: `server_name`, else `fleet.name`, else the
    /// host part of its address.
    pub fn server_name_for(&self, address: &str) -> String {
        self.server_name
            .clone()
            .or_else(|| self.fleet.name.clone())
            .or_else(|| split_host_port(address).map(|(h, _)| h.to_owned()))
            .unwrap_or_else(|| address.to_owned())
    }
}

/// Splits "host:port" (or "[v6]:port") into host and port.
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(':') && !s.starts_with('[') {
        return None;
    }
    Some((host, port.parse().ok()?))
}

pub fn valid_meter_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

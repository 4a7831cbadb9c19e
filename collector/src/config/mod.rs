//! The collector's configuration: one typed [`Config`], loaded from TOML and validated before
//! anything starts.
//!
//! Owns: the top-level keys, loading (relative paths follow the file) and the order sections
//! are checked in. Each section is a module holding its struct, its defaults (and why) and its
//! own `validate`; the `[sink]` section and every sink's table belong to the sinks' registry
//! (`data::sink::registry`). Every check turns a bad file into one clear message naming the key
//! (the binary exits 64). [`EXAMPLE_CONFIG`] is the commented file printed by
//! `collector example-config`; a test keeps it equal to the defaults. Must never: open sockets
//! or files other than the config file itself, or import from `control` (the control plane
//! builds its types from these sections, not the other way round).

pub mod admission;
pub mod auth;
pub mod credentials;
pub mod fleet;
pub mod limits;
pub mod orgs;
pub mod runtime;
pub mod shutdown;
pub mod tls;

#[cfg(test)]
pub(crate) mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ringflow_ops::{parse_toml, read_toml, resolve_paths};
use serde::Deserialize;

pub use self::admission::AdmissionConfig;
pub use self::auth::AuthConfig;
pub use self::fleet::{FleetConfig, MAX_FLEET_MEMBERS};
pub use self::limits::LimitsConfig;
pub use self::orgs::{OrgConfig, OrgsConfig};
pub use self::runtime::RuntimeConfig;
pub use self::shutdown::ShutdownConfig;
pub use self::tls::TlsConfig;
pub use crate::data::sink::registry::{SinkConfig, SinkKind, SinkSite};
pub use ringflow_ops::ConfigError;

/// A commented configuration file with every key at its default (required keys filled with
/// placeholders). Printed by `collector example-config`.
pub const EXAMPLE_CONFIG: &str = include_str!("../example-config.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name this collector gives itself in `Welcome`, in stored batches and in logs.
    /// Default: the host name.
    #[serde(default)]
    pub collector_id: Option<String>,
    /// UDP address for QUIC. Default `[::]:4433` (all addresses, IPv4 and IPv6).
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// TCP address of the admin HTTP server (`/healthz`, `/readyz`, `/metrics`). Default
    /// `127.0.0.1:9464`: local only, it is not meant for the internet.
    #[serde(default = "defaults::admin_listen")]
    pub admin_listen: SocketAddr,
    /// Directory of the file sink's segments and the collector's lock file.
    /// Default `/var/lib/ringflow/collector`.
    #[serde(default = "defaults::data_dir")]
    pub data_dir: PathBuf,
    pub tls: TlsConfig,
    /// Organisations allowed to send, each with the hashes of its valid tokens.
    #[serde(default)]
    pub orgs: OrgsConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub fleet: FleetConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub admission: AdmissionConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub sink: SinkConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
}

mod defaults {
    use super::*;

    /// Every address of the host, IPv4 and IPv6, so meters reach it whichever they resolve.
    pub fn listen() -> SocketAddr {
        SocketAddr::from(([0u16; 8], 4433))
    }
    /// Metrics and health stay on the host unless an operator opens them.
    pub fn admin_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9464))
    }
    /// The FHS place for a service's state.
    pub fn data_dir() -> PathBuf {
        PathBuf::from("/var/lib/ringflow/collector")
    }
}

impl Config {
    /// Reads, parses and validates a config file. Relative paths in it are taken relative to the
    /// file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = read_toml(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        resolve_paths(
            base,
            [&mut config.data_dir, &mut config.tls.cert, &mut config.tls.key]
                .into_iter()
                .chain(config.tls.client_ca.as_mut())
                .chain(config.sink.paths_mut()),
        );
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates TOML text (paths are left as written).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = parse_toml(text, Path::new("<text>"))?;
        config.validate()?;
        Ok(config)
    }

    /// The collector id, defaulting to the host name.
    pub fn collector_id(&self) -> String {
        self.collector_id.clone().unwrap_or_else(host_name)
    }

    /// What the configured sink is opened (or read back) with besides its own table.
    pub fn sink_site(&self) -> SinkSite {
        SinkSite {
            data_dir: self.data_dir.clone(),
            collector_id: self.collector_id(),
            max_frame_bytes: self.limits.max_frame_bytes,
        }
    }

    /// Checks every section, in this order; the first problem found is reported with its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(id) = &self.collector_id
            && (id.is_empty() || id.len() > 128)
        {
            return Err(ConfigError::invalid("collector_id", "must be 1-128 characters"));
        }
        self.orgs.validate(&self.tls)?;
        self.tls.validate()?;
        self.auth.validate()?;
        self.fleet.validate(&self.collector_id())?;
        self.limits.validate()?;
        self.sink.validate(self.limits.max_frame_bytes)?;
        self.admission.validate(self.sink.queue_bytes)?;
        self.runtime.validate()?;
        self.shutdown.validate()?;
        Ok(())
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "collector".to_owned())
}

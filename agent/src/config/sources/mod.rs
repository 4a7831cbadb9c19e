//! `[sources.*]`: which flow sources run, one module per source's section.
//!
//! Owns: [`SourcesConfig`] and the order its sections are checked in. A source's section is
//! checked only when the source is enabled. Must never: import from the rest of the meter
//! (config sits below everything that reads it).

mod interfaces;
mod netflow;
mod sockets;
mod synthetic;

use ringflow_ops::ConfigError;
use serde::Deserialize;

pub use interfaces::InterfacesConfig;
pub use netflow::NetflowConfig;
pub use sockets::{BpfConfig, BpfMode, SocketsConfig};
pub use synthetic::SyntheticConfig;

/// Every source's section. The default runs the host's own sources (sockets, interfaces), which
/// need no privileges, and not the ones that listen or make data up.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourcesConfig {
    pub sockets: SocketsConfig,
    pub interfaces: InterfacesConfig,
    pub netflow: NetflowConfig,
    pub synthetic: SyntheticConfig,
}

impl SourcesConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.synthetic.validate()?;
        self.sockets.validate()?;
        self.interfaces.validate()?;
        self.netflow.validate()
    }
}

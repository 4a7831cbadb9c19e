//! `[admin]`: the meter's local HTTP endpoint (`/healthz`, `/metrics`).
//!
//! Owns: the section's keys, their defaults and the loopback-only check. Must never: import from
//! the rest of the meter (config sits below everything that reads it).

use ringflow_ops::ConfigError;
use serde::Deserialize;

/// The meter's local HTTP endpoint: `/healthz` and `/metrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub enabled: bool,
    /// A loopback address (`127.0.0.1:PORT`, `[::1]:PORT`); port 0 picks a free one.
    pub listen: std::net::SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            // Operators expect `/metrics` without extra setup; it is local only.
            enabled: true,
            // Loopback, because the endpoint has no authentication; a fixed port so a local
            // scraper finds it.
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9465)),
        }
    }
}

impl AdminConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled && !self.listen.ip().is_loopback() {
            return Err(ConfigError::invalid(
                "admin.listen",
                format!(
                    "{} is not a loopback address; the meter's admin endpoint is local only (use 127.0.0.1:PORT or [::1]:PORT)",
                    self.listen
                ),
            ));
        }
        Ok(())
    }
}

//! `[sources.sockets]`: this host's TCP connections through netlink sock_diag.
//!
//! Owns: the section's keys, their defaults and their range checks. Must never: import from the
//! rest of the meter.

use ringflow_ops::{ConfigError, check_range};
use serde::Deserialize;

/// This host's TCP connections, read through netlink sock_diag (Linux).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketsConfig {
    pub enabled: bool,
    /// How often the kernel's socket table is read; each connection that moved bytes since the
    /// last read becomes one record of the deltas.
    pub interval_ms: u64,
    /// Cap on connections tracked between reads. Connections beyond it are not reported and
    /// are counted (`ringflow_meter_source_flows_dropped_total{source="sockets"}`).
    pub max_flows: usize,
    /// Also report connections with both ends on this host (127.0.0.0/8, ::1).
    pub include_loopback: bool,
}

impl Default for SocketsConfig {
    fn default() -> Self {
        Self {
            // Needs no privileges: every meter measures its host out of the box.
            enabled: true,
            // Shorter intervals miss less of short connections; a second costs little.
            interval_ms: 1_000,
            // A busy server's connections, with a bound on the memory they take.
            max_flows: 65_536,
            // Local traffic (sidecars, databases on the host) is traffic too.
            include_loopback: true,
        }
    }
}

impl SocketsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled {
            check_range("sources.sockets.interval_ms", self.interval_ms, 10, 3_600_000)?;
            check_range("sources.sockets.max_flows", self.max_flows as u64, 1, 1 << 24)?;
        }
        Ok(())
    }
}

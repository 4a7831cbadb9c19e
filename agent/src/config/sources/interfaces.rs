//! `[sources.interfaces]`: per-interface counters from `/proc/net/dev`.
//!
//! Owns: the section's keys, their defaults and their range checks. Must never: import from the
//! rest of the meter.

use std::path::PathBuf;

use ringflow_ops::{ConfigError, check_range};
use serde::Deserialize;

/// Per-interface counters from `/proc/net/dev`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InterfacesConfig {
    pub enabled: bool,
    /// How often the counters are read; each interface whose counters moved becomes one record
    /// of the deltas.
    pub interval_ms: u64,
    /// The file read (another path is for tests and containers that mount the host's /proc
    /// elsewhere).
    pub path: PathBuf,
    /// Cap on interfaces tracked; more are counted as dropped.
    pub max_interfaces: usize,
}

impl Default for InterfacesConfig {
    fn default() -> Self {
        Self {
            // Needs no privileges, and tells an operator what the host as a whole moved.
            enabled: true,
            // Interface counters are totals: a coarse interval loses nothing, only detail.
            interval_ms: 10_000,
            // Where Linux has them.
            path: PathBuf::from("/proc/net/dev"),
            // Far above any real host; a bound on what a container with thousands of veths takes.
            max_interfaces: 1_024,
        }
    }
}

impl InterfacesConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled {
            check_range("sources.interfaces.interval_ms", self.interval_ms, 10, 3_600_000)?;
            check_range(
                "sources.interfaces.max_interfaces",
                self.max_interfaces as u64,
                1,
                1 << 20,
            )?;
        }
        Ok(())
    }
}

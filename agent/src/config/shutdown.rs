//! `[shutdown]`: how long a stopping meter keeps delivering.
//!
//! Owns: the section's key, its default and its range check. Must never: import from the rest of
//! the meter (config sits below everything that reads it).

use ringflow_ops::{ConfigError, check_range};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// On SIGTERM, how long to keep sending what is spooled and waiting for acks before exiting
    /// (what is not acked by then stays in the spool for the next start).
    pub grace_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        // Enough to deliver the open batch and the acks in flight; short enough for a service
        // manager's stop timeout (what is left is sent at the next start).
        Self { grace_ms: 5_000 }
    }
}

impl ShutdownConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("shutdown.grace_ms", self.grace_ms, 0, 3_600_000)
    }
}

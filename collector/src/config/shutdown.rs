//! `[shutdown]`: how a collector leaves (drain on SIGTERM).
//!
//! Owns: the section's keys, defaults and checks. Must never: run the drain itself.

use ringflow_ops::{ConfigError, check_range};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// On SIGTERM meters are told to reconnect elsewhere at a random moment within this window,
    /// so they do not all land on the next collector at once. Default 10 s.
    pub drain_window_ms: u32,
    /// Longest wait for meters to leave and the sink to flush before closing. Default 30 s.
    pub grace_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            // A leaving collector's meters reach the others spread over 10 s, not at once.
            drain_window_ms: 10_000,
            // Covers the drain window, with room left for the sink to flush what is queued.
            grace_ms: 30_000,
        }
    }
}

impl ShutdownConfig {
    /// Checks `[shutdown]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("shutdown.grace_ms", self.grace_ms, 0, 3_600_000)?;
        Ok(())
    }
}

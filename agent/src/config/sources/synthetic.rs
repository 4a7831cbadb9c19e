//! `[sources.synthetic]`: made-up flows for trials and load tests.
//!
//! Owns: the section's keys, their defaults and their range checks. Must never: import from the
//! rest of the meter.

use ringflow_ops::{ConfigError, check_range};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    /// Generate made-up flows (for trials and load tests).
    pub enabled: bool,
    /// Records generated per second.
    pub records_per_second: u64,
    /// Distinct flows (address/port tuples) the records cycle through.
    pub flows: u32,
    /// Stop after this many records (0: never stop).
    pub total_records: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            // Made-up data never flows unless asked for.
            enabled: false,
            // About a busy host's rate.
            records_per_second: 1_000,
            flows: 100,
            // Runs until stopped, like a real source.
            total_records: 0,
        }
    }
}

impl SyntheticConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled {
            check_range(
                "sources.synthetic.records_per_second",
                self.records_per_second,
                1,
                100_000_000,
            )?;
            check_range("sources.synthetic.flows", self.flows.into(), 1, 1 << 24)?;
        }
        Ok(())
    }
}

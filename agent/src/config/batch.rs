//! `[batch]`: when the batcher closes a batch.
//!
//! Owns: the section's keys, their defaults and their range checks. Must never: import from the
//! rest of the meter (config sits below everything that reads it).

use ringflow_ops::{ConfigError, check_range};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Close a batch at this many records (the collector's limit, from Welcome, wins if lower).
    pub max_records: usize,
    /// The same for a batch sealed as columns: a column batch takes a tenth of a row batch's
    /// bytes, so it can hold more records for the same cost per batch (framing, spool writes,
    /// acks, the collector's sink writes).
    pub columns_max_records: usize,
    /// Close a batch before its frame would pass this many bytes (likewise capped by the collector).
    pub max_bytes: usize,
    /// Close a batch this long after its first record, however small.
    pub max_age_ms: u64,
    /// Offer collectors the records of each batch as columns (smaller, cheaper to check); a
    /// collector that does not read them gets rows.
    pub columns: bool,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            // Enough records per frame that framing and acks cost little per record.
            max_records: 1_000,
            // The collector's default `limits.max_records_per_batch`: about 50 KB of synthetic
            // records as columns with zstd, less than 1,000 as rows.
            columns_max_records: 10_000,
            // Half the collector's default frame limit (1 MiB), so a default meter never meets it.
            max_bytes: 512 << 10,
            // A quiet host's records still leave within a second.
            max_age_ms: 1_000,
            columns: true,
        }
    }
}

impl BatchConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("batch.max_records", self.max_records as u64, 1, 1 << 20)?;
        check_range(
            "batch.columns_max_records",
            self.columns_max_records as u64,
            1,
            1 << 20,
        )?;
        check_range("batch.max_bytes", self.max_bytes as u64, 1024, 16 << 20)?;
        check_range("batch.max_age_ms", self.max_age_ms, 1, 3_600_000)?;
        Ok(())
    }
}

//! `[spool]`: the disk spool in `STATE_DIR/spool`, its caps and its fsync policy.
//!
//! Owns: the section's keys, their defaults and their range checks. The spool turns this into
//! its own limits (`SpoolLimits`, `SpoolRun`). Must never: import from the rest of the meter
//! (config sits below everything that reads it).

use ringflow_ops::{ConfigError, check_range};
use serde::Deserialize;

use super::BatchConfig;

/// The disk spool in `STATE_DIR/spool`, where every batch waits until a collector acks it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Cap on the spool's bytes on disk. At the cap the oldest segment is deleted and what it
    /// held that was not yet acked is counted as dropped.
    pub max_bytes: u64,
    /// Cap on the batches in the spool; same drop-oldest policy.
    pub max_entries: u64,
    /// Size at which a segment file is closed and a new one started.
    pub segment_bytes: u64,
    /// When a written batch is forced to disk.
    pub fsync: FsyncMode,
    /// With `fsync = "interval"`: how often.
    pub fsync_interval_ms: u64,
    /// Sealed batches held in memory on their way to disk. When full, the batcher waits and the
    /// sources, which never wait, drop and count.
    pub memory_batches: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// Every write is synced before the batch is sent: survives power loss.
    Always,
    /// Synced every `fsync_interval_ms`: a crash of the meter loses nothing, a power loss at
    /// most that interval.
    Interval,
    /// Left to the OS.
    Never,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            // Rides out a long outage of the fleet, yet stays small beside any disk.
            max_bytes: 256 << 20,
            // A cap on the count as well, so many tiny batches cannot make recovery slow.
            max_entries: 100_000,
            // Small enough that dropping the oldest segment at the cap loses little; large
            // enough that a busy meter does not rotate files every second.
            segment_bytes: 8 << 20,
            // A crash of the meter loses nothing, and a sync a second costs little.
            fsync: FsyncMode::Interval,
            fsync_interval_ms: 1_000,
            // Absorbs a burst while the disk is slow, without holding much memory.
            memory_batches: 64,
        }
    }
}

impl SpoolConfig {
    /// Checks the section; `batch` because a segment must hold at least one batch.
    pub fn validate(&self, batch: &BatchConfig) -> Result<(), ConfigError> {
        check_range("spool.segment_bytes", self.segment_bytes, 64 << 10, 64 << 20)?;
        if self.segment_bytes < batch.max_bytes as u64 {
            return Err(ConfigError::invalid(
                "spool.segment_bytes",
                "must be at least batch.max_bytes (a segment holds at least one batch)",
            ));
        }
        check_range("spool.max_bytes", self.max_bytes, 2 * self.segment_bytes, 1 << 50)?;
        check_range("spool.max_entries", self.max_entries, 16, 1 << 40)?;
        check_range("spool.fsync_interval_ms", self.fsync_interval_ms, 10, 3_600_000)?;
        check_range("spool.memory_batches", self.memory_batches as u64, 1, 1 << 16)?;
        Ok(())
    }
}

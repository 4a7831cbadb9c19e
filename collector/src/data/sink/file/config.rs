//! `[sink.file]`: the file sink's keys, defaults and checks.
//!
//! Owns: segment size, the retention cap and what "stored" means (the fsync policy). Must never:
//! touch the disk.

use ringflow_ops::{ConfigError, check_range};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSinkConfig {
    /// A segment is closed and a new one started once it reaches this size. Default 64 MiB.
    pub segment_bytes: u64,
    /// Cap on the total size of all segments of all orgs. At the cap the oldest segment is
    /// deleted and its batches counted as dropped. At least two segments. Default 1 GiB.
    pub max_bytes: u64,
    /// When a batch counts as stored, i.e. when it is acked. Default `always`.
    pub fsync: FsyncPolicy,
    /// For `fsync = "interval"`: how often written data is flushed to disk. Default 1 s.
    pub fsync_interval_ms: u64,
}

/// What "the sink holds it" means for the file sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsyncPolicy {
    /// Ack after `fdatasync`: survives a power loss. Writes are grouped, so one sync covers every
    /// batch that arrived while the previous one ran.
    Always,
    /// Ack after `write(2)`; sync every `fsync_interval_ms`. Survives a collector crash, not a
    /// power loss of the last interval.
    Interval,
    /// Ack after `write(2)`; the OS decides when to sync.
    Never,
}

impl Default for FileSinkConfig {
    fn default() -> Self {
        Self {
            // Retention deletes a whole segment: 64 MiB is 1/16 of the default cap, and recovery
            // reads at most one tail segment per org.
            segment_bytes: 64 << 20,
            max_bytes: 1 << 30,
            // Nothing acked is lost, even to a power loss (invariant 1).
            fsync: FsyncPolicy::Always,
            fsync_interval_ms: 1_000,
        }
    }
}

impl FileSinkConfig {
    /// Checks every key of `[sink.file]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("sink.file.segment_bytes", self.segment_bytes, 64 << 10, 16 << 30)?;
        if self.max_bytes < 2 * self.segment_bytes {
            return Err(ConfigError::invalid(
                "sink.file.max_bytes",
                format!(
                    "must be at least twice sink.file.segment_bytes ({} bytes), got {}",
                    2 * self.segment_bytes,
                    self.max_bytes
                ),
            ));
        }
        check_range(
            "sink.file.fsync_interval_ms",
            self.fsync_interval_ms,
            1,
            3_600_000,
        )?;
        Ok(())
    }
}

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
    /// Subscribe to the kernel's TCP socket-destroy notifications, so every connection's last
    /// bytes, and connections that open and close between two reads, are reported.
    pub close_events: bool,
    /// Receive buffer asked for the notification socket (`SO_RCVBUFFORCE` when the meter may,
    /// else `SO_RCVBUF`, which `net.core.rmem_max` caps).
    pub close_buffer_bytes: usize,
    /// Records of closed connections are handed on at most this long after the close.
    pub close_flush_ms: u64,
    /// Find the process (and cgroup) owning each connection through `/proc`.
    pub owners: bool,
    /// Processes whose `/proc/PID/fd` tables one read looks through at most when new sockets'
    /// owners are not yet known (the ones looked through longest ago first; the search goes on
    /// at the next read).
    pub owner_scan_budget: usize,
}

impl Default for SocketsConfig {
    fn default() -> Self {
        Self {
            // Needs no privileges: every meter measures its host out of the box.
            enabled: true,
            // Shorter intervals see more owners of short connections and report live ones
            // sooner; a second costs little.
            interval_ms: 1_000,
            // A busy server's connections, with a bound on the memory they take.
            max_flows: 65_536,
            // Local traffic (sidecars, databases on the host) is traffic too.
            include_loopback: true,
            // Needs no privileges either, and without it short connections are invisible.
            close_events: true,
            // About 10,000 notifications: a second of 5,000 short connections a second (two
            // sockets each on loopback) while the meter is busy elsewhere.
            close_buffer_bytes: 4 << 20,
            // Short connections reach the batcher promptly, a few hundred records at a time.
            close_flush_ms: 100,
            // The first question asked of a flow is who made it.
            owners: true,
            // Every process of a typical host in one read (about 100 processes of 20
            // descriptors cost a few milliseconds); hosts with thousands spread the search.
            owner_scan_budget: 256,
        }
    }
}

impl SocketsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled {
            check_range("sources.sockets.interval_ms", self.interval_ms, 10, 3_600_000)?;
            check_range("sources.sockets.max_flows", self.max_flows as u64, 1, 1 << 24)?;
            check_range(
                "sources.sockets.close_buffer_bytes",
                self.close_buffer_bytes as u64,
                1_024,
                1 << 30,
            )?;
            check_range("sources.sockets.close_flush_ms", self.close_flush_ms, 1, 60_000)?;
            check_range(
                "sources.sockets.owner_scan_budget",
                self.owner_scan_budget as u64,
                1,
                1 << 22,
            )?;
        }
        Ok(())
    }
}

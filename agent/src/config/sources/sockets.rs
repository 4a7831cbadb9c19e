//! `[sources.sockets]`: this host's sockets, through the `bpf` tier (eBPF programs: TCP and
//! UDP) when it can run, else the `sock_diag` tier (netlink: TCP), and `[sources.sockets.bpf]`.
//!
//! Owns: the sections' keys, their defaults and their range checks. Must never: import from the
//! rest of the meter.

use ringflow_ops::{ConfigError, check_range};
use serde::Deserialize;

/// This host's sockets (Linux): TCP and UDP through eBPF programs when the meter may load them,
/// else TCP through netlink sock_diag.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketsConfig {
    pub enabled: bool,
    /// How often the kernel's socket table (sock_diag) or the programs' flow map (bpf) is read;
    /// each flow that moved since the last read becomes one record of the deltas.
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
    /// The eBPF capture tier.
    pub bpf: BpfConfig,
}

/// Whether the `bpf` tier runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BpfMode {
    /// When the meter may load BPF programs (root, or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON);
    /// else the sock_diag tier, with the reason logged and shown by `meter check`.
    Auto,
    /// Always: the meter does not start when the programs cannot be loaded, and says why.
    On,
    /// Never: the sock_diag tier.
    Off,
}

/// `[sources.sockets.bpf]`: the eBPF tier's maps and flow lifetimes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BpfConfig {
    pub mode: BpfMode,
    /// Flows (TCP connections; UDP socket-and-peer pairs) the programs follow at once, and
    /// sockets whose owner they keep. Packets of flows beyond it are not counted, and are
    /// counted as lost (`packets_untracked`).
    pub max_flows: u32,
    /// The ring buffer the programs tell sockets' ends through (a power of two, at least 4096).
    /// Ends that do not fit are counted (`close_events_lost`) and found by the next read.
    pub ring_bytes: u32,
    /// A flow without packets for this long has ended (UDP has no close; a TCP connection idle
    /// this long is reported again as a new flow when it moves).
    pub idle_timeout_secs: u64,
    /// A TCP socket released by its process while the meter could not follow its state (it
    /// connected before the meter started) has ended once quiet for this long.
    pub release_quiet_ms: u64,
}

impl Default for BpfConfig {
    fn default() -> Self {
        Self {
            // Complete where allowed, and still running where not.
            mode: BpfMode::Auto,
            // A busy server's flows; 104 bytes each in the kernel (about 7 MiB), as many owners.
            max_flows: 65_536,
            // About 4,600 ends; a second of 5,000 short connections while the meter is busy.
            ring_bytes: 1 << 20,
            // Twice a typical NAT's UDP timeout: a quiet DNS or QUIC peer is one flow, not many.
            idle_timeout_secs: 120,
            // A FIN and its ACK take a round trip; a second covers all but the slowest links.
            release_quiet_ms: 1_000,
        }
    }
}

impl BpfConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mode == BpfMode::Off {
            return Ok(());
        }
        check_range(
            "sources.sockets.bpf.max_flows",
            u64::from(self.max_flows),
            64,
            1 << 24,
        )?;
        check_range(
            "sources.sockets.bpf.ring_bytes",
            u64::from(self.ring_bytes),
            4_096,
            1 << 30,
        )?;
        if !self.ring_bytes.is_power_of_two() {
            return Err(ConfigError::invalid(
                "sources.sockets.bpf.ring_bytes",
                format!(
                    "{} is not a power of two (the kernel's ring buffers are); use {}",
                    self.ring_bytes,
                    self.ring_bytes.next_power_of_two()
                ),
            ));
        }
        check_range(
            "sources.sockets.bpf.idle_timeout_secs",
            self.idle_timeout_secs,
            1,
            86_400,
        )?;
        check_range(
            "sources.sockets.bpf.release_quiet_ms",
            self.release_quiet_ms,
            1,
            600_000,
        )?;
        Ok(())
    }
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
            bpf: BpfConfig::default(),
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
            self.bpf.validate()?;
        }
        Ok(())
    }
}

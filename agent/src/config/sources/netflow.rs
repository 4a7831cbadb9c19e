//! `[sources.netflow]`: a UDP listener for NetFlow v5, v9 and IPFIX.
//!
//! Owns: the section's keys, their defaults and their range checks. Must never: bind a socket
//! (that is `source::netflow`) or import from the rest of the meter.

use ringflow_ops::{ConfigError, check_range};
use serde::Deserialize;

/// A UDP listener for NetFlow v5, v9 and IPFIX from routers, switches and software exporters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetflowConfig {
    pub enabled: bool,
    /// Address to receive on (NetFlow's customary port is 2055, IPFIX's 4739; one listener
    /// takes all three formats).
    pub listen: std::net::SocketAddr,
    /// Exporters (per address and observation domain) whose templates are kept; the least
    /// recently heard is forgotten beyond this.
    pub max_exporters: usize,
    /// Templates kept per exporter (least recently used evicted).
    pub max_templates: usize,
    /// v9/IPFIX data that arrives before its template is held (per exporter, up to this many
    /// data sets) and decoded when the template comes; 0 drops it at once. With 0, IPFIX records
    /// whose uptime times need their exporter's init time do not wait for it either.
    pub max_pending_sets: usize,
    /// The socket's kernel receive buffer, so bursts from many exporters are not lost.
    pub receive_buffer_bytes: usize,
}

impl Default for NetflowConfig {
    fn default() -> Self {
        Self {
            // A listening socket is opened only when an operator asks for one.
            enabled: false,
            // NetFlow's customary port, on every address (exporters are other hosts).
            listen: std::net::SocketAddr::from(([0, 0, 0, 0], 2055)),
            // More routers than one meter is likely to hear, with bounded memory.
            max_exporters: 1_024,
            // Exporters use a handful of templates; this bounds one that misbehaves.
            max_templates: 1_000,
            // Covers the usual gap before an exporter's periodic template resend.
            max_pending_sets: 64,
            // Room for a burst from many exporters while the task is busy.
            receive_buffer_bytes: 4 << 20,
        }
    }
}

impl NetflowConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        check_range(
            "sources.netflow.max_exporters",
            self.max_exporters as u64,
            1,
            1 << 20,
        )?;
        check_range(
            "sources.netflow.max_templates",
            self.max_templates as u64,
            1,
            1 << 20,
        )?;
        check_range(
            "sources.netflow.max_pending_sets",
            self.max_pending_sets as u64,
            0,
            1 << 16,
        )?;
        check_range(
            "sources.netflow.receive_buffer_bytes",
            self.receive_buffer_bytes as u64,
            64 << 10,
            1 << 30,
        )
    }
}

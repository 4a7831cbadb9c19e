//! `[fleet]`: how the collector fleet is found through DNS.
//!
//! Owns: the section's keys, their defaults and their checks. Must never: resolve anything
//! (that is `fleet::dns`), or import from the rest of the meter (config sits below everything
//! that reads it).

use std::time::Duration;

use ringflow_ops::{ConfigError, check_range, valid_dns_name};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// DNS name of the collector fleet. Every A/AAAA record (with `port`) and every SRV record of
    /// `_ringflow._udp.NAME` (host and port) is a collector. Unset: only static `collectors`.
    pub name: Option<String>,
    /// Port for addresses found in A/AAAA records.
    pub port: u16,
    /// Also look up SRV records.
    pub srv: bool,
    /// DNS servers to ask, `ip:port`. Empty: the system's resolvers (/etc/resolv.conf).
    pub nameservers: Vec<std::net::SocketAddr>,
    /// The fleet is looked up again when its records' TTL expires, but never more often than
    /// `refresh_min_ms` nor less often than `refresh_max_ms`.
    pub refresh_min_ms: u64,
    pub refresh_max_ms: u64,
    /// Time allowed for one lookup.
    pub resolve_timeout_ms: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            // No fleet name: a meter with only static collectors needs no DNS.
            name: None,
            // The collector's default listen port.
            port: 4433,
            // SRV records cost one more lookup and let a fleet use other ports.
            srv: true,
            // The host's own resolvers.
            nameservers: Vec::new(),
            // A zero or tiny TTL must not make a fleet of meters hammer DNS...
            refresh_min_ms: 5_000,
            // ...and a huge one must not hide a fleet change for long.
            refresh_max_ms: 300_000,
            // A resolver that has not answered in 3 s is not going to.
            resolve_timeout_ms: 3_000,
        }
    }
}

impl FleetConfig {
    pub fn resolve_timeout(&self) -> Duration {
        Duration::from_millis(self.resolve_timeout_ms)
    }

    /// Checks `fleet.name`. Apart from [`validate`](Self::validate) because the top level
    /// checks it together with `collectors`, before the other sections.
    pub fn validate_name(&self) -> Result<(), ConfigError> {
        if let Some(name) = &self.name
            && !valid_dns_name(name)
        {
            return Err(ConfigError::invalid(
                "fleet.name",
                format!("{name:?} is not a DNS name"),
            ));
        }
        Ok(())
    }

    /// Checks the section's numbers.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("fleet.port", self.port.into(), 1, 65_535)?;
        check_range("fleet.refresh_min_ms", self.refresh_min_ms, 100, 86_400_000)?;
        check_range(
            "fleet.refresh_max_ms",
            self.refresh_max_ms,
            self.refresh_min_ms,
            86_400_000,
        )?;
        check_range("fleet.resolve_timeout_ms", self.resolve_timeout_ms, 100, 60_000)?;
        Ok(())
    }
}

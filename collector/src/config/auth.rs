//! `[auth]`: how many failed `Hello`s a source address may make (the throttle in
//! `control::auth_throttle`).
//!
//! Owns: the section's keys, defaults and checks. Must never: hold the throttle itself.

use ringflow_ops::{ConfigError, check_range};
use serde::Deserialize;

/// Failed authentications, limited per source address (IPv4 address or IPv6 /64).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Failed `Hello`s an address may make in a burst. Default 10.
    pub failure_burst: u32,
    /// Failed `Hello`s per minute it regains. Default 6. An address out of attempts gets
    /// `Reject(auth)` with a retry hint and its credentials are not checked.
    pub failures_per_minute: u32,
    /// Addresses tracked at once. Default 65536.
    pub max_tracked_addresses: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            // A meter with a stale token retries a few times; a guesser runs out fast.
            failure_burst: 10,
            // One guess every 10 s once the burst is spent.
            failures_per_minute: 6,
            // Bounds the table: a spray of source addresses cannot grow it past this.
            max_tracked_addresses: 65_536,
        }
    }
}

impl AuthConfig {
    /// Checks `[auth]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("auth.failure_burst", self.failure_burst.into(), 1, 1_000_000)?;
        check_range(
            "auth.failures_per_minute",
            self.failures_per_minute.into(),
            1,
            1_000_000,
        )?;
        check_range(
            "auth.max_tracked_addresses",
            self.max_tracked_addresses.into(),
            16,
            16 << 20,
        )?;
        Ok(())
    }
}

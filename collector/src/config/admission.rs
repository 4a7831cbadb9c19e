//! `[admission]`: the budgets a collector sheds load by (see `control::admission`, which turns
//! this section into its `Budgets`).
//!
//! Owns: the section's keys, defaults and checks. Must never: decide admission itself.

use ringflow_ops::{ConfigError, check_range};
use serde::Deserialize;

/// Admission budgets (see `control/admission.rs`). Hard budgets refuse a new connection before
/// the TLS handshake; soft budgets answer an authenticated `Hello` with `Reject(overloaded)` and a
/// spread `retry_after_ms`. Defaults come from the handshake capacity measured on a 2-core machine
/// (docs/operations.md, "Admission budgets").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Hard: handshakes in flight (accepted, not yet answered with Welcome or Reject). Past half
    /// of it, addresses not yet validated get a stateless Retry first. Default 256.
    pub max_handshakes: u32,
    /// Hard: sustained new connections per second (token bucket rate). Default 1,000.
    pub accept_rate: u32,
    /// Hard: new connections accepted in one burst (token bucket size). Default 1,000.
    pub accept_burst: u32,
    /// Hard: bytes the data plane holds across all connections (the sink queue and frames
    /// waiting to enter it). Default 512 MiB.
    pub max_buffered_bytes: u64,
    /// Soft: sessions beyond this are told `Reject(overloaded)`; at or above
    /// `limits.max_connections` only the hard budget applies. Default 9,000.
    pub soft_max_sessions: u32,
    /// Soft: buffered bytes beyond this make new sessions `Reject(overloaded)`. Must be more
    /// than `sink.queue_bytes` (a full queue alone is back-pressure, not overload). Default 256 MiB.
    pub soft_buffered_bytes: u64,
    /// Range of the retry hint sent with `Reject(overloaded)`: uniform over a window that grows
    /// from `retry_after_min_ms` wide (just over a soft budget) to the whole range (at the hard
    /// one). Defaults 1 s and 30 s.
    pub retry_after_min_ms: u32,
    pub retry_after_max_ms: u32,
    /// Bounded load: a collector holding ⌈(1 + ε) · the fleet's mean⌉ sessions answers further
    /// Hellos with `Reject(overloaded)`, so meters walk their ring to the next collector. The
    /// fleet's load comes from polling the peers' admin servers (`fleet.name`, `fleet.members`,
    /// `fleet.load_admin_port`, `fleet.load_poll_ms`); with no peer answering there is no cap.
    /// 0 turns the cap (and the polling) off. Default 0.05.
    pub bounded_load_epsilon: f64,
    /// Adaptive accept rate: the collector lowers its accept rate when the control plane's
    /// scheduling lag (how late its tasks run; the packets and acks of established sessions wait
    /// about that long) is over this many milliseconds, and raises it again while it is under
    /// and meters are waiting, never above `accept_rate` (then the ceiling) nor below a
    /// sixty-fourth of it. 0 turns it off: the accept rate is `accept_rate`, fixed. Default 0.
    pub adaptive_lag_ms: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_handshakes: 256,
            accept_rate: 1_000,
            accept_burst: 1_000,
            max_buffered_bytes: 512 << 20,
            // 90% of limits.max_connections: meters hear Reject(overloaded) with a spread retry
            // hint well before the hard budget refuses connections ahead of their handshake.
            soft_max_sessions: 9_000,
            // Four times the default sink queue: past it, the data plane is behind, not busy.
            soft_buffered_bytes: 256 << 20,
            retry_after_min_ms: 1_000,
            retry_after_max_ms: 30_000,
            // No collector more than 5% above the fleet's mean.
            bounded_load_epsilon: 0.05,
            // Off until a herd of 20,000 shows it on this machine (docs/herd.md).
            adaptive_lag_ms: 0,
        }
    }
}

impl AdmissionConfig {
    /// Checks `[admission]`; `queue_bytes` is `sink.queue_bytes`, which the soft byte budget
    /// must exceed.
    pub fn validate(&self, queue_bytes: usize) -> Result<(), ConfigError> {
        check_range("admission.max_handshakes", self.max_handshakes.into(), 1, 1 << 20)?;
        check_range("admission.accept_rate", self.accept_rate.into(), 1, 1_000_000)?;
        check_range("admission.accept_burst", self.accept_burst.into(), 1, 1_000_000)?;
        let queue = queue_bytes as u64;
        if self.soft_buffered_bytes <= queue {
            return Err(ConfigError::invalid(
                "admission.soft_buffered_bytes",
                format!(
                    "must be more than sink.queue_bytes ({queue}): a full sink queue is back-pressure, not overload"
                ),
            ));
        }
        if self.max_buffered_bytes < self.soft_buffered_bytes {
            return Err(ConfigError::invalid(
                "admission.max_buffered_bytes",
                "must be at least admission.soft_buffered_bytes",
            ));
        }
        check_range(
            "admission.soft_max_sessions",
            self.soft_max_sessions.into(),
            1,
            1 << 20,
        )?;
        check_range(
            "admission.retry_after_min_ms",
            self.retry_after_min_ms.into(),
            100,
            600_000,
        )?;
        // The hint window starts min wide and grows to [min, max]: max is at least 2 x min.
        check_range(
            "admission.retry_after_max_ms",
            self.retry_after_max_ms.into(),
            2 * u64::from(self.retry_after_min_ms),
            3_600_000,
        )?;
        check_range(
            "admission.adaptive_lag_ms",
            self.adaptive_lag_ms.into(),
            0,
            10_000,
        )?;
        if !(0.0..=1.0).contains(&self.bounded_load_epsilon) {
            return Err(ConfigError::invalid(
                "admission.bounded_load_epsilon",
                format!("must be between 0 (off) and 1, got {}", self.bounded_load_epsilon),
            ));
        }
        Ok(())
    }
}

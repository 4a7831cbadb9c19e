//! `[reconnect]`: backoff, splay, walk and rebalance timings.
//!
//! Owns: the section's keys, their defaults and their range checks. The selector and its backoff
//! turn this into their own parameters (`SelectorConfig`, `JitterParams`). Must never: import
//! from the rest of the meter (config sits below everything that reads it).

use std::time::Duration;

use ringflow_ops::{ConfigError, check_range};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectConfig {
    /// Backoff after a round of attempts in which every collector failed: the n-th such round
    /// waits a uniform random time in [0, min(max_delay, initial_delay x multiplier^n)] (full
    /// jitter), so meters that failed together do not retry together.
    pub initial_delay_ms: u64,
    pub max_delay_ms: u64,
    pub multiplier: f64,
    /// Time allowed to connect (QUIC + TLS) and get Welcome.
    pub connect_timeout_ms: u64,
    /// The first attempt after start waits a uniform random time in [0, splay).
    pub splay_ms: u64,
    /// Before trying the next collector after a failure, wait a uniform random time in [0, this).
    pub step_delay_ms: u64,
    /// A session that lasts this long resets the backoff; one that ends sooner counts as a failure.
    pub healthy_after_ms: u64,
    /// When this meter's first choice is not the collector it is connected to (after a failover,
    /// or a fleet change), it moves at a uniform random moment within this window.
    pub rebalance_window_ms: u64,
    /// With something written and unanswered, not one packet from the collector for this long
    /// (or three probe timeouts of a longer path) means it is gone: the session ends and the
    /// meter moves on. See `docs/meter.md`, "Failure detection".
    pub silence_timeout_ms: u64,
    /// A batch unacked for longer than the ack bound (four times the usual worst ack latency of
    /// the session, kept within these two) means the collector stalled: the meter moves to the
    /// next collector once that one answers, make-before-break.
    pub ack_timeout_min_ms: u64,
    pub ack_timeout_max_ms: u64,
    /// A collector that went silent, stalled, did not answer a dial at all, or that the fleet
    /// view says is not answering is not dialled again for this long while another collector is free.
    pub dead_hold_ms: u64,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        Self {
            // A brief outage is retried within a second...
            initial_delay_ms: 1_000,
            // ...and a long one costs a fleet at most one attempt per meter a minute.
            max_delay_ms: 60_000,
            // Doubling: the usual exponential backoff.
            multiplier: 2.0,
            // A QUIC + TLS handshake across the internet, with room for a loaded collector.
            connect_timeout_ms: 10_000,
            // Meters started together (a fleet rollout, a power cut) spread over a second.
            splay_ms: 1_000,
            // Meters that lost the same collector do not all dial the next one at once.
            step_delay_ms: 500,
            // A collector that accepts and drops meters cannot make them flap at full speed.
            healthy_after_ms: 30_000,
            // A fleet change moves its meters over a minute, not in one instant.
            rebalance_window_ms: 60_000,
            // A live collector answers a write within an RTT and 25 ms; a second is forty
            // loopback-to-continent RTTs, and a starved collector's QUIC stack still answers.
            silence_timeout_ms: 1_000,
            // A group commit or a sink's hiccup lasts well under this...
            ack_timeout_min_ms: 5_000,
            // ...and a meter waits at most this long on a collector that stopped acking.
            ack_timeout_max_ms: 30_000,
            // Long enough for the fleet to settle without it; DNS may still name it meanwhile.
            dead_hold_ms: 30_000,
        }
    }
}

impl ReconnectConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("reconnect.initial_delay_ms", self.initial_delay_ms, 1, 3_600_000)?;
        check_range(
            "reconnect.max_delay_ms",
            self.max_delay_ms,
            self.initial_delay_ms,
            86_400_000,
        )?;
        check_range(
            "reconnect.connect_timeout_ms",
            self.connect_timeout_ms,
            100,
            600_000,
        )?;
        if !(1.0..=10.0).contains(&self.multiplier) {
            return Err(ConfigError::invalid(
                "reconnect.multiplier",
                format!("must be between 1.0 and 10.0, got {}", self.multiplier),
            ));
        }
        check_range("reconnect.splay_ms", self.splay_ms, 0, 3_600_000)?;
        check_range("reconnect.step_delay_ms", self.step_delay_ms, 0, 600_000)?;
        check_range("reconnect.healthy_after_ms", self.healthy_after_ms, 0, 3_600_000)?;
        check_range(
            "reconnect.rebalance_window_ms",
            self.rebalance_window_ms,
            0,
            86_400_000,
        )?;
        check_range(
            "reconnect.silence_timeout_ms",
            self.silence_timeout_ms,
            100,
            600_000,
        )?;
        check_range(
            "reconnect.ack_timeout_min_ms",
            self.ack_timeout_min_ms,
            100,
            3_600_000,
        )?;
        check_range(
            "reconnect.ack_timeout_max_ms",
            self.ack_timeout_max_ms,
            self.ack_timeout_min_ms,
            3_600_000,
        )?;
        check_range("reconnect.dead_hold_ms", self.dead_hold_ms, 0, 3_600_000)?;
        Ok(())
    }
}

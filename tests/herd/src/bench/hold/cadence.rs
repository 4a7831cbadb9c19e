//! The cadence an idle session keeps, as the code in use sets it: the meter's QUIC keep-alive and
//! idle timeout, the collector's idle timeout and the heartbeat interval its `Welcome` suggests.
//!
//! Owns: reading those settings from where they are defined (never a copy of their values: the
//! bench measures whatever they are) and the length of an idle window that holds whole
//! keep-alive periods. Must never: measure.

use std::time::Duration;

/// How an idle session keeps alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// The meter's QUIC keep-alive interval (`ringflow_meter::transport::KEEP_ALIVE`).
    pub keep_alive: Duration,
    /// The idle timeout QUIC applies: the lower of the meter's
    /// (`ringflow_meter::transport::IDLE_TIMEOUT`) and the collector's default
    /// `limits.idle_timeout_ms`.
    pub idle_timeout: Duration,
    /// The heartbeat interval the collector's `Welcome` suggests (zero: no heartbeats).
    pub heartbeat: Duration,
}

impl Cadence {
    /// The cadence of the code this bench is built from, with the heartbeat interval a
    /// collector's `Welcome` carried.
    pub fn of_code(welcome: &ringflow_proto::pb::Welcome) -> Self {
        let collector_idle = ringflow_collector::config::LimitsConfig::default().idle_timeout_ms;
        Self {
            keep_alive: ringflow_meter::transport::KEEP_ALIVE,
            idle_timeout: ringflow_meter::transport::IDLE_TIMEOUT.min(Duration::from_millis(collector_idle)),
            heartbeat: Duration::from_millis(
                welcome
                    .limits
                    .as_ref()
                    .map_or(0, |l| u64::from(l.heartbeat_interval_ms)),
            ),
        }
    }

    /// An idle window of at least `min` that holds a whole number of keep-alive periods, so that
    /// every connection's keep-alives fall in it the same number of times whatever their phase
    /// (heartbeats are spread evenly over their interval by the bench, so any window holds its
    /// share of them).
    pub fn idle_window(&self, min: Duration) -> Duration {
        whole_periods(min, self.keep_alive)
    }
}

/// The shortest whole number of `period`s that is at least `min` (`min` itself for a zero period).
fn whole_periods(min: Duration, period: Duration) -> Duration {
    if period.is_zero() {
        return min;
    }
    let periods = min.as_nanos().div_ceil(period.as_nanos()).max(1);
    period.saturating_mul(u32::try_from(periods).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_window_holds_whole_keep_alive_periods() {
        let s = Duration::from_secs;
        assert_eq!(whole_periods(s(15), s(3)), s(15));
        assert_eq!(whole_periods(s(16), s(3)), s(18));
        assert_eq!(whole_periods(s(15), s(20)), s(20));
        assert_eq!(whole_periods(s(3), s(20)), s(20));
        assert_eq!(whole_periods(s(3), Duration::ZERO), s(3));
    }

    #[test]
    fn the_cadence_comes_from_the_code_and_the_welcome() {
        let welcome = ringflow_proto::pb::Welcome {
            limits: Some(ringflow_proto::pb::Limits {
                heartbeat_interval_ms: 1_234,
                ..Default::default()
            }),
            ..Default::default()
        };
        let cadence = Cadence::of_code(&welcome);
        assert_eq!(cadence.keep_alive, ringflow_meter::transport::KEEP_ALIVE);
        assert!(cadence.idle_timeout <= ringflow_meter::transport::IDLE_TIMEOUT);
        assert_eq!(cadence.heartbeat, Duration::from_millis(1_234));
        let off = Cadence::of_code(&ringflow_proto::pb::Welcome::default());
        assert!(off.heartbeat.is_zero());
    }
}

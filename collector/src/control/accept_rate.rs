//! The adaptive accept rate: how many new connections a second this collector lets into a
//! handshake, found by watching what its established sessions suffer rather than set by hand.
//!
//! The signal is the control plane's scheduling lag: how late a timer task on the control
//! runtime runs. The control runtime does the QUIC packet I/O of every session and the TLS work
//! of every handshake, so when handshakes queue for CPU, the packets (and so the acks) of the
//! meters already connected wait behind them by about that lag. The controller keeps it under
//! `admission.adaptive_lag_ms`:
//! - **Slow start**: from a sixteenth of the ceiling, the rate doubles every window in which
//!   demand was over it (the bucket turned someone away) and the lag was under target.
//! - **Additive increase**: after the first decrease, each such window adds half the rate per
//!   second (pro rata), so the rate climbs back over a second or two, not instantly.
//! - **Multiplicative decrease**: a window whose mean lag is over target cuts the rate by 30%,
//!   at most once per two windows (a cut needs that long to show in the lag).
//! - Bounds: never above the configured `admission.accept_rate` (the ceiling), never below a
//!   sixty-fourth of it (at least 1/s), so a collector always lets some meters in.
//!
//! Without demand the rate stays where it was: an idle collector keeps what it learned instead
//! of drifting to the ceiling and letting the next herd in at it.
//!
//! Sans-IO: the caller passes each lag sample with the time; `herd sim` drives the same struct
//! with the lag its model gives. Must never: read a clock, measure anything, or do I/O.

use std::time::Duration;

use tokio::time::Instant;

/// The window over which lag samples are averaged before a decision.
pub const WINDOW: Duration = Duration::from_millis(100);
/// How often the caller should sample the lag (ten samples a window).
pub const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// Slow start begins at this fraction of the ceiling.
const START_FRACTION: f64 = 1.0 / 16.0;
/// The floor, as a fraction of the ceiling.
const FLOOR_FRACTION: f64 = 1.0 / 64.0;
/// Multiplicative decrease.
const DECREASE: f64 = 0.7;
/// Additive increase per second, as a fraction of the current rate.
const INCREASE_PER_S: f64 = 0.5;
/// Windows between two decreases at least.
const DECREASE_EVERY: u32 = 2;

/// The controller of one collector's accept rate.
#[derive(Debug, Clone)]
pub struct AcceptRate {
    ceiling: f64,
    floor: f64,
    rate: f64,
    target: Duration,
    slow_start: bool,
    window_started: Instant,
    lag_sum: Duration,
    samples: u32,
    /// The bucket turned an attempt away for the rate in this window: there was demand above it.
    limited: bool,
    /// Windows since the last decrease (saturating).
    since_decrease: u32,
}

/// What a closed window decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// Lag over target: the rate was cut.
    Decreased,
    /// Demand over the rate and lag under target: the rate was raised.
    Increased,
    /// Neither (no demand, at a bound, or a cut too recent).
    Held,
}

impl AcceptRate {
    /// A controller for a collector whose hand-set `accept_rate` is `ceiling`, keeping the lag
    /// under `target`.
    pub fn new(ceiling: f64, target: Duration, now: Instant) -> Self {
        let ceiling = ceiling.max(1.0);
        let floor = (ceiling * FLOOR_FRACTION).max(1.0).min(ceiling);
        Self {
            ceiling,
            floor,
            rate: (ceiling * START_FRACTION).max(floor),
            target,
            slow_start: true,
            window_started: now,
            lag_sum: Duration::ZERO,
            samples: 0,
            limited: false,
            since_decrease: DECREASE_EVERY,
        }
    }

    /// Accepts per second allowed now.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    pub fn ceiling(&self) -> f64 {
        self.ceiling
    }

    /// Demand was over the rate: the bucket refused an attempt for it.
    pub fn on_rate_limited(&mut self) {
        self.limited = true;
    }

    /// One lag sample taken at `now`. When it closes a window, returns what the window decided.
    pub fn on_lag(&mut self, lag: Duration, now: Instant) -> Option<Step> {
        self.lag_sum += lag;
        self.samples += 1;
        let elapsed = now.saturating_duration_since(self.window_started);
        if elapsed < WINDOW {
            return None;
        }
        let mean = self.lag_sum / self.samples;
        let step = self.decide(mean, elapsed);
        self.window_started = now;
        self.lag_sum = Duration::ZERO;
        self.samples = 0;
        self.limited = false;
        Some(step)
    }

    fn decide(&mut self, mean_lag: Duration, elapsed: Duration) -> Step {
        self.since_decrease = self.since_decrease.saturating_add(1);
        if mean_lag > self.target {
            if self.since_decrease < DECREASE_EVERY || self.rate <= self.floor {
                return Step::Held;
            }
            self.rate = (self.rate * DECREASE).max(self.floor);
            self.slow_start = false;
            self.since_decrease = 0;
            return Step::Decreased;
        }
        if !self.limited || self.rate >= self.ceiling {
            return Step::Held;
        }
        let raised = if self.slow_start {
            self.rate * 2.0
        } else {
            self.rate * (1.0 + INCREASE_PER_S * elapsed.as_secs_f64())
        };
        self.rate = raised.min(self.ceiling);
        Step::Increased
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A collector in virtual time: it completes `capacity` handshakes a second; what it has
    /// accepted and not yet completed queues for its CPU, and the lag is the time to clear that
    /// queue (the packets of established sessions wait behind it). Demand is `offered` attempts
    /// a second. Returns the controller and the lag (ms) of each window.
    fn drive(c: &mut AcceptRate, capacity: f64, offered: f64, secs: f64, t: &mut Instant) -> Vec<f64> {
        let mut tokens = 0.0f64;
        let mut queue = 0.0f64;
        let mut lags = Vec::new();
        let dt = SAMPLE_EVERY.as_secs_f64();
        for _ in 0..(secs / dt) as usize {
            *t += SAMPLE_EVERY;
            tokens = (tokens + c.rate() * dt).min(c.rate().max(1.0));
            let want = offered * dt;
            let let_in = want.min(tokens.floor());
            tokens -= let_in;
            if let_in < want {
                c.on_rate_limited();
            }
            queue = (queue + let_in - capacity * dt).max(0.0);
            let lag = Duration::from_secs_f64(queue / capacity);
            if c.on_lag(lag, *t).is_some() {
                lags.push(lag.as_secs_f64() * 1e3);
            }
        }
        lags
    }

    #[test]
    fn a_ceiling_ten_times_too_high_settles_near_capacity_with_the_lag_under_target() {
        let t0 = Instant::now();
        let mut t = t0;
        let target = Duration::from_millis(5);
        let mut c = AcceptRate::new(2_500.0, target, t0);
        // A herd offering far more than the collector can take, for 30 s.
        let lags = drive(&mut c, 250.0, 5_000.0, 30.0, &mut t);
        // After the first seconds, the lag stays near the target: the queue never runs away.
        let settled = &lags[50..];
        let mean = settled.iter().sum::<f64>() / settled.len() as f64;
        let worst = settled.iter().copied().fold(0.0, f64::max);
        assert!(mean < 10.0, "mean lag {mean:.1} ms");
        assert!(worst < 60.0, "worst lag {worst:.1} ms");
        // And the rate stays within a factor of the capacity, far below the ceiling.
        assert!((100.0..400.0).contains(&c.rate()), "rate {}", c.rate());
    }

    #[test]
    fn without_a_controller_the_same_herd_queues_without_bound() {
        // The comparison that makes the test above mean something: at the ceiling, the queue
        // (and the lag of every established session) grows for as long as the herd lasts.
        let t0 = Instant::now();
        let mut t = t0;
        let mut fixed = AcceptRate::new(2_500.0, Duration::from_secs(3_600), t0);
        fixed.rate = fixed.ceiling;
        let lags = drive(&mut fixed, 250.0, 5_000.0, 30.0, &mut t);
        assert!(
            lags.last().copied().unwrap_or(0.0) > 60_000.0,
            "{:?}",
            lags.last()
        );
    }

    #[test]
    fn slow_start_reaches_the_ceiling_fast_when_nothing_suffers() {
        let t0 = Instant::now();
        let mut t = t0;
        let mut c = AcceptRate::new(1_000.0, Duration::from_millis(5), t0);
        assert_eq!(c.rate(), 62.5);
        // Capacity to spare: doubling every window, at the ceiling within half a second.
        drive(&mut c, 100_000.0, 5_000.0, 0.5, &mut t);
        assert_eq!(c.rate(), 1_000.0);
    }

    #[test]
    fn without_demand_the_rate_holds_and_after_a_cut_it_climbs_back_gradually() {
        let t0 = Instant::now();
        let mut t = t0;
        let mut c = AcceptRate::new(1_000.0, Duration::from_millis(5), t0);
        drive(&mut c, 100_000.0, 5_000.0, 1.0, &mut t);
        assert_eq!(c.rate(), 1_000.0);
        // Lag over target: one cut per two windows at most, each by 30%.
        let mut steps = Vec::new();
        for _ in 0..40 {
            t += SAMPLE_EVERY;
            if let Some(s) = c.on_lag(Duration::from_millis(50), t) {
                steps.push(s);
            }
        }
        assert_eq!(steps, [Step::Decreased, Step::Held, Step::Decreased, Step::Held]);
        assert!((c.rate() - 490.0).abs() < 1e-9, "{}", c.rate());
        // Idle and healthy: held.
        drive(&mut c, 100_000.0, 0.0, 5.0, &mut t);
        assert!((c.rate() - 490.0).abs() < 1e-9, "{}", c.rate());
        // Demand again: +50% a second (5% a window), no longer doubling.
        drive(&mut c, 100_000.0, 5_000.0, 1.0, &mut t);
        assert!((790.0..805.0).contains(&c.rate()), "{}", c.rate());
    }

    #[test]
    fn the_rate_never_falls_below_the_floor() {
        let t0 = Instant::now();
        let mut t = t0;
        let mut c = AcceptRate::new(640.0, Duration::from_millis(5), t0);
        for _ in 0..1_000 {
            t += SAMPLE_EVERY;
            c.on_lag(Duration::from_secs(1), t);
        }
        assert_eq!(c.rate(), 10.0);
        let tiny = AcceptRate::new(3.0, Duration::from_millis(5), t0);
        assert_eq!(tiny.rate(), 1.0, "at least one a second");
    }
}

//! Backoff between rounds of connection attempts: exponential with full jitter.
//!
//! The n-th consecutive failed round waits a delay drawn uniformly from
//! `[0, min(max, initial * multiplier^n)]` ("full jitter": meters that failed together do not
//! retry together). Two implementations of the `backoff` crate's [`Backoff`] trait give that one
//! distribution:
//!
//! - [`live`]: the crate's `ExponentialBackoff`. It draws each delay uniformly from
//!   `[current * (1 - f), current * (1 + f)]` and then multiplies `current`, capped at its
//!   `max_interval`. With `f = 1.0` that is `[0, 2 * current]`, so it is configured with half
//!   the initial and maximum delays to give exactly the range above. `max_elapsed_time` is
//!   `None`: the crate's default gives up after 15 minutes, and a meter never gives up.
//! - [`Seeded`]: the same distribution from a seeded RNG, for tests and `herd sim`, because the
//!   crate's randomness (thread RNG) and clock cannot be injected.

use std::time::Duration;

use backoff::ExponentialBackoff;
use backoff::backoff::Backoff;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Parameters of the backoff.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JitterParams {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
}

impl From<&crate::config::ReconnectConfig> for JitterParams {
    /// The backoff between failed rounds.
    fn from(r: &crate::config::ReconnectConfig) -> Self {
        JitterParams {
            initial: Duration::from_millis(r.initial_delay_ms),
            max: Duration::from_millis(r.max_delay_ms),
            multiplier: r.multiplier,
        }
    }
}

impl JitterParams {
    /// The upper bound of the delay of round `n` (0-based).
    pub fn ceiling(&self, round: u32) -> Duration {
        let grown = self.initial.as_secs_f64() * self.multiplier.powi(round.min(1_000) as i32);
        Duration::from_secs_f64(grown.min(self.max.as_secs_f64()))
    }
}

/// The live backoff: the `backoff` crate's `ExponentialBackoff` set up for full jitter.
pub fn live(p: JitterParams) -> ExponentialBackoff {
    ExponentialBackoff {
        current_interval: p.initial / 2,
        initial_interval: p.initial / 2,
        randomization_factor: 1.0,
        multiplier: p.multiplier,
        max_interval: p.max / 2,
        max_elapsed_time: None,
        ..ExponentialBackoff::default()
    }
}

/// Full jitter from a seeded RNG: the same distribution as [`live`], reproducibly. `herd sim`
/// gives it a smaller RNG of its own (a million meters each hold one).
#[derive(Debug, Clone)]
pub struct Seeded<R = StdRng> {
    params: JitterParams,
    round: u32,
    rng: R,
}

impl Seeded {
    pub fn new(params: JitterParams, seed: u64) -> Self {
        Self::with_rng(params, StdRng::seed_from_u64(seed))
    }
}

impl<R: Rng> Seeded<R> {
    pub fn with_rng(params: JitterParams, rng: R) -> Self {
        Self {
            params,
            round: 0,
            rng,
        }
    }
}

impl<R: Rng> Backoff for Seeded<R> {
    fn reset(&mut self) {
        self.round = 0;
    }

    fn next_backoff(&mut self) -> Option<Duration> {
        let ceiling = self.params.ceiling(self.round);
        self.round = self.round.saturating_add(1);
        Some(ceiling.mul_f64(self.rng.random::<f64>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: JitterParams = JitterParams {
        initial: Duration::from_millis(1_000),
        max: Duration::from_millis(60_000),
        multiplier: 2.0,
    };

    fn check_rounds(mut b: impl Backoff) {
        for round in 0..12 {
            let d = b.next_backoff().expect("never gives up");
            // +1 ns: the crate's formula includes its upper bound.
            assert!(
                d <= P.ceiling(round) + Duration::from_nanos(1),
                "round {round}: {d:?}"
            );
        }
        b.reset();
        assert!(b.next_backoff().unwrap() <= P.initial + Duration::from_nanos(1));
    }

    #[test]
    fn both_implementations_stay_within_the_full_jitter_bounds() {
        check_rounds(live(P));
        check_rounds(Seeded::new(P, 7));
        assert_eq!(P.ceiling(3), Duration::from_secs(8));
        assert_eq!(P.ceiling(20), Duration::from_secs(60));
    }

    /// 1,000 meters failing at the same moment spread their first retries evenly over
    /// [0, initial] instead of clustering.
    #[test]
    fn first_retries_of_a_thousand_meters_are_spread() {
        let mut bins = [0u32; 10];
        for meter in 0..1_000u64 {
            let d = Seeded::new(P, meter).next_backoff().unwrap();
            let bin = (d.as_secs_f64() / P.initial.as_secs_f64() * 10.0) as usize;
            bins[bin.min(9)] += 1;
        }
        // Uniform would put 100 in each tenth.
        assert!(bins.iter().all(|&n| (60..=140).contains(&n)), "{bins:?}");
    }

    #[test]
    fn the_live_backoff_spreads_too() {
        let delays: Vec<f64> = (0..1_000)
            .map(|_| live(P).next_backoff().unwrap().as_secs_f64())
            .collect();
        let mean = delays.iter().sum::<f64>() / delays.len() as f64;
        // Uniform on [0, 1 s]: mean 0.5 s, standard error 9 ms.
        assert!((0.4..0.6).contains(&mean), "mean {mean}");
        assert!(delays.iter().any(|&d| d < 0.1) && delays.iter().any(|&d| d > 0.9));
    }
}

//! Which collector to try next, and how long to wait first.
//!
//! Sans-IO: the delays come through the `backoff` crate's [`Backoff`] trait, so the live meter
//! plugs in `ExponentialBackoff` (full jitter) and tests plug in a seeded or fixed one. For now the
//! targets are the configured list, tried in turn; the fleet-selection issue replaces this with a
//! consistent-hash ring over the resolved record set. Must never: resolve names, sleep, or read a
//! clock itself.

use std::time::Duration;

use backoff::ExponentialBackoff;
use backoff::backoff::Backoff;

/// A collector to dial: its `host:port` and the name its certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub address: String,
    pub server_name: String,
}

#[derive(Debug)]
pub struct Selector<B> {
    targets: Vec<Target>,
    next: usize,
    backoff: B,
}

impl<B: Backoff> Selector<B> {
    /// `targets` must not be empty (config validation guarantees it).
    pub fn new(targets: Vec<Target>, backoff: B) -> Self {
        assert!(!targets.is_empty(), "a selector needs at least one target");
        Self {
            targets,
            next: 0,
            backoff,
        }
    }

    /// The target of the next attempt; each call moves on to the next one in the list.
    pub fn next_target(&mut self) -> Target {
        let t = self.targets[self.next % self.targets.len()].clone();
        self.next = (self.next + 1) % self.targets.len();
        t
    }

    /// A session was welcomed: the next failure waits the initial delay again.
    pub fn on_success(&mut self) {
        self.backoff.reset();
    }

    /// How long to wait after a failed or refused attempt. A collector's `retry_after` hint is a
    /// floor.
    pub fn failure_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let jittered = self.backoff.next_backoff().unwrap_or(Duration::from_secs(60));
        jittered.max(retry_after.unwrap_or_default())
    }
}

/// The live backoff: the delay doubles from `initial` up to `max`, and each wait is drawn
/// uniformly from [0, 2 x delay] (randomization factor 1.0, i.e. full jitter). It never gives up
/// (`max_elapsed_time: None`): a meter retries for as long as it runs.
pub fn full_jitter(initial: Duration, max: Duration) -> ExponentialBackoff {
    ExponentialBackoff {
        current_interval: initial,
        initial_interval: initial,
        randomization_factor: 1.0,
        multiplier: 2.0,
        max_interval: max,
        max_elapsed_time: None,
        ..ExponentialBackoff::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic Backoff for tests: initial, doubling, capped; no jitter.
    struct Doubling {
        cur: Duration,
        initial: Duration,
    }

    impl Backoff for Doubling {
        fn reset(&mut self) {
            self.cur = self.initial;
        }
        fn next_backoff(&mut self) -> Option<Duration> {
            let d = self.cur;
            self.cur = (self.cur * 2).min(Duration::from_secs(8));
            Some(d)
        }
    }

    fn targets() -> Vec<Target> {
        ["a:1", "b:1"]
            .iter()
            .map(|a| Target {
                address: a.to_string(),
                server_name: "x".into(),
            })
            .collect()
    }

    #[test]
    fn rotates_through_targets_and_backs_off_until_success() {
        let s = Duration::from_secs(1);
        let mut sel = Selector::new(targets(), Doubling { cur: s, initial: s });
        assert_eq!(sel.next_target().address, "a:1");
        assert_eq!(sel.next_target().address, "b:1");
        assert_eq!(sel.next_target().address, "a:1");
        assert_eq!(sel.failure_delay(None), s);
        assert_eq!(sel.failure_delay(None), 2 * s);
        assert_eq!(sel.failure_delay(Some(10 * s)), 10 * s, "retry_after is a floor");
        sel.on_success();
        assert_eq!(sel.failure_delay(None), s);
    }

    #[test]
    fn live_backoff_is_full_jitter_and_never_gives_up() {
        let initial = Duration::from_millis(100);
        let mut b = full_jitter(initial, Duration::from_secs(1));
        let mut max_seen = Duration::ZERO;
        for _ in 0..200 {
            let d = b.next_backoff().expect("never gives up");
            assert!(d <= Duration::from_secs(2), "{d:?} beyond 2 x max");
            max_seen = max_seen.max(d);
        }
        assert!(
            max_seen > Duration::from_secs(1),
            "jitter reaches above the cap's midpoint"
        );
    }
}

//! Which collector to try next, and when: the meter's fleet-selection core.
//!
//! Sans-IO: a plain struct driven by events (the fleet changed, a session was welcomed, an
//! attempt failed, a session ended) with time passed in and randomness and backoff injected. It
//! answers with the next attempt (target and instant) and, while a session runs, when to leave it
//! to move. The live meter and `herd sim` drive the same code.
//!
//! The rules:
//! - **Ring.** A meter prefers collectors in its ring order ([`crate::ring`]).
//! - **Splay.** The first attempt after start waits a uniform random time in `[0, splay)`.
//! - **Walk.** A failed attempt (unreachable, refused, any `Reject`) or a session that dies young
//!   (before `healthy_after`) moves to the next collector in ring order not yet tried in this
//!   round, after a uniform random `[0, step_delay)`. After every collector was tried, the
//!   round restarts at the first choice after a backoff delay (full jitter); a collector's
//!   `retry_after` is a floor for trying it again.
//! - **Healthy.** Only a session that lasted `healthy_after` resets the backoff, so a collector
//!   that accepts and drops meters cannot make them flap at full speed.
//! - **Drain.** A draining collector's meters move to their next collector at a uniform random
//!   moment within the window the collector names, and leave it alone for that window.
//! - **Rebalance.** While connected to a collector that is not its first choice (after a walk, or
//!   because the fleet changed), a meter moves to its first choice at a uniform random moment
//!   within `rebalance_window`, so a fleet change never moves everyone at once.
//!
//! Must never: do I/O, sleep or read a clock.

pub mod backoff;

use std::sync::Arc;
use std::time::Duration;

use ::backoff::backoff::Backoff;
use rand::Rng;
use tokio::time::Instant;

use crate::ring::Ring;

/// Timing rules of selection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelectorConfig {
    /// The first attempt after start waits a uniform random time in `[0, splay)`.
    pub splay: Duration,
    /// Before trying the next collector of a walk, wait a uniform random time in `[0, step_delay)`.
    pub step_delay: Duration,
    /// A session that lasted this long was healthy: it resets the backoff; a shorter one that
    /// ends counts as a failure.
    pub healthy_after: Duration,
    /// Moves to a better collector happen at a uniform random moment in this window.
    pub rebalance_window: Duration,
}

/// What to do next: dial `target` at `at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub target: Arc<str>,
    pub at: Instant,
}

/// Why an attempt failed before the collector welcomed the meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No answer, a handshake error, a timeout.
    Unreachable,
    /// The collector said `Reject`, with an optional floor before trying it again.
    Refused { retry_after: Option<Duration> },
}

/// How a welcomed session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The connection failed or was closed.
    Lost,
    /// The collector is leaving: reconnect elsewhere within this window.
    Drained { within: Duration },
    /// The meter left it to move to a better collector ([`Selector::move_at`]).
    Moved,
}

pub struct Selector<B, R> {
    meter_id: String,
    ring: Arc<Ring>,
    config: SelectorConfig,
    backoff: B,
    rng: R,
    /// Not before this instant for the very first attempt (the splay).
    splay_until: Instant,
    /// Collectors tried (and failed) in the current round.
    tried: Vec<Arc<str>>,
    /// Collectors not to be dialled before an instant (`retry_after`, drains).
    holds: Vec<(Arc<str>, Instant)>,
    /// The welcomed session, and since when.
    session: Option<(Arc<str>, Instant)>,
    /// While in a session: when to leave it for a better collector.
    move_at: Option<Instant>,
    next: Option<Attempt>,
}

impl<B: Backoff, R: Rng> Selector<B, R> {
    pub fn new(
        meter_id: &str,
        ring: Arc<Ring>,
        config: SelectorConfig,
        backoff: B,
        rng: R,
        now: Instant,
    ) -> Self {
        let mut s = Selector {
            meter_id: meter_id.to_owned(),
            ring,
            config,
            backoff,
            rng,
            splay_until: now,
            tried: Vec::new(),
            holds: Vec::new(),
            session: None,
            move_at: None,
            next: None,
        };
        s.splay_until = now + s.jitter(config.splay);
        s.next = s.first().map(|target| Attempt {
            target,
            at: s.splay_until,
        });
        s
    }

    /// The attempt to make when not in a session. `None` while in a session, or while no
    /// collector is known.
    pub fn next_attempt(&self) -> Option<&Attempt> {
        self.next.as_ref()
    }

    /// The collector of the current session.
    pub fn connected_to(&self) -> Option<&Arc<str>> {
        self.session.as_ref().map(|(t, _)| t)
    }

    /// While in a session: when to leave it to move to the first choice.
    pub fn move_at(&self) -> Option<Instant> {
        self.move_at
    }

    pub fn ring(&self) -> &Arc<Ring> {
        &self.ring
    }

    /// This meter's first choice on the current ring.
    pub fn first(&self) -> Option<Arc<str>> {
        self.ring.first(&self.meter_id).cloned()
    }

    /// The fleet changed.
    pub fn on_fleet(&mut self, ring: Arc<Ring>, now: Instant) {
        self.ring = ring;
        self.tried.retain(|t| self.ring.contains(t));
        if let Some((current, _)) = &self.session {
            if self.first().as_ref() == Some(current) {
                self.move_at = None;
            } else if self.move_at.is_none() {
                self.move_at = Some(now + self.jitter(self.config.rebalance_window));
            }
            return;
        }
        // Not in a session: aim the pending attempt at the new ring, without making it sooner.
        let at = self.next.as_ref().map_or(self.splay_until.max(now), |a| a.at);
        let target = if self.tried.is_empty() {
            self.first()
        } else {
            self.next_untried(now).or_else(|| self.first())
        };
        self.next = target.map(|target| Attempt { target, at });
    }

    /// The collector welcomed the meter.
    pub fn on_welcome(&mut self, target: &Arc<str>, now: Instant) {
        self.next = None;
        self.session = Some((Arc::clone(target), now));
        self.move_at = if self.first().as_ref() == Some(target) {
            None
        } else {
            Some(now + self.jitter(self.config.rebalance_window))
        };
    }

    /// An attempt at `target` failed before `Welcome`.
    pub fn on_failure(&mut self, target: &Arc<str>, failure: Failure, now: Instant) {
        self.session = None;
        self.move_at = None;
        if let Failure::Refused {
            retry_after: Some(floor),
        } = failure
        {
            self.hold(target, now + floor);
        }
        self.tried.push(Arc::clone(target));
        self.step(now);
    }

    /// The welcomed session ended.
    pub fn on_ended(&mut self, ended: Ended, now: Instant) {
        self.move_at = None;
        let Some((target, since)) = self.session.take() else {
            return;
        };
        let healthy = now.duration_since(since) >= self.config.healthy_after;
        if healthy {
            self.backoff.reset();
            self.tried.clear();
        }
        match ended {
            Ended::Moved => {
                self.tried.clear();
                self.next = self.first().map(|target| Attempt { target, at: now });
            }
            Ended::Drained { within } => {
                let until = now + within;
                self.hold(&target, until);
                self.tried.push(Arc::clone(&target));
                let at = now + self.jitter(within);
                self.next = match self.next_untried(now) {
                    Some(target) => Some(Attempt { target, at }),
                    // A fleet of one: come back to it after the window.
                    None => {
                        self.tried.clear();
                        self.first().map(|target| Attempt {
                            at: at.max(self.hold_until(&target, now)),
                            target,
                        })
                    }
                };
            }
            // A long session lost: the collector may just be restarting; start a new round.
            Ended::Lost if healthy => {
                let at = now + self.jitter(self.config.step_delay);
                self.next = self.first().map(|target| Attempt { target, at });
            }
            // A session that died young is a failure of that collector.
            Ended::Lost => {
                self.tried.push(target);
                self.step(now);
            }
        }
    }

    /// After a failure: the next collector of this round, or the next round after a backoff.
    fn step(&mut self, now: Instant) {
        if let Some(target) = self.next_untried(now) {
            let at = now + self.jitter(self.config.step_delay);
            self.next = Some(Attempt { target, at });
            return;
        }
        self.tried.clear();
        let delay = self.backoff.next_backoff().unwrap_or(Duration::from_secs(60));
        self.next = self.first().map(|target| Attempt {
            at: (now + delay).max(self.hold_until(&target, now)),
            target,
        });
    }

    /// The first collector in ring order not tried in this round and not on hold.
    fn next_untried(&self, now: Instant) -> Option<Arc<str>> {
        self.ring
            .walk(&self.meter_id)
            .find(|c| !self.tried.contains(c) && self.hold_until(c, now) <= now)
    }

    fn hold(&mut self, target: &Arc<str>, until: Instant) {
        self.holds.retain(|(t, _)| t != target);
        self.holds.push((Arc::clone(target), until));
    }

    /// When `target` may be dialled again (`now` if it is not on hold).
    fn hold_until(&self, target: &str, now: Instant) -> Instant {
        self.holds
            .iter()
            .find(|(t, _)| &**t == target)
            .map_or(now, |(_, until)| (*until).max(now))
    }

    fn jitter(&mut self, max: Duration) -> Duration {
        if max.is_zero() {
            Duration::ZERO
        } else {
            max.mul_f64(self.rng.random::<f64>())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::backoff::{JitterParams, Seeded};
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const CONFIG: SelectorConfig = SelectorConfig {
        splay: Duration::from_secs(2),
        step_delay: Duration::from_millis(500),
        healthy_after: Duration::from_secs(30),
        rebalance_window: Duration::from_secs(60),
    };

    const JITTER: JitterParams = JitterParams {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(60),
        multiplier: 2.0,
    };

    fn ring(n: usize) -> Arc<Ring> {
        Arc::new(Ring::new((1..=n).map(|i| format!("10.0.0.{i}:4433"))))
    }

    fn selector(meter: &str, ring: Arc<Ring>, now: Instant) -> Selector<Seeded, StdRng> {
        Selector::new(
            meter,
            ring,
            CONFIG,
            Seeded::new(JITTER, 1),
            StdRng::seed_from_u64(2),
            now,
        )
    }

    #[test]
    fn the_first_attempt_is_the_first_choice_after_the_splay() {
        let t0 = Instant::now();
        let r = ring(5);
        let mut latest = t0;
        for i in 0..200 {
            let meter = format!("m{i}");
            let s = Selector::new(
                &meter,
                r.clone(),
                CONFIG,
                Seeded::new(JITTER, i),
                StdRng::seed_from_u64(i),
                t0,
            );
            let a = s.next_attempt().unwrap();
            assert_eq!(Some(&a.target), r.first(&meter));
            assert!(a.at >= t0 && a.at < t0 + CONFIG.splay);
            latest = latest.max(a.at);
        }
        assert!(latest > t0 + CONFIG.splay / 2, "the splay spreads first attempts");
    }

    #[test]
    fn failures_walk_the_ring_then_back_off_then_restart_at_the_first_choice() {
        let t0 = Instant::now();
        let r = ring(3);
        let mut s = selector("m1", r.clone(), t0);
        let order: Vec<_> = r.walk("m1").collect();
        let mut now = t0 + CONFIG.splay;
        for (i, expected) in order.iter().enumerate() {
            let a = s.next_attempt().unwrap().clone();
            assert_eq!(&a.target, expected, "attempt {i}");
            if i > 0 {
                assert!(a.at <= now + CONFIG.step_delay, "walk steps are quick");
            }
            now = a.at.max(now);
            s.on_failure(&a.target, Failure::Unreachable, now);
        }
        // Every collector failed: back to the first choice after a backoff.
        let a = s.next_attempt().unwrap().clone();
        assert_eq!(a.target, order[0]);
        assert!(a.at <= now + JITTER.ceiling(0));
    }

    #[test]
    fn retry_after_is_a_floor_for_that_collector() {
        let t0 = Instant::now();
        let mut s = selector("m1", ring(1), t0);
        let target = s.next_attempt().unwrap().target.clone();
        s.on_failure(
            &target,
            Failure::Refused {
                retry_after: Some(Duration::from_secs(30)),
            },
            t0,
        );
        let a = s.next_attempt().unwrap();
        assert_eq!(a.target, target);
        assert!(
            a.at >= t0 + Duration::from_secs(30),
            "backoff alone would be at most 1 s"
        );
    }

    #[test]
    fn only_a_healthy_session_resets_the_backoff() {
        let t0 = Instant::now();
        let mut s = selector("m1", ring(1), t0);
        let target = s.next_attempt().unwrap().target.clone();
        let mut now = t0;
        // Sessions that die young: each one is a failed round, and the backoff grows.
        for round in 0..6u32 {
            s.on_welcome(&target, now);
            now += Duration::from_secs(1);
            s.on_ended(Ended::Lost, now);
            let a = s.next_attempt().unwrap();
            assert!(a.at <= now + JITTER.ceiling(round));
            now = a.at;
        } // A session that lasted: the next loss starts afresh, almost at once.
        s.on_welcome(&target, now);
        now += CONFIG.healthy_after;
        s.on_ended(Ended::Lost, now);
        let a = s.next_attempt().unwrap().clone();
        assert!(a.at <= now + CONFIG.step_delay);
        s.on_failure(&target, Failure::Unreachable, a.at);
        assert!(
            s.next_attempt().unwrap().at <= a.at + JITTER.ceiling(0),
            "backoff was reset"
        );
    }

    #[test]
    fn drain_moves_to_the_next_collector_within_the_window() {
        let t0 = Instant::now();
        let r = ring(3);
        let mut s = selector("m1", r.clone(), t0);
        let order: Vec<_> = r.walk("m1").collect();
        s.on_welcome(&order[0], t0);
        let window = Duration::from_secs(10);
        let now = t0 + Duration::from_secs(100);
        s.on_ended(Ended::Drained { within: window }, now);
        let a = s.next_attempt().unwrap();
        assert_eq!(a.target, order[1]);
        assert!(a.at >= now && a.at <= now + window);
    }

    #[test]
    fn a_meter_away_from_home_moves_back_within_the_rebalance_window() {
        let t0 = Instant::now();
        let r = ring(3);
        let order: Vec<_> = r.walk("m1").collect();
        let mut s = selector("m1", r.clone(), t0);
        s.on_failure(&order[0], Failure::Unreachable, t0);
        s.on_welcome(&order[1], t0);
        let at = s.move_at().expect("not on its first choice");
        assert!(at >= t0 && at <= t0 + CONFIG.rebalance_window);
        s.on_ended(Ended::Moved, at);
        assert_eq!(s.next_attempt().unwrap().target, order[0]);
        s.on_welcome(&order[0], at);
        assert_eq!(s.move_at(), None, "home");
    }

    #[test]
    fn a_fleet_change_moves_meters_at_spread_moments_and_only_those_it_concerns() {
        let t0 = Instant::now();
        let before = ring(4);
        let after = ring(5);
        let (mut moving, mut moves) = (0, Vec::new());
        for i in 0..1_000 {
            let meter = format!("m{i}");
            let mut s = Selector::new(
                &meter,
                before.clone(),
                CONFIG,
                Seeded::new(JITTER, i),
                StdRng::seed_from_u64(i),
                t0,
            );
            let home = before.first(&meter).unwrap().clone();
            s.on_welcome(&home, t0);
            s.on_fleet(after.clone(), t0);
            match s.move_at() {
                Some(at) => {
                    moving += 1;
                    assert_ne!(after.first(&meter), Some(&home));
                    moves.push(at.duration_since(t0).as_secs_f64());
                }
                None => assert_eq!(after.first(&meter), Some(&home)),
            }
        }
        // About 1 in 5 move, at moments spread over the window rather than all at once.
        assert!((150..=250).contains(&moving), "{moving}");
        let window = CONFIG.rebalance_window.as_secs_f64();
        let early = moves.iter().filter(|&&m| m < window / 2.0).count() as f64 / moves.len() as f64;
        assert!((0.35..=0.65).contains(&early), "{early}");
    }

    #[test]
    fn an_empty_fleet_waits_for_collectors() {
        let t0 = Instant::now();
        let mut s = selector("m1", Arc::new(Ring::new(Vec::<String>::new())), t0);
        assert_eq!(s.next_attempt(), None);
        let r = ring(2);
        s.on_fleet(r.clone(), t0 + Duration::from_secs(5));
        assert_eq!(s.next_attempt().map(|a| a.target.clone()), r.first("m1").cloned());
    }
}

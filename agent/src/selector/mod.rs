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
//!   round, after a uniform random `[0, step_delay)`; after a `Reject` at once: rejects come
//!   after a full handshake, so they are already paced by the rejecting collector (it cannot
//!   turn away more meters per second than it completes handshakes), and the meters a
//!   bounded-load cap sends on reach their next collector without delay. After every collector was tried, the next
//!   round starts after a backoff delay (full jitter), at the first collector in ring order not
//!   on hold. A collector's `retry_after` (capped at `max_hold`) is a floor for trying it again.
//! - **Healthy.** Only a session that lasted `healthy_after` resets the backoff, so a collector
//!   that accepts and drops meters cannot make them flap at full speed. When a healthy session
//!   is lost, the meter waits the backoff's first delay before dialling again, so the meters of a
//!   crashed collector do not all come back in the same instant.
//! - **Drain.** A draining collector's meters move to their next collector at a uniform random
//!   moment within the window the collector names, and leave it alone for that window.
//! - **Rebalance.** While connected to a collector that is not its first choice (after a walk, or
//!   because the fleet changed), a meter moves to its first choice at a uniform random moment
//!   within `rebalance_window` (not before the first choice's hold ends), so a fleet change never
//!   moves everyone at once. Each failed return doubles the window for the next one, until the
//!   first choice welcomes the meter again: a dead first choice is not dialled every window.
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
    /// The longest `retry_after` honoured; a longer hint is cut to this.
    pub max_hold: Duration,
}

/// Doublings of the rebalance window after failed returns home, at most.
const MAX_HOME_DOUBLINGS: u32 = 6;

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
    /// The pending attempt is a return to the first choice after leaving another collector.
    returning: bool,
    /// Consecutive failed returns to this first choice.
    home_misses: (Option<Arc<str>>, u32),
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
            returning: false,
            home_misses: (None, 0),
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
                self.schedule_move(now);
            }
            return;
        }
        // Not in a session: aim the pending attempt at the new ring, without making it sooner.
        let at = self.next.as_ref().map_or(self.splay_until.max(now), |a| a.at);
        let target = if self.tried.is_empty() {
            self.round_start(now)
        } else {
            self.next_untried(now)
                .map(|t| (t, now))
                .or_else(|| self.round_start(now))
        };
        self.next = target.map(|(target, free)| Attempt {
            target,
            at: at.max(free),
        });
    }

    /// The collector welcomed the meter.
    pub fn on_welcome(&mut self, target: &Arc<str>, now: Instant) {
        self.next = None;
        self.returning = false;
        self.session = Some((Arc::clone(target), now));
        if self.first().as_ref() == Some(target) {
            self.home_misses = (None, 0);
            self.move_at = None;
        } else {
            self.schedule_move(now);
        }
    }

    /// An attempt at `target` failed before `Welcome`.
    pub fn on_failure(&mut self, target: &Arc<str>, failure: Failure, now: Instant) {
        self.session = None;
        self.move_at = None;
        if let Failure::Refused {
            retry_after: Some(floor),
        } = failure
        {
            self.hold(target, now + floor.min(self.config.max_hold));
        }
        if std::mem::take(&mut self.returning) && self.first().as_ref() == Some(target) {
            self.home_missed(target);
        }
        self.tried.push(Arc::clone(target));
        let paced = matches!(failure, Failure::Refused { .. });
        self.step(now, paced);
    }

    /// The driver is checking that the first choice answers before leaving for it (see
    /// `connect`): the move instant is spent, and a fleet change meanwhile schedules a new one.
    pub fn on_checking_home(&mut self) {
        self.move_at = None;
    }

    /// While in a session, `home` did not answer the check made before leaving for it: stay;
    /// if it is still the first choice, count a failed return home, so the next try comes
    /// within a window twice as long.
    pub fn on_home_unreachable(&mut self, home: &Arc<str>, now: Instant) {
        if self.first().as_ref() == Some(home) {
            self.home_missed(home);
        }
        let away = self
            .session
            .as_ref()
            .is_some_and(|(current, _)| self.first().as_ref() != Some(current));
        if away && self.move_at.is_none() {
            self.schedule_move(now);
        }
    }

    /// One more failed return to `home` (the count starts again for a new first choice).
    fn home_missed(&mut self, home: &Arc<str>) {
        let misses = match &self.home_misses.0 {
            Some(h) if h == home => self.home_misses.1,
            _ => 0,
        };
        self.home_misses = (Some(Arc::clone(home)), misses + 1);
    }

    /// The welcomed session ended.
    pub fn on_ended(&mut self, ended: Ended, now: Instant) {
        self.move_at = None;
        let Some((target, since)) = self.session.take() else {
            // Not known to be in a session (the driver missed the Welcome): treat it as a failed
            // attempt rather than leave a stale attempt to be made at once.
            self.step(now, false);
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
                self.returning = true;
                self.next = self.first().map(|target| Attempt {
                    at: self.hold_until(&target, now),
                    target,
                });
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
                        self.round_start(now).map(|(target, free)| Attempt {
                            target,
                            at: at.max(free),
                        })
                    }
                };
            }
            // A long session lost: the collector may just be restarting. Start a new round after
            // the backoff's first (full-jitter) delay, so its meters do not return all at once.
            Ended::Lost if healthy => {
                let delay = self.backoff.next_backoff().unwrap_or(self.config.step_delay);
                self.next = self.round_start(now).map(|(target, free)| Attempt {
                    at: (now + delay).max(free),
                    target,
                });
            }
            // A session that died young is a failure of that collector.
            Ended::Lost => {
                self.tried.push(target);
                self.step(now, false);
            }
        }
    }

    /// After a failure: the next collector of this round (at once if the failure was `paced`
    /// already, else after a random step delay), or the next round after a backoff.
    fn step(&mut self, now: Instant, paced: bool) {
        if let Some(target) = self.next_untried(now) {
            let at = if paced {
                now
            } else {
                now + self.jitter(self.config.step_delay)
            };
            self.next = Some(Attempt { target, at });
            return;
        }
        self.tried.clear();
        let delay = self.backoff.next_backoff().unwrap_or(Duration::from_secs(60));
        self.next = self.round_start(now).map(|(target, free)| Attempt {
            at: (now + delay).max(free),
            target,
        });
    }

    /// Where a new round starts: the first collector in ring order not on hold (free now), or if
    /// all are on hold, the one free soonest.
    fn round_start(&self, now: Instant) -> Option<(Arc<str>, Instant)> {
        let mut soonest: Option<(Arc<str>, Instant)> = None;
        for c in self.ring.walk(&self.meter_id) {
            let free = self.hold_until(&c, now);
            if free <= now {
                return Some((c, now));
            }
            if soonest.as_ref().is_none_or(|(_, s)| free < *s) {
                soonest = Some((c, free));
            }
        }
        soonest
    }

    /// While connected elsewhere: leave for the first choice at a random moment within the
    /// rebalance window (doubled for each failed return), and not before its hold ends.
    fn schedule_move(&mut self, now: Instant) {
        let Some(first) = self.first() else {
            self.move_at = None;
            return;
        };
        let misses = if self.home_misses.0.as_ref() == Some(&first) {
            self.home_misses.1
        } else {
            0
        };
        let window = self.config.rebalance_window * 2u32.pow(misses.min(MAX_HOME_DOUBLINGS));
        self.move_at = Some((now + self.jitter(window)).max(self.hold_until(&first, now)));
    }

    /// The first collector in ring order not tried in this round and not on hold.
    fn next_untried(&self, now: Instant) -> Option<Arc<str>> {
        self.ring
            .walk(&self.meter_id)
            .find(|c| !self.tried.contains(c) && self.hold_until(c, now) <= now)
    }
    fn hold(&mut self, target: &Arc<str>, until: Instant) {
        self.holds.retain(|(t, _)| t != target && self.ring.contains(t));
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
        max_hold: Duration::from_secs(120),
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
    fn a_reject_walks_on_at_once_and_holds_the_rejecting_collector() {
        let t0 = Instant::now();
        let r = ring(3);
        let order: Vec<_> = r.walk("m1").collect();
        let mut s = selector("m1", r, t0);
        let hint = Some(Duration::from_secs(2));
        s.on_failure(&order[0], Failure::Refused { retry_after: hint }, t0);
        let a = s.next_attempt().unwrap().clone();
        assert_eq!((a.target.clone(), a.at), (order[1].clone(), t0), "no step delay");
        // An unreachable collector is a burst failure: the next step is jittered.
        let steps: Vec<_> = (0..20u64)
            .map(|i| {
                let mut s = Selector::new(
                    "m1",
                    ring(3),
                    CONFIG,
                    Seeded::new(JITTER, i),
                    StdRng::seed_from_u64(i),
                    t0,
                );
                s.on_failure(&order[0], Failure::Unreachable, t0);
                s.next_attempt().unwrap().at
            })
            .collect();
        assert!(steps.iter().all(|at| *at <= t0 + CONFIG.step_delay));
        assert!(steps.iter().filter(|at| **at > t0).count() >= 18, "{steps:?}");
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
        }
        // A session that lasted: the backoff starts afresh. Losing it waits the first delay...
        s.on_welcome(&target, now);
        now += CONFIG.healthy_after;
        s.on_ended(Ended::Lost, now);
        let a = s.next_attempt().unwrap().clone();
        assert!(a.at <= now + JITTER.ceiling(0));
        // ...and the next failed round the second, not the seventh.
        s.on_failure(&target, Failure::Unreachable, a.at);
        assert!(
            s.next_attempt().unwrap().at <= a.at + JITTER.ceiling(1),
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

    #[test]
    fn a_dead_first_choice_is_not_dialled_every_window() {
        let t0 = Instant::now();
        let r = ring(3);
        let order: Vec<_> = r.walk("m1").collect();
        let mut s = selector("m1", r, t0);
        let mut now = t0;
        s.on_failure(&order[0], Failure::Unreachable, now);
        let mut returns = 0;
        // Ten simulated hours on the second choice, trying to go home, which is dead.
        while now < t0 + Duration::from_secs(36_000) {
            let a = s.next_attempt().unwrap().clone();
            now = now.max(a.at);
            if a.target == order[0] {
                returns += 1;
                s.on_failure(&order[0], Failure::Unreachable, now);
                continue;
            }
            s.on_welcome(&a.target, now);
            now = s.move_at().expect("away from home");
            s.on_ended(Ended::Moved, now);
        }
        // A fixed 60 s window would mean about 600 returns; doubling caps it near 10 h / 64 min.
        assert!(
            (5..=25).contains(&returns),
            "{returns} returns to a dead first choice in 10 h"
        );
    }

    #[test]
    fn an_unreachable_home_keeps_the_session_and_doubles_the_wait() {
        let t0 = Instant::now();
        let r = ring(3);
        let order: Vec<_> = r.walk("m1").collect();
        let mut s = selector("m1", r, t0);
        s.on_failure(&order[0], Failure::Unreachable, t0);
        let second = s.next_attempt().unwrap().clone();
        s.on_welcome(&second.target, second.at);
        let mut now = second.at;
        let mut waits = Vec::new();
        for _ in 0..4 {
            let at = s.move_at().expect("away from home");
            waits.push(at.duration_since(now));
            now = at;
            s.on_checking_home();
            assert_eq!(s.move_at(), None, "spent while checking");
            s.on_home_unreachable(&order[0], now);
            assert_eq!(s.connected_to(), Some(&second.target), "the session stays");
        }
        let window = CONFIG.rebalance_window;
        for (i, w) in waits.iter().enumerate() {
            assert!(*w <= window * 2u32.pow(i as u32), "wait {i}: {w:?}");
        }
        let last_window = window * 2u32.pow(4);
        assert!(s.move_at().unwrap() <= now + last_window);
        // Home answers again: the next move goes there, and arriving resets the count.
        s.on_ended(Ended::Moved, now);
        assert_eq!(s.next_attempt().unwrap().target, order[0]);
        s.on_welcome(&order[0], now);
        assert_eq!(s.move_at(), None);
    }

    #[test]
    fn moving_home_waits_for_its_hold_and_retry_after_is_capped() {
        let t0 = Instant::now();
        let r = ring(2);
        let order: Vec<_> = r.walk("m1").collect();
        let mut s = selector("m1", r, t0);
        // Home refuses with a (too) long retry_after: capped at max_hold.
        let day = Some(Duration::from_secs(86_400));
        s.on_failure(&order[0], Failure::Refused { retry_after: day }, t0);
        let a = s.next_attempt().unwrap().clone();
        assert_eq!(a.target, order[1]);
        s.on_welcome(&order[1], a.at);
        let move_at = s.move_at().unwrap();
        assert!(move_at >= t0 + CONFIG.max_hold, "not before home's hold ends");
        assert!(move_at <= a.at + CONFIG.max_hold + CONFIG.rebalance_window);
    }

    #[test]
    fn a_new_round_starts_at_a_collector_not_on_hold() {
        let t0 = Instant::now();
        let r = ring(3);
        let order: Vec<_> = r.walk("m1").collect();
        let mut s = selector("m1", r, t0);
        let hold = Some(Duration::from_secs(100));
        s.on_failure(&order[0], Failure::Refused { retry_after: hold }, t0);
        s.on_failure(&order[1], Failure::Unreachable, t0);
        s.on_failure(&order[2], Failure::Unreachable, t0);
        let a = s.next_attempt().unwrap();
        assert_eq!(
            a.target, order[1],
            "the first choice is on hold; the round starts at the next"
        );
        assert!(a.at <= t0 + JITTER.ceiling(0));
    }

    #[test]
    fn an_end_without_a_known_session_is_not_redialled_at_once() {
        let t0 = Instant::now();
        let mut s = selector("m1", ring(2), t0);
        let first = s.next_attempt().unwrap().target.clone();
        // The driver never reported the Welcome.
        let later = t0 + Duration::from_secs(10);
        s.on_ended(Ended::Lost, later);
        let a = s.next_attempt().unwrap();
        assert!(a.at >= later);
        assert!(
            a.target != first || a.at > later,
            "not the same collector at once"
        );
    }
}

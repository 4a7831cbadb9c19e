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
//! - **Gone.** A collector that went silent (see [`crate::session::liveness`]), stalled, did not
//!   answer a dial at all (no handshake), or that a collector's fleet view says is not answering its peers is on a
//!   *soft hold* for `dead_hold`, whatever DNS says: it is not dialled while another collector
//!   is free. A silent collector's meters step to their next collector after
//!   `[0, step_delay / 4)`: they found it silent at their own next writes, already spread over
//!   their batch cadence (no backoff: the failure was that collector's, not the fleet's); a stalled one's meters
//!   move at once, to the next collector that already answered them. When every collector is
//!   held, soft holds are ignored and the backoff paces the meter: a whole fleet restarting is
//!   not kept waiting for `dead_hold`.
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

use std::collections::HashMap;
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
    /// How long a gone collector is on soft hold.
    pub dead_hold: Duration,
}

impl From<&crate::config::ReconnectConfig> for SelectorConfig {
    /// The selection timing rules of `[reconnect]`.
    fn from(r: &crate::config::ReconnectConfig) -> Self {
        let ms = Duration::from_millis;
        SelectorConfig {
            splay: ms(r.splay_ms),
            step_delay: ms(r.step_delay_ms),
            healthy_after: ms(r.healthy_after_ms),
            rebalance_window: ms(r.rebalance_window_ms),
            max_hold: ms(r.max_delay_ms),
            dead_hold: ms(r.dead_hold_ms),
        }
    }
}

/// After a collector is found gone, its meters step to the next within `step_delay` divided by
/// this.
const GONE_STEP_DIVISOR: u32 = 4;

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
    /// Not one packet back: the handshake timed out. The collector is held as gone.
    NoAnswer,
    /// It answered, but no session came of it: a refused or closed connection, a handshake
    /// error, a slow `Welcome`, a name that did not resolve.
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
    /// The collector is gone: silent after a write, or the QUIC idle timeout.
    Gone,
    /// The collector stopped acking and the meter left it for [`Selector::fallback`], which
    /// answered.
    Stalled,
}

/// When a collector may be dialled again. A soft hold (a collector that seems gone) counts only
/// while another collector is free; a hard one (`retry_after`, a drain) always.
#[derive(Debug, Clone, Copy, Default)]
struct Hold {
    hard: Option<Instant>,
    soft: Option<Instant>,
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
    /// Collectors not to be dialled before an instant (`retry_after`, drains, gone ones).
    holds: HashMap<Arc<str>, Hold>,
    /// The collector a stalled session checked and is leaving for ([`Ended::Stalled`]).
    leaving_for: Option<Arc<str>>,
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
            holds: HashMap::new(),
            leaving_for: None,
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
        self.leaving_for = None;
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
        match failure {
            Failure::Refused {
                retry_after: Some(floor),
            } => self.hold(target, now + floor.min(self.config.max_hold), false),
            Failure::Refused { retry_after: None } | Failure::Unreachable => {}
            Failure::NoAnswer => self.hold(target, now + self.config.dead_hold, true),
        }
        if std::mem::take(&mut self.returning) && self.first().as_ref() == Some(target) {
            self.home_missed(target);
        }
        self.tried.push(Arc::clone(target));
        let paced = matches!(failure, Failure::Refused { .. });
        self.step(
            now,
            if paced {
                Duration::ZERO
            } else {
                self.config.step_delay
            },
        );
    }

    /// The collectors a collector's fleet view says are not answering its peers: soft holds.
    pub fn on_not_answering<S: AsRef<str>>(&mut self, collectors: &[S], now: Instant) {
        for c in collectors {
            if let Some(member) = self.ring.members().iter().find(|m| ***m == *c.as_ref()).cloned() {
                self.hold(&member, now + self.config.dead_hold, true);
            }
        }
        // While in a session: not back home before its hold ends.
        if let (Some(at), Some(first)) = (self.move_at, self.first()) {
            self.move_at = Some(at.max(self.hold_until(&first, now)));
        }
        // The pending attempt may be at one of them.
        if self.session.is_none()
            && let Some(next) = self.next.as_ref()
            && self.hold_until(&next.target, now) > now
        {
            let at = next.at;
            self.next = self
                .next_untried(now)
                .map(|t| (t, at))
                .or_else(|| self.round_start(now).map(|(t, free)| (t, at.max(free))))
                .map(|(target, at)| Attempt { target, at });
        }
    }

    /// While in a session, `target` did not answer a check (a stalled collector's fallback):
    /// held like any collector that did not answer.
    pub fn on_failure_while_connected(&mut self, target: &Arc<str>, now: Instant) {
        self.hold(target, now + self.config.dead_hold, true);
    }

    /// While in a session with a collector that stopped acking: the collector to move to (the
    /// next in ring order, not on hold; the driver checks that it answers before leaving, so
    /// the failures of an earlier round do not count).
    pub fn fallback(&self, now: Instant) -> Option<Arc<str>> {
        let current = self.connected_to()?;
        self.ring
            .walk(&self.meter_id)
            .find(|c| c != current && self.hold_until(c, now) <= now)
    }

    /// The stalled session's fallback answered: the session leaves for it
    /// ([`Ended::Stalled`] dials it at once).
    pub fn on_fallback_answered(&mut self, target: &Arc<str>) {
        self.leaving_for = Some(Arc::clone(target));
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
            self.step(now, self.config.step_delay);
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
                self.next = self.first().map(|target| {
                    // It answered the check just made: whatever said it was gone is old news.
                    if let Some(hold) = self.holds.get_mut(&target) {
                        hold.soft = None;
                    }
                    Attempt {
                        at: self.hold_until(&target, now),
                        target,
                    }
                });
            }
            Ended::Gone | Ended::Stalled => {
                self.hold(&target, now + self.config.dead_hold, true);
                self.tried.push(target);
                if ended == Ended::Stalled
                    && let Some(to) = self.leaving_for.take()
                {
                    // It answered a moment ago: dial it at once.
                    self.next = Some(Attempt { target: to, at: now });
                    return;
                }
                // Gone: the meters of a dead collector find it silent at their own next writes,
                // spread over their batch cadence already; a quarter step adds the rest.
                let spread = match ended {
                    Ended::Stalled => Duration::ZERO,
                    _ => self.config.step_delay / GONE_STEP_DIVISOR,
                };
                self.step(now, spread);
            }
            Ended::Drained { within } => {
                let until = now + within;
                self.hold(&target, until, false);
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
                self.step(now, self.config.step_delay);
            }
        }
    }

    /// After a failure: the next collector of this round after a random delay in `[0, spread)`
    /// (zero when the failure was paced already), or the next round after a backoff.
    fn step(&mut self, now: Instant, spread: Duration) {
        if let Some(target) = self.next_untried(now) {
            let at = now + self.jitter(spread);
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
    fn hold(&mut self, target: &Arc<str>, until: Instant, soft: bool) {
        let ring = &self.ring;
        self.holds.retain(|t, _| ring.contains(t));
        let hold = self.holds.entry(Arc::clone(target)).or_default();
        if soft {
            hold.soft = Some(until);
        } else {
            hold.hard = Some(until);
        }
    }

    /// When `target` may be dialled again (`now` if it is not on hold). Soft holds count only
    /// while some collector is free of every hold.
    fn hold_until(&self, target: &str, now: Instant) -> Instant {
        let soft = self.holds.values().any(|h| h.soft.is_some_and(|s| s > now))
            && self
                .ring
                .members()
                .iter()
                .any(|c| self.hold_until_counting(c, now, true) <= now);
        self.hold_until_counting(target, now, soft)
    }

    /// When `target` is free of hard holds, and of soft ones if `soft`.
    fn hold_until_counting(&self, target: &str, now: Instant, soft: bool) -> Instant {
        self.holds.get(target).map_or(now, |h| {
            let soft = if soft { h.soft } else { None };
            [h.hard, soft].into_iter().flatten().fold(now, Instant::max)
        })
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
mod tests;

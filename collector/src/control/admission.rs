//! Admission: whether a new connection is served, decided before any handshake work, and whether
//! an authenticated meter gets a session or is told to come back later.
//!
//! Owns: the collector's budgets and the two decisions made against them.
//! - [`Admission::on_incoming`] runs inline in the accept loop for every new connection attempt,
//!   before the TLS handshake. Over a **hard** budget (connections, handshakes in flight, accept
//!   rate, buffered bytes) the attempt is refused: one packet, no TLS, no state kept. While many
//!   handshakes are in flight, an address that has not proven it can receive our packets gets a
//!   stateless QUIC Retry first (costs us nothing; a spoofed source never comes back).
//! - [`Budgets::on_hello`] runs when an authenticated `Hello` arrives. Over a **soft** budget
//!   (sessions, buffered bytes) the meter gets `Reject(overloaded)` with a `retry_after_ms` drawn
//!   at random over a window that widens the further the collector is over the budget, so the
//!   refused meters do not all come back in the same instant.
//! - **Bounded load** (consistent hashing with bounded loads, Mirrokni, Thorup and Zadimoghaddam):
//!   [`Budgets::on_hello`] also refuses a meter when this collector already holds its share of
//!   the fleet's sessions, ⌈(1 + ε) · mean⌉ counting the meter asking ([`BoundedLoad::cap`]).
//!   The meter walks its ring to the next collector, so no collector ends much above the mean
//!   however unevenly the ring or DNS sends meters. The fleet's load comes from polling peers
//!   ([`crate::control::fleet_load`]); without it (a fleet of one, no peer answering) there is no cap.
//!
//! Sans-IO: the caller passes in the load it measured, the time and a random number in `[0, 1)`,
//! so a simulator (`herd sim`) can drive the same struct. Must never: do I/O, wait, or read a
//! clock or an RNG itself. `on_incoming` runs inline in the accept loop so its counts cannot be
//! overtaken by connections it let in.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::{AdmissionConfig, LimitsConfig};
use crate::control::accept_rate::{self, AcceptRate, Step};
pub use crate::telemetry::RefuseReason;

/// The budgets. Defaults (see `config/admission.rs` and docs/operations.md) come from measured capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budgets {
    /// Hard: connections held at once, in any state (`limits.max_connections`).
    pub max_connections: usize,
    /// Hard: handshakes in flight (accepted, `Welcome`/`Reject` not yet sent).
    pub max_handshakes: usize,
    /// Hard: sustained accepts per second (token bucket refill rate).
    pub accept_rate: f64,
    /// Hard: accepts allowed in one burst (token bucket size).
    pub accept_burst: u32,
    /// Hard: bytes the data plane holds across all connections.
    pub max_buffered_bytes: u64,
    /// Soft: sessions beyond this get `Reject(overloaded)`.
    pub soft_max_sessions: usize,
    /// Soft: buffered bytes beyond this and new sessions get `Reject(overloaded)`.
    pub soft_buffered_bytes: u64,
    /// The shortest and the longest `retry_after_ms` sent with `Reject(overloaded)`.
    pub retry_after_min_ms: u32,
    pub retry_after_max_ms: u32,
    /// Bounded load: sessions are capped at ⌈(1 + ε) · mean⌉ of the fleet (None: no cap).
    pub bounded_load: Option<BoundedLoad>,
    /// Adaptive accept rate ([`AcceptRate`]): the control plane's lag it keeps under, with
    /// `accept_rate` as its ceiling (None: the accept rate is `accept_rate`, fixed).
    pub adaptive_lag: Option<Duration>,
}

impl Budgets {
    /// The budgets of `[admission]`, with `limits.max_connections` as the hard connection
    /// budget (the soft session budget never above it). ε = 0 turns bounded load off.
    pub fn from_config(admission: &AdmissionConfig, limits: &LimitsConfig) -> Self {
        Budgets {
            max_connections: limits.max_connections,
            max_handshakes: admission.max_handshakes as usize,
            accept_rate: f64::from(admission.accept_rate),
            accept_burst: admission.accept_burst,
            max_buffered_bytes: admission.max_buffered_bytes,
            soft_max_sessions: (admission.soft_max_sessions as usize).min(limits.max_connections),
            soft_buffered_bytes: admission.soft_buffered_bytes,
            retry_after_min_ms: admission.retry_after_min_ms,
            retry_after_max_ms: admission.retry_after_max_ms,
            bounded_load: (admission.bounded_load_epsilon > 0.0).then_some(BoundedLoad {
                epsilon: admission.bounded_load_epsilon,
            }),
            adaptive_lag: (admission.adaptive_lag_ms > 0)
                .then(|| Duration::from_millis(admission.adaptive_lag_ms.into())),
        }
    }
}

/// Consistent hashing with bounded loads: no collector takes a session beyond
/// ⌈(1 + ε) · mean⌉, the mean counting the session asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoundedLoad {
    /// ε: how far over the fleet's mean a collector may go (0.05 = 5%).
    pub epsilon: f64,
}

impl BoundedLoad {
    /// The most sessions one collector may hold in `fleet` once the asking meter is placed:
    /// ⌈(1 + ε) · (sessions + 1) / collectors⌉, and at least 1.
    pub fn cap(&self, fleet: &FleetLoad) -> usize {
        let mean = (fleet.sessions as f64 + 1.0) / fleet.collectors.max(1) as f64;
        ((1.0 + self.epsilon) * mean).ceil().max(1.0) as usize
    }

    /// Whether a collector holding `sessions` is full: taking one more would pass the cap.
    pub fn full(&self, sessions: usize, fleet: &FleetLoad) -> bool {
        sessions + 1 > self.cap(fleet)
    }
}

/// The fleet's load as this collector last learned it (itself included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetLoad {
    /// Collectors known to be up, this one included.
    pub collectors: usize,
    /// Their sessions in all.
    pub sessions: u64,
}

impl Budgets {
    /// Decides on an authenticated `Hello`. `roll` is uniform in `[0, 1)`; it places the retry
    /// hint inside the window.
    pub fn on_hello(&self, load: &Load, roll: f64) -> Result<(), Overloaded> {
        // How far over each soft budget, as a fraction of the room between it and the hard one.
        let sessions = over(
            load.sessions as f64,
            self.soft_max_sessions as f64,
            self.max_connections as f64,
        );
        let bytes = over(
            load.buffered_bytes as f64,
            self.soft_buffered_bytes as f64,
            self.max_buffered_bytes as f64,
        );
        let (budget, overshoot) = match (sessions, bytes) {
            (None, None) => return self.within_share(load, roll),
            (Some(s), Some(m)) if m > s => ("buffered_bytes", m),
            (Some(s), _) => ("sessions", s),
            (None, Some(m)) => ("buffered_bytes", m),
        };
        Err(Overloaded {
            budget,
            retry_after_ms: self.retry_after_ms(overshoot, roll),
        })
    }

    /// The bounded-load check: over its share of the fleet, the meter is told to go elsewhere
    /// (it walks its ring) and not to come back within the shortest hint window.
    fn within_share(&self, load: &Load, roll: f64) -> Result<(), Overloaded> {
        match (self.bounded_load, load.fleet) {
            (Some(bounded), Some(fleet)) if bounded.full(load.sessions, &fleet) => Err(Overloaded {
                budget: "bounded_load",
                retry_after_ms: self.retry_after_ms(0.0, roll),
            }),
            _ => Ok(()),
        }
    }

    /// A retry hint uniform in `[min, min + window)`, the window growing from `min` (just over
    /// the soft budget) to `max - min` (at the hard budget).
    pub fn retry_after_ms(&self, overshoot: f64, roll: f64) -> u32 {
        let min = f64::from(self.retry_after_min_ms);
        let max = f64::from(self.retry_after_max_ms);
        let window = (min + (max - min - min) * overshoot.clamp(0.0, 1.0)).clamp(0.0, max - min);
        (min + window * roll.clamp(0.0, 1.0)).round() as u32
    }
}

/// What the collector measured at the moment of the decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Connections in any state (quinn's `open_connections`).
    pub connections: usize,
    /// Handshakes in flight: accepted, not yet answered with `Welcome` or `Reject`.
    pub handshakes: usize,
    /// Sessions (welcomed and still connected).
    pub sessions: usize,
    /// Bytes held by the data plane: the sink queue and frames waiting to enter it.
    pub buffered_bytes: u64,
    pub draining: bool,
    /// The fleet's load, when peers answered (for the bounded-load cap).
    pub fleet: Option<FleetLoad>,
}

/// What to do with a new connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Start the TLS handshake.
    Accept,
    /// Answer with a stateless Retry: the client proves its address, then comes back.
    Retry,
    /// Refuse (CONNECTION_REFUSED) before the handshake, for the reason named in metrics.
    Refuse(RefuseReason),
}

/// An authenticated `Hello` turned away because the collector is over a soft budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overloaded {
    /// Metric label: which budget.
    pub budget: &'static str,
    pub retry_after_ms: u32,
}

/// The admission policy and its accept-rate token bucket.
#[derive(Debug, Clone)]
pub struct Admission {
    budgets: Budgets,
    tokens: f64,
    refilled_at: Instant,
    /// With `budgets.adaptive_lag`: what sets the bucket's rate (and, in proportion, its size).
    adaptive: Option<AcceptRate>,
}

impl Admission {
    pub fn new(budgets: Budgets, now: Instant) -> Self {
        let adaptive = budgets
            .adaptive_lag
            .map(|target| AcceptRate::new(budgets.accept_rate, target, now));
        let mut admission = Self {
            budgets,
            tokens: 0.0,
            refilled_at: now,
            adaptive,
        };
        admission.tokens = admission.burst();
        admission
    }

    /// Accepts per second allowed now: the adaptive rate, or the configured one.
    pub fn accept_rate(&self) -> f64 {
        self.adaptive
            .as_ref()
            .map_or(self.budgets.accept_rate, AcceptRate::rate)
    }

    /// The bucket's size: `accept_burst`, or with an adaptive rate what that rate lets in over
    /// one of its windows (at most `accept_burst`): a burst of a second's worth would queue a
    /// second of handshake work at once, a lag no established meter should see.
    fn burst(&self) -> f64 {
        let full = f64::from(self.budgets.accept_burst);
        match &self.adaptive {
            Some(a) => (a.rate() * accept_rate::WINDOW.as_secs_f64()).clamp(1.0, full.max(1.0)),
            None => full,
        }
    }

    /// Whether the accept rate adapts (the caller then samples the lag every
    /// [`crate::control::accept_rate::SAMPLE_EVERY`]).
    pub fn is_adaptive(&self) -> bool {
        self.adaptive.is_some()
    }

    /// A sample of the control plane's lag at `now`; see [`AcceptRate::on_lag`].
    pub fn on_lag(&mut self, lag: Duration, now: Instant) -> Option<Step> {
        // What the old rate earned up to now is kept; the new rate applies from now.
        self.refill(now);
        let step = self.adaptive.as_mut()?.on_lag(lag, now);
        self.tokens = self.tokens.min(self.burst());
        step
    }

    /// Decides on a new connection attempt. `validated`: the client already proved its address
    /// (it answered a Retry). An accepted attempt takes a token from the bucket.
    pub fn on_incoming(&mut self, load: &Load, validated: bool, now: Instant) -> Admit {
        let b = &self.budgets;
        if load.draining {
            return Admit::Refuse(RefuseReason::Draining);
        }
        if load.connections >= b.max_connections {
            return Admit::Refuse(RefuseReason::MaxConnections);
        }
        if load.handshakes >= b.max_handshakes {
            return Admit::Refuse(RefuseReason::MaxHandshakes);
        }
        if load.buffered_bytes >= b.max_buffered_bytes {
            return Admit::Refuse(RefuseReason::MaxBufferedBytes);
        }
        // Half the handshake budget busy: make unproven addresses prove themselves first. This
        // is checked before the bucket, so the Retry costs no token.
        if !validated && load.handshakes >= b.max_handshakes / 2 {
            return Admit::Retry;
        }
        self.refill(now);
        if self.tokens < 1.0 {
            if let Some(a) = &mut self.adaptive {
                a.on_rate_limited();
            }
            return Admit::Refuse(RefuseReason::AcceptRate);
        }
        self.tokens -= 1.0;
        Admit::Accept
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        self.refilled_at = now;
        let (rate, burst) = (self.accept_rate(), self.burst());
        self.tokens = (self.tokens + elapsed.as_secs_f64() * rate).min(burst);
    }

    /// Time until the bucket holds a token again (zero if it does now).
    pub fn next_token_in(&self, now: Instant) -> Duration {
        let mut probe = self.clone();
        probe.refill(now);
        let rate = self.accept_rate();
        if probe.tokens >= 1.0 || rate <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - probe.tokens) / rate)
        }
    }
}

/// `Some(fraction)` when `value` is at or over `soft`: 0 at `soft`, 1 at `hard`.
fn over(value: f64, soft: f64, hard: f64) -> Option<f64> {
    (value >= soft).then(|| {
        if hard > soft {
            ((value - soft) / (hard - soft)).clamp(0.0, 1.0)
        } else {
            1.0
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budgets() -> Budgets {
        Budgets {
            max_connections: 100,
            max_handshakes: 10,
            accept_rate: 10.0,
            accept_burst: 5,
            max_buffered_bytes: 1_000,
            soft_max_sessions: 80,
            soft_buffered_bytes: 500,
            retry_after_min_ms: 1_000,
            retry_after_max_ms: 21_000,
            bounded_load: Some(BoundedLoad { epsilon: 0.05 }),
            adaptive_lag: None,
        }
    }

    #[test]
    fn bounded_load_caps_a_collector_at_its_share_of_the_fleet() {
        let b = budgets();
        let bounded = BoundedLoad { epsilon: 0.05 };
        // 4 collectors holding 399 sessions; with the one asking the mean is 100, the cap 105.
        let fleet = FleetLoad {
            collectors: 4,
            sessions: 399,
        };
        assert_eq!(bounded.cap(&fleet), 105);
        let at = |sessions| Load {
            sessions,
            fleet: Some(fleet),
            ..Load::default()
        };
        let roomy = Budgets {
            soft_max_sessions: 10_000,
            max_connections: 20_000,
            ..b
        };
        assert_eq!(roomy.on_hello(&at(104), 0.5), Ok(()));
        let full = roomy.on_hello(&at(105), 0.999).unwrap_err();
        assert_eq!(full.budget, "bounded_load");
        assert!((1_000..2_000).contains(&full.retry_after_ms), "{full:?}");
        // Without the fleet's load, or with the cap off, only the collector's own budgets count.
        let alone = Load {
            fleet: None,
            ..at(105)
        };
        assert_eq!(roomy.on_hello(&alone, 0.5), Ok(()));
        let off = Budgets {
            bounded_load: None,
            ..roomy
        };
        assert_eq!(off.on_hello(&at(105), 0.5), Ok(()));
        // An empty fleet still takes its first session, and a fleet of one has no cap below
        // every session it holds.
        let empty = FleetLoad {
            collectors: 200,
            sessions: 0,
        };
        assert!(!bounded.full(0, &empty));
        assert!(bounded.full(1, &empty));
        let one = FleetLoad {
            collectors: 1,
            sessions: 5_000,
        };
        assert!(!bounded.full(5_000, &one));
    }

    #[test]
    fn hard_budgets_refuse_before_the_handshake_and_name_the_budget() {
        let t0 = Instant::now();
        let mut a = Admission::new(budgets(), t0);
        let ok = Load::default();
        let cases = [
            (Load { draining: true, ..ok }, "draining"),
            (
                Load {
                    connections: 100,
                    ..ok
                },
                "max_connections",
            ),
            (Load { handshakes: 10, ..ok }, "max_handshakes"),
            (
                Load {
                    buffered_bytes: 1_000,
                    ..ok
                },
                "max_buffered_bytes",
            ),
        ];
        for (load, reason) in cases {
            let decision = a.on_incoming(&load, true, t0);
            assert!(
                matches!(decision, Admit::Refuse(r) if r.as_str() == reason),
                "{load:?}: {decision:?}"
            );
        }
        assert_eq!(a.on_incoming(&ok, false, t0), Admit::Accept);
    }

    #[test]
    fn the_token_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut a = Admission::new(budgets(), t0);
        let load = Load::default();
        let burst = (0..20)
            .filter(|_| a.on_incoming(&load, true, t0) == Admit::Accept)
            .count();
        assert_eq!(burst, 5, "the burst");
        assert_eq!(
            a.on_incoming(&load, true, t0),
            Admit::Refuse(RefuseReason::AcceptRate)
        );
        assert_eq!(a.next_token_in(t0), Duration::from_millis(100));
        // One second at 10/s refills 10 tokens, capped at the burst of 5.
        let t1 = t0 + Duration::from_secs(1);
        let later = (0..20)
            .filter(|_| a.on_incoming(&load, true, t1) == Admit::Accept)
            .count();
        assert_eq!(later, 5);
        // Over ten seconds, one attempt every 10 ms: the sustained rate holds at 10/s.
        let mut accepted = 0;
        for ms in (10..=10_000).step_by(10) {
            if a.on_incoming(&load, true, t1 + Duration::from_millis(ms)) == Admit::Accept {
                accepted += 1;
            }
        }
        assert!(
            (99..=100).contains(&accepted),
            "{accepted} (10/s, less float rounding)"
        );
    }

    #[test]
    fn busy_handshakes_make_unproven_addresses_retry_without_spending_a_token() {
        let t0 = Instant::now();
        let mut a = Admission::new(budgets(), t0);
        let busy = Load {
            handshakes: 5,
            ..Load::default()
        };
        for _ in 0..50 {
            assert_eq!(a.on_incoming(&busy, false, t0), Admit::Retry);
        }
        assert_eq!(a.on_incoming(&busy, true, t0), Admit::Accept, "tokens were kept");
    }

    #[test]
    fn soft_budgets_reject_hellos_with_a_hint_that_widens_with_the_overshoot() {
        let a = budgets();
        assert_eq!(
            a.on_hello(
                &Load {
                    sessions: 79,
                    buffered_bytes: 499,
                    ..Load::default()
                },
                0.5
            ),
            Ok(())
        );
        let just_over = a
            .on_hello(
                &Load {
                    sessions: 80,
                    ..Load::default()
                },
                0.999,
            )
            .unwrap_err();
        assert_eq!(just_over.budget, "sessions");
        assert!(
            (1_000..=2_000).contains(&just_over.retry_after_ms),
            "{just_over:?}"
        );
        let far_over = a
            .on_hello(
                &Load {
                    sessions: 85,
                    buffered_bytes: 1_000,
                    ..Load::default()
                },
                0.999,
            )
            .unwrap_err();
        assert_eq!(far_over.budget, "buffered_bytes", "the budget most over");
        assert!(
            (20_000..=21_000).contains(&far_over.retry_after_ms),
            "{far_over:?}"
        );
    }

    #[test]
    fn retry_hints_spread_uniformly_over_their_window() {
        let a = budgets();
        // 1,000 rolls at the hard budget: hints cover [1 s, 21 s), a twentieth in each second.
        let mut per_second = [0u32; 20];
        for i in 0..1_000 {
            let ms = a.retry_after_ms(1.0, f64::from(i) / 1_000.0);
            assert!((1_000..21_000).contains(&ms), "{ms}");
            per_second[((ms - 1_000) / 1_000) as usize] += 1;
        }
        assert!(per_second.iter().all(|n| *n == 50), "{per_second:?}");
    }

    #[test]
    fn budgets_from_config_cap_the_soft_sessions_and_turn_bounded_load_off_at_zero() {
        use crate::config::{Config, tests::MINIMAL};
        // A soft session budget above the hard one is cut to it.
        let c = Config::parse(&format!("{MINIMAL}\n[limits]\nmax_connections = 10\n")).unwrap();
        assert_eq!(
            Budgets::from_config(&c.admission, &c.limits).soft_max_sessions,
            10
        );
        let off = Config::parse(&format!("{MINIMAL}\n[admission]\nbounded_load_epsilon = 0\n")).unwrap();
        assert_eq!(
            Budgets::from_config(&off.admission, &off.limits).bounded_load,
            None
        );
    }
}

//! The scenarios `herd` runs, as plans: when the meters start and what happens to the fleet
//! while they run.
//!
//! Owns: each scenario's timeline as fractions of the run's duration, and which checks its verdict
//! applies. Must never: start, stop or measure anything (the live runner, and later the simulator,
//! carry plans out).

use std::time::Duration;

use serde::Serialize;

/// A thundering-herd scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// A first wave of meters, then all the others at once.
    ColdStart,
    /// As cold-start, then one collector is killed (SIGKILL) mid-run.
    CrashOne,
    /// As cold-start, then each collector in turn drains (SIGTERM), stops and starts again.
    RollingRestart,
    /// As cold-start, then one more collector joins the fleet (DNS and its own fleet view).
    AddCollector,
    /// As cold-start, with a DNS that answers every query with a single record.
    DnsSingleAnswer,
    /// As cold-start with the NATS sink, then NATS is killed for a while and comes back.
    SinkOutage,
    /// As cold-start on a three-node JetStream cluster (the stream on all three), then the node
    /// leading the stream is killed (SIGKILL) and, later, started again.
    NodeLoss,
    /// `herd soak`: cold-start, then every twelfth of the run one event, in turn a NATS outage,
    /// a collector dropped from DNS (and restored), a collector drained and restarted, and one
    /// killed (and started again); the processes' resources are judged for growth.
    #[value(skip)]
    Soak,
}

/// What happens to the fleet at a point of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The meters not in the first wave start, all at once.
    Herd,
    /// SIGKILL to the collector in this slot.
    KillCollector(usize),
    /// Each collector in turn: SIGTERM, wait for it to exit, start it again, wait until ready,
    /// then pause; the whole round takes about this long.
    RollingRestart(Duration),
    /// A new collector starts and DNS starts naming it.
    AddCollector,
    /// The sink (NATS) is killed.
    SinkDown,
    /// The sink comes back on the same port and store.
    SinkUp,
    /// The NATS node leading the stream is killed (SIGKILL).
    NodeDown,
    /// That node starts again on its ports and store.
    NodeUp,
    /// Collector `i` is drained (SIGTERM), waited for and started again.
    RestartCollector(usize),
    /// Collector `i` (killed before) starts again.
    StartCollector(usize),
    /// DNS stops naming collector `i`.
    DnsDrop(usize),
    /// DNS names collector `i` again.
    DnsRestore(usize),
}

/// A scenario's timeline for one run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Actions in time order, at offsets from the start of the run.
    pub actions: Vec<(Duration, Action)>,
    /// The DNS answers each query with one record.
    pub single_answer: bool,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::ColdStart => "cold-start",
            Scenario::CrashOne => "crash-one",
            Scenario::RollingRestart => "rolling-restart",
            Scenario::AddCollector => "add-collector",
            Scenario::DnsSingleAnswer => "dns-single-answer",
            Scenario::SinkOutage => "sink-outage",
            Scenario::NodeLoss => "node-loss",
            Scenario::Soak => "soak",
        }
    }

    /// Whether the scenario needs NATS as the sink (a file sink cannot be taken away from a
    /// running collector from outside).
    pub fn needs_nats(self) -> bool {
        matches!(self, Scenario::SinkOutage | Scenario::Soak)
    }

    /// Whether the scenario needs a three-node JetStream cluster as the sink (`nats-cluster`).
    pub fn needs_nats_cluster(self) -> bool {
        self == Scenario::NodeLoss
    }

    /// Whether `moved_fraction` is measured (the fleet grows or shrinks on purpose).
    pub fn moves_meters(self) -> bool {
        self == Scenario::AddCollector
    }

    /// Whether failover is judged (a collector is killed): how soon the killed collector's
    /// meters are welcomed elsewhere, and that no other meter moves.
    pub fn judges_failover(self) -> bool {
        self == Scenario::CrashOne
    }

    /// The meters' `batch.max_age_ms` when `--batch-age-ms` does not say: 500 ms for crash-one,
    /// as a meter learns that its collector died when it next sends a batch, so its cadence
    /// bounds the failover measured. At the default 1 record/s that seals each record alone,
    /// 500 ms after it: a batch every second (with a 1 s age two records can share a batch, and
    /// a meter writes only every 1-2 s). 5 s for the others (the steady load: about 150 µs of
    /// this machine's CPU per batch, both sides).
    pub fn batch_age(self) -> Duration {
        match self {
            Scenario::CrashOne => Duration::from_millis(500),
            _ => Duration::from_millis(5_000),
        }
    }

    /// The sessions' max/mean that passes at the end (before sampling noise, see
    /// [`balance_threshold`]).
    pub fn max_over_mean(self) -> f64 {
        match self {
            Scenario::DnsSingleAnswer => 1.20,
            _ => 1.10,
        }
    }

    /// The plan for a run of `duration`: the first wave starts at 0 and the herd at 20% of the
    /// run, so the first wave's ack latency has a quiet stretch to compare the herd with; the
    /// scenario's own event comes at 45-60%, leaving the last part of the run to settle.
    pub fn plan(self, duration: Duration) -> Plan {
        let at = |fraction: f64| duration.mul_f64(fraction);
        // A soak's herd comes at once (half its first period): the run is its events.
        let herd = if self == Scenario::Soak {
            duration / SOAK_PERIODS / 2
        } else {
            at(0.2)
        };
        let mut actions = vec![(herd, Action::Herd)];
        match self {
            Scenario::ColdStart | Scenario::DnsSingleAnswer => {}
            Scenario::CrashOne => actions.push((at(0.5), Action::KillCollector(0))),
            Scenario::RollingRestart => actions.push((at(0.4), Action::RollingRestart(at(0.35)))),
            Scenario::AddCollector => actions.push((at(0.45), Action::AddCollector)),
            Scenario::SinkOutage => {
                actions.push((at(0.45), Action::SinkDown));
                actions.push((at(0.6), Action::SinkUp));
            }
            Scenario::NodeLoss => {
                actions.push((at(0.45), Action::NodeDown));
                actions.push((at(0.6), Action::NodeUp));
            }
            Scenario::Soak => actions.extend(soak_events(duration)),
        }
        Plan {
            actions,
            single_answer: self == Scenario::DnsSingleAnswer,
        }
    }
}

/// Periods a soak is cut into: an event starts each one but the first (the herd's) and the last
/// (quiet, so the run ends settled).
pub const SOAK_PERIODS: u32 = 12;

/// A soak's events: in period k (1..=10), in turn a NATS outage (a third of a period), collector
/// k/4 % 3 dropped from DNS (for a third of a period), drained and restarted, or killed and
/// started again a sixth of a period later. Collectors are named modulo the three a soak runs
/// at least; the events of a fleet of K > 3 fall on its first three.
fn soak_events(duration: Duration) -> Vec<(Duration, Action)> {
    let period = duration / SOAK_PERIODS;
    let mut events = Vec::new();
    for k in 1..SOAK_PERIODS - 1 {
        let start = period * k;
        let c = (k as usize / 4) % 3;
        match k % 4 {
            1 => events.extend([(start, Action::SinkDown), (start + period / 3, Action::SinkUp)]),
            2 => events.extend([
                (start, Action::DnsDrop(c)),
                (start + period / 3, Action::DnsRestore(c)),
            ]),
            3 => events.push((start, Action::RestartCollector(c))),
            _ => events.extend([
                (start, Action::KillCollector(c)),
                (start + period / 6, Action::StartCollector(c)),
            ]),
        }
    }
    events
}

/// The longest a killed collector's slowest meter may take, from the kill until another
/// collector welcomes it (`failover_max_s`), for a live crash-one to pass: issue 26's "failover
/// in seconds", with the meters writing a batch every second ([`Scenario::batch_age`]).
pub const FAILOVER_MAX_S: f64 = 3.0;

/// The sessions' max/mean at which a fleet of `collectors` holding `meters` counts as balanced:
/// the scenario's figure, or, when larger, three standard deviations of the noise of hashing
/// `meters` ids over `collectors` (1 + 3·√((K−1)/N)): a few hundred meters over four collectors
/// cannot be balanced to 10%, twenty thousand can.
pub fn balance_threshold(scenario: Scenario, meters: usize, collectors: usize) -> f64 {
    let noise = if meters == 0 || collectors < 2 {
        0.0
    } else {
        3.0 * ((collectors as f64 - 1.0) / meters as f64).sqrt()
    };
    scenario.max_over_mean().max(1.0 + noise)
}

/// The range `moved_fraction` must fall in when one collector joins `collectors`: 1/(K+1) ± 20%,
/// or ± three standard deviations of sampling noise when `meters` is too small for 20%.
pub fn moved_range(collectors: usize, meters: usize) -> (f64, f64) {
    let p = 1.0 / (collectors + 1) as f64;
    let noise = 3.0 * (p * (1.0 - p) / meters.max(1) as f64).sqrt() / p;
    let tolerance = noise.max(0.2);
    (p * (1.0 - tolerance), p * (1.0 + tolerance))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plan_herds_first_and_keeps_its_events_inside_the_run() {
        let d = Duration::from_secs(60);
        for s in [
            Scenario::ColdStart,
            Scenario::CrashOne,
            Scenario::RollingRestart,
            Scenario::AddCollector,
            Scenario::DnsSingleAnswer,
            Scenario::SinkOutage,
            Scenario::NodeLoss,
        ] {
            let plan = s.plan(d);
            assert_eq!(plan.actions[0], (Duration::from_secs(12), Action::Herd), "{s:?}");
            assert!(
                plan.actions.windows(2).all(|w| w[0].0 <= w[1].0),
                "{s:?} out of order"
            );
            assert!(
                plan.actions.iter().all(|(t, _)| *t < d.mul_f64(0.75)),
                "{s:?} leaves no time to settle"
            );
            assert_eq!(plan.single_answer, s == Scenario::DnsSingleAnswer);
        }
    }

    #[test]
    fn a_soak_plan_rotates_its_events_and_leaves_its_last_period_quiet() {
        let d = Duration::from_secs(3600);
        let plan = Scenario::Soak.plan(d);
        assert_eq!(plan.actions[0], (Duration::from_secs(150), Action::Herd));
        assert!(plan.actions.windows(2).all(|w| w[0].0 <= w[1].0), "in order");
        assert!(
            plan.actions.iter().all(|(t, _)| *t < Duration::from_secs(3300)),
            "last period quiet"
        );
        let count = |f: fn(&Action) -> bool| plan.actions.iter().filter(|(_, a)| f(a)).count();
        assert_eq!(count(|a| matches!(a, Action::SinkDown)), 3);
        assert_eq!(count(|a| matches!(a, Action::SinkUp)), 3);
        assert_eq!(count(|a| matches!(a, Action::DnsDrop(_))), 3);
        assert_eq!(count(|a| matches!(a, Action::RestartCollector(_))), 2);
        assert_eq!(count(|a| matches!(a, Action::KillCollector(_))), 2);
        assert_eq!(count(|a| matches!(a, Action::StartCollector(_))), 2);
        assert!(Scenario::Soak.needs_nats());
    }

    #[test]
    fn the_balance_threshold_allows_for_sampling_noise_only_at_small_scale() {
        assert_eq!(balance_threshold(Scenario::ColdStart, 20_000, 4), 1.10);
        assert_eq!(balance_threshold(Scenario::DnsSingleAnswer, 20_000, 4), 1.20);
        let small = balance_threshold(Scenario::ColdStart, 300, 4);
        assert!((small - 1.30).abs() < 0.001, "{small}");
    }
}

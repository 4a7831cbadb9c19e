//! What this collector believes the fleet's load is, for the bounded-load cap
//! ([`crate::control::admission::BoundedLoad`]).
//!
//! Owns: the peers' last reported load and the estimate made from it. Sans-IO: the poller (live:
//! [`crate::control::fleet_poll`]; `herd sim`: its virtual collectors) passes in each poll round's
//! answers, this collector's own count and the time.
//!
//! Each peer reports its sessions and how many `Hello`s it has judged in all (its demand: meters
//! it welcomed or sent on). Peers' figures are as old as the last round. During a herd every
//! collector fills at about the same rate, so comparing a fresh own count with stale peer counts
//! would make every collector look over its share and refuse meters it should take. The estimate
//! therefore moves the fleet's mean on from the last round with the demand this collector has
//! seen since: every `Hello` it judged is a meter the fleet places somewhere, and this collector
//! sees its share of them. Its share is what it saw of the fleet's demand between the last two
//! rounds (a collector owning 1.1 × the mean of the ring sees 1.1 `Hello`s per one the mean
//! collector sees), or, while too few `Hello`s came to tell, its share of the sessions. So the
//! estimate keeps up while this collector sends meters on (its own count stands still, the
//! fleet's does not) and while the others' last answers show no growth yet (the start of a
//! herd). Between rounds a collector can drift from its share by what its estimate of the
//! demand missed, and the next round shows it.
//!
//! A peer that stopped answering is forgotten after `forget_after` (its meters are moving to the
//! others); while no peer is known there is no estimate, hence no cap.
//!
//! Must never: do I/O or read a clock.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::control::admission::FleetLoad;

/// Fewer `Hello`s than this in a round (here, or per collector on average) say too little about
/// this collector's share of the demand; its share of the sessions stands in.
const MIN_HELLOS_FOR_SHARE: u64 = 20;

/// What a collector reports about its own load (`GET /load`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerLoad {
    pub sessions: u64,
    /// `Hello`s judged against the bounded-load cap since the collector started.
    #[serde(default)]
    pub hellos: u64,
}

/// The estimate's state. One per collector, behind the poll's mutex
/// ([`crate::control::fleet_poll::SharedFleetLoad`]): the poll loop writes each round's answers
/// ([`FleetLoadView::on_round`]); every `Hello` counts itself and reads the estimate
/// ([`FleetLoadView::on_hello`]); `/load` reads the `Hello` count.
#[derive(Debug, Clone)]
pub struct FleetLoadView {
    /// A peer silent for longer than this is forgotten (three poll intervals).
    forget_after: Duration,
    /// Peer (its admin address as text) → what it last reported.
    peers: HashMap<String, Peer>,
    /// This collector's own sessions when the last round ended.
    own_at_round: u64,
    /// `Hello`s judged here since start, and at the last round.
    hellos: u64,
    hellos_at_round: u64,
    /// This collector's share of the fleet's demand between the last two rounds (None: too few
    /// `Hello`s to tell).
    demand_share: Option<f64>,
    /// Rounds so far (which peers the last round polled).
    round: u64,
    /// Hosts of `fleet.members` none of whose addresses answered the last polls: the poll
    /// loop sets them; every `Welcome` marks those members `not_answering`.
    silent_hosts: Vec<String>,
}

#[derive(Debug, Clone)]
struct Peer {
    load: PeerLoad,
    /// `Hello`s it judged between its last two answers.
    hellos_new: Option<u64>,
    /// When it last answered.
    at: Instant,
    /// The last round that polled it.
    polled: u64,
}

impl FleetLoadView {
    pub fn new(forget_after: Duration) -> Self {
        Self {
            forget_after,
            peers: HashMap::new(),
            own_at_round: 0,
            hellos: 0,
            hellos_at_round: 0,
            demand_share: None,
            round: 0,
            silent_hosts: Vec::new(),
        }
    }

    /// The member hosts the poll loop finds not answering.
    pub fn set_silent_hosts(&mut self, hosts: Vec<String>) {
        self.silent_hosts = hosts;
    }

    pub fn silent_hosts(&self) -> &[String] {
        &self.silent_hosts
    }

    /// `Hello`s judged here since start (what this collector reports to its peers).
    pub fn hellos(&self) -> u64 {
        self.hellos
    }

    /// A poll round ended at `now`: `answers` holds each peer polled and its load (None: it did
    /// not answer). Peers not polled any more are forgotten at once.
    pub fn on_round<S: AsRef<str>>(&mut self, own: u64, answers: &[(S, Option<PeerLoad>)], now: Instant) {
        self.round += 1;
        for (peer, load) in answers {
            match (self.peers.get_mut(peer.as_ref()), load) {
                (Some(known), Some(load)) => {
                    known.hellos_new = Some(load.hellos.saturating_sub(known.load.hellos));
                    (known.load, known.at, known.polled) = (*load, now, self.round);
                }
                (Some(known), None) => known.polled = self.round,
                (None, Some(load)) => {
                    let entry = Peer {
                        load: *load,
                        hellos_new: None,
                        at: now,
                        polled: self.round,
                    };
                    self.peers.insert(peer.as_ref().to_owned(), entry);
                }
                (None, None) => {}
            }
        }
        let (round, forget_after) = (self.round, self.forget_after);
        self.peers
            .retain(|_, p| p.polled == round && now.saturating_duration_since(p.at) <= forget_after);
        // Our share of the demand since the previous round.
        let ours = self.hellos - self.hellos_at_round;
        let theirs: Vec<u64> = self.peers.values().filter_map(|p| p.hellos_new).collect();
        let mean = (ours + theirs.iter().sum::<u64>()) as f64 / (theirs.len() + 1) as f64;
        self.demand_share =
            (ours >= MIN_HELLOS_FOR_SHARE && mean >= MIN_HELLOS_FOR_SHARE as f64 && !theirs.is_empty())
                .then(|| ours as f64 / mean);
        self.own_at_round = own;
        self.hellos_at_round = self.hellos;
    }

    /// A `Hello` asks for a session: counts it as demand, and returns the fleet's load to judge
    /// it against (None while no peer is known).
    pub fn on_hello(&mut self, own: u64) -> Option<FleetLoad> {
        self.hellos += 1;
        self.estimate(own)
    }

    /// The fleet's load given this collector's own count: None while no peer is known.
    pub fn estimate(&self, own: u64) -> Option<FleetLoad> {
        if self.peers.is_empty() {
            return None;
        }
        let collectors = self.peers.len() + 1;
        let at_round = (self.own_at_round + self.peers.values().map(|p| p.load.sessions).sum::<u64>()) as f64;
        let session_share =
            (self.own_at_round > 0).then(|| self.own_at_round as f64 / (at_round / collectors as f64));
        let share = self.demand_share.or(session_share).unwrap_or(1.0).max(1e-3);
        // The Hello being judged is not yet part of the fleet: the cap counts it itself.
        let demand = (self.hellos - self.hellos_at_round).saturating_sub(1) as f64;
        let sessions = (at_round + demand / share * collectors as f64)
            .max(own as f64)
            .round() as u64;
        Some(FleetLoad { collectors, sessions })
    }

    /// Peers known (answered within `forget_after`).
    pub fn peers(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::admission::BoundedLoad;

    const FORGET: Duration = Duration::from_secs(3);
    const BOUNDED: BoundedLoad = BoundedLoad { epsilon: 0.05 };

    fn load(sessions: u64, hellos: u64) -> Option<PeerLoad> {
        Some(PeerLoad { sessions, hellos })
    }

    #[test]
    fn a_fleet_filling_evenly_is_not_over_its_share_between_rounds() {
        let t0 = Instant::now();
        let mut view = FleetLoadView::new(FORGET);
        assert_eq!(view.estimate(10), None, "no peers, no cap");
        // Four collectors at 1,000 each. Until the next round, 1,000 more meters ask us: the
        // others are assumed to get as many, and we take every one.
        let peers = [
            ("b", load(1_000, 1_000)),
            ("c", load(1_000, 1_000)),
            ("d", load(1_000, 1_000)),
        ];
        view.on_round(1_000, &peers, t0);
        let mut own: u64 = 1_000;
        for _ in 0..1_000 {
            let fleet = view.on_hello(own).unwrap();
            assert!(
                !BOUNDED.full(own as usize, &fleet),
                "{own}: cap {}",
                BOUNDED.cap(&fleet)
            );
            own += 1;
        }
        // In fact the others took none: the next round shows it, and we are full.
        view.on_round(own, &peers, t0 + Duration::from_secs(1));
        let fleet = view.on_hello(own).unwrap();
        assert_eq!(
            fleet,
            FleetLoad {
                collectors: 4,
                sessions: 5_000
            }
        );
        assert!(BOUNDED.full(own as usize, &fleet), "cap {}", BOUNDED.cap(&fleet));
    }

    #[test]
    fn a_full_collector_takes_meters_again_as_the_demand_grows() {
        let t0 = Instant::now();
        let mut view = FleetLoadView::new(FORGET);
        // Over its share at the round (1,200 against a mean of 1,050; cap 1,103).
        let peers = [
            ("b", load(1_000, 0)),
            ("c", load(1_000, 0)),
            ("d", load(1_000, 0)),
        ];
        view.on_round(1_200, &peers, t0);
        let mut sent_on = 0;
        while view.on_hello(1_200).is_some_and(|f| BOUNDED.full(1_200, &f)) {
            sent_on += 1;
            assert!(sent_on < 1_000, "never takes a meter again");
        }
        // Each meter sent on stands for one at each collector of the fleet (our share of the
        // sessions is 1.14): about 100 lift the cap over 1,200, not a whole interval's worth.
        assert!((80..=120).contains(&sent_on), "{sent_on}");
    }

    #[test]
    fn a_collector_owning_more_of_the_ring_is_held_near_its_cap_while_the_fleet_fills() {
        let t0 = Instant::now();
        let mut view = FleetLoadView::new(FORGET);
        // Ten collectors; we are asked 1.1 x as often as each of the others (more of the ring),
        // 1,000 Hellos per interval against their 909, for 20 intervals.
        let (mut own, mut peers_sessions, mut peers_hellos) = (0u64, 0u64, 0u64);
        for round in 1..=20u32 {
            for _ in 0..1_000 {
                if view.on_hello(own).is_none_or(|f| !BOUNDED.full(own as usize, &f)) {
                    own += 1;
                }
            }
            // The others take their own demand and what we sent on, shared out.
            let sent_on = 1_000 * u64::from(round) - own;
            peers_hellos += 909;
            peers_sessions = peers_hellos + sent_on / 9;
            let answers: Vec<_> = (0..9)
                .map(|i| (format!("p{i}"), load(peers_sessions, peers_hellos)))
                .collect();
            view.on_round(own, &answers, t0 + Duration::from_secs(u64::from(round)));
        }
        let mean = (own + 9 * peers_sessions) as f64 / 10.0;
        let ratio = own as f64 / mean;
        // Without the cap: 1.1. With it: the cap, and a little drift between rounds.
        assert!((1.03..=1.065).contains(&ratio), "{ratio}");
    }

    #[test]
    fn silent_peers_are_forgotten_after_a_while_and_removed_ones_at_once() {
        let t0 = Instant::now();
        let mut view = FleetLoadView::new(FORGET);
        view.on_round(100, &[("b", load(100, 0)), ("c", load(100, 0))], t0);
        // c stops answering: still counted within FORGET, then forgotten.
        view.on_round(
            100,
            &[("b", load(100, 0)), ("c", None)],
            t0 + Duration::from_secs(2),
        );
        assert_eq!(view.estimate(100).unwrap().collectors, 3);
        view.on_round(
            100,
            &[("b", load(100, 0)), ("c", None)],
            t0 + Duration::from_secs(4),
        );
        assert_eq!(view.estimate(100).unwrap().collectors, 2);
        // b is no longer a member of the fleet: gone at once, and with it the cap.
        view.on_round(
            100,
            &Vec::<(String, Option<PeerLoad>)>::new(),
            t0 + Duration::from_secs(5),
        );
        assert_eq!(view.estimate(100), None);
        assert_eq!(view.peers(), 0);
    }

    #[test]
    fn the_estimate_never_counts_fewer_sessions_than_our_own() {
        let t0 = Instant::now();
        let mut view = FleetLoadView::new(FORGET);
        view.on_round(0, &[("b", load(0, 0))], t0);
        // Sessions counted without a Hello judged here (the cap was off for them, say).
        let fleet = view.estimate(500).unwrap();
        assert_eq!((fleet.collectors, fleet.sessions), (2, 500));
    }

    #[test]
    fn the_load_report_reads_without_the_hello_count() {
        let old: PeerLoad = serde_json::from_str(r#"{"sessions":7,"draining":false}"#).unwrap();
        assert_eq!(
            old,
            PeerLoad {
                sessions: 7,
                hellos: 0
            }
        );
    }
}

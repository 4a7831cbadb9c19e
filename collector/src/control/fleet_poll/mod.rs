//! The load poll: how a live collector learns the fleet's load for the bounded-load cap
//! ([`crate::control::admission::BoundedLoad`]).
//!
//! Owns: the poll loop (one task on the control plane, stopped by its own cancellation token)
//! and the peer set; asking one peer is [`client`] (`GET /load`, a
//! [`crate::control::admin::LoadReport`], through hyper's HTTP/1.1 client). Every `fleet.load_poll_ms` a round
//! 1. resolves the peers: every address of `fleet.name` and of the hosts of `fleet.members`, on
//!    the peers' admin port, this collector left out ([`peer_set`]). A host that does not
//!    resolve keeps the addresses it last had, so a DNS hiccup does not drop the cap;
//! 2. asks every peer at once, each within half the interval, over a fresh TCP connection
//!    (`Connection: close`; at most [`MAX_RESPONSE_BYTES`] read);
//! 3. hands the answers and this collector's own sessions (from [`LoadCounters`], never from a
//!    gauge) to the shared [`FleetLoadView`] (which `session` reads at every `Hello`) and
//!    updates the `fleet_*` metrics.
//!
//! A draining peer is left out at once (its meters are moving to the others); a silent one is
//! forgotten after three intervals. An answer carrying this collector's own id means an address
//! of its own it did not recognise: that address is not polled again.
//!
//! Must never: hold the view's lock across an await, run two rounds at once, run on the data
//! plane, or wait past the round's deadlines (a stalled peer costs half an interval, once).

pub mod client;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use self::client::{MAX_RESPONSE_BYTES, PollError, fetch_load};
use crate::config::{Config, MAX_FLEET_MEMBERS};
use crate::control::fleet_load::{FleetLoadView, PeerLoad};
use crate::control::load::LoadCounters;
use crate::telemetry::{CollectorMetrics, LogThrottle, PeerPollFailed, Task};

/// A peer silent for this many intervals is forgotten.
const FORGET_AFTER_ROUNDS: u32 = 3;
/// A member host none of whose addresses answered this many rounds in a row is told to meters
/// as not answering (one failed poll may be a lost packet).
const SILENT_AFTER_ROUNDS: u32 = 2;

/// The fleet's load as this collector sees it. The poll loop writes the peers' answers into it
/// every round; every `Hello` counts itself in it and reads the estimate; `/load` reads its
/// `Hello` count. Locked for one call at a time, never across an await.
pub type SharedFleetLoad = Arc<Mutex<FleetLoadView>>;

/// What the poll loop needs from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PollPlan {
    /// The fleet's DNS name (`fleet.name`), resolved every round.
    pub name: Option<String>,
    /// Hosts of `fleet.members`, this collector's advertised address left out.
    pub member_hosts: Vec<String>,
    /// Port of the peers' admin servers.
    pub admin_port: u16,
    /// Time between rounds (`fleet.load_poll_ms`); each peer gets half of it to answer.
    pub interval: Duration,
    /// This collector's bound admin address: a peer address equal to it is itself.
    pub own_admin: SocketAddr,
    /// Host of `fleet.advertise`: its addresses are this collector's.
    pub own_host: Option<String>,
    /// This collector's id: an answer carrying it came from itself.
    pub collector_id: Arc<str>,
}

/// Why a collector does not poll its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoPoll {
    #[error("bounded load is off (admission.bounded_load_epsilon = 0)")]
    BoundedLoadOff,
    #[error("no peers configured (fleet.name, fleet.members)")]
    NoPeers,
    #[error("the peers' admin port is unknown: set fleet.load_admin_port (admin_listen has port 0)")]
    UnknownAdminPort,
}

impl PollPlan {
    /// The plan for `config`, with the admin server bound at `admin`; why not, when this
    /// collector has nothing to poll. The peers' port defaults to the configured
    /// `admin_listen` port: with port 0 there, this collector's own port says nothing of theirs.
    pub fn from_config(config: &Config, admin: SocketAddr, collector_id: Arc<str>) -> Result<Self, NoPoll> {
        let f = &config.fleet;
        if config.admission.bounded_load_epsilon <= 0.0 {
            return Err(NoPoll::BoundedLoadOff);
        }
        let own_host = f.advertise.as_deref().and_then(host_of).map(str::to_owned);
        let mut member_hosts: Vec<String> = Vec::new();
        for member in f.members.iter().filter(|m| Some(*m) != f.advertise.as_ref()) {
            if let Some(host) = host_of(member)
                && !member_hosts.iter().any(|h| h == host)
            {
                member_hosts.push(host.to_owned());
            }
        }
        if f.name.is_none() && member_hosts.is_empty() {
            return Err(NoPoll::NoPeers);
        }
        let admin_port = match f.load_admin_port {
            0 => config.admin_listen.port(),
            port => port,
        };
        if admin_port == 0 {
            return Err(NoPoll::UnknownAdminPort);
        }
        Ok(PollPlan {
            name: f.name.clone(),
            member_hosts,
            admin_port,
            interval: Duration::from_millis(f.load_poll_ms),
            own_admin: admin,
            own_host,
            collector_id,
        })
    }

    /// Peers silent for longer than this are forgotten.
    pub fn forget_after(&self) -> Duration {
        self.interval * FORGET_AFTER_ROUNDS
    }
}

/// The host part of `host:port` or `[v6]:port`.
pub(crate) fn host_of(address: &str) -> Option<&str> {
    let (host, _port) = address.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

/// What this collector knows of its own addresses. Kept by the poll loop alone (its own task):
/// it learns `ips` each round and `seen` from answers carrying its own id.
#[derive(Debug, Clone)]
pub struct Myself {
    /// The bound admin address.
    pub admin: SocketAddr,
    /// Addresses of the advertised host.
    pub ips: Vec<IpAddr>,
    /// Peer addresses that answered with this collector's id.
    pub seen: BTreeSet<SocketAddr>,
}

impl Myself {
    fn is(&self, peer: SocketAddr) -> bool {
        peer == self.admin
            || self.ips.contains(&peer.ip())
            || self.seen.contains(&peer)
            // Listening on every address, this port on a loopback address is this collector.
            || (self.admin.ip().is_unspecified() && peer.ip().is_loopback() && peer.port() == self.admin.port())
    }
}

/// The peers to poll: every candidate address on `port`, this collector left out, each once, in
/// order, at most [`MAX_FLEET_MEMBERS`].
pub fn peer_set(candidates: impl IntoIterator<Item = IpAddr>, port: u16, myself: &Myself) -> Vec<SocketAddr> {
    let peers: BTreeSet<SocketAddr> = candidates
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .filter(|peer| !myself.is(*peer))
        .collect();
    peers.into_iter().take(MAX_FLEET_MEMBERS).collect()
}

/// The poll loop's state between rounds. Owned by the poll task alone; what it shares with the
/// sessions goes through `view`.
pub struct Poller {
    /// What to poll and how often, fixed at start.
    plan: PollPlan,
    /// Written here every round (the peers' answers, this collector's sessions); read and
    /// counted in by every `Hello`, read by `/load`.
    view: SharedFleetLoad,
    /// Written here: `fleet_peers`, `fleet_mean_sessions`, `fleet_poll_rounds`,
    /// `fleet_poll_failures`. Never read back.
    metrics: Arc<CollectorMetrics>,
    /// This collector's sessions, read at the end of each round as its own share of the fleet.
    load: Arc<LoadCounters>,
    /// This collector's own addresses, so it never polls (and counts) itself.
    myself: Myself,
    /// Each configured host's last addresses (kept when a lookup fails).
    resolved: HashMap<String, Vec<IpAddr>>,
    /// Peers that answered the last round, for a log line when it changes.
    answering: usize,
    /// Consecutive rounds each peer address failed to answer (absent: it answered).
    misses: HashMap<IpAddr, u32>,
    /// Throttles the log lines of peers that fail or hosts that do not resolve, per key.
    log: LogThrottle,
}

impl Poller {
    /// A poller for `plan`, and the view it keeps (for the sessions). `load` gives this
    /// collector's own sessions.
    pub fn new(
        plan: PollPlan,
        metrics: Arc<CollectorMetrics>,
        load: Arc<LoadCounters>,
    ) -> (Self, SharedFleetLoad) {
        let view = Arc::new(Mutex::new(FleetLoadView::new(plan.forget_after())));
        let myself = Myself {
            admin: plan.own_admin,
            ips: Vec::new(),
            seen: BTreeSet::new(),
        };
        let poller = Poller {
            plan,
            view: Arc::clone(&view),
            metrics,
            load,
            myself,
            resolved: HashMap::new(),
            answering: 0,
            misses: HashMap::new(),
            log: LogThrottle::new(Duration::from_secs(60), 64),
        };
        (poller, view)
    }

    /// Rounds every interval until `stop` fires.
    pub async fn run(mut self, stop: CancellationToken) {
        let _task = self.metrics.task(Task::FleetPoll);
        info!(
            name = self.plan.name.as_deref().unwrap_or(""),
            members = self.plan.member_hosts.len(),
            admin_port = self.plan.admin_port,
            interval_ms = self.plan.interval.as_millis() as u64,
            "bounded load: polling the fleet's load"
        );
        let mut tick = tokio::time::interval(self.plan.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = self.round() => {}
            }
        }
    }

    /// One round: resolve, ask every peer, update the view and the metrics.
    pub async fn round(&mut self) {
        let half = self.plan.interval / 2;
        let peers = self.peers(half).await;
        let results = futures_util::future::join_all(peers.iter().map(|&peer| fetch_load(peer, half))).await;
        let mut answers: Vec<(String, Option<PeerLoad>)> = Vec::with_capacity(peers.len());
        let mut ids: HashSet<String> = HashSet::new();
        for (peer, result) in peers.iter().zip(results) {
            match &result {
                // Nothing answered: a collector that is not there (an HTTP error or a bad report
                // came from one that is).
                Err(error) if error.no_answer() => {
                    let misses = self.misses.get(&peer.ip()).map_or(1, |m| m + 1);
                    self.misses.insert(peer.ip(), misses);
                }
                _ => {
                    self.misses.remove(&peer.ip());
                }
            }
            match result {
                Ok(report) if report.collector == *self.plan.collector_id => {
                    info!(%peer, "bounded load: this address is this collector; not polling it again");
                    self.myself.seen.insert(*peer);
                }
                // Leaving the fleet: out of the estimate at once.
                Ok(report) if report.draining => {}
                // One collector reached through a second address counts once.
                Ok(report) if !report.collector.is_empty() && !ids.insert(report.collector.clone()) => {}
                Ok(report) => answers.push((
                    peer.to_string(),
                    Some(PeerLoad {
                        sessions: report.sessions,
                        hellos: report.hellos,
                    }),
                )),
                Err(error) => {
                    PeerPollFailed {
                        peer: *peer,
                        error: &error,
                        log: &self.log,
                    }
                    .emit(&self.metrics);
                    answers.push((peer.to_string(), None));
                }
            }
        }
        let answered = answers.iter().filter(|(_, s)| s.is_some()).count();
        let own = self.load.sessions() as u64;
        // With no peer answering at all, the poll itself may be what is broken (an admin server
        // the peers cannot reach): nobody is told to meters as not answering on that alone.
        let silent = if answered > 0 {
            self.silent_hosts()
        } else {
            Vec::new()
        };
        let estimate = {
            let mut view = self.view.lock().unwrap_or_else(|p| p.into_inner());
            view.on_round(own, &answers, Instant::now());
            view.set_silent_hosts(silent);
            view.estimate(own)
        };
        let mean = estimate.map_or(own as f64, |f| f.sessions as f64 / f.collectors.max(1) as f64);
        self.metrics.fleet.round(answered, mean);
        if answered != self.answering {
            info!(
                answering = answered,
                polled = peers.len(),
                mean_sessions = mean,
                "bounded load: peers answering changed"
            );
            self.answering = answered;
        }
    }

    /// Member hosts with addresses, none of which answered the last [`SILENT_AFTER_ROUNDS`]
    /// rounds.
    fn silent_hosts(&self) -> Vec<String> {
        let silent = |ip: &IpAddr| self.misses.get(ip).is_some_and(|m| *m >= SILENT_AFTER_ROUNDS);
        self.plan
            .member_hosts
            .iter()
            .filter(|host| {
                self.resolved
                    .get(*host)
                    .is_some_and(|ips| !ips.is_empty() && ips.iter().all(silent))
            })
            .cloned()
            .collect()
    }

    /// This round's peers. Lookups run at once, each within `timeout`.
    async fn peers(&mut self, timeout: Duration) -> Vec<SocketAddr> {
        let port = self.plan.admin_port;
        let hosts: Vec<String> = self
            .plan
            .name
            .iter()
            .chain(&self.plan.member_hosts)
            .chain(&self.plan.own_host)
            .cloned()
            .collect();
        let lookups = hosts.iter().map(|host| resolve(host, port, timeout));
        for (host, result) in hosts.iter().zip(futures_util::future::join_all(lookups).await) {
            match result {
                Ok(ips) => {
                    self.resolved.insert(host.clone(), ips);
                }
                Err(error) => {
                    if let Some(suppressed) = self.log.check(host, Instant::now()) {
                        warn!(host, %error, suppressed, "bounded load: cannot resolve a peer host; using its last addresses");
                    }
                }
            }
        }
        let addresses_of = |host: &String| self.resolved.get(host).into_iter().flatten().copied();
        self.myself.ips = self.plan.own_host.iter().flat_map(addresses_of).collect();
        let candidates: Vec<IpAddr> = self
            .plan
            .name
            .iter()
            .chain(&self.plan.member_hosts)
            .flat_map(addresses_of)
            .collect();
        peer_set(candidates, port, &self.myself)
    }
}

/// The addresses of `host`: itself when it is an IP address, else the system resolver's answer.
async fn resolve(host: &str, port: u16, timeout: Duration) -> std::io::Result<Vec<IpAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
        Ok(addrs) => Ok(addrs?.map(|a| a.ip()).take(MAX_FLEET_MEMBERS).collect()),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        )),
    }
}

//! The load poll: how a live collector learns the fleet's load for the bounded-load cap
//! ([`crate::admission::BoundedLoad`]).
//!
//! Owns: the poll loop (one task on the control plane, stopped by its own cancellation token),
//! the peer set, and a minimal HTTP/1.1 client for `GET /load` ([`crate::admin::LoadReport`]).
//! Every `fleet.load_poll_ms` a round
//! 1. resolves the peers: every address of `fleet.name` and of the hosts of `fleet.members`, on
//!    the peers' admin port, this collector left out ([`peer_set`]). A host that does not
//!    resolve keeps the addresses it last had, so a DNS hiccup does not drop the cap;
//! 2. asks every peer at once, each within half the interval, over a fresh TCP connection
//!    (`Connection: close`; at most [`MAX_RESPONSE_BYTES`] read);
//! 3. hands the answers to the shared [`FleetLoadView`] (which `session` reads at every `Hello`)
//!    and updates the `fleet_*` metrics.
//!
//! A draining peer is left out at once (its meters are moving to the others); a silent one is
//! forgotten after three intervals. An answer carrying this collector's own id means an address
//! of its own it did not recognise: that address is not polled again.
//!
//! Must never: hold the view's lock across an await, run two rounds at once, run on the data
//! plane, or wait past the round's deadlines (a stalled peer costs half an interval, once).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::LoadReport;
use crate::config::{Config, MAX_FLEET_MEMBERS};
use crate::fleet_load::{FleetLoadView, PeerLoad};
use crate::telemetry::{CollectorMetrics, LogThrottle};

/// Most bytes read from a peer's answer (a load report is a few dozen).
pub const MAX_RESPONSE_BYTES: usize = 16 << 10;

/// A peer silent for this many intervals is forgotten.
const FORGET_AFTER_ROUNDS: u32 = 3;

/// The view every `Hello` reads; the poll loop is its only writer.
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
fn host_of(address: &str) -> Option<&str> {
    let (host, _port) = address.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

/// What this collector knows of its own addresses.
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

/// Why a peer's load was not learned.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("connection failed: {0}")]
    Io(#[source] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("answer larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    #[error("not an HTTP response: {0}")]
    Malformed(&'static str),
    #[error("not a load report: {0}")]
    Json(#[from] serde_json::Error),
}

/// `GET /load` on the admin server at `peer`, all of it within `timeout`.
pub async fn fetch_load(peer: SocketAddr, timeout: Duration) -> Result<LoadReport, PollError> {
    let ask = async {
        let mut stream = TcpStream::connect(peer).await.map_err(PollError::Connect)?;
        let request = format!(
            "GET /load HTTP/1.1\r\nHost: {peer}\r\nUser-Agent: ringflow-collector\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(PollError::Io)?;
        let mut response = Vec::with_capacity(512);
        (&mut stream)
            .take(MAX_RESPONSE_BYTES as u64 + 1)
            .read_to_end(&mut response)
            .await
            .map_err(PollError::Io)?;
        if response.len() > MAX_RESPONSE_BYTES {
            return Err(PollError::TooLarge);
        }
        parse_response(&response)
    };
    tokio::time::timeout(timeout, ask)
        .await
        .map_err(|_| PollError::Timeout(timeout))?
}

/// A whole HTTP/1.x response to `GET /load` (the server closed the connection after it): a 200
/// status and a JSON [`LoadReport`] body, sized by `Content-Length`, chunked, or up to the end.
pub fn parse_response(response: &[u8]) -> Result<LoadReport, PollError> {
    let end = find(response, b"\r\n\r\n").ok_or(PollError::Malformed("no end of headers"))?;
    let head =
        std::str::from_utf8(&response[..end]).map_err(|_| PollError::Malformed("headers are not text"))?;
    let rest = &response[end + 4..];
    let mut lines = head.split("\r\n");
    let mut status_line = lines.next().unwrap_or_default().split(' ');
    if !status_line.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(PollError::Malformed("no HTTP/1 status line"));
    }
    let status: u16 = status_line
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(PollError::Malformed("no status code"))?;
    if status != 200 {
        return Err(PollError::Status(status));
    }
    let (mut length, mut chunked) = (None, false);
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or(PollError::Malformed("a header without a colon"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| PollError::Malformed("bad Content-Length"))?;
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body: Cow<'_, [u8]> = if chunked {
        Cow::Owned(dechunk(rest)?)
    } else if let Some(n) = length {
        Cow::Borrowed(
            rest.get(..n)
                .ok_or(PollError::Malformed("body shorter than its Content-Length"))?,
        )
    } else {
        Cow::Borrowed(rest)
    };
    Ok(serde_json::from_slice(&body)?)
}

/// The body of a chunked transfer (trailers ignored).
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, PollError> {
    let mut body = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n").ok_or(PollError::Malformed("truncated chunk size"))?;
        let size = std::str::from_utf8(&rest[..line_end])
            .ok()
            .and_then(|line| line.split(';').next())
            .and_then(|hex| usize::from_str_radix(hex.trim(), 16).ok())
            .ok_or(PollError::Malformed("bad chunk size"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(rest.get(..size).ok_or(PollError::Malformed("truncated chunk"))?);
        rest = rest
            .get(size..)
            .and_then(|r| r.strip_prefix(b"\r\n"))
            .ok_or(PollError::Malformed("chunk without its CRLF"))?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The poll loop's state between rounds.
pub struct Poller {
    plan: PollPlan,
    view: SharedFleetLoad,
    metrics: Arc<CollectorMetrics>,
    myself: Myself,
    /// Each configured host's last addresses (kept when a lookup fails).
    resolved: HashMap<String, Vec<IpAddr>>,
    /// Peers that answered the last round, for a log line when it changes.
    answering: usize,
    log: LogThrottle,
}

impl Poller {
    /// A poller for `plan`, and the view it keeps (for the sessions).
    pub fn new(plan: PollPlan, metrics: Arc<CollectorMetrics>) -> (Self, SharedFleetLoad) {
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
            myself,
            resolved: HashMap::new(),
            answering: 0,
            log: LogThrottle::new(Duration::from_secs(60), 64),
        };
        (poller, view)
    }

    /// Rounds every interval until `stop` fires.
    pub async fn run(mut self, stop: CancellationToken) {
        let _task = self.metrics.task("fleet_poll");
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
                    self.metrics.fleet_poll_failures.inc();
                    let key = peer.to_string();
                    if let Some(suppressed) = self.log.check(&key, Instant::now()) {
                        warn!(%peer, %error, suppressed, "bounded load: a peer did not report its load");
                    }
                    answers.push((key, None));
                }
            }
        }
        let answered = answers.iter().filter(|(_, s)| s.is_some()).count();
        let own = self.metrics.sessions_active.get().max(0) as u64;
        let estimate = {
            let mut view = self.view.lock().unwrap_or_else(|p| p.into_inner());
            view.on_round(own, &answers, Instant::now());
            view.estimate(own)
        };
        let mean = estimate.map_or(own as f64, |f| f.sessions as f64 / f.collectors.max(1) as f64);
        self.metrics.fleet_peers.set(answered as i64);
        self.metrics.fleet_mean_sessions.set(mean);
        self.metrics.fleet_poll_rounds.inc();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{AdminState, Readiness};
    use crate::sink::SinkHealth;
    use crate::udp_stats::UdpSocketProbe;

    fn report(collector: &str, sessions: u64, draining: bool) -> LoadReport {
        LoadReport {
            collector: collector.into(),
            sessions,
            hellos: 0,
            draining,
        }
    }

    #[test]
    fn a_response_is_read_by_its_length_chunks_or_end() {
        let fixed = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 47\r\n\r\n{\"collector\":\"c2\",\"sessions\":123,\"draining\":false}";
        // 47 bytes cut the body short of its closing brace: the length is honoured.
        assert!(matches!(parse_response(fixed), Err(PollError::Json(_))));
        let fixed = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"collector\":\"c2\",\"sessions\":123,\"draining\":false}";
        assert_eq!(parse_response(fixed).unwrap(), report("c2", 123, false));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n11\r\n{\"sessions\":7,\"dr\r\n13;ext=1\r\naining\":true,\"x\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), report("", 7, true));
        let to_end = b"HTTP/1.0 200 OK\r\n\r\n{\"sessions\":0}";
        assert_eq!(parse_response(to_end).unwrap(), report("", 0, false));
    }

    #[test]
    fn anything_but_a_200_with_a_load_report_is_an_error() {
        let cases: [(&[u8], &str); 8] = [
            (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "HTTP 404"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", "no end of headers"),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "no HTTP/1 status line"),
            (b"HTTP/1.1 OK\r\n\r\n", "no status code"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n{}",
                "shorter than its Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "bad chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}",
                "truncated chunk",
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n{\"sessions\":-1}", "not a load report"),
        ];
        for (response, why) in cases {
            let err = parse_response(response).unwrap_err().to_string();
            assert!(
                err.contains(why),
                "{:?}: {err}",
                String::from_utf8_lossy(response)
            );
        }
    }

    #[test]
    fn the_peer_set_leaves_this_collector_out() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let myself = Myself {
            admin: "10.0.0.1:9464".parse().unwrap(),
            ips: vec![ip("10.0.0.9")],
            seen: ["10.0.0.7:9464".parse().unwrap()].into(),
        };
        let candidates = [
            "10.0.0.3", "10.0.0.1", "10.0.0.2", "10.0.0.9", "10.0.0.7", "10.0.0.2", "::1",
        ]
        .map(ip);
        let peers: Vec<String> = peer_set(candidates, 9464, &myself)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(peers, ["10.0.0.2:9464", "10.0.0.3:9464", "[::1]:9464"]);
        // Listening on every address, loopback addresses on its port are itself.
        let everywhere = Myself {
            admin: "0.0.0.0:9464".parse().unwrap(),
            ips: Vec::new(),
            seen: BTreeSet::new(),
        };
        let peers = peer_set([ip("127.0.0.1"), ip("10.0.0.2")], 9464, &everywhere);
        assert_eq!(peers, ["10.0.0.2:9464".parse::<SocketAddr>().unwrap()]);
        // Never more peers than a fleet may have members.
        let many = (0..600u32).map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a01_0000 + i)));
        assert_eq!(peer_set(many, 1, &everywhere).len(), MAX_FLEET_MEMBERS);
    }

    #[test]
    fn the_plan_takes_peers_from_the_name_and_the_members() {
        let id: Arc<str> = Arc::from("c1");
        let admin: SocketAddr = "10.0.0.1:9464".parse().unwrap();
        let config = |fleet: &str, admission: &str| {
            Config::parse(&format!(
                "collector_id = \"c1\"\nadmin_listen = \"10.0.0.1:9464\"\n{}\n[fleet]\n{fleet}\n[admission]\n{admission}\n",
                crate::config::tests::MINIMAL
            ))
            .unwrap()
        };
        let members = "advertise = \"c1.example:4433\"\nmembers = [\"c1.example:4433\", \"10.0.0.2:4433\", \"[fd00::3]:4433\", \"10.0.0.2:4434\"]";
        let plan = PollPlan::from_config(&config(members, ""), admin, Arc::clone(&id)).unwrap();
        assert_eq!(plan.member_hosts, ["10.0.0.2", "fd00::3"]);
        assert_eq!(plan.own_host.as_deref(), Some("c1.example"));
        assert_eq!((plan.admin_port, plan.interval), (9464, Duration::from_secs(1)));
        assert_eq!(plan.forget_after(), Duration::from_secs(3));
        let named = config(
            "name = \"collectors.example\"\nload_admin_port = 9000\nload_poll_ms = 200",
            "",
        );
        let plan = PollPlan::from_config(&named, admin, Arc::clone(&id)).unwrap();
        assert_eq!(plan.name.as_deref(), Some("collectors.example"));
        assert_eq!(
            (plan.admin_port, plan.interval),
            (9000, Duration::from_millis(200))
        );
        // Nothing to poll: the cap is off, there are no peers, or their port is unknown.
        let off = config(members, "bounded_load_epsilon = 0");
        assert_eq!(
            PollPlan::from_config(&off, admin, Arc::clone(&id)),
            Err(NoPoll::BoundedLoadOff)
        );
        let alone = config("advertise = \"10.0.0.1:4433\"\nmembers = [\"10.0.0.1:4433\"]", "");
        assert_eq!(
            PollPlan::from_config(&alone, admin, Arc::clone(&id)),
            Err(NoPoll::NoPeers)
        );
        // admin_listen on port 0: bound on some port, which says nothing of the peers'.
        let mut dynamic = config(members, "");
        dynamic.admin_listen = "127.0.0.1:0".parse().unwrap();
        let bound: SocketAddr = "127.0.0.1:41234".parse().unwrap();
        assert_eq!(
            PollPlan::from_config(&dynamic, bound, Arc::clone(&id)),
            Err(NoPoll::UnknownAdminPort)
        );
        dynamic.fleet.load_admin_port = 9464;
        let plan = PollPlan::from_config(&dynamic, bound, Arc::clone(&id)).unwrap();
        assert_eq!((plan.admin_port, plan.own_admin), (9464, bound));
    }

    #[tokio::test]
    async fn host_names_are_resolved_each_round_and_keep_their_last_addresses_on_failure() {
        let plan = PollPlan {
            name: Some("localhost".into()),
            member_hosts: vec!["peer.invalid".into(), "10.0.0.2".into()],
            admin_port: 9464,
            interval: Duration::from_secs(1),
            own_admin: "127.0.0.9:9464".parse().unwrap(),
            own_host: Some("10.0.0.2".into()),
            collector_id: Arc::from("me"),
        };
        let (mut poller, _view) = Poller::new(plan, Arc::new(CollectorMetrics::new()));
        // peer.invalid once resolved to 10.0.0.3; now it cannot be resolved (RFC 6761).
        poller
            .resolved
            .insert("peer.invalid".into(), vec!["10.0.0.3".parse().unwrap()]);
        let peers: Vec<String> = poller
            .peers(Duration::from_millis(500))
            .await
            .iter()
            .map(ToString::to_string)
            .collect();
        // localhost from the system resolver; 10.0.0.2 is this collector's advertised host.
        assert_eq!(peers, ["10.0.0.3:9464", "127.0.0.1:9464"]);
    }

    /// A real admin server on loopback: the address of its `/load`, and the state behind it.
    async fn admin_server(
        ip: [u8; 4],
        port: u16,
        id: &str,
    ) -> (SocketAddr, Arc<AdminState>, CancellationToken) {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from((ip, port)))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(CollectorMetrics::new());
        let state = Arc::new(AdminState {
            collector_id: Arc::from(id),
            fleet_load: None,
            metrics: Arc::clone(&metrics),
            readiness: Readiness {
                draining: CancellationToken::new(),
                sink: SinkHealth::starting(metrics, true),
            },
            udp: UdpSocketProbe::default(),
        });
        let stop = CancellationToken::new();
        tokio::spawn(crate::admin::serve(listener, Arc::clone(&state), stop.clone()));
        (addr, state, stop)
    }

    #[tokio::test]
    async fn the_client_reads_a_real_admin_servers_load() {
        let (addr, state, stop) = admin_server([127, 0, 0, 1], 0, "c2").await;
        state.metrics.sessions_active.set(42);
        let load = fetch_load(addr, Duration::from_secs(5)).await.unwrap();
        assert_eq!(load, report("c2", 42, false));
        state.readiness.draining.cancel();
        assert!(fetch_load(addr, Duration::from_secs(5)).await.unwrap().draining);
        stop.cancel();
        // A silent server costs the timeout, no more.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let started = Instant::now();
        let err = fetch_load(silent.local_addr().unwrap(), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, PollError::Timeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_round_counts_answering_peers_and_leaves_out_itself_and_drainers() {
        // Peers on 127.0.0.2-4 on one port, as a fleet is; 127.0.0.5 has nothing listening.
        let first = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = first.local_addr().unwrap().port();
        drop(first);
        let (_b, b, _stop_b) = admin_server([127, 0, 0, 2], port, "b").await;
        let (_c, c, _stop_c) = admin_server([127, 0, 0, 3], port, "c").await;
        let (_me, _me_state, _stop_me) = admin_server([127, 0, 0, 4], port, "me").await;
        b.metrics.sessions_active.set(10);
        c.metrics.sessions_active.set(20);
        let metrics = Arc::new(CollectorMetrics::new());
        metrics.sessions_active.set(30);
        let plan = PollPlan {
            name: None,
            member_hosts: ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
                .map(String::from)
                .to_vec(),
            admin_port: port,
            interval: Duration::from_secs(2),
            // Its admin address is not one the members name: its id gives it away.
            own_admin: "127.0.0.9:1".parse().unwrap(),
            own_host: None,
            collector_id: Arc::from("me"),
        };
        let (mut poller, view) = Poller::new(plan, Arc::clone(&metrics));
        poller.round().await;
        let fleet = view.lock().unwrap().estimate(30).unwrap();
        assert_eq!((fleet.collectors, fleet.sessions), (3, 60));
        assert_eq!(metrics.fleet_peers.get(), 2);
        assert_eq!(metrics.fleet_poll_rounds.get(), 1);
        assert_eq!(metrics.fleet_poll_failures.get(), 1, "127.0.0.5 refused");
        assert_eq!(metrics.fleet_mean_sessions.get(), 20.0);
        assert!(
            poller
                .myself
                .seen
                .contains(&SocketAddr::from(([127, 0, 0, 4], port)))
        );
        // c drains: out of the estimate at once.
        c.readiness.draining.cancel();
        poller.round().await;
        let fleet = view.lock().unwrap().estimate(30).unwrap();
        assert_eq!((fleet.collectors, fleet.sessions), (2, 40));
        assert_eq!(metrics.fleet_poll_failures.get(), 2);
        assert_eq!(metrics.fleet_peers.get(), 1);
        // Itself is not asked again.
        let peers = poller.peers(Duration::from_secs(1)).await;
        assert_eq!(peers.len(), 3, "{peers:?}");
        assert!(!peers.contains(&SocketAddr::from(([127, 0, 0, 4], port))));
    }
}

//! The connection table, joined by socket cookie across the kernel's dumps and its destroy
//! notifications, so each connection is reported exactly once in total: per-interval deltas
//! while it lives, the rest when it closes, and a connection that opened and closed between two
//! dumps whole when it closes. Sans-IO: it is given samples, notifications and a clock reading.
//!
//! Owns: which connections are tracked (at most `max_flows`) and their counters at the last
//! report, which end reports (see [`super::ends`]), the cookies of connections already closed
//! (so a dump taken before a close cannot report them again), closes held until a dump says
//! which end listens, and the segments it accounted for. Must never: do I/O, or report bytes
//! twice.
//!
//! Ordering: dumps are numbered when they start ([`FlowTable::start_dump`]) and applied in
//! order; a close is marked with the number of dumps started before it. A dump that started
//! before a close may still list the socket (it is ignored); one that started after cannot,
//! since the kernel tells of a socket's destruction only after removing it from its tables.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use ringflow_proto::pb;

use super::ends::{Listeners, Role};
use crate::source::addr_bytes;
use crate::source::owner::Owner;
use ringflow_proto::community_id;

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
pub const TCP_LISTEN: u8 = 10;

/// A tracked connection missing from this many dumps in a row is taken as closed with its
/// notification lost; what it moved after the last dump that saw it is lost.
const MISSED_DUMPS_TO_FORGET: u8 = 2;

/// A connection inside the host listed by a dump that listed neither end's listener (a dump
/// walks listeners before connections, so one that raced a new server can) waits this many
/// dumps for one to say which end listens before the lower address is taken to report.
const UNDECIDED_DUMPS: u8 = 2;

/// One TCP socket as a dump or a destroy notification shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketSample {
    /// The kernel's identifier of this socket, never reused.
    pub cookie: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    /// The socket's inode (0 in destroy notifications).
    pub inode: u64,
    /// Counters from `tcp_info`; `None` for sockets that carry none (TIME_WAIT, request sockets).
    pub counters: Option<TcpCounters>,
    /// Who owns it, when the reader could find out.
    pub owner: Option<Arc<Owner>>,
}

/// The lifetime counters of one connection (`struct tcp_info`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// Bytes the peer acknowledged (`tcpi_bytes_acked`): the payload, plus one for the SYN on
    /// the connecting end and one for this end's FIN once acknowledged.
    pub bytes_sent: u64,
    /// Bytes received (`tcpi_bytes_received`): the payload, plus one for the peer's FIN.
    pub bytes_received: u64,
    pub segments_out: u32,
    pub segments_in: u32,
    /// Smoothed round-trip time, microseconds.
    pub rtt_micros: u32,
}

impl TcpCounters {
    /// What moved from `before` to `self`; a counter that went backwards belongs to a new
    /// socket and counts from zero.
    fn since(&self, before: &TcpCounters) -> TcpCounters {
        let d64 = |now: u64, then: u64| if now >= then { now - then } else { now };
        let d32 = |now: u32, then: u32| if now >= then { now - then } else { now };
        TcpCounters {
            bytes_sent: d64(self.bytes_sent, before.bytes_sent),
            bytes_received: d64(self.bytes_received, before.bytes_received),
            segments_out: d32(self.segments_out, before.segments_out),
            segments_in: d32(self.segments_in, before.segments_in),
            rtt_micros: self.rtt_micros,
        }
    }

    fn moved(&self) -> bool {
        self.bytes_sent > 0 || self.bytes_received > 0 || self.segments_out > 0 || self.segments_in > 0
    }

    fn segments(&self) -> u64 {
        u64::from(self.segments_out) + u64::from(self.segments_in)
    }
}

struct Tracked {
    local: SocketAddr,
    remote: SocketAddr,
    /// The counters already reported (or the baseline).
    counters: TcpCounters,
    /// When what has not been reported yet started.
    since_nanos: u64,
    role: Role,
    owner: Option<Arc<Owner>>,
    /// The last dump that listed it.
    seen_in: u64,
    /// Dumps in a row that did not list it.
    missed: u8,
    /// Dumps that listed it without saying which end listens (0: decided); nothing is
    /// reported until decided.
    undecided: u8,
}

/// What a dump or a batch of notifications produced.
#[derive(Debug, Default)]
pub struct ReadOutcome {
    pub records: Vec<pb::FlowRecord>,
    /// Connections not tracked because the table was at its cap.
    pub untracked: u64,
}

/// Cookies of connections already reported whole or closed, each with the number of dumps
/// started when it was added; bounded, oldest forgotten first.
struct Closed {
    by_cookie: HashMap<u64, u64>,
    order: VecDeque<(u64, u64)>,
    cap: usize,
}

impl Closed {
    fn contains(&self, cookie: u64) -> bool {
        self.by_cookie.contains_key(&cookie)
    }

    fn add(&mut self, cookie: u64, dumps_started: u64) {
        if self.by_cookie.insert(cookie, dumps_started).is_none() {
            self.order.push_back((cookie, dumps_started));
        }
        while self.order.len() > self.cap {
            self.forget_oldest();
        }
    }

    /// Forgets the cookies that no dump still to be applied can list: added before the
    /// previous dump (applied now: `applied`) started.
    fn prune(&mut self, applied: u64) {
        while self.order.front().is_some_and(|&(_, at)| at + 2 <= applied) {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((cookie, _)) = self.order.pop_front() {
            self.by_cookie.remove(&cookie);
        }
    }
}

/// A close waiting for a dump to say which end listens.
struct Held {
    sample: SocketSample,
    /// The last dump's time and the close's: the record's start and end.
    since: u64,
    at: u64,
    /// Dumps started when it was held.
    dumps_started: u64,
}

pub struct FlowTable {
    max_flows: usize,
    include_loopback: bool,
    flows: HashMap<u64, Tracked>,
    listeners: Listeners,
    closed: Closed,
    /// Closes of connections inside the host that neither end's listener explained yet, with
    /// the time they were told and the dumps started then; decided by the next dump that
    /// starts after.
    held: Vec<Held>,
    dumps_started: u64,
    /// The time of the last dump applied; `None` before the first (the baseline).
    last_dump_nanos: Option<u64>,
    /// Segments accounted for since the last [`take_segments`](Self::take_segments).
    segments: u64,
}

impl FlowTable {
    pub fn new(max_flows: usize, include_loopback: bool) -> Self {
        Self {
            max_flows,
            include_loopback,
            flows: HashMap::new(),
            listeners: Listeners::default(),
            closed: Closed {
                by_cookie: HashMap::new(),
                order: VecDeque::new(),
                cap: max_flows.saturating_mul(2),
            },
            held: Vec::new(),
            dumps_started: 0,
            last_dump_nanos: None,
            segments: 0,
        }
    }

    /// Connections tracked now.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Closes held until the next dump says which end listens.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Segments the table accounted for since the last call: each reported delta's segments in
    /// and out, twice for a connection inside the host (the host's counters see each of its
    /// segments leave one socket and arrive at the other).
    pub fn take_segments(&mut self) -> u64 {
        std::mem::take(&mut self.segments)
    }

    /// Call when a dump is about to start; returns its number, to give to [`on_dump`](Self::on_dump).
    pub fn start_dump(&mut self) -> u64 {
        self.dumps_started += 1;
        self.dumps_started
    }

    /// Takes dump number `dump` of the kernel's table made at `now_nanos`: a record for every
    /// connection that moved since it was last reported. The first dump only sets the
    /// baseline: what connections moved before the meter started is not this meter's to
    /// report. A connection first listed by a later dump opened since the previous one, so
    /// all its bytes are new.
    pub fn on_dump(&mut self, dump: u64, samples: &[SocketSample], now_nanos: u64) -> ReadOutcome {
        let baseline = self.last_dump_nanos.is_none();
        let since = self.last_dump_nanos.unwrap_or(now_nanos).min(now_nanos);
        self.last_dump_nanos = Some(now_nanos);
        self.listeners
            .replace(samples.iter().filter(|s| s.state == TCP_LISTEN).map(|s| s.local));
        let mut outcome = ReadOutcome::default();
        for s in samples {
            let Some(counters) = s.counters else { continue };
            if s.state == TCP_LISTEN || s.remote.port() == 0 || self.closed.contains(s.cookie) {
                continue;
            }
            if let Some(t) = self.flows.get_mut(&s.cookie) {
                t.seen_in = dump;
                t.missed = 0;
                if t.owner.is_none() {
                    t.owner.clone_from(&s.owner);
                }
                if t.undecided > 0 {
                    if self.listeners.undecided(&t.local, &t.remote) && t.undecided < UNDECIDED_DUMPS {
                        t.undecided += 1;
                        continue;
                    }
                    t.role = self.listeners.role(&t.local, &t.remote);
                    t.undecided = 0;
                }
                let moved = counters.since(&t.counters);
                t.counters = counters;
                if let Some(r) = report(t, &moved, now_nanos, &mut self.segments) {
                    outcome.records.push(r);
                }
                continue;
            }
            let Some(role) = self.role(s) else { continue };
            if self.flows.len() >= self.max_flows {
                outcome.untracked += 1;
                continue;
            }
            let mut t = Tracked {
                local: s.local,
                remote: s.remote,
                counters: if baseline {
                    counters
                } else {
                    TcpCounters::default()
                },
                since_nanos: since,
                role,
                owner: s.owner.clone(),
                seen_in: dump,
                missed: 0,
                undecided: u8::from(self.listeners.undecided(&s.local, &s.remote)),
            };
            if t.undecided == 0 {
                let moved = counters.since(&t.counters);
                t.counters = counters;
                if let Some(r) = report(&mut t, &moved, now_nanos, &mut self.segments) {
                    outcome.records.push(r);
                }
            }
            self.flows.insert(s.cookie, t);
        }
        self.forget_missing(dump);
        self.closed.prune(dump);
        // Only a dump that started after a close was held lists the listeners of that moment.
        let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.dumps_started < dump);
        self.held = later;
        for h in ready {
            let role = self.listeners.role(&h.sample.local, &h.sample.remote);
            if let Some(r) = self.whole(&h.sample, role, h.since, h.at) {
                outcome.records.push(r);
            }
        }
        outcome
    }

    /// Takes destroy notifications told at `now_nanos`: each tracked connection reports what it
    /// moved since its last report; one never tracked opened since the last dump and reports
    /// everything. Before the baseline dump, closes are not reported (those connections may
    /// predate the meter).
    pub fn on_closed(&mut self, closed: Vec<SocketSample>, now_nanos: u64) -> ReadOutcome {
        let mut outcome = ReadOutcome::default();
        for s in closed {
            if s.remote.port() == 0 || self.closed.contains(s.cookie) {
                continue;
            }
            self.closed.add(s.cookie, self.dumps_started);
            let tracked = self.flows.remove(&s.cookie);
            let (Some(counters), Some(since)) = (s.counters, self.last_dump_nanos) else {
                continue;
            };
            if let Some(mut t) = tracked {
                let moved = counters.since(&t.counters);
                if t.undecided > 0 {
                    if self.listeners.undecided(&t.local, &t.remote) {
                        let mut rest = s;
                        rest.counters = Some(moved);
                        rest.owner = t.owner.clone();
                        self.hold(rest, t.since_nanos, now_nanos, &mut outcome);
                        continue;
                    }
                    t.role = self.listeners.role(&t.local, &t.remote);
                }
                if let Some(r) = report(&mut t, &moved, now_nanos, &mut self.segments) {
                    outcome.records.push(r);
                }
                continue;
            }
            if self.listeners.undecided(&s.local, &s.remote) {
                // A server that started since the last dump: the next dump lists its listener.
                self.hold(s, since, now_nanos, &mut outcome);
                continue;
            }
            let Some(role) = self.role(&s) else { continue };
            if let Some(r) = self.whole(&s, role, since, now_nanos) {
                outcome.records.push(r);
            }
        }
        outcome
    }

    /// Holds a close until a dump that starts after it says which end listens.
    fn hold(&mut self, sample: SocketSample, since: u64, at: u64, outcome: &mut ReadOutcome) {
        if self.held.len() >= self.max_flows {
            outcome.untracked += 1;
            return;
        }
        self.held.push(Held {
            sample,
            since,
            at,
            dumps_started: self.dumps_started,
        });
    }

    /// How `s` is reported; `None` when it is not (loopback traffic left out by config).
    fn role(&self, s: &SocketSample) -> Option<Role> {
        if s.remote.ip().is_loopback() && !self.include_loopback {
            return None;
        }
        Some(self.listeners.role(&s.local, &s.remote))
    }

    /// The record of a connection that opened and closed between two dumps: everything.
    fn whole(&mut self, s: &SocketSample, role: Role, since: u64, now: u64) -> Option<pb::FlowRecord> {
        if s.remote.ip().is_loopback() && !self.include_loopback {
            return None;
        }
        let counters = s.counters?;
        let mut t = Tracked {
            local: s.local,
            remote: s.remote,
            counters: TcpCounters::default(),
            since_nanos: since,
            role,
            owner: s.owner.clone(),
            seen_in: 0,
            missed: 0,
            undecided: 0,
        };
        report(&mut t, &counters, now, &mut self.segments)
    }

    /// Forgets connections that dumps stopped listing while no notification told of their
    /// close (it was lost): what they moved after the last dump that listed them is lost.
    fn forget_missing(&mut self, dump: u64) {
        let mut gone = Vec::new();
        for (cookie, t) in &mut self.flows {
            if t.seen_in != dump {
                t.missed += 1;
                if t.missed >= MISSED_DUMPS_TO_FORGET {
                    gone.push(*cookie);
                }
            }
        }
        for cookie in gone {
            self.flows.remove(&cookie);
            self.closed.add(cookie, self.dumps_started);
        }
    }
}

/// Reports `moved` for `t` up to `now` (when this end reports and something moved), counts its
/// segments and starts the next report at `now`.
fn report(t: &mut Tracked, moved: &TcpCounters, now: u64, segments: &mut u64) -> Option<pb::FlowRecord> {
    if !t.role.reports || !moved.moved() {
        return None;
    }
    *segments += moved.segments() * if t.role.inside { 2 } else { 1 };
    let since = std::mem::replace(&mut t.since_nanos, now);
    Some(record(t, moved, since.min(now), now))
}

fn record(t: &Tracked, moved: &TcpCounters, since: u64, now: u64) -> pb::FlowRecord {
    let server = if t.role.local_listens {
        pb::ServerSide::Src
    } else {
        pb::ServerSide::Dst
    };
    let mut r = pb::FlowRecord {
        start_unix_nanos: since,
        end_unix_nanos: now,
        src_addr: addr_bytes(t.local.ip()),
        dst_addr: addr_bytes(t.remote.ip()),
        src_port: t.local.port().into(),
        dst_port: t.remote.port().into(),
        ip_protocol: 6,
        bytes_from_src: moved.bytes_sent,
        packets_from_src: moved.segments_out.into(),
        bytes_from_dst: moved.bytes_received,
        packets_from_dst: moved.segments_in.into(),
        source: pb::SourceKind::Socket as i32,
        rtt_micros: moved.rtt_micros,
        server: server as i32,
        ..Default::default()
    };
    if let Some(owner) = &t.owner {
        owner.apply(&mut r);
    }
    community_id::stamp(&mut r);
    r
}

#[cfg(test)]
mod tests;

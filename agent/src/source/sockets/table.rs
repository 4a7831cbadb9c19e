//! The connection table between two reads of the kernel's socket list: turns each read's
//! lifetime counters into per-interval deltas. Sans-IO: it is given samples and a clock reading.
//!
//! Owns: which connections are tracked (at most `max_flows`), their counters at the last read,
//! which end of each connection listens, and the once-per-connection rule for connections with
//! both ends on this host. Must never: do I/O, or report bytes twice.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use ringflow_proto::pb;

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
pub const TCP_LISTEN: u8 = 10;

/// One TCP socket as a read of the kernel's table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketSample {
    /// The kernel's identifier of this socket, unique while it lives.
    pub cookie: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    /// Counters from `tcp_info`; `None` for sockets that carry none (TIME_WAIT, request sockets).
    pub counters: Option<TcpCounters>,
}

/// The lifetime counters of one connection (`struct tcp_info`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// Payload bytes the peer acknowledged (`tcpi_bytes_acked`).
    pub bytes_sent: u64,
    /// Payload bytes received (`tcpi_bytes_received`).
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
        self.bytes_sent > 0 || self.bytes_received > 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    cookie: u64,
    local: SocketAddr,
    remote: SocketAddr,
}

struct Tracked {
    counters: TcpCounters,
}

/// What one read produced.
#[derive(Debug, Default)]
pub struct ReadOutcome {
    pub records: Vec<pb::FlowRecord>,
    /// Connections not tracked because the table was at its cap (counted once per read).
    pub untracked: u64,
}

pub struct FlowTable {
    max_flows: usize,
    include_loopback: bool,
    flows: HashMap<FlowKey, Tracked>,
    /// The time of the last read; `None` before the first.
    last_read_nanos: Option<u64>,
}

impl FlowTable {
    pub fn new(max_flows: usize, include_loopback: bool) -> Self {
        Self {
            max_flows,
            include_loopback,
            flows: HashMap::new(),
            last_read_nanos: None,
        }
    }

    /// Connections tracked now.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Takes one read of the kernel's table made at `now_nanos` and returns a record for every
    /// connection that moved bytes since the last read. The first read only sets the baseline:
    /// what connections moved before the meter started is not this meter's to report. A
    /// connection first seen on a later read opened since the previous one, so all its bytes
    /// are new.
    pub fn on_read(&mut self, samples: &[SocketSample], now_nanos: u64) -> ReadOutcome {
        let baseline = self.last_read_nanos.is_none();
        let since = self.last_read_nanos.unwrap_or(now_nanos).min(now_nanos);
        self.last_read_nanos = Some(now_nanos);

        let listening: HashSet<(IpAddr, u16)> = samples
            .iter()
            .filter(|s| s.state == TCP_LISTEN)
            .map(|s| (s.local.ip(), s.local.port()))
            .collect();
        let listens = |end: &SocketAddr| {
            listening.contains(&(end.ip(), end.port()))
                || listening.contains(&(unspecified_like(end.ip()), end.port()))
        };
        // Both ends of a connection inside this host show as two sockets; each pair is
        // reported once, from its client's socket.
        let ends: HashSet<(SocketAddr, SocketAddr)> = samples.iter().map(|s| (s.local, s.remote)).collect();

        let mut outcome = ReadOutcome::default();
        let mut seen = HashMap::with_capacity(self.flows.len());
        for s in samples {
            let Some(counters) = s.counters else { continue };
            if s.state == TCP_LISTEN || s.remote.port() == 0 {
                continue;
            }
            let loopback = s.remote.ip().is_loopback();
            if loopback && !self.include_loopback {
                continue;
            }
            let local_listens = listens(&s.local);
            if ends.contains(&(s.remote, s.local)) {
                let peer_listens = listens(&s.remote);
                let this_one = match (local_listens, peer_listens) {
                    (false, true) => true,
                    (true, false) => false,
                    // Neither or both listen (simultaneous open): the lower end reports.
                    _ => s.local < s.remote,
                };
                if !this_one {
                    continue;
                }
            }
            let key = FlowKey {
                cookie: s.cookie,
                local: s.local,
                remote: s.remote,
            };
            let moved = match self.flows.remove(&key) {
                Some(before) => counters.since(&before.counters),
                None if self.flows.len() + seen.len() >= self.max_flows => {
                    outcome.untracked += 1;
                    continue;
                }
                None if baseline => TcpCounters::default(),
                None => counters,
            };
            seen.insert(key, Tracked { counters });
            if moved.moved() {
                outcome
                    .records
                    .push(record(s, &moved, local_listens, since, now_nanos));
            }
        }
        // What was not seen again has closed (or went to TIME_WAIT, which keeps no counters).
        self.flows = seen;
        outcome
    }
}

/// The wildcard address of `ip`'s family: a socket listening on it listens on every address.
fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::from([0u8; 4]),
        IpAddr::V6(_) => IpAddr::from([0u8; 16]),
    }
}

fn addr_bytes(ip: IpAddr) -> Bytes {
    match ip {
        IpAddr::V4(v4) => Bytes::copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => Bytes::copy_from_slice(&v6.octets()),
    }
}

fn record(
    s: &SocketSample,
    moved: &TcpCounters,
    local_listens: bool,
    since: u64,
    now: u64,
) -> pb::FlowRecord {
    let server = if local_listens {
        pb::ServerSide::Src
    } else {
        pb::ServerSide::Dst
    };
    pb::FlowRecord {
        start_unix_nanos: since,
        end_unix_nanos: now,
        src_addr: addr_bytes(s.local.ip()),
        dst_addr: addr_bytes(s.remote.ip()),
        src_port: s.local.port().into(),
        dst_port: s.remote.port().into(),
        ip_protocol: 6,
        bytes_from_src: moved.bytes_sent,
        packets_from_src: moved.segments_out.into(),
        bytes_from_dst: moved.bytes_received,
        packets_from_dst: moved.segments_in.into(),
        source: pb::SourceKind::Socket as i32,
        rtt_micros: moved.rtt_micros,
        server: server as i32,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ESTABLISHED: u8 = 1;

    fn sock(cookie: u64, local: &str, remote: &str, sent: u64, received: u64) -> SocketSample {
        SocketSample {
            cookie,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            state: ESTABLISHED,
            counters: Some(TcpCounters {
                bytes_sent: sent,
                bytes_received: received,
                segments_out: (sent / 1000) as u32,
                segments_in: (received / 1000) as u32,
                rtt_micros: 250,
            }),
        }
    }

    fn listener(local: &str) -> SocketSample {
        SocketSample {
            cookie: 999,
            local: local.parse().unwrap(),
            remote: "0.0.0.0:0".parse().unwrap(),
            state: TCP_LISTEN,
            counters: None,
        }
    }

    #[test]
    fn reports_deltas_after_a_baseline_and_new_connections_from_zero() {
        let mut t = FlowTable::new(100, true);
        let first = t.on_read(&[sock(1, "10.0.0.1:40000", "10.0.0.9:443", 5_000, 700)], 1_000);
        assert!(first.records.is_empty(), "the first read is the baseline");
        let second = t.on_read(
            &[
                sock(1, "10.0.0.1:40000", "10.0.0.9:443", 8_000, 900),
                sock(2, "10.0.0.1:40001", "10.0.0.9:443", 3_000, 0),
            ],
            2_000,
        );
        let r = &second.records;
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].bytes_from_src, r[0].bytes_from_dst), (3_000, 200));
        assert_eq!((r[0].start_unix_nanos, r[0].end_unix_nanos), (1_000, 2_000));
        assert_eq!(r[0].server, pb::ServerSide::Dst as i32);
        assert_eq!(r[0].src_addr.as_ref(), &[10, 0, 0, 1]);
        assert_eq!(r[0].dst_port, 443);
        assert_eq!(r[0].packets_from_src, 3);
        assert_eq!(r[0].rtt_micros, 250);
        assert_eq!((r[1].bytes_from_src, r[1].bytes_from_dst), (3_000, 0));
        // Nothing moved: nothing reported.
        let third = t.on_read(
            &[
                sock(1, "10.0.0.1:40000", "10.0.0.9:443", 8_000, 900),
                sock(2, "10.0.0.1:40001", "10.0.0.9:443", 3_000, 0),
            ],
            3_000,
        );
        assert!(third.records.is_empty());
    }

    #[test]
    fn closed_connections_leave_the_table_and_a_reused_tuple_starts_over() {
        let mut t = FlowTable::new(100, true);
        t.on_read(&[sock(1, "10.0.0.1:40000", "10.0.0.9:443", 5_000, 0)], 1);
        t.on_read(&[], 2);
        assert!(t.is_empty());
        // Same tuple, new socket: everything it moved is new.
        let r = t.on_read(&[sock(7, "10.0.0.1:40000", "10.0.0.9:443", 1_500, 10)], 3);
        assert_eq!(r.records.len(), 1);
        assert_eq!(r.records[0].bytes_from_src, 1_500);
    }

    #[test]
    fn the_listening_end_is_the_server() {
        let mut t = FlowTable::new(100, true);
        let samples = |sent| {
            vec![
                listener("0.0.0.0:22"),
                sock(1, "10.0.0.1:22", "10.0.0.7:51000", sent, 0),
            ]
        };
        t.on_read(&samples(0), 1);
        let r = t.on_read(&samples(100), 2).records;
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].server, pb::ServerSide::Src as i32);
    }

    #[test]
    fn a_connection_inside_the_host_is_reported_once_from_its_client() {
        let mut t = FlowTable::new(100, true);
        let both = |c2s: u64, s2c: u64| {
            vec![
                listener("127.0.0.1:8080"),
                sock(1, "127.0.0.1:8080", "127.0.0.1:50000", s2c, c2s),
                sock(2, "127.0.0.1:50000", "127.0.0.1:8080", c2s, s2c),
            ]
        };
        t.on_read(&both(0, 0), 1);
        let r = t.on_read(&both(50_000, 5_000), 2).records;
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].src_port, 50_000);
        assert_eq!((r[0].bytes_from_src, r[0].bytes_from_dst), (50_000, 5_000));
        assert_eq!(r[0].server, pb::ServerSide::Dst as i32);

        let mut off = FlowTable::new(100, false);
        off.on_read(&both(0, 0), 1);
        assert!(off.on_read(&both(10, 10), 2).records.is_empty());
    }

    #[test]
    fn the_table_is_capped_and_what_does_not_fit_is_counted() {
        let mut t = FlowTable::new(2, true);
        let many: Vec<_> = (0..5)
            .map(|i| sock(i, &format!("10.0.0.1:{}", 40_000 + i), "10.0.0.9:443", 100, 0))
            .collect();
        let first = t.on_read(&many, 1);
        assert_eq!((t.len(), first.untracked), (2, 3));
        let grown: Vec<_> = (0..5)
            .map(|i| sock(i, &format!("10.0.0.1:{}", 40_000 + i), "10.0.0.9:443", 300, 0))
            .collect();
        let second = t.on_read(&grown, 2);
        assert_eq!(second.records.len(), 2, "the tracked two report their deltas");
        assert!(second.records.iter().all(|r| r.bytes_from_src == 200));
        assert_eq!(second.untracked, 3);
    }

    #[test]
    fn sockets_without_counters_and_a_counter_reset_are_handled() {
        let mut t = FlowTable::new(10, true);
        let mut tw = sock(3, "10.0.0.1:40002", "10.0.0.9:443", 0, 0);
        tw.counters = None;
        t.on_read(
            &[sock(1, "10.0.0.1:40000", "10.0.0.9:443", 9_000, 0), tw.clone()],
            1,
        );
        assert_eq!(
            t.len(),
            1,
            "TIME_WAIT sockets carry no counters and are not tracked"
        );
        let r = t.on_read(&[sock(1, "10.0.0.1:40000", "10.0.0.9:443", 100, 0), tw], 2);
        assert_eq!(r.records[0].bytes_from_src, 100);
    }
}

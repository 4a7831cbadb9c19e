use super::*;
use crate::source::bpf::wire::{FLOW_CLOSE_TRACKED, FlowKey};

const SEC: u64 = 1_000_000_000;

fn v4(a: [u8; 4]) -> [u8; 16] {
    std::net::Ipv4Addr::from(a).to_ipv6_mapped().octets()
}

fn table() -> FlowTable {
    FlowTable::new(true, 120 * SEC, SEC, 1024)
}

fn clock(s: u64) -> Clock {
    Clock {
        mono_ns: s * SEC,
        wall_ns: 1_700_000_000 * SEC + s * SEC,
    }
}

fn udp(cookie: u64, local_port: u16, remote: [u8; 4], remote_port: u16) -> (FlowKey, FlowValue) {
    let key = FlowKey {
        cookie,
        remote: v4(remote),
        remote_port,
        proto: IPPROTO_UDP,
    };
    let value = FlowValue {
        local: v4([10, 0, 0, 1]),
        remote: v4(remote),
        local_port,
        remote_port,
        flags: FLOW_INITIATOR,
        first_ns: SEC,
        last_ns: SEC,
        ..Default::default()
    };
    (key, value)
}

/// A TCP connection from 10.0.0.1:40000 to 192.0.2.9:443 with `flags`.
fn tcp_to_443(cookie: u64, flags: u8) -> (FlowKey, FlowValue) {
    let key = FlowKey {
        cookie,
        remote: [0; 16],
        remote_port: 0,
        proto: IPPROTO_TCP,
    };
    let value = FlowValue {
        local: v4([10, 0, 0, 1]),
        remote: v4([192, 0, 2, 9]),
        local_port: 40000,
        remote_port: 443,
        flags,
        first_ns: SEC,
        ..Default::default()
    };
    (key, value)
}

/// A sweep of sockets whose owners are known (this process).
fn sweep(t: &mut FlowTable, entries: &[(FlowKey, FlowValue)], at: Clock) -> SweepOutcome {
    for (k, _) in entries {
        if !t.has_owner(k.cookie) {
            t.set_owner(
                k.cookie,
                Some(Arc::new(Owner::placed(1, "test".into(), "/".into()))),
            );
        }
    }
    t.on_sweep(entries, at, true)
}

fn moved(v: &mut FlowValue, out: u64, inn: u64, at: u64) {
    v.payload_out += out * 100;
    v.packets_out += out;
    v.ip_bytes_out += out * 128;
    v.payload_in += inn * 100;
    v.packets_in += inn;
    v.ip_bytes_in += inn * 128;
    v.last_ns = at * SEC;
}

fn sums(records: &[pb::FlowRecord]) -> (u64, u64, u64, u64) {
    records.iter().fold((0, 0, 0, 0), |s, r| {
        (
            s.0 + r.bytes_from_src,
            s.1 + r.packets_from_src,
            s.2 + r.bytes_from_dst,
            s.3 + r.packets_from_dst,
        )
    })
}

fn end(kind: EndKind, flow: Option<(FlowKey, FlowValue)>, cookie: u64, at: u64) -> EndEvent {
    EndEvent {
        kind,
        cookie,
        flow,
        owner: None,
        at_ns: at * SEC,
        more_flows: true,
    }
}

#[test]
fn a_flow_is_reported_as_deltas_and_its_rest_at_its_end_never_twice() {
    let mut t = table();
    let (key, mut value) = udp(1, 40000, [192, 0, 2, 7], 53);
    moved(&mut value, 3, 2, 1);
    let first = sweep(&mut t, &[(key, value)], clock(2)).records;
    moved(&mut value, 1, 1, 2);
    let second = sweep(&mut t, &[(key, value)], clock(3)).records;
    let again = sweep(&mut t, &[(key, value)], clock(4)).records;
    assert!(again.is_empty(), "nothing moved: no record");
    moved(&mut value, 5, 0, 4);
    let last = t.on_end(&end(EndKind::Released, Some((key, value)), 1, 5), clock(5));
    let all: Vec<_> = first.into_iter().chain(second).chain(last).collect();
    assert_eq!(all.len(), 3);
    assert_eq!(sums(&all), (900, 9, 300, 3));
    assert!(all.iter().all(|r| r.source == pb::SourceKind::SocketBpf as i32));
    assert_eq!(all[0].ip_bytes_from_src, 3 * 128);
    assert_eq!(all[0].start_unix_nanos, clock(1).wall_ns, "from the first packet");
    assert_eq!(all[1].start_unix_nanos, all[0].end_unix_nanos, "deltas follow on");
    assert_eq!(
        all[0].server,
        pb::ServerSide::Dst as i32,
        "the end that sent first is the client"
    );
    assert!(t.is_empty());
}

#[test]
fn an_end_that_arrives_after_a_sweep_missed_the_flow_counts_only_the_rest() {
    let mut t = table();
    let (key, mut value) = udp(2, 40001, [192, 0, 2, 8], 53);
    moved(&mut value, 4, 4, 1);
    let first = sweep(&mut t, &[(key, value)], clock(2)).records;
    // The programs ended it; the sweep no longer lists it, the event comes after.
    assert!(sweep(&mut t, &[], clock(3)).records.is_empty());
    moved(&mut value, 1, 0, 3);
    let rest = t.on_end(&end(EndKind::Released, Some((key, value)), 2, 3), clock(4));
    let all: Vec<_> = first.into_iter().chain(rest).collect();
    assert_eq!(sums(&all), (500, 5, 400, 4));
}

#[test]
fn a_connection_inside_the_host_is_reported_once_by_its_client() {
    let mut t = table();
    let local = v4([127, 0, 0, 1]);
    let client = FlowValue {
        local,
        remote: local,
        local_port: 50000,
        remote_port: 8080,
        flags: FLOW_INITIATOR | FLOW_ROLE_KNOWN | FLOW_CLOSE_TRACKED,
        first_ns: SEC,
        last_ns: 2 * SEC,
        payload_out: 10,
        packets_out: 1,
        payload_in: 20,
        packets_in: 1,
        ..Default::default()
    };
    let server = FlowValue {
        local_port: 8080,
        remote_port: 50000,
        flags: FLOW_ROLE_KNOWN | FLOW_CLOSE_TRACKED,
        payload_out: 20,
        payload_in: 10,
        ..client
    };
    let key = |cookie| FlowKey {
        cookie,
        remote: [0; 16],
        remote_port: 0,
        proto: IPPROTO_TCP,
    };
    let out = sweep(&mut t, &[(key(10), client), (key(11), server)], clock(3));
    assert_eq!(out.records.len(), 1);
    let r = &out.records[0];
    assert_eq!((r.src_port, r.dst_port), (50000, 8080));
    assert_eq!(r.src_addr.as_ref(), &[127, 0, 0, 1]);
    assert_eq!(r.server, pb::ServerSide::Dst as i32);
    assert_eq!((r.bytes_from_src, r.bytes_from_dst), (10, 20));
    assert!(!r.community_id.is_empty());
    let closed = t.on_end(&end(EndKind::Closed, Some((key(11), server)), 11, 3), clock(3));
    assert!(closed.is_none(), "the server's end reports nothing");
}

#[test]
fn released_sockets_flows_end_udp_at_once_tcp_once_quiet_and_any_flow_when_idle() {
    let mut t = table();
    let (a, mut va) = udp(20, 5353, [192, 0, 2, 1], 5353);
    let (b, mut vb) = udp(20, 5353, [192, 0, 2, 2], 5353);
    moved(&mut va, 1, 0, 1);
    moved(&mut vb, 1, 0, 1);
    // Connected before the meter: no state callbacks, its role guessed.
    let (tcp, mut vt) = tcp_to_443(21, 0);
    moved(&mut vt, 2, 2, 1);
    let (idle, mut vi) = udp(22, 6000, [192, 0, 2, 3], 6000);
    moved(&mut vi, 1, 1, 1);
    let entries = |va, vb, vt, vi| vec![(a, va), (b, vb), (tcp, vt), (idle, vi)];
    assert!(sweep(&mut t, &entries(va, vb, vt, vi), clock(2)).ended.is_empty());
    // The UDP socket's last flow ended with its release; the other is ended by the sweep.
    assert!(
        t.on_end(&end(EndKind::Released, Some((b, vb)), 20, 2), clock(2))
            .is_none()
    );
    assert!(t.on_end(&end(EndKind::Released, None, 21, 2), clock(2)).is_none());
    moved(&mut vt, 0, 1, 2);
    let out = sweep(&mut t, &[(a, va), (tcp, vt), (idle, vi)], clock(2));
    assert_eq!(out.ended, vec![a], "UDP at once; TCP sent its FIN just now");
    assert_eq!(out.records.len(), 1, "the FIN's ACK");
    let out = sweep(&mut t, &[(tcp, vt), (idle, vi)], clock(4));
    assert_eq!(
        out.ended,
        vec![tcp],
        "quiet for longer than a second after its release"
    );
    let out = sweep(&mut t, &[(idle, vi)], clock(200));
    assert_eq!(out.ended, vec![idle], "idle for longer than the timeout");
    // Ended flows are remembered for a few sweeps (an end told meanwhile counts from them).
    for s in 201..204 {
        assert!(sweep(&mut t, &[], clock(s)).records.is_empty());
    }
    assert!(t.is_empty());
}

#[test]
fn a_flow_ended_by_a_sweep_and_told_by_the_programs_meanwhile_counts_once() {
    let mut t = table();
    let (key, mut v) = udp(60, 40000, [192, 0, 2, 7], 53);
    moved(&mut v, 3, 0, 1);
    assert_eq!(
        sum_of(&sweep(&mut t, &[(key, v)], clock(2)).records),
        (300, 3, 0, 0)
    );
    // Released: the sweep ends it (and deletes it), but the programs, between the map's read
    // and the delete, ended it too with one more datagram.
    assert!(t.on_end(&end(EndKind::Released, None, 60, 2), clock(2)).is_none());
    let out = sweep(&mut t, &[(key, v)], clock(3));
    assert_eq!(out.ended, vec![key]);
    moved(&mut v, 1, 0, 3);
    let told = t.on_end(&end(EndKind::Released, Some((key, v)), 60, 3), clock(3));
    assert_eq!(
        sum_of(told.as_slice()),
        (100, 1, 0, 0),
        "only what the sweep had not reported"
    );

    // A new entry under the same key (the flow moved after it ended) counts from zero.
    let (_, mut again) = udp(60, 40000, [192, 0, 2, 7], 53);
    again.first_ns = 300 * SEC;
    moved(&mut again, 2, 0, 300);
    assert_eq!(
        sum_of(&sweep(&mut t, &[(key, again)], clock(301)).records),
        (200, 2, 0, 0)
    );
}

#[test]
fn an_end_the_ring_could_not_carry_ends_the_flow_at_the_next_sweep_and_tracked_tcp_never_idles_out() {
    let mut t = table();
    let (key, mut v) = udp(70, 40000, [192, 0, 2, 7], 53);
    moved(&mut v, 1, 0, 1);
    v.flags |= crate::source::bpf::wire::FLOW_ENDED;
    assert_eq!(sweep(&mut t, &[(key, v)], clock(2)).ended, vec![key]);

    let (tcp, mut vt) = tcp_to_443(71, FLOW_INITIATOR | FLOW_ROLE_KNOWN | FLOW_CLOSE_TRACKED);
    moved(&mut vt, 1, 1, 1);
    assert!(
        sweep(&mut t, &[(tcp, vt)], clock(1_000)).ended.is_empty(),
        "idle, but its close will tell"
    );
}

#[test]
fn a_released_socket_with_no_flows_left_is_not_remembered() {
    let mut t = table();
    let mut e = end(EndKind::Released, None, 80, 1);
    e.more_flows = false;
    assert!(t.on_end(&e, clock(1)).is_none());
    let (key, mut v) = udp(80, 40000, [192, 0, 2, 7], 53);
    moved(&mut v, 1, 0, 1);
    // Not taken as released: it ends when idle, not at once.
    assert!(sweep(&mut t, &[(key, v)], clock(2)).ended.is_empty());
}

fn sum_of(records: &[pb::FlowRecord]) -> (u64, u64, u64, u64) {
    sums(records)
}

#[test]
fn a_connection_older_than_the_meter_takes_the_higher_port_as_its_client() {
    let mut t = table();
    let key = FlowKey {
        cookie: 30,
        remote: [0; 16],
        remote_port: 0,
        proto: IPPROTO_TCP,
    };
    let mut v = FlowValue {
        local: v4([10, 0, 0, 1]),
        remote: v4([192, 0, 2, 9]),
        local_port: 22,
        remote_port: 51000,
        first_ns: SEC,
        ..Default::default()
    };
    moved(&mut v, 1, 1, 1);
    let out = sweep(&mut t, &[(key, v)], clock(2));
    assert_eq!(
        out.records[0].server,
        pb::ServerSide::Src as i32,
        "sshd listens on 22"
    );
}

#[test]
fn records_carry_the_owner_given_for_their_socket() {
    let mut t = table();
    let (key, mut value) = udp(40, 40000, [192, 0, 2, 7], 53);
    moved(&mut value, 1, 1, 1);
    assert!(!t.asked_owner(40));
    t.set_owner(
        40,
        Some(Arc::new(Owner::placed(77, "dig".into(), "/user.slice".into()))),
    );
    assert!(t.has_owner(40));
    let r = &t.on_sweep(&[(key, value)], clock(2), true).records[0];
    assert_eq!(
        (r.pid, r.process_name.as_str(), r.cgroup.as_str()),
        (77, "dig", "/user.slice")
    );
}

#[test]
fn a_flow_first_seen_without_its_owner_waits_one_sweep_for_its_end_to_name_it() {
    let mut t = table();
    let (key, mut value) = udp(50, 40000, [192, 0, 2, 7], 53);
    moved(&mut value, 2, 1, 1);
    // The socket was released between the map's read and the owner's lookup.
    t.set_owner(50, None);
    assert!(t.asked_owner(50) && !t.has_owner(50));
    assert!(
        t.on_sweep(&[(key, value)], clock(2), true).records.is_empty(),
        "held one sweep"
    );
    let mut ended = end(EndKind::Released, Some((key, value)), 50, 2);
    ended.owner = Some(crate::source::bpf::wire::BpfOwner {
        cgroup_id: 0,
        created_ns: 0,
        pid: 9,
        uid: 0,
        comm: "nc".into(),
    });
    t.set_owner(50, Some(Arc::new(Owner::placed(9, "nc".into(), "/".into()))));
    let r = t.on_end(&ended, clock(2)).expect("its end reports it");
    assert_eq!((r.pid, r.bytes_from_src, r.bytes_from_dst), (9, 200, 100));

    // A socket older than the meter has no owner: reported at the next sweep without one.
    let (old, mut v) = udp(51, 40001, [192, 0, 2, 8], 53);
    moved(&mut v, 1, 0, 1);
    t.set_owner(51, None);
    assert!(t.on_sweep(&[(old, v)], clock(3), true).records.is_empty());
    let out = t.on_sweep(&[(old, v)], clock(4), true).records;
    assert_eq!((out.len(), out[0].pid, out[0].bytes_from_src), (1, 0, 100));
}

//! The table's rules, one test each: deltas after a baseline, closes joined by cookie, whole
//! connections between dumps, stale dumps, lost closes, the right end, the cap.

use super::*;

const ESTABLISHED: u8 = 1;
const CLOSE: u8 = 7;

fn sock(cookie: u64, local: &str, remote: &str, sent: u64, received: u64) -> SocketSample {
    SocketSample {
        cookie,
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        state: ESTABLISHED,
        inode: cookie + 1_000,
        counters: Some(TcpCounters {
            bytes_sent: sent,
            bytes_received: received,
            segments_out: (sent / 1000) as u32,
            segments_in: (received / 1000) as u32,
            rtt_micros: 250,
        }),
        owner: None,
    }
}

/// The destroy notification of `s` with its final counters.
fn closed(mut s: SocketSample) -> SocketSample {
    s.state = CLOSE;
    s.inode = 0;
    s
}

fn listener(local: &str) -> SocketSample {
    SocketSample {
        cookie: 999,
        local: local.parse().unwrap(),
        remote: "0.0.0.0:0".parse().unwrap(),
        state: TCP_LISTEN,
        inode: 1,
        counters: None,
        owner: None,
    }
}

fn dump(t: &mut FlowTable, samples: &[SocketSample], now: u64) -> ReadOutcome {
    let n = t.start_dump();
    t.on_dump(n, samples, now)
}

fn sums(records: &[pb::FlowRecord]) -> (u64, u64) {
    (
        records.iter().map(|r| r.bytes_from_src).sum(),
        records.iter().map(|r| r.bytes_from_dst).sum(),
    )
}

#[test]
fn reports_deltas_after_a_baseline_and_new_connections_from_zero() {
    let mut t = FlowTable::new(100, true);
    let first = dump(
        &mut t,
        &[sock(1, "10.0.0.1:40000", "10.0.0.9:443", 5_000, 700)],
        1_000,
    );
    assert!(first.records.is_empty(), "the first read is the baseline");
    let second = dump(
        &mut t,
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
    assert_eq!(
        t.take_segments(),
        3 + 3,
        "3 out for the first, 3 out for the second"
    );
    // Nothing moved: nothing reported.
    let third = dump(
        &mut t,
        &[
            sock(1, "10.0.0.1:40000", "10.0.0.9:443", 8_000, 900),
            sock(2, "10.0.0.1:40001", "10.0.0.9:443", 3_000, 0),
        ],
        3_000,
    );
    assert!(third.records.is_empty());
}

#[test]
fn a_close_reports_the_rest_and_a_connection_between_dumps_reports_whole() {
    let mut t = FlowTable::new(100, true);
    dump(
        &mut t,
        &[sock(1, "10.0.0.1:40000", "10.0.0.9:443", 5_000, 0)],
        1_000,
    );
    dump(
        &mut t,
        &[sock(1, "10.0.0.1:40000", "10.0.0.9:443", 8_000, 100)],
        2_000,
    );
    let out = t.on_closed(
        vec![
            closed(sock(1, "10.0.0.1:40000", "10.0.0.9:443", 9_001, 101)),
            // Opened and closed since the last dump: everything it moved.
            closed(sock(2, "10.0.0.1:40001", "10.0.0.9:443", 4_000, 2_000)),
        ],
        2_500,
    );
    let r = &out.records;
    assert_eq!(r.len(), 2);
    assert_eq!((r[0].bytes_from_src, r[0].bytes_from_dst), (1_001, 1));
    assert_eq!((r[0].start_unix_nanos, r[0].end_unix_nanos), (2_000, 2_500));
    assert_eq!((r[1].bytes_from_src, r[1].bytes_from_dst), (4_000, 2_000));
    assert_eq!((r[1].start_unix_nanos, r[1].end_unix_nanos), (2_000, 2_500));
    assert!(t.is_empty());
    // A second notification of the same socket, or a dump that still lists it: nothing.
    let again = t.on_closed(
        vec![closed(sock(2, "10.0.0.1:40001", "10.0.0.9:443", 4_000, 2_000))],
        2_600,
    );
    assert!(again.records.is_empty());
}

#[test]
fn a_dump_that_started_before_a_close_does_not_report_the_connection_again() {
    let mut t = FlowTable::new(100, true);
    dump(&mut t, &[], 1_000);
    let n = t.start_dump();
    // The dump saw the socket alive; its close is told before the dump is applied.
    let whole = t.on_closed(
        vec![closed(sock(5, "10.0.0.1:40000", "10.0.0.9:443", 700, 70))],
        1_500,
    );
    assert_eq!(sums(&whole.records), (700, 70));
    let stale = t.on_dump(n, &[sock(5, "10.0.0.1:40000", "10.0.0.9:443", 600, 60)], 2_000);
    assert!(stale.records.is_empty(), "{:?}", stale.records);
    assert!(t.is_empty());
}

#[test]
fn closes_before_the_baseline_are_not_reported_and_the_baseline_rule_holds_at_close() {
    let mut t = FlowTable::new(100, true);
    let early = t.on_closed(
        vec![closed(sock(1, "10.0.0.1:40000", "10.0.0.9:443", 700, 70))],
        10,
    );
    assert!(early.records.is_empty(), "may predate the meter");
    dump(
        &mut t,
        &[sock(2, "10.0.0.1:40001", "10.0.0.9:443", 5_000, 500)],
        1_000,
    );
    let r = t.on_closed(
        vec![closed(sock(2, "10.0.0.1:40001", "10.0.0.9:443", 5_250, 500))],
        1_200,
    );
    assert_eq!(sums(&r.records), (250, 0), "only what moved after the baseline");
}

#[test]
fn a_connection_whose_close_was_lost_is_forgotten_without_counting_it_twice() {
    let mut t = FlowTable::new(100, true);
    dump(&mut t, &[], 1_000);
    dump(
        &mut t,
        &[sock(1, "10.0.0.1:40000", "10.0.0.9:443", 100, 0)],
        2_000,
    );
    // Its notification was lost; one dump without it keeps it (a dump can skip a socket)...
    dump(&mut t, &[], 3_000);
    assert_eq!(t.len(), 1);
    // ...and it comes back with more: the delta only.
    let back = dump(
        &mut t,
        &[sock(1, "10.0.0.1:40000", "10.0.0.9:443", 150, 0)],
        4_000,
    );
    assert_eq!(sums(&back.records), (50, 0));
    dump(&mut t, &[], 5_000);
    dump(&mut t, &[], 6_000);
    assert!(
        t.is_empty(),
        "missing from two dumps in a row: closed, notification lost"
    );
    // A late notification adds nothing: its last bytes are what the loss counter stands for.
    let late = t.on_closed(
        vec![closed(sock(1, "10.0.0.1:40000", "10.0.0.9:443", 170, 0))],
        6_100,
    );
    assert!(late.records.is_empty());
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
    dump(&mut t, &samples(0), 1);
    let r = dump(&mut t, &samples(100), 2).records;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].server, pb::ServerSide::Src as i32);
}

#[test]
fn a_connection_inside_the_host_is_reported_once_from_its_client() {
    let mut t = FlowTable::new(100, true);
    let both = |c2s: u64, s2c: u64| {
        vec![
            listener("[::]:8080"),
            sock(1, "127.0.0.1:8080", "127.0.0.1:50000", s2c, c2s),
            sock(2, "127.0.0.1:50000", "127.0.0.1:8080", c2s, s2c),
        ]
    };
    dump(&mut t, &both(0, 0), 1);
    let r = dump(&mut t, &both(50_000, 5_000), 2).records;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].src_port, 50_000);
    assert_eq!((r[0].bytes_from_src, r[0].bytes_from_dst), (50_000, 5_000));
    assert_eq!(r[0].server, pb::ServerSide::Dst as i32);
    assert_eq!(
        t.take_segments(),
        2 * (50 + 5),
        "each segment seen twice by the host"
    );
    // Both ends close; only the client's notification is reported.
    let out = t.on_closed(
        vec![
            closed(sock(2, "127.0.0.1:50000", "127.0.0.1:8080", 50_002, 5_001)),
            closed(sock(1, "127.0.0.1:8080", "127.0.0.1:50000", 5_001, 50_001)),
        ],
        3,
    );
    assert_eq!(out.records.len(), 1);
    assert_eq!(sums(&out.records), (2, 1));

    let mut off = FlowTable::new(100, false);
    dump(&mut off, &both(0, 0), 1);
    assert!(dump(&mut off, &both(10, 10), 2).records.is_empty());
}

#[test]
fn a_short_connection_to_a_server_not_dumped_yet_waits_for_the_next_dump() {
    let mut t = FlowTable::new(100, true);
    dump(&mut t, &[], 1_000);
    // A dump in flight when the closes are told started before the server: it cannot decide.
    let in_flight = t.start_dump();
    // The server started after the last dump, and its listener port looks as ephemeral as
    // the client's: the closes wait for the next dump to name the listener.
    let out = t.on_closed(
        vec![
            closed(sock(1, "127.0.0.1:33000", "127.0.0.1:45000", 1_001, 20_001)),
            closed(sock(2, "127.0.0.1:45000", "127.0.0.1:33000", 20_002, 1_001)),
        ],
        1_100,
    );
    assert!(out.records.is_empty());
    assert_eq!(t.held(), 2);
    assert!(t.on_dump(in_flight, &[], 1_500).records.is_empty());
    assert_eq!(t.held(), 2, "still held for a dump that started after them");
    let r = dump(&mut t, &[listener("127.0.0.1:33000")], 2_000).records;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!((r[0].src_port, r[0].dst_port), (45_000, 33_000));
    assert_eq!((r[0].bytes_from_src, r[0].bytes_from_dst), (20_002, 1_001));
    assert_eq!((r[0].start_unix_nanos, r[0].end_unix_nanos), (1_000, 1_100));
    assert_eq!(t.held(), 0);
}

#[test]
fn the_table_is_capped_and_what_does_not_fit_is_counted() {
    let mut t = FlowTable::new(2, true);
    let many: Vec<_> = (0..5)
        .map(|i| sock(i, &format!("10.0.0.1:{}", 40_000 + i), "10.0.0.9:443", 100, 0))
        .collect();
    let first = dump(&mut t, &many, 1);
    assert_eq!((t.len(), first.untracked), (2, 3));
    let grown: Vec<_> = (0..5)
        .map(|i| sock(i, &format!("10.0.0.1:{}", 40_000 + i), "10.0.0.9:443", 300, 0))
        .collect();
    let second = dump(&mut t, &grown, 2);
    assert_eq!(second.records.len(), 2, "the tracked two report their deltas");
    assert!(second.records.iter().all(|r| r.bytes_from_src == 200));
    assert_eq!(second.untracked, 3);
}

#[test]
fn sockets_without_counters_and_a_counter_reset_are_handled() {
    let mut t = FlowTable::new(10, true);
    let mut tw = sock(3, "10.0.0.1:40002", "10.0.0.9:443", 0, 0);
    tw.counters = None;
    dump(
        &mut t,
        &[sock(1, "10.0.0.1:40000", "10.0.0.9:443", 9_000, 0), tw.clone()],
        1,
    );
    assert_eq!(
        t.len(),
        1,
        "TIME_WAIT sockets carry no counters and are not tracked"
    );
    let r = dump(
        &mut t,
        &[sock(1, "10.0.0.1:40000", "10.0.0.9:443", 100, 0), tw],
        2,
    );
    assert_eq!(r.records[0].bytes_from_src, 100);
}

#[test]
fn the_owner_found_when_a_socket_is_first_dumped_stays_with_it_to_its_close() {
    let mut t = FlowTable::new(10, true);
    dump(&mut t, &[], 1);
    let mut s = sock(1, "10.0.0.1:40000", "10.0.0.9:443", 100, 0);
    s.owner = Some(Arc::new(Owner {
        pid: 4242,
        process_name: "curl".into(),
        ..Owner::default()
    }));
    let first = dump(&mut t, &[s], 2);
    assert_eq!(
        (first.records[0].pid, first.records[0].process_name.as_str()),
        (4242, "curl")
    );
    let last = t.on_closed(vec![closed(sock(1, "10.0.0.1:40000", "10.0.0.9:443", 180, 0))], 3);
    assert_eq!((last.records[0].pid, last.records[0].bytes_from_src), (4242, 80));
}

#[test]
fn a_dump_that_raced_a_new_server_reports_nothing_until_one_names_the_listener() {
    let mut t = FlowTable::new(100, true);
    dump(&mut t, &[], 1_000);
    let pair = |c2s: u64, s2c: u64| {
        vec![
            sock(1, "127.0.0.1:45403", "127.0.0.1:54532", s2c, c2s),
            sock(2, "127.0.0.1:54532", "127.0.0.1:45403", c2s, s2c),
        ]
    };
    // This dump walked the listeners before the server listened, then its connection.
    assert!(dump(&mut t, &pair(5_000, 0), 2_000).records.is_empty());
    let mut with_listener = pair(9_000, 10);
    with_listener.push(listener("127.0.0.1:45403"));
    let r = dump(&mut t, &with_listener, 3_000).records;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        (r[0].src_port, r[0].bytes_from_src, r[0].bytes_from_dst),
        (54_532, 9_000, 10)
    );
    assert_eq!(r[0].start_unix_nanos, 1_000);
    // Undecided at its close too: held for the next dump, then reported from the client.
    dump(&mut t, &[], 4_000);
    let mut u = FlowTable::new(100, true);
    dump(&mut u, &[], 1_000);
    dump(&mut u, &pair(5_000, 0), 2_000);
    let closes = vec![
        closed(sock(2, "127.0.0.1:54532", "127.0.0.1:45403", 6_002, 1)),
        closed(sock(1, "127.0.0.1:45403", "127.0.0.1:54532", 1, 6_001)),
    ];
    assert!(u.on_closed(closes, 2_500).records.is_empty());
    let r = dump(&mut u, &[listener("127.0.0.1:45403")], 3_000).records;
    assert_eq!(sums(&r), (6_002, 1));
    assert_eq!(r[0].src_port, 54_532);
}

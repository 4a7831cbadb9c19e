use proptest::prelude::*;
use prost::Message;
use prost::bytes::Bytes;

use super::*;

fn limits() -> Limits {
    Limits {
        max_records: 10_000,
        max_body_bytes: 1 << 22,
        text_limits: &[("process_name", 64), ("cgroup", 1024)],
        max_text_bytes: 256,
    }
}

/// A record with every field set from a few draws: addresses from a small pool, as on a host.
fn record() -> impl Strategy<Value = pb::FlowRecord> {
    (
        (
            any::<u64>(),
            0u64..10_000_000_000,
            0usize..4,
            0usize..4,
            any::<u16>(),
            any::<u16>(),
        ),
        (
            prop_oneof![Just(6u8), Just(17u8), Just(132u8), Just(1u8), any::<u8>()],
            any::<u64>(),
            any::<u64>(),
            -3i32..10,
            any::<u32>(),
            "[a-z0-9]{0,8}",
        ),
        (
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            "[a-z/]{0,20}",
            "[a-f0-9]{0,64}",
            any::<bool>(),
        ),
        0u8..3,
    )
        .prop_map(
            |(
                (start, len, s, d, sp, dp),
                (proto, b, p, source, rtt, interface),
                (rate, errs, pid, cgroup, container, v6),
                flow_id,
            )| {
                let pool = |i: usize| -> Bytes {
                    match (i, v6) {
                        (0, _) => Bytes::new(),
                        (i, false) => Bytes::copy_from_slice(&[10, 0, 0, i as u8]),
                        (i, true) => {
                            Bytes::copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, i as u8])
                        }
                    }
                };
                let mut r = pb::FlowRecord {
                    start_unix_nanos: start,
                    end_unix_nanos: if len == 0 { 0 } else { start.saturating_add(len) },
                    src_addr: pool(s),
                    dst_addr: pool(d),
                    src_port: sp.into(),
                    dst_port: dp.into(),
                    ip_protocol: proto.into(),
                    bytes_from_src: b,
                    packets_from_src: p,
                    bytes_from_dst: b / 3,
                    packets_from_dst: p / 7,
                    source,
                    rtt_micros: rtt,
                    interface,
                    exporter_addr: pool(s ^ d),
                    sampling_rate: rate,
                    server: source % 3,
                    tx_errors: errs,
                    rx_errors: errs / 2,
                    tx_drops: errs % 5,
                    rx_drops: 0,
                    pid,
                    process_name: cgroup.chars().take(15).collect(),
                    cgroup,
                    container_id: container,
                    pod_uid: String::new(),
                    systemd_unit: "ssh.service".into(),
                    // An id from another exporter (seed or convention) as text.
                    community_id: "1:abc".into(),
                    ip_bytes_from_src: b.wrapping_add(40),
                    ip_bytes_from_dst: 0,
                };
                match flow_id {
                    // The meter's own id: derived by readers for TCP, UDP and SCTP, else text.
                    0 => crate::community_id::stamp(&mut r),
                    1 => r.community_id.clear(),
                    _ => {}
                }
                r
            },
        )
}

proptest! {
    #[test]
    fn records_come_back_exactly_compressed_or_not(
        records in proptest::collection::vec(record(), 0..60),
        level in proptest::option::of(1i32..4),
    ) {
        let block = encode(&records, level);
        prop_assert_eq!(check(&block, &limits()), Ok(records.len()));
        prop_assert_eq!(decode(&block, 10_000, 1 << 22).unwrap(), records);
    }

    /// Whatever the bytes, `check` and `decode` answer (no panic), and agree: what `check`
    /// passes, `decode` reads, with as many records.
    #[test]
    fn garbage_is_an_error_never_a_panic(mut block in proptest::collection::vec(any::<u8>(), 0..200), zstd in any::<bool>()) {
        if block.len() >= 2 {
            block[0] = FORMAT;
            block[1] = u8::from(zstd);
        }
        if let Ok(n) = check(&block, &limits()) {
            prop_assert_eq!(decode(&block, 10_000, 1 << 22).map(|r| r.len()), Ok(n));
        }
    }

    /// Flipping any one byte of a valid block either still checks and decodes, or is an error.
    #[test]
    fn a_corrupted_block_is_an_error_or_decodes(
        records in proptest::collection::vec(record(), 1..20),
        at in any::<prop::sample::Index>(),
        to in any::<u8>(),
    ) {
        let mut block = encode(&records, None);
        let i = at.index(block.len());
        block[i] = to;
        if let Ok(n) = check(&block, &limits()) {
            prop_assert_eq!(decode(&block, 10_000, 1 << 22).map(|r| r.len()), Ok(n));
        }
    }
}

/// A change that spoils a record, the reason it is nacked for, and the message.
type Case = (fn(&mut pb::FlowRecord), pb::NackReason, &'static str);

/// Each fault a row batch is nacked for is found in a block too, with the same reason.
#[test]
fn a_block_is_judged_with_the_row_batchs_reasons() {
    let good = pb::FlowRecord {
        start_unix_nanos: 100,
        end_unix_nanos: 200,
        src_addr: Bytes::from_static(&[127, 0, 0, 1]),
        dst_port: 443,
        ip_protocol: 6,
        ..Default::default()
    };
    let judged = |change: fn(&mut pb::FlowRecord)| {
        let mut bad = good.clone();
        change(&mut bad);
        check(&encode(&[good.clone(), bad], Some(1)), &limits()).map_err(|e| (e.reason, e.message))
    };
    assert_eq!(judged(|_| {}), Ok(2));
    let cases: [Case; 7] = [
        (
            |r| r.src_addr = Bytes::from_static(&[1, 2, 3]),
            pb::NackReason::InvalidRecord,
            "record 1: src_addr has 3 bytes; an address has 4 or 16",
        ),
        (
            |r| r.exporter_addr = Bytes::from_static(&[1; 5]),
            pb::NackReason::InvalidRecord,
            "record 1: exporter_addr has 5 bytes; an address has 4 or 16",
        ),
        (
            |r| r.src_port = 65_536,
            pb::NackReason::InvalidRecord,
            "record 1: src_port 65536 above 65535",
        ),
        (
            |r| r.ip_protocol = 256,
            pb::NackReason::InvalidRecord,
            "record 1: ip_protocol 256 above 255",
        ),
        (
            |r| r.end_unix_nanos = 99,
            pb::NackReason::InvalidRecord,
            "record 1: flow ends before it starts",
        ),
        (
            |r| r.process_name = "p".repeat(65),
            pb::NackReason::FieldTooLong,
            "record 1: process_name of 65 bytes, the limit is 64",
        ),
        (
            |r| r.interface = "i".repeat(257),
            pb::NackReason::FieldTooLong,
            "record 1: interface of 257 bytes, the limit is 256",
        ),
    ];
    for (change, reason, message) in cases {
        assert_eq!(judged(change), Err((reason, message.to_owned())));
    }
    // A flow still open (no end) is fine.
    assert_eq!(judged(|r| r.end_unix_nanos = 0), Ok(2));
    let many = vec![good.clone(); 11];
    let tight = Limits {
        max_records: 10,
        ..limits()
    };
    assert_eq!(
        check(&encode(&many, None), &tight).map_err(|e| e.reason),
        Err(pb::NackReason::TooManyRecords)
    );
}

#[test]
fn structural_faults_are_undecodable_and_say_what_was_wrong() {
    let records = vec![
        pb::FlowRecord {
            src_port: 1,
            interface: "eth0".into(),
            ..Default::default()
        };
        3
    ];
    let block = encode(&records, None);
    let err = |b: &[u8]| check(b, &limits()).unwrap_err();
    assert_eq!(err(&[]).message, "empty columns block");
    assert_eq!(
        err(&[2, 0]).message,
        "columns of format 2; this collector reads format 1"
    );
    assert_eq!(err(&[1, 7]).message, "unknown compression 7 (0: none, 1: zstd)");
    let mut longer = block.clone();
    longer.push(0);
    assert_eq!(err(&longer).message, "1 bytes after the last column");
    let shorter = &block[..block.len() - 1];
    assert_eq!(err(shorter).reason, pb::NackReason::Undecodable);
    // A dictionary index past the end: the interface column's last index.
    let mut past = block.clone();
    *past.last_mut().unwrap() = 9;
    assert_eq!(
        err(&past).message,
        "record 2: interface names dictionary entry 9 of 1"
    );
    // Not UTF-8 in a text column.
    let mut latin = block.clone();
    let at = latin.windows(4).position(|w| w == b"eth0").unwrap();
    latin[at] = 0xff;
    assert_eq!(err(&latin).message, "record 0: interface is not UTF-8");
    // zstd that expands past the limit.
    let big = vec![
        pb::FlowRecord {
            pid: 7,
            ..Default::default()
        };
        5_000
    ];
    let small = Limits {
        max_body_bytes: 1_000,
        ..limits()
    };
    let e = check(&encode(&big, Some(3)), &small).unwrap_err();
    assert_eq!(e.reason, pb::NackReason::Undecodable);
    assert!(e.message.contains("within 1000 bytes"), "{}", e.message);
}

/// Host flows compress: the records of one host's flows, each with its Community ID as the meter
/// stamps it (derived by readers, so it costs the block a byte), and the bytes per record of
/// each form, which `herd bench` reports beside the row form.
#[test]
fn a_hosts_flows_take_a_few_bytes_a_record() {
    let records: Vec<pb::FlowRecord> = (0..1_000u64)
        .map(|i| pb::FlowRecord {
            start_unix_nanos: 1_700_000_000_000_000_000 + i * 1_000_000,
            end_unix_nanos: 1_700_000_000_000_000_000 + i * 1_000_000 + 250_000_000,
            src_addr: Bytes::from_static(&[10, 0, 0, 5]),
            dst_addr: Bytes::copy_from_slice(&[93, 184, 216, (i % 8) as u8]),
            src_port: 32_768 + (i % 1_000) as u32,
            dst_port: 443,
            ip_protocol: 6,
            bytes_from_src: 500 + i % 300,
            packets_from_src: 4 + i % 3,
            bytes_from_dst: 3_000 + i % 2_000,
            packets_from_dst: 5 + i % 4,
            source: pb::SourceKind::SocketBpf as i32,
            ..Default::default()
        })
        .map(|mut r| {
            crate::community_id::stamp(&mut r);
            r
        })
        .collect();
    let rows = pb::FlowBatch {
        records: records.clone(),
        ..Default::default()
    }
    .encoded_len() as f64
        / 1e3;
    let plain = encode(&records, None).len() as f64 / 1e3;
    let zstd = encode(&records, Some(3)).len() as f64 / 1e3;
    println!("bytes per record: rows {rows}, columns {plain}, columns+zstd {zstd}");
    assert!(plain < rows / 2.0, "columns {plain} B/record against rows {rows}");
    assert!(
        zstd < 12.0,
        "compressed columns {zstd} B/record (rows {rows}, plain {plain})"
    );
}

/// The meter tells a spooled frame of columns from one of rows without decoding it.
#[test]
fn a_frame_of_columns_is_told_from_one_of_rows() {
    let records = vec![
        pb::FlowRecord {
            src_port: 9,
            ..Default::default()
        };
        4
    ];
    let frame = |batch: pb::FlowBatch| {
        pb::DataUp {
            msg: Some(pb::data_up::Msg::Batch(batch)),
        }
        .encode_to_vec()
    };
    let rows = frame(pb::FlowBatch {
        seq: 3,
        records: records.clone(),
        created_unix_nanos: 7,
        ..Default::default()
    });
    let columns = frame(pb::FlowBatch {
        seq: 3,
        created_unix_nanos: 7,
        loss: Some(pb::MeasurementLoss {
            records_dropped: 1,
            ..Default::default()
        }),
        columns: encode(&records, Some(1)).into(),
        ..Default::default()
    });
    assert!(!in_data_up(&rows));
    assert!(in_data_up(&columns));
    assert!(!in_data_up(&[]));
    assert!(
        !in_data_up(&columns[..columns.len() - 1]),
        "a truncated frame is not read as columns"
    );
}

/// The Community ID the meter stamps on a TCP, UDP or SCTP record is left for readers to derive
/// (a byte a record before compression); an id that is not the tuple's, or one of another
/// protocol, travels as text; all come back exactly, and the collector's check passes them.
#[test]
fn a_derivable_flow_id_costs_a_byte_and_comes_back() {
    let tuple = |i: u64, proto: u32| pb::FlowRecord {
        src_addr: Bytes::from_static(&[10, 0, 0, 5]),
        dst_addr: Bytes::copy_from_slice(&[10, 1, 0, i as u8]),
        src_port: if proto == 1 { 0 } else { 40_000 + i as u32 },
        dst_port: if proto == 1 { 8 << 8 } else { 443 },
        ip_protocol: proto,
        ..Default::default()
    };
    let without: Vec<pb::FlowRecord> = (0..100).map(|i| tuple(i, 6)).collect();
    let stamped: Vec<pb::FlowRecord> = without
        .iter()
        .cloned()
        .map(|mut r| {
            crate::community_id::stamp(&mut r);
            r
        })
        .collect();
    assert!(stamped.iter().all(|r| r.community_id.len() == 30));
    let extra = encode(&stamped, None).len() - encode(&without, None).len();
    // A byte a record, and the present bitmask's varint grows to reach column 27.
    assert!((100..=104).contains(&extra), "{extra} bytes for 100 derived ids");
    assert_eq!(decode(&encode(&stamped, None), 1_000, 1 << 20).unwrap(), stamped);

    // Not derivable: an id of another seed, an ICMP echo's id, and none at all.
    let mut mixed = stamped.clone();
    mixed[0].community_id = "1:somebody-elses-id".into();
    mixed[1] = tuple(1, 1);
    crate::community_id::stamp(&mut mixed[1]);
    assert!(!mixed[1].community_id.is_empty(), "ICMP echo has an id");
    mixed[2].community_id.clear();
    let block = encode(&mixed, Some(1));
    assert_eq!(decode(&block, 1_000, 1 << 20).unwrap(), mixed);
    assert_eq!(check(&block, &limits()), Ok(100));
}

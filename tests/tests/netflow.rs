//! The meter's NetFlow source against datagrams built by the test's own exporter
//! (`ringflow_tests::exporter`) from known flow lists: NetFlow v5, v9 (data before its template,
//! a template redefined, sampling from options data) and IPFIX (biflows, absolute times, uptime
//! times counted from the init time announced in options data).
//! First the decoder alone, field by field; then the whole path, UDP listener to the collector's
//! store, with truncated and garbage datagrams between the good ones.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ringflow_meter::config::NetflowConfig;
use ringflow_meter::source::netflow::decode::{Decoder, DropReason};
use ringflow_proto::pb;
use ringflow_tests::exporter::{self, Clock, Flow, Set};
use ringflow_tests::{TestBed, start_meter, wait_for_meter};

const EXPORTER: &str = "192.0.2.200:40000";

fn now_ms() -> u64 {
    ringflow_meter::unix_nanos_now() / 1_000_000
}

fn decoder() -> Decoder {
    Decoder::new(&NetflowConfig::default()).expect("the default NetFlow config is valid")
}

fn addr(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Checks `record` against `flow` field by field (times to the nanosecond), and that it carries
/// the flow's Community ID.
fn assert_matches(record: &pb::FlowRecord, flow: &Flow, kind: pb::SourceKind, sampling: u32) {
    let mut want = pb::FlowRecord {
        start_unix_nanos: flow.start_ms * 1_000_000,
        end_unix_nanos: flow.end_ms * 1_000_000,
        src_addr: addr(flow.src).into(),
        dst_addr: addr(flow.dst).into(),
        src_port: flow.src_port.into(),
        dst_port: flow.dst_port.into(),
        ip_protocol: flow.protocol.into(),
        ip_bytes_from_src: flow.bytes,
        packets_from_src: flow.packets,
        ip_bytes_from_dst: flow.reverse_bytes,
        packets_from_dst: flow.reverse_packets,
        source: kind as i32,
        exporter_addr: addr(record_exporter(record)).into(),
        sampling_rate: sampling,
        ..Default::default()
    };
    ringflow_proto::community_id::stamp(&mut want);
    assert!(want.community_id.starts_with("1:"), "{want:?}");
    assert_eq!(record, &want);
}

fn record_exporter(r: &pb::FlowRecord) -> IpAddr {
    match r.exporter_addr.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(r.exporter_addr.as_ref()).expect("4 bytes")),
        _ => IpAddr::from(<[u8; 16]>::try_from(r.exporter_addr.as_ref()).expect("an IPv6 exporter")),
    }
}

#[test]
fn v5_records_match_the_flows_field_by_field() {
    let now = now_ms();
    let clock = Clock::at(now);
    let flows: Vec<Flow> = (0..30)
        .map(|i| Flow::numbered(i, false, clock.export_ms))
        .collect();
    let mut d = decoder();
    let out = d.decode(
        EXPORTER.parse().unwrap(),
        &exporter::v5(&flows, clock, 1, 100),
        now * 1_000_000,
    );
    assert_eq!(out.dropped, None);
    assert_eq!(out.records.len(), 30);
    for (r, f) in out.records.iter().zip(&flows) {
        assert_matches(r, f, pb::SourceKind::NetflowV5, 100);
        assert_eq!(record_exporter(r), "192.0.2.200".parse::<IpAddr>().unwrap());
    }
}

#[test]
fn v9_data_before_its_template_a_template_refresh_and_sampling_from_options() {
    let clock = Clock::at(now_ms());
    let from: SocketAddr = EXPORTER.parse().unwrap();
    let a: Vec<Flow> = (0..12)
        .map(|i| Flow::numbered(i, false, clock.export_ms))
        .collect();
    let b: Vec<Flow> = (100..110)
        .map(|i| Flow::numbered(i, true, clock.export_ms))
        .collect();
    let data_a = |flows| Set::Data {
        id: 256,
        layout: exporter::V9_LAYOUT_A,
        flows,
        sampling: 10,
    };
    let mut d = decoder();
    let now = clock.export_ms * 1_000_000;

    // Data first: held until the template arrives.
    let early = d.decode(from, &exporter::v9(&[data_a(&a[..6])], clock, 1, 7), now);
    assert_eq!((early.records.len(), early.dropped), (0, None));
    let template = Set::Template {
        id: 256,
        layout: exporter::V9_LAYOUT_A,
    };
    let with_template = d.decode(from, &exporter::v9(&[template], clock, 2, 7), now);
    assert_eq!(
        with_template.records.len(),
        6,
        "the held data decoded when its template came"
    );
    let more = d.decode(from, &exporter::v9(&[data_a(&a[6..])], clock, 3, 7), now);
    let all_a: Vec<_> = with_template.records.iter().chain(&more.records).collect();
    assert_eq!(all_a.len(), 12);
    for (r, f) in all_a.iter().zip(&a) {
        assert_matches(r, f, pb::SourceKind::NetflowV9, 10);
    }

    // The same template id redefined (IPv6, other order and widths), with the sampling rate
    // announced in options data instead of per record.
    let refresh = exporter::v9(
        &[
            Set::Template {
                id: 256,
                layout: exporter::V9_LAYOUT_B,
            },
            Set::SamplingOptions {
                id: 257,
                interval: 64,
            },
            Set::Data {
                id: 256,
                layout: exporter::V9_LAYOUT_B,
                flows: &b,
                sampling: 0,
            },
        ],
        clock,
        4,
        7,
    );
    let out = d.decode(from, &refresh, now);
    assert_eq!(out.dropped, None);
    assert_eq!(out.records.len(), b.len());
    for (r, f) in out.records.iter().zip(&b) {
        assert_matches(r, f, pb::SourceKind::NetflowV9, 64);
    }

    // Another source id on the same address has its own templates: this data waits.
    let other = d.decode(from, &exporter::v9(&[data_a(&a[..1])], clock, 1, 8), now);
    assert_eq!(other.records.len(), 0);
}

#[test]
fn ipfix_biflows_with_absolute_times() {
    let clock = Clock::at(now_ms());
    let mut flows: Vec<Flow> = (0..20)
        .map(|i| Flow::numbered(i, false, clock.export_ms))
        .collect();
    for (i, f) in flows.iter_mut().enumerate() {
        f.reverse_bytes = 5_000 + i as u64;
        f.reverse_packets = 7 + i as u64;
    }
    let message = exporter::ipfix(
        &[
            Set::Template {
                id: 300,
                layout: exporter::IPFIX_LAYOUT,
            },
            Set::Data {
                id: 300,
                layout: exporter::IPFIX_LAYOUT,
                flows: &flows,
                sampling: 0,
            },
        ],
        clock,
        1,
        42,
    );
    let out = decoder().decode(EXPORTER.parse().unwrap(), &message, 0);
    assert_eq!(out.dropped, None);
    assert_eq!(out.records.len(), 20);
    for (r, f) in out.records.iter().zip(&flows) {
        assert_matches(r, f, pb::SourceKind::Ipfix, 0);
    }
}

/// softflowd's IPFIX: flowStartSysUpTime / flowEndSysUpTime (IEs 22/21) with the exporter's
/// init time (IE 160) in options data. The exporter started at a time with milliseconds
/// (uptime 3,600,123 ms at a whole export second), so export-time stamping cannot pass.
fn uptime_clock() -> Clock {
    Clock {
        uptime_ms: 3_600_123,
        ..Clock::at(now_ms())
    }
}

/// The IPFIX template of the uptime-relative layout (id 256).
fn uptime_template() -> Set<'static> {
    Set::Template {
        id: 256,
        layout: exporter::IPFIX_UPTIME_LAYOUT,
    }
}

/// Data records of the uptime-relative template.
fn uptime_data(flows: &[Flow]) -> Set<'_> {
    Set::Data {
        id: 256,
        layout: exporter::IPFIX_UPTIME_LAYOUT,
        flows,
        sampling: 0,
    }
}

/// The options record announcing the exporter's init time for observation domain `domain`.
fn uptime_init(clock: Clock, domain: u32) -> Set<'static> {
    Set::InitTimeOptions {
        id: 257,
        domain,
        init_ms: clock.init_ms(),
    }
}

/// Flows of 1.7 s each, ending `i` ms apart, over the last minutes.
fn uptime_flows(range: std::ops::Range<u32>, clock: Clock) -> Vec<Flow> {
    range
        .map(|i| {
            let mut f = Flow::numbered(i, false, clock.export_ms);
            f.end_ms = clock.export_ms - 120_000 + u64::from(i) * 1_013;
            f.start_ms = f.end_ms - 1_700;
            f
        })
        .collect()
}

#[test]
fn ipfix_uptime_times_count_from_the_announced_init_time() {
    let clock = uptime_clock();
    let from: SocketAddr = EXPORTER.parse().unwrap();
    let now = clock.export_ms * 1_000_000;
    let (template, data, init) = (uptime_template(), uptime_data, |domain| {
        uptime_init(clock, domain)
    });
    let flows = uptime_flows(0..30, clock);
    let mut d = decoder();

    // As softflowd starts: options, template and data in one message.
    let first = exporter::ipfix(&[init(5), template.clone(), data(&flows[..10])], clock, 1, 5);
    let out = d.decode(from, &first, now);
    assert_eq!((out.records.len(), out.dropped), (10, None));
    for (r, f) in out.records.iter().zip(&flows) {
        assert_matches(r, f, pb::SourceKind::Ipfix, 0);
    }

    // Another observation domain of the same exporter has its own init time: its data waits
    // for it, then is released to the millisecond.
    let early = exporter::ipfix(&[template.clone(), data(&flows[10..20])], clock, 1, 6);
    let out = d.decode(from, &early, now);
    assert_eq!(
        (out.records.len(), d.waiting()),
        (0, 10),
        "held for the init time"
    );
    let out = d.decode(from, &exporter::ipfix(&[init(6)], clock, 2, 6), now);
    assert_eq!((out.records.len(), d.waiting()), (10, 0));
    for (r, f) in out.records.iter().zip(&flows[10..20]) {
        assert_matches(r, f, pb::SourceKind::Ipfix, 0);
    }
    assert_eq!(d.take_export_timed(), 0);

    // A domain whose init time never comes: after 60 s its records take the export time,
    // counted, and later ones take it at once.
    let orphan = exporter::ipfix(&[template, data(&flows[20..25])], clock, 1, 7);
    assert!(d.decode(from, &orphan, now).records.is_empty());
    assert!(d.expire(now + 59_000_000_000).is_empty());
    let expired = d.expire(now + 60_000_000_000);
    assert_eq!(expired.len(), 5);
    let export = clock.export_ms * 1_000_000;
    assert!(
        expired
            .iter()
            .all(|r| (r.start_unix_nanos, r.end_unix_nanos) == (export, export))
    );
    let later = exporter::ipfix(&[data(&flows[25..])], clock, 2, 7);
    assert_eq!(d.decode(from, &later, now).records.len(), 5, "no more waiting");
    assert_eq!(d.take_export_timed(), 10);
}

#[test]
fn truncated_garbage_and_foreign_datagrams_are_dropped_by_reason() {
    let clock = Clock::at(now_ms());
    let flows: Vec<Flow> = (0..5)
        .map(|i| Flow::numbered(i, false, clock.export_ms))
        .collect();
    let from: SocketAddr = EXPORTER.parse().unwrap();
    let mut d = decoder();
    let v5 = exporter::v5(&flows, clock, 1, 0);
    let cut = d.decode(from, &v5[..v5.len() - 20], 0);
    assert_eq!((cut.records.len(), cut.dropped), (0, Some(DropReason::Truncated)));
    let foreign = d.decode(from, &[0, 42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], 0);
    assert_eq!(foreign.dropped, Some(DropReason::UnsupportedVersion));
    let mut garbage = exporter::ipfix(&[], clock, 1, 1);
    garbage.extend_from_slice(&[0xff; 40]);
    let len = garbage.len() as u16;
    garbage[2..4].copy_from_slice(&len.to_be_bytes());
    assert!(d.decode(from, &garbage, 0).dropped.is_some());
    for n in 0..v5.len() {
        // No prefix of a datagram panics or yields records.
        assert!(d.decode(from, &v5[..n], 0).records.is_empty() || n == v5.len());
    }
    assert_eq!(
        d.decode(from, &v5, 0).records.len(),
        5,
        "good datagrams still decode"
    );
}

/// A collector, and a meter whose NetFlow listener is on a free loopback port; returns them with
/// the listener's address and a UDP socket to export from.
async fn netflow_meter(
    bed: &TestBed,
) -> anyhow::Result<(
    ringflow_tests::RunningCollector,
    ringflow_meter::Meter,
    std::net::SocketAddr,
    tokio::net::UdpSocket,
)> {
    let collector = bed.start_collector("c1", "").await?;
    let mut config = bed.meter_config("nf", &[collector.addr]);
    config.sources.netflow.enabled = true;
    config.sources.netflow.listen = "127.0.0.1:0".parse()?;
    let meter = start_meter(config).await?;
    let target = meter.netflow_addr().expect("the netflow listener is bound");
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    Ok((collector, meter, target, socket))
}

/// The whole path: datagrams over loopback UDP to a running meter, records stored by a
/// collector, bad datagrams counted and the good ones around them delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_flows_arrive_in_the_collector_store_and_bad_datagrams_are_counted() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let (collector, meter, target, socket) = netflow_meter(&bed).await?;

    let clock = Clock::at(now_ms());
    let v5_flows: Vec<Flow> = (0..30)
        .map(|i| Flow::numbered(i, false, clock.export_ms))
        .collect();
    let v9_flows: Vec<Flow> = (30..50)
        .map(|i| Flow::numbered(i, false, clock.export_ms))
        .collect();
    let ipfix_flows: Vec<Flow> = (50..60)
        .map(|i| Flow::numbered(i, true, clock.export_ms))
        .collect();
    let v5 = exporter::v5(&v5_flows, clock, 1, 0);
    let v9 = exporter::v9(
        &[
            Set::Template {
                id: 260,
                layout: exporter::V9_LAYOUT_A,
            },
            Set::Data {
                id: 260,
                layout: exporter::V9_LAYOUT_A,
                flows: &v9_flows,
                sampling: 0,
            },
        ],
        clock,
        1,
        0,
    );
    const IPFIX_V6: exporter::Layout = &[
        (exporter::ie::SRC_V6, 16),
        (exporter::ie::DST_V6, 16),
        (exporter::ie::SRC_PORT, 2),
        (exporter::ie::DST_PORT, 2),
        (exporter::ie::PROTOCOL, 1),
        (exporter::ie::OCTETS, 8),
        (exporter::ie::PACKETS, 8),
        (exporter::ie::START_MS, 8),
        (exporter::ie::END_MS, 8),
    ];
    let ipfix = exporter::ipfix(
        &[
            Set::Template {
                id: 400,
                layout: IPFIX_V6,
            },
            Set::Data {
                id: 400,
                layout: IPFIX_V6,
                flows: &ipfix_flows,
                sampling: 0,
            },
        ],
        clock,
        1,
        9,
    );
    let datagrams: Vec<Vec<u8>> = vec![
        v5[..v5.len() - 7].to_vec(),
        v5.clone(),
        b"definitely not netflow".to_vec(),
        v9,
        vec![0, 9, 0],
        ipfix,
    ];
    for d in &datagrams {
        socket.send_to(d, target).await?;
    }
    let metrics = meter.metrics();
    wait_for_meter(&metrics, Duration::from_secs(20), "60 records acked", |m| {
        m.delivery.records_acked.get() >= 60
    })
    .await?;
    let errors = metrics.encode();
    assert!(
        errors.contains(r#"ringflow_meter_source_errors_total{source="netflow",reason="truncated"} 2"#),
        "{errors}"
    );
    assert!(
        errors.contains(
            r#"ringflow_meter_source_errors_total{source="netflow",reason="unsupported_version"} 1"#
        ),
        "{errors}"
    );
    assert!(
        errors.contains(r#"ringflow_meter_source_packets_total{source="netflow"} 6"#),
        "{errors}"
    );
    meter.stop().await?;
    let stored = collector.stored()?;
    collector.stop().await;
    let mut records: Vec<pb::FlowRecord> = stored.into_iter().flat_map(|b| b.records).collect();
    assert_eq!(records.len(), 60);
    records.sort_by_key(|r| r.src_port);
    let expected = v5_flows
        .iter()
        .map(|f| (f, pb::SourceKind::NetflowV5))
        .chain(v9_flows.iter().map(|f| (f, pb::SourceKind::NetflowV9)))
        .chain(ipfix_flows.iter().map(|f| (f, pb::SourceKind::Ipfix)));
    for (r, (f, kind)) in records.iter().zip(expected) {
        assert_matches(r, f, kind, 0);
        assert_eq!(record_exporter(r), "127.0.0.1".parse::<IpAddr>().unwrap());
    }
    Ok(())
}

/// softflowd's IPFIX over loopback UDP to a running meter: the stored records start and end
/// right to the millisecond, from the uptime times and the announced init time, whether the
/// options come before the data (in the same message) or after it (in a later one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipfix_uptime_times_are_stored_to_the_millisecond() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let (collector, meter, target, socket) = netflow_meter(&bed).await?;

    let clock = uptime_clock();
    let flows = uptime_flows(0..40, clock);
    let (template, data, init) = (uptime_template(), uptime_data, |domain| {
        uptime_init(clock, domain)
    });
    let datagrams = [
        exporter::ipfix(&[init(1), template.clone(), data(&flows[..20])], clock, 1, 1),
        exporter::ipfix(&[template, data(&flows[20..])], clock, 1, 2),
        exporter::ipfix(&[init(2)], clock, 2, 2),
    ];
    for d in &datagrams {
        socket.send_to(d, target).await?;
    }
    let metrics = meter.metrics();
    wait_for_meter(&metrics, Duration::from_secs(20), "40 records acked", |m| {
        m.delivery.records_acked.get() >= 40
    })
    .await?;
    let text = metrics.encode();
    assert!(!text.contains("no_init_time"), "{text}");
    meter.stop().await?;
    let stored = collector.stored()?;
    collector.stop().await;
    let mut records: Vec<pb::FlowRecord> = stored.into_iter().flat_map(|b| b.records).collect();
    assert_eq!(records.len(), 40);
    records.sort_by_key(|r| r.src_port);
    for (r, f) in records.iter().zip(&flows) {
        assert_eq!(r.start_unix_nanos, f.start_ms * 1_000_000, "{f:?}");
        assert_eq!(r.end_unix_nanos, f.end_ms * 1_000_000, "{f:?}");
        assert_eq!(r.end_unix_nanos - r.start_unix_nanos, 1_700_000_000);
        assert_matches(r, f, pb::SourceKind::Ipfix, 0);
    }
    Ok(())
}

//! Writes the seed corpora of the fuzz targets to fuzz/seeds/<target>/: well-formed examples of
//! every input kind (and a few characteristic bad ones), so fuzzing starts from deep inside the
//! parsers instead of having to discover the formats. Run it again after a schema or format
//! change (`fuzz/run.sh seeds`); the files are checked in.
//!
//! NetFlow datagrams come from the independent test exporter of the test bed
//! (tests/src/exporter.rs, included by path: it needs only std), so they are built from the RFCs,
//! not by the parser under test.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;
use ringflow_proto::pb;

#[allow(dead_code)]
#[path = "../../tests/src/exporter.rs"]
mod exporter;

use exporter::{Clock, Flow, Layout, Set, ie};

/// 2026-11-22T00:00:00Z, in Unix milliseconds.
const NOW_MS: u64 = 1_795_305_600_000;
const NOW_NANOS: u64 = NOW_MS * 1_000_000;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let mut out = Seeds::default();
    proto_messages(&mut out);
    frame_codec(&mut out);
    collector_ingest(&mut out);
    columns(&mut out);
    netflow(&mut out);
    configs(&mut out);
    for (target, name, bytes) in &out.0 {
        let dir = root.join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(name), bytes)?;
    }
    println!("wrote {} seeds under {}", out.0.len(), root.display());
    for (target, name, bytes) in &out.0 {
        println!("{target}/{name}: {}", describe(target, bytes));
    }
    Ok(())
}

/// What a seed does in its target, to check that it does what its name says.
fn describe(target: &str, bytes: &[u8]) -> String {
    match target {
        "meter_config" => match ringflow_meter::config::Config::parse(&String::from_utf8_lossy(bytes)) {
            Ok(_) => "valid".into(),
            Err(e) => format!("INVALID: {e}"),
        },
        "collector_config" => {
            match ringflow_collector::config::Config::parse(&String::from_utf8_lossy(bytes)) {
                Ok(_) => "valid".into(),
                Err(e) => format!("INVALID: {e}"),
            }
        }
        "collector_ingest" => {
            let limits = ringflow_collector::data::ingest::DataLimits {
                max_frame_bytes: 1 << 20,
                max_records_per_batch: [0, 1, 2, 3, 8, 100, 10_000, usize::MAX][usize::from(bytes[0] & 7)],
                max_unacked_batches: 32,
                max_field_bytes: [0, 1, 4, 15, 16, 64, 4096, usize::MAX][usize::from((bytes[0] >> 3) & 7)],
            };
            let last = if bytes[1] < 240 {
                u64::from(bytes[1])
            } else {
                u64::MAX - u64::from(255 - bytes[1])
            };
            let verdict = ringflow_collector::data::ingest::judge_frame(
                Bytes::copy_from_slice(&bytes[2..]),
                last,
                &limits,
            );
            match verdict {
                ringflow_collector::data::ingest::Verdict::Accept { records, .. } => {
                    format!("accept {records} records")
                }
                other => format!("{other:?}"),
            }
        }
        "columns" => {
            let limits = ringflow_collector::data::ingest::DataLimits {
                max_frame_bytes: 1 << 16,
                max_records_per_batch: [0, 1, 2, 3, 8, 100, 1_000, 10_000][usize::from(bytes[0] & 7)],
                max_unacked_batches: 32,
                max_field_bytes: 64,
            };
            match ringflow_proto::columns::check(&bytes[1..], &limits.columns()) {
                Ok(n) => format!("checks: {n} records"),
                Err(e) => format!("refused {:?}: {e}", e.reason),
            }
        }
        "netflow" => {
            let config = ringflow_meter::config::NetflowConfig {
                enabled: true,
                max_exporters: 1 + usize::from(bytes[0] & 1),
                max_templates: 1 + usize::from((bytes[0] >> 1) & 3),
                max_pending_sets: usize::from((bytes[0] >> 3) & 3),
                ..Default::default()
            };
            let Ok(mut d) = ringflow_meter::source::netflow::decode::Decoder::new(&config) else {
                return "decoder refused its config".into();
            };
            let mut rest = &bytes[1..];
            let mut parts = Vec::new();
            while let Some((&[from, hi, lo], tail)) = rest.split_first_chunk::<3>() {
                let len = usize::from(u16::from_be_bytes([hi, lo])).min(tail.len());
                let from = std::net::SocketAddr::from(([192, 0, 2, 1 + (from & 3)], 2055));
                let got = d.decode(from, &tail[..len], NOW_NANOS);
                parts.push(match got.dropped {
                    Some(reason) => format!("dropped {}", reason.label()),
                    None => format!("{} records", got.records.len()),
                });
                rest = &tail[len..];
            }
            parts.join(", ")
        }
        _ => format!("{} bytes", bytes.len()),
    }
}

#[derive(Default)]
struct Seeds(Vec<(&'static str, String, Vec<u8>)>);

impl Seeds {
    fn add(&mut self, target: &'static str, name: &str, bytes: impl Into<Vec<u8>>) {
        self.0.push((target, name.to_owned(), bytes.into()));
    }
}

// ---------------------------------------------------------------------------------------------
// Protocol messages
// ---------------------------------------------------------------------------------------------

fn addr(ip: IpAddr) -> Bytes {
    match ip {
        IpAddr::V4(v4) => Bytes::copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => Bytes::copy_from_slice(&v6.octets()),
    }
}

/// A record with every field set; IPv6 addresses when `v6`.
fn record(i: u32, v6: bool) -> pb::FlowRecord {
    let f = Flow::numbered(i, v6, NOW_MS);
    pb::FlowRecord {
        start_unix_nanos: f.start_ms * 1_000_000,
        end_unix_nanos: f.end_ms * 1_000_000,
        src_addr: addr(f.src),
        dst_addr: addr(f.dst),
        src_port: f.src_port.into(),
        dst_port: f.dst_port.into(),
        ip_protocol: f.protocol.into(),
        bytes_from_src: f.bytes,
        packets_from_src: f.packets,
        bytes_from_dst: f.bytes / 3,
        packets_from_dst: f.packets / 2,
        source: pb::SourceKind::Socket as i32,
        rtt_micros: 1_200 + i,
        interface: "eth0".into(),
        exporter_addr: addr(IpAddr::from([198, 51, 100, 1])),
        sampling_rate: 100,
        server: pb::ServerSide::Dst as i32,
        tx_errors: 1,
        rx_errors: 2,
        tx_drops: 3,
        rx_drops: 4,
        pid: 4_242 + i,
        process_name: "nginx".into(),
        cgroup: "/system.slice/nginx.service".into(),
        container_id: String::new(),
        pod_uid: String::new(),
        systemd_unit: "nginx.service".into(),
        community_id: "1:LQU9qZlK+B5F3KDmev6m5PMibrg=".into(),
        ip_bytes_from_src: f.bytes + 40 * f.packets,
        ip_bytes_from_dst: f.bytes / 3 + 20 * f.packets,
    }
}

fn batch(seq: u64, records: Vec<pb::FlowRecord>) -> pb::DataUp {
    pb::DataUp {
        msg: Some(pb::data_up::Msg::Batch(pb::FlowBatch {
            columns: Default::default(),
            seq,
            records,
            created_unix_nanos: NOW_NANOS,
            loss: None,
        })),
    }
}

fn fleet() -> Vec<pb::FleetMember> {
    (1..=3)
        .map(|i| pb::FleetMember {
            collector_id: format!("collector-{i}"),
            address: format!("collector-{i}.example.net:4433"),
            not_answering: i == 3,
        })
        .collect()
}

fn control(msg: pb::control_frame::Msg) -> pb::ControlFrame {
    pb::ControlFrame { msg: Some(msg) }
}

fn hello() -> pb::Hello {
    pb::Hello {
        columns: true,
        protocol_version: ringflow_proto::PROTOCOL_VERSION,
        meter_id: "web-01".into(),
        org_id: "acme".into(),
        org_token: "rft_0123456789abcdef".into(),
        software_version: "0.1.0".into(),
        last_acked_seq: 41,
    }
}

fn limits() -> pb::Limits {
    pb::Limits {
        max_frame_bytes: 1 << 20,
        max_records_per_batch: 10_000,
        max_unacked_batches: 32,
        batch_hint_records: 1_000,
        batch_hint_max_age_ms: 1_000,
        heartbeat_interval_ms: 10_000,
    }
}

fn welcome() -> pb::Welcome {
    pb::Welcome {
        columns: true,
        columns_zstd_level: 3,
        session_id: "0123456789abcdef".into(),
        collector_id: "collector-1".into(),
        limits: Some(limits()),
        fleet: fleet(),
    }
}

fn reject() -> pb::Reject {
    pb::Reject {
        reason: pb::RejectReason::Overloaded as i32,
        retry_after_ms: 2_500,
        message: "over the session budget".into(),
        fleet: fleet(),
    }
}

fn drain() -> pb::Drain {
    pb::Drain {
        reconnect_within_ms: 10_000,
        reason: "shutting down".into(),
    }
}

fn heartbeat() -> pb::Heartbeat {
    pb::Heartbeat {
        sent_unix_nanos: NOW_NANOS,
    }
}

fn nack() -> pb::Nack {
    pb::Nack {
        seq: 7,
        reason: pb::NackReason::InvalidRecord as i32,
        message: "record 0: port above 65535".into(),
    }
}

fn stored() -> pb::StoredBatch {
    pb::StoredBatch {
        columns: Default::default(),
        org_id: "acme".into(),
        meter_id: "web-01".into(),
        seq: 42,
        received_unix_nanos: NOW_NANOS,
        collector_id: "collector-1".into(),
        session_id: "0123456789abcdef".into(),
        records: vec![record(1, false), record(2, true)],
        loss: None,
    }
}

fn proto_messages(out: &mut Seeds) {
    let t = "proto_messages";
    out.add(
        t,
        "control_hello",
        control(pb::control_frame::Msg::Hello(hello())).encode_to_vec(),
    );
    out.add(
        t,
        "control_welcome",
        control(pb::control_frame::Msg::Welcome(welcome())).encode_to_vec(),
    );
    out.add(
        t,
        "control_reject",
        control(pb::control_frame::Msg::Reject(reject())).encode_to_vec(),
    );
    out.add(
        t,
        "control_drain",
        control(pb::control_frame::Msg::Drain(drain())).encode_to_vec(),
    );
    out.add(
        t,
        "control_heartbeat",
        control(pb::control_frame::Msg::Heartbeat(heartbeat())).encode_to_vec(),
    );
    out.add(t, "hello", hello().encode_to_vec());
    out.add(t, "limits", limits().encode_to_vec());
    out.add(t, "welcome", welcome().encode_to_vec());
    out.add(t, "reject", reject().encode_to_vec());
    out.add(t, "drain", drain().encode_to_vec());
    out.add(
        t,
        "data_up_batch",
        batch(42, vec![record(1, false), record(2, true)]).encode_to_vec(),
    );
    let ack = pb::DataDown {
        msg: Some(pb::data_down::Msg::Ack(pb::Ack { up_to_seq: 42 })),
    };
    out.add(t, "data_down_ack", ack.encode_to_vec());
    let nack_down = pb::DataDown {
        msg: Some(pb::data_down::Msg::Nack(nack())),
    };
    out.add(t, "data_down_nack", nack_down.encode_to_vec());
    out.add(t, "flow_record_v4", record(3, false).encode_to_vec());
    out.add(t, "flow_record_v6", record(4, true).encode_to_vec());
    out.add(t, "stored_batch", stored().encode_to_vec());
    // Negative enum values take ten bytes on the wire.
    let mut negative = nack();
    negative.reason = -1;
    out.add(t, "nack_negative_reason", negative.encode_to_vec());
}

// ---------------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------------

fn framed(msgs: &[Vec<u8>]) -> Vec<u8> {
    let mut v = Vec::new();
    for m in msgs {
        v.extend_from_slice(&(m.len() as u32).to_be_bytes());
        v.extend_from_slice(m);
    }
    v
}

/// A frame_codec input: limit, chunk sizes (each is one less than the chunk), stream.
fn codec_input(limit: u16, chunks: &[u8], stream: &[u8]) -> Vec<u8> {
    let mut v = limit.to_be_bytes().to_vec();
    v.push(chunks.len() as u8);
    v.extend_from_slice(chunks);
    v.extend_from_slice(stream);
    v
}

fn frame_codec(out: &mut Seeds) {
    let t = "frame_codec";
    let data = framed(&[
        batch(1, vec![record(1, false)]).encode_to_vec(),
        batch(2, vec![record(2, true), record(3, false)]).encode_to_vec(),
        Vec::new(),
        batch(3, Vec::new()).encode_to_vec(),
    ]);
    out.add(t, "data_up_whole", codec_input(4095, &[], &data));
    out.add(t, "data_up_bytewise", codec_input(4095, &[0], &data));
    out.add(
        t,
        "data_up_chunks",
        codec_input(4095, &[2, 10, 99, 0, 200], &data),
    );
    let down = framed(&[
        pb::DataDown {
            msg: Some(pb::data_down::Msg::Ack(pb::Ack { up_to_seq: 3 })),
        }
        .encode_to_vec(),
        pb::DataDown {
            msg: Some(pb::data_down::Msg::Nack(nack())),
        }
        .encode_to_vec(),
    ]);
    out.add(t, "data_down", codec_input(1024, &[3, 7], &down));
    let ctl = framed(&[
        control(pb::control_frame::Msg::Hello(hello())).encode_to_vec(),
        control(pb::control_frame::Msg::Welcome(welcome())).encode_to_vec(),
        control(pb::control_frame::Msg::Reject(reject())).encode_to_vec(),
        control(pb::control_frame::Msg::Drain(drain())).encode_to_vec(),
        control(pb::control_frame::Msg::Heartbeat(heartbeat())).encode_to_vec(),
    ]);
    out.add(t, "control", codec_input(2048, &[15], &ctl));
    // A frame over the limit after a good one, and a stream cut inside a frame.
    let big = framed(&[hello().encode_to_vec(), vec![0; 300]]);
    out.add(t, "too_large", codec_input(200, &[5], &big));
    let mut cut = framed(&[drain().encode_to_vec(), welcome().encode_to_vec()]);
    cut.truncate(cut.len() - 9);
    out.add(t, "truncated", codec_input(4095, &[], &cut));
    out.add(
        t,
        "truncated_prefix",
        codec_input(100, &[1], &[0, 0, 0, 4, 1, 2, 3, 4, 0, 0]),
    );
}

// ---------------------------------------------------------------------------------------------
// Collector ingest
// ---------------------------------------------------------------------------------------------

/// A collector_ingest input: limits byte, last-seq byte, body. Limits byte 0b101_110: 10 000
/// records, 64-byte fields.
fn ingest_input(limits: u8, last_seq: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![limits, last_seq];
    v.extend_from_slice(body);
    v
}

/// Blocks of the columnar form: the input is a limit byte (6: 1,000 records) and the block.
fn columns(out: &mut Seeds) {
    let t = "columns";
    let records: Vec<pb::FlowRecord> = (0..6).map(|i| record(i, i % 2 == 1)).collect();
    let input = |block: Vec<u8>| [vec![6u8], block].concat();
    out.add(t, "plain", input(ringflow_proto::columns::encode(&records, None)));
    out.add(
        t,
        "zstd",
        input(ringflow_proto::columns::encode(&records, Some(3))),
    );
    out.add(t, "empty", input(ringflow_proto::columns::encode(&[], None)));
    out.add(
        t,
        "too_many_records",
        [vec![2u8], ringflow_proto::columns::encode(&records, None)].concat(),
    );
    let mut bad_addr = record(1, false);
    bad_addr.dst_addr = Bytes::from_static(&[1, 2, 3]);
    out.add(
        t,
        "invalid_address",
        input(ringflow_proto::columns::encode(&[bad_addr], None)),
    );
}

fn collector_ingest(out: &mut Seeds) {
    let t = "collector_ingest";
    const LIMITS: u8 = 0b101_110;
    let good = batch(5, (0..4).map(|i| record(i, i % 2 == 1)).collect()).encode_to_vec();
    out.add(t, "accept", ingest_input(LIMITS, 4, &good));
    let columnar = pb::DataUp {
        msg: Some(pb::data_up::Msg::Batch(pb::FlowBatch {
            seq: 5,
            columns: ringflow_proto::columns::encode(
                &(0..4).map(|i| record(i, i % 2 == 1)).collect::<Vec<_>>(),
                Some(3),
            )
            .into(),
            ..Default::default()
        })),
    }
    .encode_to_vec();
    out.add(t, "accept_columns", ingest_input(LIMITS, 4, &columnar));
    out.add(t, "seq_repeated", ingest_input(LIMITS, 5, &good));
    out.add(t, "too_many_records", ingest_input(0b101_010, 0, &good));
    let mut long_name = record(1, false);
    long_name.interface = "x".repeat(70);
    out.add(
        t,
        "field_too_long",
        ingest_input(LIMITS, 0, &batch(9, vec![long_name]).encode_to_vec()),
    );
    let mut bad_addr = record(1, false);
    bad_addr.dst_addr = Bytes::from_static(&[1, 2, 3]);
    out.add(
        t,
        "invalid_address",
        ingest_input(LIMITS, 0, &batch(9, vec![bad_addr]).encode_to_vec()),
    );
    let mut bad_port = record(1, false);
    bad_port.src_port = 70_000;
    bad_port.ip_protocol = 300;
    out.add(
        t,
        "invalid_port",
        ingest_input(LIMITS, 0, &batch(9, vec![bad_port]).encode_to_vec()),
    );
    let mut backwards = record(1, false);
    backwards.end_unix_nanos = backwards.start_unix_nanos - 1;
    out.add(
        t,
        "ends_before_start",
        ingest_input(LIMITS, 0, &batch(9, vec![backwards]).encode_to_vec()),
    );
    // seq 9, then a record whose bytes do not decode (a string that is not UTF-8).
    let undecodable = [0x0a, 0x09, 0x08, 0x09, 0x12, 0x05, 0x72, 0x03, 0xff, 0xfe, 0xfd];
    out.add(t, "undecodable_records", ingest_input(LIMITS, 0, &undecodable));
    out.add(t, "no_batch", ingest_input(LIMITS, 0, &[]));
    out.add(
        t,
        "near_max_seq",
        ingest_input(LIMITS, 0xfe, &batch(u64::MAX, Vec::new()).encode_to_vec()),
    );
}

// ---------------------------------------------------------------------------------------------
// NetFlow / IPFIX
// ---------------------------------------------------------------------------------------------

/// IPFIX, IPv6, absolute millisecond times.
const IPFIX_V6: Layout = &[
    (ie::SRC_V6, 16),
    (ie::DST_V6, 16),
    (ie::SRC_PORT, 2),
    (ie::DST_PORT, 2),
    (ie::PROTOCOL, 1),
    (ie::OCTETS, 8),
    (ie::PACKETS, 8),
    (ie::START_MS, 8),
    (ie::END_MS, 8),
];

/// The netflow target's limits byte: exporters 1-2, templates 1-4, pending sets 0-3.
fn nf_limits(exporters: u8, templates: u8, pending: u8) -> u8 {
    (exporters - 1) | ((templates - 1) << 1) | (pending << 3)
}

/// A netflow input: limits, then (exporter, datagram) pairs.
fn nf_input(limits: u8, datagrams: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut v = vec![limits];
    for (from, d) in datagrams {
        v.push(*from);
        v.extend_from_slice(&(d.len() as u16).to_be_bytes());
        v.extend_from_slice(d);
    }
    v
}

/// An IPFIX message with an options template (set 3) scoped to the observation domain, carrying
/// samplingPacketInterval, and its data record; hand-built (the test exporter writes v9 options
/// only).
fn ipfix_sampling_options(clock: Clock, domain: u32, interval: u32) -> Vec<u8> {
    let mut p = Vec::new();
    let put16 = |p: &mut Vec<u8>, v: u16| p.extend_from_slice(&v.to_be_bytes());
    let put32 = |p: &mut Vec<u8>, v: u32| p.extend_from_slice(&v.to_be_bytes());
    put16(&mut p, 10);
    put16(&mut p, 0);
    put32(&mut p, (clock.export_ms / 1000) as u32);
    put32(&mut p, 1);
    put32(&mut p, domain);
    // Options template set: template 400, 2 fields, 1 scope field.
    for v in [3, 18, 400, 2, 1, 149, 4, 305, 4] {
        put16(&mut p, v);
    }
    // Its data set.
    put16(&mut p, 400);
    put16(&mut p, 12);
    put32(&mut p, domain);
    put32(&mut p, interval);
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p
}

fn netflow(out: &mut Seeds) {
    let t = "netflow";
    let clock = Clock::at(NOW_MS);
    let v4: Vec<Flow> = (0..8).map(|i| Flow::numbered(i, false, NOW_MS)).collect();
    let v6: Vec<Flow> = (0..4).map(|i| Flow::numbered(i, true, NOW_MS)).collect();
    let roomy = nf_limits(2, 4, 3);
    let template_a = Set::Template {
        id: 256,
        layout: exporter::V9_LAYOUT_A,
    };
    let data_a = |flows| Set::Data {
        id: 256,
        layout: exporter::V9_LAYOUT_A,
        flows,
        sampling: 10,
    };
    let template_b = Set::Template {
        id: 256,
        layout: exporter::V9_LAYOUT_B,
    };
    let data_b = |flows| Set::Data {
        id: 256,
        layout: exporter::V9_LAYOUT_B,
        flows,
        sampling: 0,
    };

    out.add(
        t,
        "v5",
        nf_input(roomy, &[(0, exporter::v5(&v4[..5], clock, 1, 100))]),
    );
    let many: Vec<Flow> = (0..30).map(|i| Flow::numbered(i, false, NOW_MS)).collect();
    out.add(
        t,
        "v5_30_flows",
        nf_input(roomy, &[(1, exporter::v5(&many, clock, 7, 0))]),
    );
    out.add(
        t,
        "v9_template_and_data",
        nf_input(
            roomy,
            &[(
                0,
                exporter::v9(&[template_a.clone(), data_a(&v4[..4])], clock, 1, 7),
            )],
        ),
    );
    out.add(
        t,
        "v9_data_before_template",
        nf_input(
            roomy,
            &[
                (0, exporter::v9(&[data_a(&v4[..3])], clock, 1, 7)),
                (0, exporter::v9(std::slice::from_ref(&template_a), clock, 2, 7)),
                (0, exporter::v9(&[data_a(&v4[3..6])], clock, 3, 7)),
            ],
        ),
    );
    out.add(
        t,
        "v9_template_redefined",
        nf_input(
            roomy,
            &[
                (
                    0,
                    exporter::v9(&[template_a.clone(), data_a(&v4[..2])], clock, 1, 7),
                ),
                (
                    0,
                    exporter::v9(&[template_b.clone(), data_b(&v6[..2])], clock, 2, 7),
                ),
            ],
        ),
    );
    out.add(
        t,
        "v9_sampling_options",
        nf_input(
            roomy,
            &[(
                2,
                exporter::v9(
                    &[
                        Set::SamplingOptions {
                            id: 257,
                            interval: 64,
                        },
                        template_b.clone(),
                        data_b(&v6),
                    ],
                    clock,
                    1,
                    3,
                ),
            )],
        ),
    );
    let mut biflows = v4[..3].to_vec();
    for (i, f) in biflows.iter_mut().enumerate() {
        f.reverse_bytes = 500 + i as u64;
        f.reverse_packets = 3;
    }
    let ipfix_template = Set::Template {
        id: 300,
        layout: exporter::IPFIX_LAYOUT,
    };
    let ipfix_data = Set::Data {
        id: 300,
        layout: exporter::IPFIX_LAYOUT,
        flows: &biflows,
        sampling: 0,
    };
    out.add(
        t,
        "ipfix_biflow",
        nf_input(
            roomy,
            &[(
                0,
                exporter::ipfix(&[ipfix_template.clone(), ipfix_data.clone()], clock, 1, 5),
            )],
        ),
    );
    out.add(
        t,
        "ipfix_v6",
        nf_input(
            roomy,
            &[(
                2,
                exporter::ipfix(
                    &[
                        Set::Template {
                            id: 301,
                            layout: IPFIX_V6,
                        },
                        Set::Data {
                            id: 301,
                            layout: IPFIX_V6,
                            flows: &v6,
                            sampling: 0,
                        },
                    ],
                    clock,
                    1,
                    5,
                ),
            )],
        ),
    );
    out.add(
        t,
        "ipfix_sampling_options",
        nf_input(
            roomy,
            &[
                (1, ipfix_sampling_options(clock, 5, 32)),
                (
                    1,
                    exporter::ipfix(&[ipfix_template.clone(), ipfix_data.clone()], clock, 2, 5),
                ),
            ],
        ),
    );
    // One exporter slot: a second exporter pushes the first out, whose data then has no template.
    out.add(
        t,
        "exporter_evicted",
        nf_input(
            nf_limits(1, 2, 1),
            &[
                (0, exporter::v9(std::slice::from_ref(&template_a), clock, 1, 7)),
                (1, exporter::v9(std::slice::from_ref(&template_a), clock, 1, 7)),
                (0, exporter::v9(&[data_a(&v4[..2])], clock, 2, 7)),
                (3, exporter::v9(&[data_a(&v4[2..4])], clock, 3, 7)),
            ],
        ),
    );
    // One template slot: a second template id pushes the first out.
    out.add(
        t,
        "template_evicted",
        nf_input(
            nf_limits(2, 1, 0),
            &[
                (
                    0,
                    exporter::ipfix(
                        &[
                            ipfix_template.clone(),
                            Set::Template {
                                id: 301,
                                layout: IPFIX_V6,
                            },
                        ],
                        clock,
                        1,
                        5,
                    ),
                ),
                (0, exporter::ipfix(std::slice::from_ref(&ipfix_data), clock, 2, 5)),
            ],
        ),
    );
    // All three versions from one exporter, and a v9 source id of its own.
    out.add(
        t,
        "mixed_versions",
        nf_input(
            roomy,
            &[
                (0, exporter::v5(&v4[..2], clock, 1, 0)),
                (
                    0,
                    exporter::v9(&[template_a.clone(), data_a(&v4[2..4])], clock, 1, 9),
                ),
                (0, exporter::ipfix(&[ipfix_template, ipfix_data], clock, 1, 9)),
            ],
        ),
    );
    // Cut short and unsupported: dropped whole.
    let mut cut = exporter::v9(&[template_a.clone(), data_a(&v4[..4])], clock, 1, 7);
    cut.truncate(cut.len() - 10);
    let mut v7 = exporter::v5(&v4[..1], clock, 1, 0);
    v7[1] = 7;
    out.add(t, "truncated_and_v7", nf_input(roomy, &[(0, cut), (1, v7)]));
}

// ---------------------------------------------------------------------------------------------
// Config files
// ---------------------------------------------------------------------------------------------

fn source(path: &str) -> String {
    let p: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// The file without comment lines and blank lines.
fn without_comments(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect()
}

const METER_MINIMAL: &str = r#"org_id = "acme"
org_token = "rft_x"
collectors = ["127.0.0.1:4433"]
ca_file = "ca.pem"
"#;

const METER_VARIANT: &str = r#"meter_id = "web-01.example:eu_1"
org_id = "acme"
org_token_file = "/etc/ringflow/token"
collectors = ["[::1]:4433", "collector-1.example.net:4433"]
server_name = "collectors.example.net"
ca_file = "ca.pem"

[fleet]
name = "collectors.example.net"
port = 4433
srv = false
nameservers = ["127.0.0.1:53", "[::1]:5353"]
refresh_min_ms = 100
refresh_max_ms = 86400000

[batch]
max_records = 1
max_bytes = 1024
max_age_ms = 1

[spool]
max_bytes = 131072
max_entries = 16
segment_bytes = 65536
fsync = "always"
memory_batches = 1

[reconnect]
initial_delay_ms = 1
max_delay_ms = 86400000
multiplier = 10.0
step_delay_ms = 0
splay_ms = 0

[sources.sockets]
enabled = false

[sources.interfaces]
enabled = true
interval_ms = 10
path = "/proc/net/dev"
max_interfaces = 1

[sources.netflow]
enabled = true
listen = "[::]:4739"
max_exporters = 1
max_templates = 1
max_pending_sets = 0
receive_buffer_bytes = 65536

[sources.synthetic]
enabled = true
records_per_second = 100000000
flows = 16777216
total_records = 18446744073709551615

[admin]
enabled = true
listen = "[::1]:0"
"#;

const COLLECTOR_MINIMAL: &str = r#"[tls]
cert = "server.pem"
key = "server.key"
[[orgs]]
id = "acme"
token_hashes = ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
"#;

const COLLECTOR_VARIANT: &str = r#"collector_id = "collector-1"
listen = "0.0.0.0:4433"
admin_listen = "10.0.0.1:9464"
data_dir = "data"

[tls]
cert = "server.pem"
key = "server.key"
client_ca = "clients.pem"
require_client_cert = true

[[orgs]]
id = "acme"
token_hashes = ["sha256:8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4", "sha256:0000000000000000000000000000000000000000000000000000000000000001"]
client_names = ["meter.acme.example", "*.meters.acme.example"]

[[orgs]]
id = "beta_2"
token_hashes = ["sha256:1111111111111111111111111111111111111111111111111111111111111111"]

[auth]
failure_burst = 1
failures_per_minute = 60
max_tracked_addresses = 16

[fleet]
advertise = "collector-1.example.net:4433"
members = ["collector-1.example.net:4433", "[2001:db8::2]:4433", "10.0.0.3:4433"]
name = "collectors.example.net"
load_admin_port = 9464
load_poll_ms = 100

[limits]
max_connections = 1
max_data_streams = 64
max_frame_bytes = 1024
max_records_per_batch = 1
max_unacked_batches = 4096
max_field_bytes = 16
stream_receive_window = 1028

[admission]
max_handshakes = 1
accept_rate = 1000000
accept_burst = 1
soft_max_sessions = 1
retry_after_min_ms = 100
retry_after_max_ms = 200
bounded_load_epsilon = 1.0

[runtime]
control_threads = 1
data_threads = 256

[sink]
kind = "nats"
queue_batches = 1
queue_bytes = 1024

[sink.file]
segment_bytes = 65536
max_bytes = 131072
fsync = "interval"
fsync_interval_ms = 1

[sink.nats]
servers = ["nats://127.0.0.1:4222", "tls://nats.example.net:4222"]
user = "collector"
password = "secret"
ca_file = "nats-ca.pem"
stream = "RINGFLOW"
subject_prefix = "ringflow.flows"
max_age_ms = 0
replicas = 5
duplicate_window_ms = 120000
max_in_flight = 1
publish_timeout_ms = 5000

[shutdown]
drain_window_ms = 0
grace_ms = 0
"#;

fn configs(out: &mut Seeds) {
    let meter = source("agent/src/example-config.toml");
    out.add("meter_config", "example.toml", meter.as_bytes());
    out.add(
        "meter_config",
        "example_no_comments.toml",
        without_comments(&meter),
    );
    out.add("meter_config", "minimal.toml", METER_MINIMAL);
    out.add("meter_config", "variant.toml", METER_VARIANT);
    let collector = source("collector/src/example-config.toml");
    out.add("collector_config", "example.toml", collector.as_bytes());
    out.add(
        "collector_config",
        "example_no_comments.toml",
        without_comments(&collector),
    );
    out.add("collector_config", "minimal.toml", COLLECTOR_MINIMAL);
    out.add("collector_config", "variant.toml", COLLECTOR_VARIANT);
}

//! The NetFlow v5 / v9 / IPFIX input path: `ringflow_meter::source::netflow::decode::Decoder`
//! fed a sequence of datagrams from a few exporters, as the meter's UDP listener does, so that
//! templates, data waiting for its template, template redefinition, options data (sampling) and
//! the eviction of exporters and templates are all reached.
//!
//! Input layout:
//!   byte 0   the decoder's limits: bit 0 max_exporters (1 or 2), bits 1-2 max_templates (1-4),
//!            bits 3-4 max_pending_sets (0-3)
//!   then datagrams, each: one byte whose bits 0-1 pick the exporter (two IPv4 addresses, an
//!            IPv6 one, and the first IPv4 address as an IPv4-mapped IPv6 one) and whose bit 2
//!            expires, after the datagram, the records waiting for an init time, a 2-byte
//!            big-endian length, and that many bytes (the last datagram takes what is left)
//!
//! Checks: decoding never panics; a dropped datagram gives no records; records waiting for an
//! exporter's init time stay bounded and all come out when expired; every record is one the
//! collector accepts (addresses of 4 or 16 bytes, ports and protocol in range, start <= end),
//! carries its exporter's address and a NetFlow/IPFIX source kind; the exporter count stays
//! within the limit.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ringflow_collector::data::ingest::{DataLimits, Verdict, judge_frame};
use ringflow_meter::config::NetflowConfig;
use ringflow_meter::source::netflow::decode::Decoder;
use ringflow_proto::pb;

/// Receive time handed to the decoder (2026-11-22T00:00:00Z).
const NOW_NANOS: u64 = 1_795_305_600_000_000_000;

const EXPORTERS: [IpAddr; 4] = [
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0xc000, 0x0201)),
];

fuzz_target!(|data: &[u8]| {
    let Some((&limits, mut rest)) = data.split_first() else {
        return;
    };
    let config = NetflowConfig {
        enabled: true,
        max_exporters: 1 + usize::from(limits & 1),
        max_templates: 1 + usize::from((limits >> 1) & 3),
        max_pending_sets: usize::from((limits >> 3) & 3),
        ..NetflowConfig::default()
    };
    let mut decoder = match Decoder::new(&config) {
        Ok(d) => d,
        Err(e) => panic!("decoder refuses a valid config {config:?}: {e}"),
    };
    let mut records = Vec::new();
    while let Some((&[from, len_hi, len_lo], tail)) = rest.split_first_chunk::<3>() {
        let len = usize::from(u16::from_be_bytes([len_hi, len_lo])).min(tail.len());
        let (datagram, tail) = tail.split_at(len);
        rest = tail;
        let exporter = EXPORTERS[usize::from(from & 3)];
        let decoded = decoder.decode(SocketAddr::new(exporter, 2055), datagram, NOW_NANOS);
        if decoded.dropped.is_some() {
            assert!(decoded.records.is_empty(), "a dropped datagram gave records");
        }
        let exporter_bytes = match exporter.to_canonical() {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        for r in &decoded.records {
            assert_eq!(&r.exporter_addr[..], &exporter_bytes[..]);
            assert!(
                [
                    pb::SourceKind::NetflowV5 as i32,
                    pb::SourceKind::NetflowV9 as i32,
                    pb::SourceKind::Ipfix as i32,
                ]
                .contains(&r.source),
                "source kind {}",
                r.source
            );
            assert!(r.start_unix_nanos <= r.end_unix_nanos, "{r:?}");
        }
        records.extend(decoded.records);
        // Records waiting for an exporter's init time come out, whole, when their time is up.
        let waiting = decoder.waiting();
        assert!(waiting <= ringflow_meter::source::netflow::decode::MAX_WAITING_RECORDS);
        if from & 4 != 0 {
            let expired = decoder.expire(NOW_NANOS + 3_600_000_000_000);
            assert_eq!(expired.len(), waiting, "every waiting record expires");
            assert_eq!(decoder.waiting(), 0);
            for r in &expired {
                assert!(r.start_unix_nanos <= r.end_unix_nanos, "{r:?}");
            }
            records.extend(expired);
        }
        let _ = decoder.take_export_timed();
        let _ = decoder.take_evicted_exporters();
        assert!(decoder.exporters() <= config.max_exporters);
    }
    if records.is_empty() {
        return;
    }
    // What the meter produces, the collector must take.
    let n = records.len();
    let batch = pb::DataUp {
        msg: Some(pb::data_up::Msg::Batch(pb::FlowBatch {
            seq: 1,
            records,
            created_unix_nanos: NOW_NANOS,
            loss: None,
            columns: Default::default(),
        })),
    };
    let limits = DataLimits {
        max_frame_bytes: usize::MAX,
        max_records_per_batch: usize::MAX,
        max_unacked_batches: 1,
        max_field_bytes: 64,
    };
    let body = Bytes::from(prost::Message::encode_to_vec(&batch));
    match judge_frame(body, 0, &limits) {
        Verdict::Accept { batch: accepted, .. } => assert_eq!(accepted.records.len(), n),
        other => panic!("the collector refuses records the meter decoded: {other:?}"),
    }
});

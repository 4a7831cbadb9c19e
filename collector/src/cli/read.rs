//! `collector read`: stored records as JSON lines, and before a batch's records a line with the
//! loss its meter reported, if any (the only lines with a `loss` key). Where the records come from is the sinks'
//! business (`data::sink::registry::read_back`, or the file sink's store for `--data-dir`); this
//! module only prints what they find.

use std::io::Write;
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::path::Path;

use ringflow_proto::pb;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::data::sink::file::consume::{ReadStoreError, read_store};
use crate::data::sink::registry::{self, Found, ReadError};

/// One stored record as a JSON object: the batch's identity, then the record's fields.
#[derive(Serialize)]
struct RecordJson<'a> {
    org: &'a str,
    meter_id: &'a str,
    seq: u64,
    collector_id: &'a str,
    received_unix_nanos: u64,
    start_unix_nanos: u64,
    end_unix_nanos: u64,
    src: Option<IpAddr>,
    src_port: u32,
    dst: Option<IpAddr>,
    dst_port: u32,
    ip_protocol: u32,
    bytes_from_src: u64,
    packets_from_src: u64,
    bytes_from_dst: u64,
    packets_from_dst: u64,
    /// Whole IP packets each way, where the meter's source saw packets.
    #[serde(skip_serializing_if = "is_zero")]
    ip_bytes_from_src: u64,
    #[serde(skip_serializing_if = "is_zero")]
    ip_bytes_from_dst: u64,
    source: &'static str,
    #[serde(skip_serializing_if = "is_zero")]
    rtt_micros: u32,
    #[serde(skip_serializing_if = "str::is_empty")]
    interface: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    exporter: Option<IpAddr>,
    #[serde(skip_serializing_if = "is_zero")]
    sampling_rate: u32,
    /// Which end listens (host sockets), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<&'static str>,
    #[serde(skip_serializing_if = "is_zero")]
    tx_errors: u64,
    #[serde(skip_serializing_if = "is_zero")]
    rx_errors: u64,
    #[serde(skip_serializing_if = "is_zero")]
    tx_drops: u64,
    #[serde(skip_serializing_if = "is_zero")]
    rx_drops: u64,
    /// Host sockets: who made the flow, when the meter could tell.
    #[serde(skip_serializing_if = "is_zero")]
    pid: u32,
    #[serde(skip_serializing_if = "str::is_empty")]
    process_name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    cgroup: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    container_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pod_uid: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    systemd_unit: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    community_id: &'a str,
}

/// A batch's measurement loss as a JSON object: the batch's identity and what its meter reported
/// it failed to measure. Printed before the batch's records, only when it reported some.
#[derive(Serialize)]
struct LossJson<'a> {
    org: &'a str,
    meter_id: &'a str,
    seq: u64,
    collector_id: &'a str,
    received_unix_nanos: u64,
    loss: LossCounts,
}

#[derive(Serialize)]
struct LossCounts {
    close_events_lost: u64,
    flows_untracked: u64,
    records_dropped: u64,
    packets_untracked: u64,
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn addr(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// One record of a stored batch as a JSON line (no trailing newline).
pub fn record_json(batch: &pb::StoredBatch, r: &pb::FlowRecord) -> String {
    let json = RecordJson {
        org: &batch.org_id,
        meter_id: &batch.meter_id,
        seq: batch.seq,
        collector_id: &batch.collector_id,
        received_unix_nanos: batch.received_unix_nanos,
        start_unix_nanos: r.start_unix_nanos,
        end_unix_nanos: r.end_unix_nanos,
        src: addr(&r.src_addr),
        src_port: r.src_port,
        dst: addr(&r.dst_addr),
        dst_port: r.dst_port,
        ip_protocol: r.ip_protocol,
        bytes_from_src: r.bytes_from_src,
        packets_from_src: r.packets_from_src,
        bytes_from_dst: r.bytes_from_dst,
        packets_from_dst: r.packets_from_dst,
        ip_bytes_from_src: r.ip_bytes_from_src,
        ip_bytes_from_dst: r.ip_bytes_from_dst,
        source: ringflow_proto::names::source_kind(r.source),
        rtt_micros: r.rtt_micros,
        interface: &r.interface,
        exporter: addr(&r.exporter_addr),
        sampling_rate: r.sampling_rate,
        server: (r.server != 0).then(|| ringflow_proto::names::server_side(r.server)),
        tx_errors: r.tx_errors,
        rx_errors: r.rx_errors,
        tx_drops: r.tx_drops,
        rx_drops: r.rx_drops,
        pid: r.pid,
        process_name: &r.process_name,
        cgroup: &r.cgroup,
        container_id: &r.container_id,
        pod_uid: &r.pod_uid,
        systemd_unit: &r.systemd_unit,
        community_id: &r.community_id,
    };
    serde_json::to_string(&json).unwrap_or_default()
}

/// The loss a stored batch's meter reported, as a JSON line (no trailing newline); `None` when
/// it reported none.
pub fn loss_json(batch: &pb::StoredBatch) -> Option<String> {
    let loss = batch.loss.as_ref()?;
    let json = LossJson {
        org: &batch.org_id,
        meter_id: &batch.meter_id,
        seq: batch.seq,
        collector_id: &batch.collector_id,
        received_unix_nanos: batch.received_unix_nanos,
        loss: LossCounts {
            close_events_lost: loss.close_events_lost,
            flows_untracked: loss.flows_untracked,
            records_dropped: loss.records_dropped,
            packets_untracked: loss.packets_untracked,
        },
    };
    serde_json::to_string(&json).ok()
}

/// Prints what a sink's read-back found: a batch as JSON lines, a problem on stderr. Breaks
/// when the output is gone (e.g. `| head`: not an error).
fn print(found: Found<'_>, follow: bool, out: &mut dyn Write) -> ControlFlow<()> {
    match found {
        Found::Batch(batch) => {
            if let Some(line) = loss_json(batch)
                && writeln!(out, "{line}").is_err()
            {
                return ControlFlow::Break(());
            }
            for record in &batch.records {
                if writeln!(out, "{}", record_json(batch, record)).is_err() {
                    return ControlFlow::Break(());
                }
            }
        }
        Found::Problem(problem) => eprintln!("collector read: {problem}"),
    }
    if follow && out.flush().is_err() {
        return ControlFlow::Break(());
    }
    ControlFlow::Continue(())
}

/// Writes every record in the store in `data_dir` (of `org`, or of all orgs) to `out` as JSON
/// lines; with `follow`, keeps polling for new ones until `stop` fires or `out` is closed.
/// Problems found in the store are reported on stderr and reading goes on.
pub fn read_data_dir(
    data_dir: &Path,
    org: Option<&str>,
    follow: bool,
    stop: &CancellationToken,
    out: &mut dyn Write,
) -> Result<(), ReadStoreError> {
    read_store(data_dir, org, follow, stop, &mut |found| {
        print(found, follow, out)
    })?;
    let _ = out.flush();
    Ok(())
}

/// Writes every record wherever `config`'s sink put them (of `org`, or of all orgs) to `out`
/// as JSON lines, oldest first; with `follow`, keeps waiting for new ones.
pub fn read_configured_sink(
    config: &Config,
    org: Option<&str>,
    follow: bool,
    out: &mut dyn Write,
) -> Result<(), ReadError> {
    registry::read_back(&config.sink, &config.sink_site(), org, follow, &mut |found| {
        print(found, follow, out)
    })?;
    let _ = out.flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::sink::file::store::{SegmentStore, StoreLimits};
    use bytes::Bytes;
    use prost::Message;

    fn batch(org: &str, seq: u64, records: usize) -> Vec<u8> {
        pb::StoredBatch {
            org_id: org.into(),
            meter_id: "m1".into(),
            seq,
            records: (0..records)
                .map(|i| pb::FlowRecord {
                    src_addr: Bytes::from_static(&[10, 0, 0, 1]),
                    dst_addr: Bytes::from(vec![0u8; 16]),
                    src_port: i as u32,
                    source: pb::SourceKind::Synthetic as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn prints_one_json_line_per_record_for_all_orgs_or_one() {
        let dir = tempfile::tempdir().unwrap();
        {
            let limits = StoreLimits {
                segment_bytes: 64 << 10,
                max_bytes: 1 << 20,
            };
            let (mut store, _) = SegmentStore::open(dir.path(), limits).unwrap();
            store.append("a", &batch("a", 1, 2), 2).unwrap();
            store.append("b", &batch("b", 5, 3), 3).unwrap();
            store.sync().unwrap();
        }
        let stop = CancellationToken::new();
        let mut out = Vec::new();
        read_data_dir(dir.path(), None, false, &stop, &mut out).unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0]["org"], "a");
        assert_eq!(lines[0]["src"], "10.0.0.1");
        assert_eq!(lines[0]["dst"], "::");
        assert_eq!(lines[0]["source"], "synthetic");
        assert_eq!(lines[4]["seq"], 5);
        assert!(
            lines[0].get("interface").is_none(),
            "empty optional fields are left out"
        );

        let mut out = Vec::new();
        read_data_dir(dir.path(), Some("b"), false, &stop, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 3);
    }

    #[test]
    fn host_fields_when_set_and_a_loss_line_before_the_batch_that_reported_one() {
        let record = pb::FlowRecord {
            src_addr: Bytes::from_static(&[10, 0, 0, 1]),
            dst_addr: Bytes::from_static(&[10, 0, 0, 2]),
            pid: 4242,
            process_name: "curl".into(),
            cgroup: "/system.slice/docker-ab.scope".into(),
            container_id: "ab".into(),
            pod_uid: "0f1e".into(),
            systemd_unit: "docker-ab.scope".into(),
            community_id: "1:abc=".into(),
            ..Default::default()
        };
        let batch = pb::StoredBatch {
            org_id: "acme".into(),
            seq: 7,
            records: vec![record.clone(), pb::FlowRecord::default()],
            loss: Some(pb::MeasurementLoss {
                close_events_lost: 1,
                flows_untracked: 2,
                records_dropped: 3,
                packets_untracked: 4,
            }),
            ..Default::default()
        };
        let mut out = Vec::new();
        let _ = print(Found::Batch(&batch), false, &mut out);
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0]["seq"], 7);
        assert_eq!(
            lines[0]["loss"],
            serde_json::json!({"close_events_lost": 1, "flows_untracked": 2, "records_dropped": 3, "packets_untracked": 4})
        );
        assert!(lines[0].get("source").is_none(), "not a record");
        let r = &lines[1];
        assert_eq!(r["pid"], 4242);
        for (key, value) in [
            ("process_name", "curl"),
            ("cgroup", "/system.slice/docker-ab.scope"),
            ("container_id", "ab"),
            ("pod_uid", "0f1e"),
            ("systemd_unit", "docker-ab.scope"),
            ("community_id", "1:abc="),
        ] {
            assert_eq!(r[key], value, "{key}");
        }
        assert!(lines[1].get("loss").is_none());
        for key in ["pid", "process_name", "cgroup", "community_id"] {
            assert!(lines[2].get(key).is_none(), "{key} left out when unset");
        }
        assert!(loss_json(&pb::StoredBatch::default()).is_none());
    }
}

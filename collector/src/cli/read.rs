//! `collector read`: stored records as JSON lines.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ringflow_proto::pb;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::NatsSinkConfig;
use crate::sink::nats::consume::{ConsumeError, read_stream};
use crate::store::{OrgReader, StoreError, stored_orgs};

/// How often `--follow` looks for new data.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{dir} holds no ringflow store (no segments/ directory); pass the collector's data_dir")]
    NoStore { dir: String },
    #[error("{0}")]
    Nats(#[from] ConsumeError),
    #[cfg(feature = "kafka")]
    #[error("{0}")]
    Kafka(#[from] crate::sink::kafka::consume::ConsumeError),
    #[error("sink.kind = \"kafka\" needs a collector built with the `kafka` feature (the default)")]
    NoKafka,
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

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
    };
    serde_json::to_string(&json).unwrap_or_default()
}

/// Writes every stored record (of `org`, or of all orgs) to `out` as JSON lines; with `follow`,
/// keeps polling for new ones until `stop` fires or `out` is closed. Problems found in the store
/// are reported on stderr and reading goes on.
pub fn read_store(
    data_dir: &Path,
    org: Option<&str>,
    follow: bool,
    stop: &CancellationToken,
    out: &mut dyn Write,
) -> Result<(), ReadError> {
    if !data_dir.join("segments").is_dir() {
        return Err(ReadError::NoStore {
            dir: data_dir.display().to_string(),
        });
    }
    let mut readers: Vec<(String, OrgReader)> = Vec::new();
    let mut batches = Vec::new();
    loop {
        let orgs = match org {
            Some(o) => vec![o.to_owned()],
            None => stored_orgs(data_dir)?,
        };
        for o in orgs {
            if !readers.iter().any(|(name, _)| *name == o) {
                readers.push((o.clone(), OrgReader::new(data_dir, &o)));
            }
        }
        for (name, reader) in &mut readers {
            batches.clear();
            let progress = reader.read_available(&mut batches)?;
            if progress.skipped_by_retention {
                eprintln!(
                    "collector read: org {name}: records were deleted by retention (sink.file.max_bytes) before they could be read; skipped"
                );
            }
            for problem in &progress.corruption {
                eprintln!("collector read: org {name}: {problem}");
            }
            for batch in &batches {
                for record in &batch.records {
                    if writeln!(out, "{}", record_json(batch, record)).is_err() {
                        // Reader went away (e.g. `| head`): not an error.
                        return Ok(());
                    }
                }
            }
        }
        if out.flush().is_err() || !follow || stop.is_cancelled() {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

/// Writes every record in the NATS stream of `config` (of `org`, or of all orgs) to `out` as JSON
/// lines; with `follow`, keeps waiting for new ones. Messages that are not ringflow batches are
/// reported on stderr and skipped.
/// Prints a batch read from a remote sink as JSON lines (or says which message, at `place`, could
/// not be read); stops when the output is gone.
fn print_batch(
    batch: &Result<pb::StoredBatch, String>,
    place: impl Fn() -> String,
    follow: bool,
    out: &mut dyn Write,
) -> std::ops::ControlFlow<()> {
    match batch {
        Ok(batch) => {
            for record in &batch.records {
                if writeln!(out, "{}", record_json(batch, record)).is_err() {
                    return std::ops::ControlFlow::Break(());
                }
            }
        }
        Err(why) => eprintln!("collector read: {}: {why}; skipped", place()),
    }
    if follow && out.flush().is_err() {
        return std::ops::ControlFlow::Break(());
    }
    std::ops::ControlFlow::Continue(())
}

pub fn read_nats(
    config: &NatsSinkConfig,
    org: Option<&str>,
    follow: bool,
    out: &mut dyn Write,
) -> Result<(), ReadError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ReadError::Runtime)?;
    runtime.block_on(read_stream(config, org, follow, |message| {
        let place = || format!("stream message {} on {}", message.stream_seq, message.subject);
        print_batch(&message.batch, place, follow, out)
    }))?;
    let _ = out.flush();
    Ok(())
}

/// Prints every record of the Kafka topic(s) a collector config names (`--config`), oldest
/// first per partition.
#[cfg(feature = "kafka")]
pub fn read_kafka(
    config: &crate::config::KafkaSinkConfig,
    org: Option<&str>,
    follow: bool,
    out: &mut dyn Write,
) -> Result<(), ReadError> {
    crate::sink::kafka::consume::read_topic(config, org, follow, |message| {
        let place = || {
            format!(
                "record {}/{}@{}",
                message.topic, message.partition, message.offset
            )
        };
        print_batch(&message.batch, place, follow, out)
    })?;
    let _ = out.flush();
    Ok(())
}

/// A collector built without the `kafka` feature cannot read a Kafka sink.
#[cfg(not(feature = "kafka"))]
pub fn read_kafka(
    _: &crate::config::KafkaSinkConfig,
    _: Option<&str>,
    _: bool,
    _: &mut dyn Write,
) -> Result<(), ReadError> {
    Err(ReadError::NoKafka)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SegmentStore, StoreLimits};
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
        read_store(dir.path(), None, false, &stop, &mut out).unwrap();
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
        read_store(dir.path(), Some("b"), false, &stop, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 3);
    }
}

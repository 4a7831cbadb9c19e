//! End to end: a meter process (synthetic source) → a collector process → its sink, acks on; and
//! the direct JetStream publish the NATS sink is compared with.
//!
//! Owns: starting the bench's collector and meter processes, timing a run by the collector's
//! stored-records counter, the processes' CPU over that window, the direct publisher. Must never:
//! decide what the figures mean (the report does).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use prost::Message;
use ringflow_collector::config::NatsSinkConfig;
use ringflow_collector::sink::SinkBatch;
use ringflow_collector::sink::nats::stream;
use ringflow_proto::pb;
use tokio::time::Instant;

use super::bulk::{FLOWS, Transfer, Workload, decode_frame};
use crate::process::{ChildProcess, CollectorCommand, CollectorProcess};
use crate::procstat::CpuMarks;
use crate::{TestBed, http_get, metric_value, test_reconnect};

/// The stored-records counter every sink advances once it holds a batch.
const STORED: &str = "ringflow_collector_records_stored_total";

/// How `herd bench` runs the collector and meter command lines (itself, with a subcommand).
#[derive(Debug, Clone)]
pub struct Programs {
    pub collector: CollectorCommand,
    /// `herd` itself; `meter` is its first argument.
    pub herd: PathBuf,
    pub logs: PathBuf,
}

/// Records the collector at `admin` says its sink holds.
pub async fn stored_records(admin: SocketAddr) -> anyhow::Result<u64> {
    let (status, body) = http_get(admin, "/metrics").await?;
    anyhow::ensure!(status == 200, "GET /metrics answered {status}");
    Ok(metric_value(&body, STORED).unwrap_or(0.0) as u64)
}

/// Starts the bench's collector `name` with `extra` tables.
pub async fn start_collector(
    programs: &Programs,
    bed: &TestBed,
    name: &str,
    extra: &str,
) -> anyhow::Result<CollectorProcess> {
    let addr = crate::process::free_udp_addr()?;
    CollectorProcess::start_with(&programs.collector, bed, name, addr, extra).await
}

/// Starts a meter process `name` sending to `collector` with `sources` (TOML tables) and `extra`.
pub async fn start_meter(
    programs: &Programs,
    bed: &TestBed,
    name: &str,
    collector: SocketAddr,
    tables: &str,
) -> anyhow::Result<ChildProcess> {
    let config = bed.path().join(format!("{name}.toml"));
    std::fs::write(
        &config,
        bed.meter_toml(name, &[collector], &format!("{tables}\n{}", test_reconnect(""))),
    )?;
    let args = [
        "meter".as_ref(),
        "run".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ];
    let log = programs.logs.join(format!("{name}.log"));
    ChildProcess::start_logged(&programs.herd, &args, name, "meter started", Some(&log)).await
}

/// A meter's synthetic source producing `records` as fast as the pipeline takes them (it is a
/// load generator: it waits rather than drops), with room in the spool for all of them.
pub fn flat_out_synthetic(records: u64) -> String {
    format!(
        "[sources.synthetic]\nenabled = true\nrecords_per_second = 100000000\nflows = {FLOWS}\n\
         total_records = {records}\n[spool]\nmax_bytes = 4294967296\nmax_entries = 1000000\n"
    )
}

/// One measured run: what moved in the window, and the CPU seconds each process named used in
/// it ("collector", "meter", "nats", "bench" for this process).
#[derive(Debug, Clone)]
pub struct Run {
    pub transfer: Transfer,
    pub cpu: Vec<(&'static str, f64)>,
}

/// Runs a meter that sends `work.records` synthetic records to `collector` and exits once they
/// are acked. The window measured opens once a tenth of them is stored (start-up left out) and
/// closes when the last is; the CPU of the collector, the meter and `others` is read over it.
pub async fn meter_to_collector(
    programs: &Programs,
    bed: &TestBed,
    (collector, others): (&CollectorProcess, &[(&'static str, u32)]),
    name: &str,
    work: &Workload,
) -> anyhow::Result<Run> {
    let base = stored_records(collector.admin_addr).await?;
    let meter = start_meter(
        programs,
        bed,
        name,
        collector.addr,
        &flat_out_synthetic(work.records),
    )
    .await?;
    let mut watched = vec![("collector", collector.process.pid()), ("meter", meter.pid())];
    watched.extend_from_slice(others);
    let opens_at = base + work.records / 10;
    let closes_at = base + work.records;
    let deadline = Instant::now() + Duration::from_secs(120 + work.records / 20_000);
    let mut open: Option<(u64, CpuMarks)> = None;
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name}: the collector stored {} of {} records in time",
            stored_records(collector.admin_addr).await? - base,
            work.records
        );
        let stored = stored_records(collector.admin_addr).await?;
        match &open {
            None if stored >= opens_at => open = Some((stored, CpuMarks::now(&watched)?)),
            Some((from, marks)) if stored >= closes_at => {
                let (cpu, seconds) = marks.since()?;
                let records = stored - from;
                // It exits once all it produced is acked: anything else means it lost its way.
                let status = meter.wait(Duration::from_secs(30)).await?;
                anyhow::ensure!(status.success(), "{name} exited with {status}");
                return Ok(Run {
                    transfer: Transfer {
                        records,
                        bytes: (records as f64 * work.bytes as f64 / work.records as f64) as u64,
                        seconds,
                    },
                    cpu,
                });
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `transfer` with the CPU of `watched` (and of this process, "bench") read around it.
pub async fn with_cpu(
    watched: &[(&'static str, u32)],
    transfer: impl std::future::Future<Output = anyhow::Result<Transfer>>,
) -> anyhow::Result<Run> {
    let mut all = vec![("bench", std::process::id())];
    all.extend_from_slice(watched);
    let marks = CpuMarks::now(&all)?;
    let transfer = transfer.await?;
    let (cpu, _) = marks.since()?;
    Ok(Run { transfer, cpu })
}

/// The workload published straight to JetStream as the NATS sink publishes it (the stream it
/// creates, the same subject, payload and headers, `max_in_flight` publishes awaiting their
/// ack), as meter `meter_id`: the ceiling the NATS sink is compared with. Timed from the first
/// publish to the last ack.
pub async fn jetstream_direct(
    config: &NatsSinkConfig,
    work: &Workload,
    meter_id: &str,
) -> anyhow::Result<Transfer> {
    let url = config.servers.first().cloned().unwrap_or_default();
    let client = async_nats::connect(url.as_str()).await?;
    let js = async_nats::jetstream::new(client);
    js.get_or_create_stream(stream::wanted_stream(config)).await?;
    let subject = stream::subject(&config.subject_prefix, crate::ORG);
    let messages: Vec<(SinkBatch, async_nats::HeaderMap)> = work
        .frames
        .iter()
        .map(|frame| {
            let Some(pb::data_up::Msg::Batch(batch)) = decode_frame(frame)?.msg else {
                anyhow::bail!("a workload frame holds no batch");
            };
            let batch = SinkBatch {
                org: crate::ORG.into(),
                meter_id: meter_id.into(),
                seq: batch.seq,
                records: batch.records.len() as u32,
                payload: stored_payload(meter_id, batch),
            };
            let headers = stream::headers(&batch, "bench-direct");
            Ok((batch, headers))
        })
        .collect::<anyhow::Result<_>>()?;
    let bytes = messages.iter().map(|(b, _)| b.payload.len() as u64).sum();
    let started = Instant::now();
    let mut acks = FuturesUnordered::new();
    for (batch, headers) in messages {
        if acks.len() >= config.max_in_flight {
            acks.next().await.transpose()?;
        }
        let ack = js
            .publish_with_headers(subject.clone(), headers, batch.payload)
            .await?;
        acks.push(ack.into_future());
    }
    while let Some(ack) = acks.next().await {
        let ack = ack?;
        anyhow::ensure!(!ack.duplicate, "JetStream took a bench batch for a duplicate");
    }
    Ok(Transfer {
        records: work.records,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A batch as the collector stores it.
pub fn stored_payload(meter_id: &str, batch: pb::FlowBatch) -> bytes::Bytes {
    pb::StoredBatch {
        org_id: crate::ORG.into(),
        meter_id: meter_id.into(),
        seq: batch.seq,
        received_unix_nanos: ringflow_agent::unix_nanos_now(),
        collector_id: "bench-direct".into(),
        session_id: String::new(),
        records: batch.records,
    }
    .encode_to_vec()
    .into()
}

/// The NATS sink tables for a bench collector writing to `url`, stream `stream`.
pub fn nats_sink_config(url: &str, stream: &str) -> NatsSinkConfig {
    NatsSinkConfig {
        servers: vec![url.to_owned()],
        stream: stream.to_owned(),
        subject_prefix: format!("bench.{}", stream.to_ascii_lowercase()),
        ..NatsSinkConfig::default()
    }
}

/// `config` as the collector's `[sink]` tables.
pub fn nats_sink_toml(config: &NatsSinkConfig) -> String {
    format!(
        "[sink]\nkind = \"nats\"\n[sink.nats]\nservers = [\"{}\"]\nstream = \"{}\"\nsubject_prefix = \"{}\"\n",
        config.servers.join("\", \""),
        config.stream,
        config.subject_prefix
    )
}

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
use ringflow_collector::data::sink::SinkBatch;
use ringflow_collector::data::sink::nats::NatsSinkConfig;
use ringflow_collector::data::sink::nats::stream;
use ringflow_proto::pb;
use tokio::time::Instant;

use super::bulk::{FLOWS, Form, Transfer, Workload, decode_frame};
use ringflow_tests::process::{ChildProcess, CollectorCommand, CollectorProcess};
use ringflow_tests::procstat::CpuMarks;
use ringflow_tests::{TestBed, http_get, metric_value, test_reconnect};

/// The stored-records counter every sink advances once it holds a batch.
const STORED: &str = "ringflow_collector_records_stored_total";

/// How `herd bench` runs the collector and meter command lines.
#[derive(Debug, Clone)]
pub struct Programs {
    /// `herd collector ...`: the collector's command line inside `herd`.
    pub collector: CollectorCommand,
    /// The meter: the real `meter` binary when it was built next to `herd` (its memory is then
    /// the meter's own), else `herd meter ...` (the same code in `herd`'s larger binary).
    pub meter: PathBuf,
    /// Arguments before the meter's own (`["meter"]` for `herd meter`).
    pub meter_leading_args: Vec<std::ffi::OsString>,
    /// `herd` itself, which runs the raw quinn echo server as `herd quinn-echo ...`.
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
    let addr = ringflow_tests::process::free_udp_addr()?;
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
    let mut args: Vec<&std::ffi::OsStr> = programs
        .meter_leading_args
        .iter()
        .map(|a| a.as_os_str())
        .collect();
    args.extend(["run".as_ref(), "--config".as_ref(), config.as_os_str()]);
    let log = programs.logs.join(format!("{name}.log"));
    ChildProcess::start_logged(&programs.meter, &args, name, "meter started", Some(&log)).await
}

/// A meter's synthetic source producing `records` as fast as the pipeline takes them (it is a
/// load generator: it waits rather than drops), with room in the spool for all of them, sealing
/// batches in `form`.
pub fn flat_out_synthetic(records: u64, form: Form) -> String {
    format!(
        "[sources.synthetic]\nenabled = true\nrecords_per_second = 100000000\nflows = {FLOWS}\n\
         total_records = {records}\n[spool]\nmax_bytes = 4294967296\nmax_entries = 1000000\n\
         [batch]\ncolumns = {}\n",
        form.meter_columns()
    )
}

/// One measured run: what moved in the window, and the CPU seconds each process named used in
/// it ("collector", "meter", "nats", "bench" for this process).
#[derive(Debug, Clone)]
pub struct Run {
    pub transfer: Transfer,
    pub cpu: Vec<(&'static str, f64)>,
}

/// Runs a meter that sends `work.records` synthetic records to `collector` in `work.form` and
/// exits once they are acked. The window measured opens once a tenth of them is stored (start-up
/// left out; at the poll before, if all were stored by the next) and closes when the last is;
/// the CPU of the collector, the meter and `others` is read over it.
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
        &flat_out_synthetic(work.records, work.form),
    )
    .await?;
    // The meter produces ahead of what is stored (its spool has room for the whole workload), so
    // its CPU is taken over its whole life and charged to every record it sent; the others' over
    // the window.
    let meter_pid = meter.pid();
    let mut watched = vec![("collector", collector.process.pid())];
    watched.extend_from_slice(others);
    let opens_at = base + work.records / 10;
    let closes_at = base + work.records;
    let deadline = Instant::now() + Duration::from_secs(120 + work.records / 20_000);
    let mut open: Option<(u64, CpuMarks)> = None;
    // The previous poll: the window opens there instead when everything was stored between two
    // polls (a fast run, or a small one), so the window is never empty.
    let mut previous = Some((base, CpuMarks::now(&watched)?));
    let mut meter = meter;
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name}: the collector stored {} of {} records in time",
            stored_records(collector.admin_addr).await? - base,
            work.records
        );
        anyhow::ensure!(
            meter.is_running() || stored_records(collector.admin_addr).await? >= closes_at,
            "{name} exited before the collector stored all it sent (its log: {})",
            programs.logs.join(format!("{name}.log")).display()
        );
        let stored = stored_records(collector.admin_addr).await?;
        match &open {
            None if stored >= closes_at => {
                open = previous.take();
                continue;
            }
            None if stored >= opens_at => open = Some((stored, CpuMarks::now(&watched)?)),
            Some((from, marks)) if stored >= closes_at => {
                let (mut cpu, seconds) = marks.since()?;
                let meter_cpu = ringflow_tests::procstat::cpu_seconds(meter_pid)?;
                cpu.push(("meter", meter_cpu * (stored - from) as f64 / work.records as f64));
                let records = stored - from;
                anyhow::ensure!(
                    records >= work.records / 2,
                    "{name}: the measured window held only {records} of {} records (polls too far apart)",
                    work.records
                );
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
            None => previous = Some((stored, CpuMarks::now(&watched)?)),
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

/// The workload's batches as the NATS sink publishes them (a `StoredBatch` payload and its
/// headers), as meter `meter_id`: made before the timing starts. The row form: the ceiling the
/// NATS sink is compared with is what it published before columns.
pub fn jetstream_messages(
    work: &Workload,
    meter_id: &str,
) -> anyhow::Result<Vec<(SinkBatch, async_nats::HeaderMap)>> {
    anyhow::ensure!(work.form == Form::Rows, "direct publishes are of the row form");
    work.frames
        .iter()
        .map(|frame| {
            let Some(pb::data_up::Msg::Batch(batch)) = decode_frame(frame)?.msg else {
                anyhow::bail!("a workload frame holds no batch");
            };
            let batch = SinkBatch {
                org: ringflow_tests::ORG.into(),
                meter_id: meter_id.into(),
                seq: batch.seq,
                records: batch.records.len() as u32,
                payload: stored_payload(meter_id, batch),
                columns: false,
            };
            let headers = stream::headers(&batch, "bench-direct");
            Ok((batch, headers))
        })
        .collect()
}

/// A JetStream context on the first of `config`'s servers, with the stream the NATS sink would
/// create.
pub async fn jetstream_context(config: &NatsSinkConfig) -> anyhow::Result<async_nats::jetstream::Context> {
    let url = config.servers.first().cloned().unwrap_or_default();
    let js = async_nats::jetstream::new(async_nats::connect(url.as_str()).await?);
    js.get_or_create_stream(stream::wanted_stream(config)).await?;
    Ok(js)
}

/// `messages` published straight to JetStream as the NATS sink publishes them (the same
/// subject, at most `max_in_flight` publishes awaiting their ack): the ceiling the NATS sink is
/// compared with. Timed from the first publish to the last ack; every ack must be a new message.
pub async fn jetstream_direct(
    js: &async_nats::jetstream::Context,
    config: &NatsSinkConfig,
    messages: Vec<(SinkBatch, async_nats::HeaderMap)>,
) -> anyhow::Result<Transfer> {
    let subject = stream::subject(&config.subject_prefix, ringflow_tests::ORG);
    let records = messages.iter().map(|(b, _)| u64::from(b.records)).sum();
    let bytes = messages.iter().map(|(b, _)| b.payload.len() as u64).sum();
    let settled = |ack: Option<Result<async_nats::jetstream::publish::PublishAck, _>>| -> anyhow::Result<()> {
        if let Some(ack) = ack {
            let ack: async_nats::jetstream::publish::PublishAck = ack?;
            anyhow::ensure!(!ack.duplicate, "JetStream took a bench batch for a duplicate");
        }
        Ok(())
    };
    let started = Instant::now();
    let mut acks = FuturesUnordered::new();
    for (batch, headers) in messages {
        if acks.len() >= config.max_in_flight {
            settled(acks.next().await)?;
        }
        let ack = js
            .publish_with_headers(subject.clone(), headers, batch.payload)
            .await?;
        acks.push(ack.into_future());
    }
    while !acks.is_empty() {
        settled(acks.next().await)?;
    }
    Ok(Transfer {
        records,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A batch as the collector stores it.
pub fn stored_payload(meter_id: &str, batch: pb::FlowBatch) -> bytes::Bytes {
    pb::StoredBatch {
        columns: Default::default(),
        org_id: ringflow_tests::ORG.into(),
        meter_id: meter_id.into(),
        seq: batch.seq,
        received_unix_nanos: ringflow_meter::unix_nanos_now(),
        collector_id: "bench-direct".into(),
        session_id: String::new(),
        records: batch.records,
        loss: batch.loss,
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

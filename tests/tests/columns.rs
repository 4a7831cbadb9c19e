//! Columnar batches end to end: a meter and a collector that both read columns use them, and
//! either one that does not (an older meter or collector, or `columns = false`) gets rows, with
//! every record stored exactly once in every mix.

use std::time::Duration;

use ringflow_collector::data::sink::file::store::read_all;
use ringflow_meter::source::synthetic::bytes_from_src;
use ringflow_tests::process::free_udp_addr;
use ringflow_tests::{
    RunningCollector, TestBed, poll_until, start_meter, summarize, synthetic, wait_for_meter,
};

/// Runs one meter (`batch.columns = meter_columns`) into one collector (`collector_extra` in
/// its config) until `TOTAL` records are acked and the meter stops by itself; returns the
/// collector's batches in, batches in as columns, and checks every record stored exactly once.
async fn one_meter_into_one_collector(
    meter_columns: bool,
    collector_extra: &str,
) -> anyhow::Result<(u64, u64)> {
    const TOTAL: u64 = 20_000;
    let bed = TestBed::new()?;
    let collector = bed.start_collector("c1", collector_extra).await?;
    let mut config = bed.meter_config("m1", &[collector.addr]);
    config.batch.columns = meter_columns;
    config.batch.max_records = 500;
    config.sources.synthetic = synthetic(20_000, TOTAL);
    let meter = start_meter(config).await?;
    let metrics = meter.metrics();
    tokio::time::timeout(Duration::from_secs(60), meter.join()).await??;
    let batches = collector
        .metrics
        .ingest
        .batches_in
        .get_or_create(&ringflow_collector::telemetry::OrgLabel {
            org: ringflow_tests::ORG.to_owned(),
        })
        .get();
    let columnar = collector.metrics.ingest.columnar_batches_in.get();
    collector.stop().await;

    assert_eq!(metrics.delivery.records_acked.get(), TOTAL);
    let s = summarize(&read_all(&bed.data_dir("c1"), None)?);
    assert_eq!(s.records, TOTAL, "records stored");
    assert_eq!(s.duplicate_batches, 0);
    assert_eq!(
        s.bytes_from_src,
        (0..TOTAL).map(bytes_from_src).sum::<u64>(),
        "record contents intact"
    );
    Ok((batches, columnar))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_and_a_collector_that_read_columns_use_them() -> anyhow::Result<()> {
    let (batches, columnar) = one_meter_into_one_collector(true, "").await?;
    // Sealed as columns from the start (before the first Welcome too), so every batch is.
    assert!(batches > 0);
    assert_eq!(columnar, batches, "{columnar} of {batches} batches as columns");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_that_does_not_offer_columns_sends_rows() -> anyhow::Result<()> {
    let (batches, columnar) = one_meter_into_one_collector(false, "").await?;
    assert!(batches > 0);
    assert_eq!(
        columnar, 0,
        "an older meter's Hello has no columns: it sends rows"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_does_not_read_columns_gets_rows() -> anyhow::Result<()> {
    let (batches, columnar) = one_meter_into_one_collector(true, "[limits]\ncolumns = false\n").await?;
    assert!(batches > 0);
    // Any batch sealed as columns before this Welcome said no is sealed again as rows.
    assert_eq!(columnar, 0, "a Welcome without columns: the meter sends rows");
    Ok(())
}

/// The upgrade's awkward case: batches spooled as columns for one collector go to another that
/// does not read them (an older one). They are sealed again as rows, and every record is stored
/// exactly once across the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_spooled_for_one_collector_reach_one_without_them_as_rows() -> anyhow::Result<()> {
    const TOTAL: u64 = 100_000;
    let bed = TestBed::new()?;
    let new = bed.start_collector("new", "").await?;
    let old_addr = free_udp_addr()?;
    let mut config = bed.meter_config("m1", &[new.addr, old_addr]);
    config.batch.max_records = 500;
    // The other address answers nothing until it starts: give up on it quickly.
    config.reconnect.connect_timeout_ms = 1_000;
    config.sources.synthetic = synthetic(10_000, TOTAL);
    let meter = start_meter(config).await?;
    let metrics = meter.metrics();
    // Wait for columns to arrive. (The collector's counters have no change signal: polled.)
    poll_until(
        Duration::from_secs(60),
        "the first collector taking columns",
        async || new.metrics.ingest.columnar_batches_in.get() > 0,
    )
    .await?;
    new.stop().await;
    // No collector now: what the meter seals meanwhile is columns, as the last Welcome said.
    let built = metrics.records.batches_built.get();
    wait_for_meter(
        &metrics,
        Duration::from_secs(60),
        "batches spooled with no collector",
        |m| m.records.batches_built.get() >= built + 3,
    )
    .await?;
    let mut old_config = bed.collector_config("old", "[limits]\ncolumns = false\n")?;
    old_config.listen = old_addr;
    let old = RunningCollector::start(old_config).await?;
    tokio::time::timeout(Duration::from_secs(90), meter.join()).await??;
    let columns_into_old = old.metrics.ingest.columnar_batches_in.get();
    old.stop().await;

    assert_eq!(
        columns_into_old, 0,
        "no columns reached the collector that does not read them"
    );
    assert!(
        metrics.delivery.batches_resealed.get() > 0,
        "the batches spooled as columns were sealed again as rows"
    );
    assert_eq!(metrics.delivery.records_acked.get(), TOTAL);
    let mut stored = read_all(&bed.data_dir("new"), None)?;
    stored.extend(read_all(&bed.data_dir("old"), None)?);
    let s = summarize(&stored);
    assert_eq!(s.records, TOTAL, "every record stored once across the two");
    assert_eq!(s.bytes_from_src, (0..TOTAL).map(bytes_from_src).sum::<u64>());
    Ok(())
}

/// A record as `docs/read_columns.py` prints it: every column, addresses in hex.
fn as_json(r: &ringflow_proto::pb::FlowRecord) -> serde_json::Value {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    serde_json::json!({
        "start_unix_nanos": r.start_unix_nanos, "end_unix_nanos": r.end_unix_nanos,
        "src_addr": hex(&r.src_addr), "dst_addr": hex(&r.dst_addr),
        "src_port": r.src_port, "dst_port": r.dst_port, "ip_protocol": r.ip_protocol,
        "bytes_from_src": r.bytes_from_src, "packets_from_src": r.packets_from_src,
        "bytes_from_dst": r.bytes_from_dst, "packets_from_dst": r.packets_from_dst,
        "source": r.source, "rtt_micros": r.rtt_micros, "interface": r.interface,
        "exporter_addr": hex(&r.exporter_addr), "sampling_rate": r.sampling_rate,
        "server": r.server, "tx_errors": r.tx_errors, "rx_errors": r.rx_errors,
        "tx_drops": r.tx_drops, "rx_drops": r.rx_drops, "pid": r.pid,
        "process_name": r.process_name, "cgroup": r.cgroup, "container_id": r.container_id,
        "pod_uid": r.pod_uid, "systemd_unit": r.systemd_unit, "community_id": r.community_id,
        "ip_bytes_from_src": r.ip_bytes_from_src, "ip_bytes_from_dst": r.ip_bytes_from_dst,
    })
}

/// The stored form is what docs/sinks.md says: a reader of a few dozen lines of Python
/// (`docs/read_columns.py`, standard library only) reads a block the collector stores to the
/// same records, deriving the Community IDs the block leaves out as Rust computes them.
#[test]
fn a_python_reader_reads_the_stored_columns() -> anyhow::Result<()> {
    use ringflow_proto::pb;
    let records: Vec<pb::FlowRecord> = (0..50u32)
        .map(|i| pb::FlowRecord {
            start_unix_nanos: 1_795_305_600_000_000_000 + u64::from(i) * 7_000_000,
            end_unix_nanos: if i % 5 == 0 {
                0
            } else {
                1_795_305_601_000_000_000 + u64::from(i)
            },
            src_addr: if i % 3 == 0 {
                bytes::Bytes::from_static(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5])
            } else {
                bytes::Bytes::from_static(&[10, 0, 0, 5])
            },
            dst_addr: if i % 3 == 0 {
                bytes::Bytes::copy_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, i as u8])
            } else {
                bytes::Bytes::copy_from_slice(&[93, 184, 216, i as u8])
            },
            src_port: 40_000 + i,
            dst_port: 443,
            ip_protocol: [17, 6, 132, 6][(i % 4) as usize],
            bytes_from_src: u64::from(i) * 1_000 + 7,
            packets_from_src: u64::from(i) + 1,
            bytes_from_dst: u64::MAX - u64::from(i),
            source: pb::SourceKind::SocketBpf as i32,
            server: if i % 2 == 0 {
                -1
            } else {
                pb::ServerSide::Dst as i32
            },
            pid: 1_000 + i % 7,
            process_name: ["nginx", "curl", "sshd"][(i % 3) as usize].into(),
            cgroup: "/system.slice/nginx.service".into(),
            ..Default::default()
        })
        .map(|mut r| {
            // Most with the id the meter stamps (readers derive it from the tuple), some with
            // an id of their own (carried as text).
            if r.src_port % 5 == 1 {
                r.community_id = format!("1:{}é", r.src_port);
            } else {
                ringflow_proto::community_id::stamp(&mut r);
            }
            r
        })
        .collect();
    assert!(records.iter().filter(|r| r.community_id.len() == 30).count() >= 35);
    let dir = tempfile::tempdir()?;
    let block = dir.path().join("block");
    std::fs::write(&block, ringflow_proto::columns::encode(&records, None))?;
    let reader = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/read_columns.py");
    let out = std::process::Command::new("python3")
        .arg(&reader)
        .arg(&block)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run python3 (install python3 to run this test): {e}"))?;
    anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read: Vec<serde_json::Value> = String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let expected: Vec<serde_json::Value> = records.iter().map(as_json).collect();
    assert_eq!(read.len(), expected.len());
    for (i, (got, want)) in read.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "record {i}");
    }
    Ok(())
}

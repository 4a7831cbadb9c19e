//! The Kafka sink against librdkafka's mock cluster (three brokers on loopback, in this process):
//! every batch acked to a meter is in the topic, once after de-duplicating by (meter id, seq),
//! through an outage of the partitions' leader and through injected produce errors; the
//! collectors' `/readyz` follows the outage and their control plane keeps answering.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::types::RDKafkaRespErr;
use ringflow_meter::Meter;
use ringflow_meter::source::synthetic::bytes_from_src;
use ringflow_proto::pb;
use ringflow_tests::kafka::KafkaCluster;
use ringflow_tests::raw::{RawHello, RawSession};
use ringflow_tests::{
    ORG, TestBed, http_get, metric_value, poll_until, records_acked, start_meter, stop_all, synthetic,
    wait_for_meter,
};
use tokio::time::Instant;

const TOPIC: &str = "ringflow.flows";
/// Short timeouts so that an outage of a few seconds makes deliveries fail and be sent again.
const SINK_KEYS: &str = "health_interval_ms = 200\nmessage_timeout_ms = 2000\nlinger_ms = 2\n";

async fn ready(admin: std::net::SocketAddr) -> bool {
    matches!(http_get(admin, "/readyz").await, Ok((200, _)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_batches_are_in_kafka_once_through_a_leader_outage_and_produce_errors() -> anyhow::Result<()> {
    const METERS: usize = 4;
    const TOTAL: u64 = 25_000;
    let bed = TestBed::new()?;
    let kafka = KafkaCluster::start(3, TOPIC, 3)?;
    let sink = kafka.sink_toml(SINK_KEYS);
    let c1 = bed.start_collector("c1", &sink).await?;
    let c2 = bed.start_collector("c2", &sink).await?;
    poll_until(Duration::from_secs(20), "both collectors ready", async || {
        ready(c1.admin_addr).await && ready(c2.admin_addr).await
    })
    .await?;

    // Two meters on each collector, 25,000 records each at 5,000/s: about 5 s of sending.
    let mut meters: Vec<Meter> = Vec::new();
    for i in 0..METERS {
        let collector = if i % 2 == 0 { c1.addr } else { c2.addr };
        let mut config = bed.meter_config(&format!("m{i}"), &[collector]);
        config.sources.synthetic = synthetic(5_000, TOTAL);
        meters.push(start_meter(config).await?);
    }
    wait_for_meter(
        &meters[0].metrics(),
        Duration::from_secs(30),
        "m0: first acks",
        |m| m.delivery.records_acked.get() > 0,
    )
    .await?;

    // Produce requests fail for a while (retriable errors the idempotent producer retries).
    kafka.produce_errors(vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 20])?;

    // The broker leading every partition goes away for a few seconds.
    let acked_before = records_acked(&meters);
    kafka.broker_down(1)?;
    let down_at = Instant::now();
    poll_until(
        Duration::from_secs(15),
        "c1 not ready while no leader is reachable",
        async || !ready(c1.admin_addr).await,
    )
    .await?;
    // The control plane still answers at once: a new meter is told to come back later.
    let asked = Instant::now();
    match RawSession::hello(&bed, c2.addr, ORG, "newcomer", &bed.token).await? {
        RawHello::Rejected(reject) => assert_eq!(
            reject.reason,
            pb::RejectReason::SinkUnavailable as i32,
            "{reject:?}"
        ),
        RawHello::Welcomed(_) => {
            // c2 may not have seen the outage yet; it must see it soon.
        }
    }
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "the control plane answered in {:?}",
        asked.elapsed()
    );
    let (status, _) = http_get(c1.admin_addr, "/healthz").await?;
    assert_eq!(status, 200);
    // Hold the outage past the sink's message timeout, so deliveries fail and are sent again.
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(down_at.elapsed())).await;
    let acked_during = records_acked(&meters);
    kafka.broker_up(1)?;
    poll_until(
        Duration::from_secs(30),
        "both collectors ready again",
        async || ready(c1.admin_addr).await && ready(c2.admin_addr).await,
    )
    .await?;

    for (i, meter) in meters.iter().enumerate() {
        wait_for_meter(
            &meter.metrics(),
            Duration::from_secs(120),
            &format!("m{i}: all acked"),
            |m| m.delivery.records_acked.get() >= TOTAL,
        )
        .await?;
    }
    assert_eq!(records_acked(&meters), METERS as u64 * TOTAL);
    assert!(
        acked_before < METERS as u64 * TOTAL,
        "the outage came before the end"
    );

    // Every acked batch is in the topic, intact, once after de-duplication by (meter id, seq).
    let records = kafka.read_all().await?;
    let mut distinct: HashMap<(String, u64), pb::StoredBatch> = HashMap::new();
    for r in records {
        let batch = r
            .batch
            .map_err(|e| anyhow::anyhow!("a record does not decode: {e}"))?;
        assert_eq!(batch.org_id, ORG, "stored under the authenticated org");
        assert_eq!(
            r.meter_id.as_deref(),
            Some(batch.meter_id.as_str()),
            "headers name the batch"
        );
        assert_eq!(r.seq, Some(batch.seq));
        distinct.insert((batch.meter_id.clone(), batch.seq), batch);
    }
    let expected_bytes: u64 = (0..TOTAL).map(bytes_from_src).sum();
    for (i, meter) in meters.iter().enumerate() {
        let name = format!("m{i}");
        let mine: Vec<&pb::StoredBatch> = distinct.values().filter(|b| b.meter_id == name).collect();
        let records: u64 = mine.iter().map(|b| b.records.len() as u64).sum();
        let bytes: u64 = mine
            .iter()
            .flat_map(|b| &b.records)
            .map(|r| r.bytes_from_src)
            .sum();
        assert_eq!(
            (records, bytes),
            (TOTAL, expected_bytes),
            "{name}: records in the topic"
        );
        assert_eq!(
            mine.len() as u64,
            meter.metrics().delivery.batches_acked.get(),
            "{name}: distinct batches in the topic = batches acked"
        );
        let seqs: HashSet<u64> = mine.iter().map(|b| b.seq).collect();
        assert_eq!(seqs.len(), mine.len());
    }

    // The outage was seen and counted.
    let (_, metrics) = http_get(c1.admin_addr, "/metrics").await?;
    let outages = metric_value(&metrics, "ringflow_collector_sink_outages_total").unwrap_or(0.0);
    assert!(outages >= 1.0, "c1 counted the outage ({outages})");
    println!(
        "records acked before the outage {acked_before}, during it {}; c1 sink write errors {}",
        acked_during - acked_before,
        metric_value(&metrics, "ringflow_collector_sink_write_errors_total").unwrap_or(0.0)
    );
    stop_all(meters).await?;
    c1.stop().await;
    c2.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_read_prints_what_the_topic_holds() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let kafka = KafkaCluster::start(3, "flows.{org}".replace("{org}", ORG).as_str(), 2)?;
    // A topic per org: the template puts the org in the name.
    let sink = kafka
        .sink_toml(SINK_KEYS)
        .replace(&format!("topic = \"flows.{ORG}\""), "topic = \"flows.{org}\"");
    let collector = bed.start_collector("c1", &sink).await?;
    let mut config = bed.meter_config("m0", &[collector.addr]);
    config.sources.synthetic = synthetic(10_000, 3_000);
    let meter = start_meter(config).await?;
    wait_for_meter(&meter.metrics(), Duration::from_secs(60), "all acked", |m| {
        m.delivery.records_acked.get() >= 3_000
    })
    .await?;
    stop_all(vec![meter]).await?;
    collector.stop().await;

    let config_path = bed.path().join("c1.toml");
    std::fs::write(
        &config_path,
        bed.collector_toml("c1", "127.0.0.1:0".parse()?, &sink),
    )?;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_collector-fixture"));
    cmd.args(["read", "--org", ORG, "--config"]).arg(&config_path);
    let output = ringflow_tests::process::run_bounded(cmd, Duration::from_secs(60)).await?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    // No fault in this run, so no batch was sent twice: every record exactly once.
    assert_eq!(lines.len(), 3_000, "records printed");
    assert!(lines.iter().all(|l| l["org"] == ORG && l["meter_id"] == "m0"));
    let bytes: u64 = lines
        .iter()
        .map(|l| l["bytes_from_src"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(bytes, (0..3_000).map(bytes_from_src).sum::<u64>());
    Ok(())
}

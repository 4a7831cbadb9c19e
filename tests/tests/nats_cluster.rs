//! A collector fleet on a three-node JetStream cluster on loopback (the stream replicated on all
//! three): the node leading the stream is killed with SIGKILL mid-run and started again later.
//! The collectors keep acking through it; every batch acked to a meter is in the stream exactly
//! once (counted through the stream by `Nats-Msg-Id`); and no collector is unready for longer
//! than the cluster took to elect the stream's new leader (both measured and printed).

use std::time::Duration;

use futures_util::StreamExt;

use ringflow_tests::nats::{assert_exactly_once, read_all_with, start_meters, wait_all_acked};
use ringflow_tests::nats_cluster::NatsCluster;
use ringflow_tests::{TestBed, http_get, poll_until, records_acked, stop_all};

const STREAM: &str = "FLOWS";

/// One collector's readiness over time, sampled: the longest run of samples answering other
/// than 200, from the first such sample to the first 200 after it.
#[derive(Debug, Default)]
struct Unready {
    since: Option<tokio::time::Instant>,
    longest: Duration,
}

impl Unready {
    fn sample(&mut self, ready: bool, now: tokio::time::Instant) {
        match (ready, self.since) {
            (false, None) => self.since = Some(now),
            (true, Some(since)) => {
                self.longest = self.longest.max(now - since);
                self.since = None;
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_a_three_node_cluster_acks_through_the_loss_of_the_stream_leader() -> anyhow::Result<()> {
    const METERS: usize = 4;
    const TOTAL: u64 = 40_000;
    // Readiness is the sink's health here (the listener stays bound): read in process, often.
    const SAMPLE: Duration = Duration::from_millis(5);
    const MARGIN: Duration = Duration::from_millis(100);
    let bed = TestBed::new()?;
    let mut cluster = NatsCluster::start(&bed.path().join("nats"), 3).await?;
    let sink = cluster.sink_toml(STREAM, 3);
    let collectors = [
        bed.start_collector("c1", &sink).await?,
        bed.start_collector("c2", &sink).await?,
    ];
    let addrs: Vec<_> = collectors.iter().map(|c| c.addr).collect();
    let meters = start_meters(&bed, &addrs, METERS, 2_000, TOTAL).await?;
    poll_until(Duration::from_secs(60), "a quarter acked", async || {
        records_acked(&meters) >= METERS as u64 * TOTAL / 4
    })
    .await?;

    let leader = cluster
        .stream_leader(STREAM)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the stream has no leader before the kill"))?;
    let mut elections = cluster.leader_elections(STREAM, leader).await?;
    let acked_at_kill = records_acked(&meters);
    cluster.kill(leader);
    let killed = tokio::time::Instant::now();
    // Until a new leader is elected (the cluster announces it) and both collectors are ready
    // again: how long the election took, and how long each collector said it was not ready.
    let mut elected = None;
    let mut unready = [Unready::default(), Unready::default()];
    let deadline = killed + Duration::from_secs(60);
    loop {
        let now = tokio::time::Instant::now();
        let mut all_ready = true;
        for (c, state) in collectors.iter().zip(&mut unready) {
            let ready = c.metrics.sink.sink_healthy.get() == 1;
            state.sample(ready, now);
            all_ready &= ready;
        }
        if elected.is_some() && all_ready {
            break;
        }
        anyhow::ensure!(
            now < deadline,
            "60 s after the kill: elected {elected:?}, collectors {unready:?}"
        );
        tokio::select! {
            Some(_) = elections.next(), if elected.is_none() => elected = Some(killed.elapsed()),
            () = tokio::time::sleep(SAMPLE) => {}
        }
    }
    let election = elected.expect("the loop ends once elected");
    for c in &collectors {
        assert_eq!(
            http_get(c.admin_addr, "/readyz").await?.0,
            200,
            "ready once the sink is healthy"
        );
    }
    let new_leader = cluster
        .stream_leader(STREAM)
        .await?
        .map_or("?".to_string(), |i| i.to_string());
    poll_until(Duration::from_secs(30), "acks after the new leader", async || {
        records_acked(&meters) > acked_at_kill
    })
    .await?;

    cluster.restart(leader).await?;
    wait_all_acked(&meters, TOTAL, Duration::from_secs(120)).await?;
    let messages = read_all_with(&cluster.sink_config(STREAM)).await?;
    assert_exactly_once(&messages, &meters, TOTAL);
    let duplicates: u64 = collectors
        .iter()
        .map(|c| c.metrics.sink.sink_duplicates.get())
        .sum();
    eprintln!(
        "stream leader node-{leader} killed: node-{new_leader} elected after {election:?}; \
         collectors unready at most {:?} and {:?}; {} batches in the stream once each \
         ({} records from {METERS} meters); duplicates JetStream dropped: {duplicates}",
        unready[0].longest,
        unready[1].longest,
        messages.len(),
        METERS as u64 * TOTAL
    );
    for (name, state) in ["c1", "c2"].iter().zip(&unready) {
        assert!(
            state.longest <= election + MARGIN,
            "{name}: unready for {:?}, longer than the election took ({election:?}; allowed {MARGIN:?} more)",
            state.longest
        );
    }
    stop_all(meters).await?;
    for c in collectors {
        c.stop().await;
    }
    Ok(())
}

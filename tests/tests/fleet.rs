//! Fleet selection over loopback: 300 meters find 3 collectors (127.0.0.2-4, one port) through an
//! in-process authoritative DNS server and spread themselves over them by consistent hashing.
//!
//! Every meter id and address is known, so where each meter must end up is computed from the ring
//! itself and compared meter by meter, besides the fairness bounds.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ringflow_meter::Meter;
use ringflow_meter::ring::Ring;
use ringflow_tests::dns::{DnsServer, Records};
use ringflow_tests::process::{CollectorProcess, free_udp_port_on};
use ringflow_tests::{
    RunningCollector, TestBed, start_meter, stop_all, summarize, synthetic, wait_for_meter,
};
use tokio::time::Instant;

const COLLECTOR_BIN: &str = env!("CARGO_BIN_EXE_collector-fixture");
const IPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
    Ipv4Addr::new(127, 0, 0, 4),
];

fn fleet(port: u16) -> Vec<SocketAddr> {
    IPS.iter().map(|ip| SocketAddr::from((*ip, port))).collect()
}

fn ring_of(addrs: &[SocketAddr]) -> Ring {
    Ring::new(addrs.iter().map(|a| a.to_string()))
}

fn meter_id(i: usize) -> String {
    format!("m{i:03}")
}

async fn dns_for(addrs: &[SocketAddr], single_answer: bool) -> anyhow::Result<DnsServer> {
    DnsServer::start(Records {
        a: IPS.to_vec(),
        srv: Vec::new(),
        ttl: 2,
        single_answer: single_answer && !addrs.is_empty(),
    })
    .await
}

async fn start_meters(
    bed: &TestBed,
    ids: &[String],
    dns: SocketAddr,
    port: u16,
    reconnect: &str,
) -> anyhow::Result<Vec<Meter>> {
    let mut meters = Vec::new();
    for id in ids {
        let mut config = bed.fleet_meter_config(id, dns, port, reconnect)?;
        config.sources.synthetic = synthetic(20, 0);
        meters.push(start_meter(config).await?);
    }
    Ok(meters)
}

/// Waits until every meter is connected where `expected` says (woken by each meter's progress
/// signal), then checks them all once more in case one moved meanwhile.
async fn converge(
    meters: &[Meter],
    expected: impl Fn(&str) -> String,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        for m in meters {
            let want = expected(m.id());
            let left = deadline.saturating_duration_since(Instant::now());
            let what = format!("meter {} connected to {want}", m.id());
            wait_for_meter(&m.metrics(), left, &what, |mm| {
                mm.connected_to().as_deref() == Some(want.as_str())
            })
            .await?;
        }
        if meters
            .iter()
            .all(|m| m.metrics().connected_to().as_deref() == Some(expected(m.id()).as_str()))
        {
            return Ok(());
        }
    }
}

/// [`converge`] with every meter on its first choice in `ring`.
async fn converge_on_first_choice(meters: &[Meter], ring: &Ring, within: Duration) -> anyhow::Result<()> {
    // An empty ring expects no collector, which no meter reports: converge says so when it times out.
    converge(
        meters,
        |id| ring.first(id).map_or_else(String::new, |c| c.to_string()),
        within,
    )
    .await
}

fn sessions_per_collector(meters: &[Meter]) -> HashMap<Arc<str>, usize> {
    let mut counts = HashMap::new();
    for m in meters {
        if let Some(c) = m.metrics().connected_to() {
            *counts.entry(c).or_default() += 1;
        }
    }
    counts
}

fn assert_fair(counts: &HashMap<Arc<str>, usize>, collectors: usize, meters: usize) {
    let fair = meters as f64 / collectors as f64;
    assert_eq!(counts.len(), collectors, "{counts:?}");
    for (c, n) in counts {
        let share = *n as f64 / fair;
        assert!(
            (0.6..=1.4).contains(&share),
            "{c} holds {n} meters, {share:.2} x its fair share: {counts:?}"
        );
    }
}

/// 300 meters spread over 3 collectors exactly as the ring says; one collector is killed (SIGKILL)
/// and its meters spread over the other two, each to its next collector in ring order; no acked
/// record is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meters_share_the_fleet_and_a_dead_collectors_meters_spread_over_the_rest() -> anyhow::Result<()> {
    const METERS: usize = 300;
    let bed = TestBed::new()?;
    let port = free_udp_port_on(&IPS)?;
    let addrs = fleet(port);
    let dns = dns_for(&addrs, false).await?;
    let binary = std::path::Path::new(COLLECTOR_BIN);
    let mut collectors = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let extra = TestBed::collector_fleet_extra(*addr, &addrs);
        collectors.push(CollectorProcess::start(binary, &bed, &format!("c{i}"), *addr, &extra).await?);
    }
    let ring = ring_of(&addrs);
    let ids: Vec<String> = (0..METERS).map(meter_id).collect();
    let meters = start_meters(
        &bed,
        &ids,
        dns.addr(),
        port,
        "connect_timeout_ms = 2000\nrebalance_window_ms = 600000",
    )
    .await?;

    converge_on_first_choice(&meters, &ring, Duration::from_secs(90)).await?;
    assert_fair(&sessions_per_collector(&meters), 3, METERS);

    // Kill one collector: its meters go to their second choice; nobody else moves.
    let dead = addrs[0].to_string();
    collectors[0].kill();
    let expected = |id: &str| {
        ring.walk(id)
            .find(|c| **c != *dead)
            .map(|c| c.to_string())
            .unwrap_or_default()
    };
    converge(&meters, expected, Duration::from_secs(90)).await?;
    let moved: Vec<&String> = ids
        .iter()
        .filter(|id| **ring.first(id).unwrap() == *dead)
        .collect();
    let mut moved_to: HashMap<String, usize> = HashMap::new();
    for id in &moved {
        *moved_to.entry(expected(id)).or_default() += 1;
    }
    let fair = moved.len() as f64 / 2.0;
    assert_eq!(moved_to.len(), 2, "spread over both survivors: {moved_to:?}");
    for (c, n) in &moved_to {
        let share = *n as f64 / fair;
        assert!(
            (0.5..=1.5).contains(&share),
            "{c} took {n} of the {} moved meters",
            moved.len()
        );
    }

    // Nothing acked is lost: everything the meters produced is stored, in one of the three stores
    // (the dead collector's included: it acked only what it had written).
    let generated_before_stop: Vec<_> = meters.iter().map(|m| m.metrics()).collect();
    stop_all(meters).await?;
    for c in collectors.drain(1..) {
        c.terminate().await?;
    }
    let mut stored = Vec::new();
    for i in 0..3 {
        stored.extend(ringflow_collector::data::sink::file::store::read_all(
            &bed.data_dir(&format!("c{i}")),
            None,
        )?);
    }
    let s = summarize(&stored);
    let acked: u64 = generated_before_stop
        .iter()
        .map(|m| m.delivery.records_acked.get())
        .sum();
    let generated: u64 = generated_before_stop
        .iter()
        .map(|m| m.records.records_generated.get())
        .sum();
    assert_eq!(s.records, acked, "every acked record is stored");
    assert_eq!(
        acked, generated,
        "and every generated record was acked by the end"
    );
    drop(dns);
    Ok(())
}

async fn in_process_fleet(bed: &TestBed, addrs: &[SocketAddr]) -> anyhow::Result<Vec<RunningCollector>> {
    let mut collectors = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let mut config =
            bed.collector_config(&format!("c{i}"), &TestBed::collector_fleet_extra(*addr, addrs))?;
        config.listen = *addr;
        collectors.push(RunningCollector::start(config).await?);
    }
    Ok(collectors)
}

/// With the DNS server gone, restarted meters connect from their last-known-good fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_meters_use_the_last_known_good_fleet_while_dns_is_down() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let port = free_udp_port_on(&IPS)?;
    let addrs = fleet(port);
    let collectors = in_process_fleet(&bed, &addrs).await?;
    let dns = dns_for(&addrs, false).await?;
    let dns_addr = dns.addr();
    let ring = ring_of(&addrs);
    let ids: Vec<String> = (0..30).map(meter_id).collect();
    let meters = start_meters(&bed, &ids, dns_addr, port, "").await?;
    converge_on_first_choice(&meters, &ring, Duration::from_secs(60)).await?;
    stop_all(meters).await?;

    dns.stop().await;
    let meters = start_meters(&bed, &ids, dns_addr, port, "").await?;
    converge_on_first_choice(&meters, &ring, Duration::from_secs(60)).await?;
    for m in &meters {
        assert_eq!(
            m.metrics().fleet.fleet_last_known_good.get(),
            1,
            "{} started from its saved fleet",
            m.id()
        );
        assert!(ringflow_meter::MeterMetrics::count(&m.metrics().fleet.fleet_lookups, "unreachable") >= 1);
    }
    stop_all(meters).await?;
    for c in collectors {
        c.stop().await;
    }
    Ok(())
}

/// A DNS that answers every query with the same single record (what a caching resolver in front of
/// many meters does) still ends balanced: the collector that DNS named tells each meter the whole
/// fleet in `Welcome`, and meters move to their first choice within the rebalance window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_answering_a_single_record_still_ends_balanced() -> anyhow::Result<()> {
    const METERS: usize = 300;
    let bed = TestBed::new()?;
    let port = free_udp_port_on(&IPS)?;
    let addrs = fleet(port);
    let collectors = in_process_fleet(&bed, &addrs).await?;
    let dns = dns_for(&addrs, true).await?;
    let ring = ring_of(&addrs);
    let ids: Vec<String> = (0..METERS).map(meter_id).collect();
    let meters = start_meters(&bed, &ids, dns.addr(), port, "rebalance_window_ms = 3000").await?;
    converge_on_first_choice(&meters, &ring, Duration::from_secs(90)).await?;
    let counts = sessions_per_collector(&meters);
    assert_fair(&counts, 3, METERS);
    // DNS only ever named the first collector; the others were learned from Welcome.
    assert!(
        collectors[1].metrics.sessions.sessions_active.get() > 0
            && collectors[2].metrics.sessions.sessions_active.get() > 0
    );
    let moved: u64 = meters
        .iter()
        .map(|m| ringflow_meter::MeterMetrics::count(&m.metrics().sessions.session_ends, "moved"))
        .sum();
    assert!(
        moved as usize >= counts.len() - 1,
        "meters moved off the collector DNS named"
    );
    stop_all(meters).await?;
    for c in collectors {
        c.stop().await;
    }
    dns.stop().await;
    Ok(())
}

//! Bounded load on live collectors: two collectors on 127.0.0.2 and 127.0.0.3 (one QUIC port,
//! one admin port) poll each other's `/load`; once a collector knows it holds more than its
//! share of the fleet's sessions, it turns new meters away with `Reject(overloaded)` while its
//! peer welcomes them, and a meter that knew only the full collector learns the fleet from its
//! `Reject`. With `admission.bounded_load_epsilon = 0` there is no cap.
//!
//! Every wait is on a collector's own metrics (its poll rounds, the peers it heard), with a
//! deadline; nothing sleeps.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use ringflow_meter::MeterMetrics;
use ringflow_proto::pb;
use ringflow_tests::process::{free_tcp_port_on, free_udp_port_on};
use ringflow_tests::raw::{RawHello, RawSession};
use ringflow_tests::{
    RunningCollector, TestBed, http_get, poll_until, start_meter, synthetic, wait_for_meter,
};

const IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)];
const ROUNDS: &str = "ringflow_collector_fleet_poll_rounds_total";
const PEERS: &str = "ringflow_collector_fleet_peers";
const MEAN: &str = "ringflow_collector_fleet_mean_sessions";
const BOUNDED_REJECTS: &str = "ringflow_collector_hello_rejects_total{reason=\"overloaded_bounded_load\"}";
const WAIT: Duration = Duration::from_secs(20);

/// Two collectors, A on 127.0.0.2 and B on 127.0.0.3, each polling the other every 100 ms;
/// `epsilon` is A's `admission.bounded_load_epsilon` (B keeps the default).
async fn fleet_of_two(bed: &TestBed, epsilon: &str) -> anyhow::Result<(RunningCollector, RunningCollector)> {
    let port = free_udp_port_on(&IPS)?;
    let admin_port = free_tcp_port_on(&IPS)?;
    let members: Vec<String> = IPS.iter().map(|ip| format!("\"{ip}:{port}\"")).collect();
    let start = |name: &str, ip: Ipv4Addr, admission: String| {
        let extra = format!(
            "[fleet]\nadvertise = \"{ip}:{port}\"\nmembers = [{}]\nload_admin_port = {admin_port}\nload_poll_ms = 100\n{admission}",
            members.join(", ")
        );
        let text = bed.collector_toml_at(
            name,
            SocketAddr::from((ip, port)),
            SocketAddr::from((ip, admin_port)),
            &extra,
        );
        async move { RunningCollector::start(ringflow_collector::Config::parse(&text)?).await }
    };
    let a = start(
        "a",
        IPS[0],
        format!("[admission]\nbounded_load_epsilon = {epsilon}\n"),
    )
    .await?;
    let b = start("b", IPS[1], String::new()).await?;
    Ok((a, b))
}

/// The value of the sample `name` (with its labels, if any) on the collector's `/metrics`.
async fn metric(admin: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let (status, text) = http_get(admin, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}");
    Ok(ringflow_tests::metric_value(&text, name).unwrap_or(0.0))
}

/// Waits until the collector at `admin` has completed `rounds` more poll rounds and heard its peer.
async fn polled(admin: SocketAddr, rounds: f64, what: &str) -> anyhow::Result<()> {
    let until = metric(admin, ROUNDS).await? + rounds;
    poll_until(WAIT, what, async || {
        metric(admin, ROUNDS).await.unwrap_or(0.0) >= until
            && metric(admin, PEERS).await.unwrap_or(0.0) == 1.0
    })
    .await
}

/// Sessions on the collector at `addr` for meters `m{i}`, `i` in `meters`; each must be welcomed.
async fn welcomed_on(
    bed: &TestBed,
    addr: SocketAddr,
    meters: std::ops::Range<usize>,
) -> anyhow::Result<Vec<Box<RawSession>>> {
    let client = ringflow_meter::transport::client_config(&bed.certs.ca)?;
    let endpoint = ringflow_meter::transport::client_endpoint(client)?;
    let mut held = Vec::new();
    for i in meters {
        match RawSession::hello_on(&endpoint, addr, &bed.org, &format!("m{i}"), &bed.token).await? {
            RawHello::Welcomed(session) => held.push(session),
            RawHello::Rejected(reject) => anyhow::bail!("session {i} at {addr} was rejected: {reject:?}"),
        }
    }
    Ok(held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_over_its_share_sends_meters_to_its_peer() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let (a, b) = fleet_of_two(&bed, "0.05").await?;
    let client = ringflow_meter::transport::client_config(&bed.certs.ca)?;
    let endpoint = ringflow_meter::transport::client_endpoint(client)?;
    let hello = |addr: SocketAddr, meter: String| {
        let (endpoint, bed) = (endpoint.clone(), &bed);
        async move { RawSession::hello_on(&endpoint, addr, &bed.org, &meter, &bed.token).await }
    };

    // Two sessions on A: however stale A's view, two of a fleet's three sessions are within
    // ⌈1.05 × 3 / 2⌉ = 2, so both are welcomed.
    let mut held = Vec::new();
    for i in 0..2 {
        match hello(a.addr, format!("m{i}")).await? {
            RawHello::Welcomed(session) => held.push(session),
            RawHello::Rejected(reject) => anyhow::bail!("session {i} on A was rejected: {reject:?}"),
        }
    }
    let (status, load) = http_get(a.admin_addr, "/load").await?;
    assert_eq!(status, 200);
    // Fields are only ever added to a load report: these three are what a peer needs.
    let load: serde_json::Value = serde_json::from_str(&load)?;
    assert_eq!(
        (&load["collector"], &load["sessions"], &load["draining"]),
        (&"a".into(), &2.into(), &false.into()),
        "{load}"
    );

    // Once A has polled B since (B holds none), A holds 2 of 2: one more would pass
    // ⌈1.05 × 3 / 2⌉ = 2, so the next meter is told to go elsewhere, soon.
    polled(a.admin_addr, 2.0, "A polls B after its two sessions").await?;
    assert_eq!(
        metric(a.admin_addr, MEAN).await?,
        1.0,
        "A's estimate of the fleet's mean"
    );
    match hello(a.addr, "m2".into()).await? {
        RawHello::Rejected(reject) => {
            assert_eq!(reject.reason, pb::RejectReason::Overloaded as i32, "{reject:?}");
            assert!((1_000..2_000).contains(&reject.retry_after_ms), "{reject:?}");
            let fleet: Vec<&str> = reject.fleet.iter().map(|m| m.address.as_str()).collect();
            assert_eq!(
                fleet,
                [b.addr.to_string(), a.addr.to_string()],
                "the fleet, to walk on"
            );
        }
        RawHello::Welcomed(_) => anyhow::bail!("A welcomed a meter over its share"),
    }
    assert_eq!(metric(a.admin_addr, BOUNDED_REJECTS).await?, 1.0);
    assert_eq!(a.metrics.sessions.sessions_active.get(), 2);

    // B, holding none of the fleet's sessions, takes the meter A sent on.
    match hello(b.addr, "m2".into()).await? {
        RawHello::Welcomed(session) => held.push(session),
        RawHello::Rejected(reject) => anyhow::bail!("B rejected a meter it has room for: {reject:?}"),
    }
    assert_eq!(metric(b.admin_addr, BOUNDED_REJECTS).await?, 0.0);

    // Once A has seen that, 2 of the fleet's 3 sessions are within its share (⌈1.05 × 4 / 2⌉ =
    // 3 with one more): it welcomes again.
    polled(a.admin_addr, 2.0, "A polls B after B took a meter").await?;
    match hello(a.addr, "m3".into()).await? {
        RawHello::Welcomed(session) => held.push(session),
        RawHello::Rejected(reject) => anyhow::bail!("A rejected a meter within its share: {reject:?}"),
    }
    drop(held);
    a.stop().await;
    b.stop().await;
    Ok(())
}

/// A meter configured with A alone (as a DNS answering one record would name it) is turned away
/// by A over its share, learns the fleet from the `Reject`, and walks on to B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_sent_away_learns_the_fleet_from_the_reject() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let (a, b) = fleet_of_two(&bed, "0.05").await?;
    let held = welcomed_on(&bed, a.addr, 0..2).await?;
    polled(a.admin_addr, 2.0, "A polls B after its two sessions").await?;

    let mut config = bed.meter_config("meter", &[a.addr]);
    config.sources.synthetic = synthetic(20, 0);
    // It stays where it lands: no move back towards A within the test.
    config.reconnect.rebalance_window_ms = 600_000;
    let meter = start_meter(config).await?;
    let on_b = b.addr.to_string();
    wait_for_meter(&meter.metrics(), WAIT, "the meter to be welcomed by B", |m| {
        m.connected_to().as_deref() == Some(on_b.as_str())
    })
    .await?;
    let m = meter.metrics();
    assert!(
        MeterMetrics::count(&m.sessions.rejects, "overloaded") >= 1,
        "A turned it away first"
    );
    assert_eq!(
        m.fleet.fleet_collectors.get(),
        2,
        "its ring holds the fleet A named"
    );
    assert!(metric(a.admin_addr, BOUNDED_REJECTS).await? >= 1.0);
    meter.stop().await?;
    drop(held);
    a.stop().await;
    b.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_epsilon_zero_a_collector_has_no_cap() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let (a, b) = fleet_of_two(&bed, "0").await?;
    let mut held = welcomed_on(&bed, a.addr, 0..2).await?;
    // B polls A (A still answers /load) and sees it hold both sessions: by then as many poll
    // intervals have passed for A, which must not have polled at all.
    polled(b.admin_addr, 3.0, "B polls A three times").await?;
    assert_eq!(
        metric(b.admin_addr, MEAN).await?,
        1.0,
        "B's estimate of the fleet's mean"
    );
    // A, with no cap, welcomes three more.
    held.extend(welcomed_on(&bed, a.addr, 2..5).await?);
    assert_eq!(a.metrics.sessions.sessions_active.get(), 5);
    assert_eq!(
        metric(a.admin_addr, ROUNDS).await?,
        0.0,
        "A does not poll with the cap off"
    );
    assert_eq!(metric(a.admin_addr, BOUNDED_REJECTS).await?, 0.0);
    drop(held);
    a.stop().await;
    b.stop().await;
    Ok(())
}

//! The meter's host sources end to end, through a running collector.
//!
//! - `sockets` against ground truth: the test moves exactly 50 MB one way and 5 MB the other
//!   over one loopback TCP connection, in steps spread over several of the source's reads; the
//!   records the collector stored for that connection's 5-tuple must sum to those byte counts
//!   within 1%, reported once (from the client's end) with the server's end marked.
//! - `interfaces` reading a `/proc/net/dev`-format file the test rewrites between reads: a
//!   32-bit wrap, a vanished interface and a new one.
//! - The demo (README command 1) shows this host's own flows arriving.

use std::time::Duration;

use ringflow_meter::MeterMetrics;
use ringflow_proto::pb;
use ringflow_tests::{TestBed, start_meter, wait_for_meter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const UP: usize = 50_000_000;
const DOWN: usize = 5_000_000;
const STEPS: usize = 10;

/// Moves `bytes` from `from` to `to`.
async fn send(from: &mut TcpStream, to: &mut TcpStream, bytes: usize) -> anyhow::Result<()> {
    let data = vec![0x5a; bytes];
    let mut got = vec![0; bytes];
    let (w, r) = tokio::join!(from.write_all(&data), to.read_exact(&mut got));
    w?;
    r?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_transfer_is_reported_within_one_percent() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let collector = bed.start_collector("c1", "").await?;
    let mut config = bed.meter_config("sockets", &[collector.addr]);
    config.sources.sockets.enabled = true;
    config.sources.sockets.interval_ms = 100;
    let meter = start_meter(config).await?;
    let metrics = meter.metrics();
    ringflow_tests::sockets_reads_after(&metrics, 1).await?; // the baseline read

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let server_addr = listener.local_addr()?;
    let (client, accepted) = tokio::join!(TcpStream::connect(server_addr), listener.accept());
    let (mut client, (mut server, _)) = (client?, accepted?);
    let client_addr = client.local_addr()?;
    for _ in 0..STEPS {
        send(&mut client, &mut server, UP / STEPS).await?;
        send(&mut server, &mut client, DOWN / STEPS).await?;
        ringflow_tests::sockets_reads_after(&metrics, 1).await?;
    }
    // Two full reads with the connection still open see its final counters.
    ringflow_tests::sockets_reads_after(&metrics, 2).await?;
    drop((client, server));
    wait_for_meter(&metrics, Duration::from_secs(20), "every record acked", |m| {
        m.delivery.records_acked.get() == m.records.records_generated.get()
    })
    .await?;
    meter.stop().await?;
    let stored = collector.stored()?;
    collector.stop().await;

    let port = |p: u16| u32::from(p);
    let records: Vec<&pb::FlowRecord> = stored.iter().flat_map(|b| &b.records).collect();
    let this: Vec<&&pb::FlowRecord> = records
        .iter()
        .filter(|r| r.src_port == port(client_addr.port()) && r.dst_port == port(server_addr.port()))
        .collect();
    let reverse = records
        .iter()
        .filter(|r| r.src_port == port(server_addr.port()) && r.dst_port == port(client_addr.port()))
        .count();
    assert_eq!(
        reverse, 0,
        "a connection inside the host is reported from one end only"
    );
    assert!(
        this.len() >= 3,
        "the transfer spanned several reads, so several delta records: {}",
        this.len()
    );
    let up: u64 = this.iter().map(|r| r.bytes_from_src).sum();
    let down: u64 = this.iter().map(|r| r.bytes_from_dst).sum();
    let within = |got: u64, want: usize| (got as f64 - want as f64).abs() <= want as f64 * 0.01;
    assert!(within(up, UP), "client to server: {up} bytes reported, {UP} sent");
    assert!(
        within(down, DOWN),
        "server to client: {down} bytes reported, {DOWN} sent"
    );
    for r in &this {
        assert_eq!(r.src_addr.as_ref(), &[127, 0, 0, 1]);
        assert_eq!(r.dst_addr.as_ref(), &[127, 0, 0, 1]);
        assert_eq!(r.ip_protocol, 6);
        // Either tier: bpf where the test may load programs (root), else sock_diag.
        assert!(
            [pb::SourceKind::Socket as i32, pb::SourceKind::SocketBpf as i32].contains(&r.source),
            "{r:?}"
        );
        assert_eq!(r.server, pb::ServerSide::Dst as i32, "the server's end listens");
        assert!(r.packets_from_src > 0 || r.bytes_from_src == 0);
        assert!(r.start_unix_nanos < r.end_unix_nanos);
    }
    println!(
        "{} records for the connection: {up} bytes up (sent {UP}), {down} down (sent {DOWN})",
        this.len()
    );
    Ok(())
}

const DEV_HEADER: &str = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";

fn dev_line(name: &str, rx: (u64, u64, u64, u64), tx: (u64, u64, u64, u64)) -> String {
    format!(
        "{name:>6}: {} {} {} {} 0 0 0 0 {} {} {} {} 0 0 0 0\n",
        rx.0, rx.1, rx.2, rx.3, tx.0, tx.1, tx.2, tx.3
    )
}

fn interface_reads(m: &MeterMetrics) -> u64 {
    MeterMetrics::source_count(&m.sources.source_reads, "interfaces")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interface_counters_arrive_as_deltas_across_a_wrap_and_a_vanished_interface() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let collector = bed.start_collector("c1", "").await?;
    let dev = bed.path().join("net-dev");
    let near_wrap = u64::from(u32::MAX) - 499;
    std::fs::write(
        &dev,
        format!(
            "{DEV_HEADER}{}{}",
            dev_line("eth0", (near_wrap, 100, 0, 0), (9_000, 90, 0, 0)),
            dev_line("wg0", (10, 1, 0, 0), (20, 2, 0, 0)),
        ),
    )?;
    let mut config = bed.meter_config("ifaces", &[collector.addr]);
    config.sources.interfaces.enabled = true;
    config.sources.interfaces.path = dev.clone();
    config.sources.interfaces.interval_ms = 50;
    let meter = start_meter(config).await?;
    let metrics = meter.metrics();
    let after = |n: u64| {
        let target = interface_reads(&metrics) + n;
        let m = metrics.clone();
        async move {
            wait_for_meter(&m, Duration::from_secs(10), "interface reads", |m| {
                interface_reads(m) >= target
            })
            .await
        }
    };
    after(1).await?; // the baseline
    // Written to a new file and renamed, so a read never sees half of it.
    let replace = |text: String| -> anyhow::Result<()> {
        let tmp = dev.with_extension("new");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &dev)?;
        Ok(())
    };
    replace(format!(
        "{DEV_HEADER}{}{}",
        dev_line("eth0", (1_500, 112, 1, 2), (9_700, 97, 3, 4)),
        dev_line("veth1", (300, 3, 0, 0), (400, 4, 0, 0)),
    ))?;
    after(2).await?;
    meter.stop().await?;
    let stored = collector.stored()?;
    collector.stop().await;
    let records: Vec<&pb::FlowRecord> = stored.iter().flat_map(|b| &b.records).collect();
    assert_eq!(
        records.len(),
        2,
        "eth0 and the new veth1; wg0 vanished: {records:?}"
    );
    let eth0 = records
        .iter()
        .find(|r| r.interface == "eth0")
        .expect("eth0 reported");
    assert_eq!(
        eth0.bytes_from_dst, 2_000,
        "received bytes across the 32-bit wrap"
    );
    assert_eq!(eth0.packets_from_dst, 12);
    assert_eq!((eth0.bytes_from_src, eth0.packets_from_src), (700, 7));
    assert_eq!(
        (eth0.rx_errors, eth0.rx_drops, eth0.tx_errors, eth0.tx_drops),
        (1, 2, 3, 4)
    );
    assert_eq!(eth0.source, pb::SourceKind::Interface as i32);
    let veth = records
        .iter()
        .find(|r| r.interface == "veth1")
        .expect("veth1 reported");
    assert_eq!((veth.bytes_from_dst, veth.bytes_from_src), (300, 400));
    Ok(())
}

/// README command 1: the demo's meter reads this host. Its own QUIC traffic to the collector
/// moves the loopback interface's counters, so interface records arrive on any machine, and its
/// own TCP echo is a connection the sockets source reports with the demo's process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_this_hosts_own_flows_arriving() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = ringflow_tests::demo::DemoOptions {
        dir: dir.path().join("demo"),
        duration: Some(Duration::from_secs(4)),
        rate: 50,
        samples: 2,
    };
    let mut out = Vec::new();
    let totals =
        ringflow_tests::demo::run(options, tokio_util::sync::CancellationToken::new(), &mut out).await?;
    let text = String::from_utf8_lossy(&out);
    assert!(
        totals.interfaces > 0,
        "interface records from this host arrived:\n{text}"
    );
    assert!(
        totals.read_back > totals.interfaces,
        "and the synthetic ones:\n{text}"
    );
    assert!(
        totals.with_process > 0,
        "socket records that name their process arrived:\n{text}"
    );
    assert!(text.contains("from this host: sockets"), "{text}");
    assert!(
        // "socket" (sock_diag tier) or "socket_bpf" (bpf tier).
        text.contains(r#""source":"socket"#) || text.contains(r#""source":"interface""#),
        "a host record is among the samples:\n{text}"
    );
    Ok(())
}

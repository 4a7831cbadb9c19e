//! The sockets source's bpf tier against ground truth: a real meter loads its eBPF programs,
//! reads this host into a real collector, and the stored records are checked exactly against
//! the datagrams, bytes and connections the test made. Byte counts are payload (what the
//! applications moved); `ip_bytes` adds each packet's IP and transport headers.
//!
//! These tests need root (CI runs as root). Elsewhere each prints why it did not run; as root,
//! a meter built without its programs fails them (see `ringflow_tests::bpf::skip`).
//!
//! - UDP: 1,000 datagrams on loopback, measured by two meters at once: each stores them
//!   exactly, once, from the client's end, with this process as the owner.
//! - IPv6: UDP datagrams and a TCP stream on `[::1]`, exact.
//! - 10,000 UDP request/reply exchanges, each from a fresh socket: every one stored exactly.
//! - 10,000 short TCP connections: every one exactly (payload, no SYN or FIN), each once, from
//!   the client's end, with this process's pid and name (the kernel's destroy notifications
//!   alone cannot name them).
//! - A child process that sends and exits before the meter reads: its pid and name.
//! - A server whose client is in another network namespace: its end is named by its listener.
//! - `kill -9` of a meter: none of its programs or links are left.
//! - A flow map too small for the host's flows: the packets not counted are counted as lost
//!   and summed by the collector, nothing is counted twice, and the meter goes on.
//! - `meter check` says which tier runs.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ringflow_meter::config::{BpfMode, SocketsConfig};
use ringflow_proto::pb;
use ringflow_tests::records::{own_name, records_from, records_to};
use ringflow_tests::tcp_load::{Script, ScriptServer, client_index, run_clients};
use ringflow_tests::{RunningCollector, TestBed, poll_until, start_meter};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// A collector and a meter measuring this host with the bpf tier, after its first read.
async fn meter_with_bpf(
    bed: &TestBed,
    name: &str,
    tweak: impl FnOnce(&mut SocketsConfig),
) -> anyhow::Result<(RunningCollector, ringflow_meter::Meter)> {
    let collector = bed.start_collector(&format!("{name}-c"), "").await?;
    let mut config = bed.meter_config(name, &[collector.addr]);
    let s = &mut config.sources.sockets;
    s.enabled = true;
    s.interval_ms = 200;
    s.bpf.mode = BpfMode::On;
    // Every meter hears the whole host, and these tests run beside others: room for every end.
    s.bpf.ring_bytes = 16 << 20;
    tweak(s);
    let meter = start_meter(config).await?;
    // The first read (the tier reads at once when it starts).
    ringflow_tests::wait_for_meter(&meter.metrics(), Duration::from_secs(10), "the first read", |m| {
        ringflow_meter::MeterMetrics::source_count(&m.sources.source_reads, "sockets") >= 1
    })
    .await?;
    Ok((collector, meter))
}

/// Loopback address `i` of network 127.`net`.0.0/16 (65,000 of them), one per client.
fn ip(net: u8, i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, net, (i / 250) as u8, (i % 250 + 1) as u8))
}

/// The client index of an address made by [`ip`] on `net`.
fn index(net: u8, addr: &[u8]) -> Option<usize> {
    match addr {
        [127, n, hi, lo] if *n == net && *lo >= 1 => Some(usize::from(*hi) * 250 + usize::from(*lo) - 1),
        _ => None,
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Moved {
    bytes_up: u64,
    packets_up: u64,
    bytes_down: u64,
    packets_down: u64,
}

fn sum<'a>(records: impl IntoIterator<Item = &'a pb::FlowRecord>) -> Moved {
    records.into_iter().fold(Moved::default(), |m, r| Moved {
        bytes_up: m.bytes_up + r.bytes_from_src,
        packets_up: m.packets_up + r.packets_from_src,
        bytes_down: m.bytes_down + r.bytes_from_dst,
        packets_down: m.packets_down + r.packets_from_dst,
    })
}

/// Polls the store until the records to `dst` reach `want` bytes up; fails after `timeout`, or
/// at once if they go beyond.
async fn stored_reach(
    collector: &RunningCollector,
    dst: SocketAddr,
    want: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    poll_until(timeout, "the stored bytes reach what moved", async || {
        let got = collector
            .stored()
            .map_or(0, |s| sum(&records_to(&s, dst)).bytes_up);
        assert!(
            got <= want,
            "stored {got} bytes up, more than the {want} that moved"
        );
        got == want
    })
    .await
    .map_err(|e| {
        let got = collector.stored().map(|s| sum(&records_to(&s, dst)));
        anyhow::anyhow!("{e}: stored {got:?}, want {want} bytes up to {dst}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_are_stored_exactly_by_each_of_two_meters() -> anyhow::Result<()> {
    if ringflow_tests::bpf::skip() {
        return Ok(());
    }
    const DATAGRAMS: u64 = 1_000;
    const SIZE: usize = 1_200;
    let bed = TestBed::new()?;
    let (c1, m1) = meter_with_bpf(&bed, "m1", |_| {}).await?;
    let (c2, m2) = meter_with_bpf(&bed, "m2", |_| {}).await?;
    let server = UdpSocket::bind("127.0.0.1:0").await?;
    let server_addr = server.local_addr()?;
    let client = UdpSocket::bind((ip(2, 0), 0)).await?;
    let client_addr = client.local_addr()?;
    let received = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        let mut n = 0u64;
        while n < DATAGRAMS {
            server.recv_from(&mut buf).await?;
            n += 1;
        }
        anyhow::Ok(n)
    });
    let datagram = vec![0x42u8; SIZE];
    for _ in 0..DATAGRAMS {
        client.send_to(&datagram, server_addr).await?;
        // One at a time through the server's buffer: every datagram arrives.
        tokio::task::yield_now().await;
    }
    drop(client);
    let want = DATAGRAMS * SIZE as u64;
    for c in [&c1, &c2] {
        stored_reach(c, server_addr, want, Duration::from_secs(20)).await?;
    }
    m1.stop().await?;
    m2.stop().await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), received).await;
    for c in [c1, c2] {
        let stored = c.stored()?;
        c.stop().await;
        let records = records_to(&stored, server_addr);
        assert_eq!(
            sum(&records),
            Moved {
                bytes_up: want,
                packets_up: DATAGRAMS,
                bytes_down: 0,
                packets_down: 0
            }
        );
        assert_eq!(
            records.iter().map(|r| r.ip_bytes_from_src).sum::<u64>(),
            DATAGRAMS * (SIZE as u64 + 28),
            "IP bytes: 20 of IPv4 header and 8 of UDP header per datagram"
        );
        assert_eq!(
            records_from(&stored, server_addr),
            0,
            "never from the server's end"
        );
        for r in &records {
            assert_eq!(r.source, pb::SourceKind::SocketBpf as i32);
            assert_eq!(r.ip_protocol, 17);
            assert_eq!(
                (r.src_port, r.server),
                (u32::from(client_addr.port()), pb::ServerSide::Dst as i32)
            );
            assert_eq!((r.pid, r.process_name.clone()), (std::process::id(), own_name()));
            assert!(r.community_id.starts_with("1:"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_udp_and_tcp_are_stored_exactly() -> anyhow::Result<()> {
    if ringflow_tests::bpf::skip() {
        return Ok(());
    }
    const DATAGRAMS: u64 = 100;
    const SIZE: usize = 500;
    const STREAM: usize = 1 << 20;
    let bed = TestBed::new()?;
    let (collector, meter) = meter_with_bpf(&bed, "m", |_| {}).await?;
    let server = UdpSocket::bind("[::1]:0").await?;
    let udp_addr = server.local_addr()?;
    let client = UdpSocket::bind("[::1]:0").await?;
    for _ in 0..DATAGRAMS {
        client.send_to(&[7u8; SIZE], udp_addr).await?;
        let mut buf = [0u8; 1024];
        server.recv_from(&mut buf).await?;
    }
    drop(client);
    let listener = tokio::net::TcpListener::bind("[::1]:0").await?;
    let tcp_addr = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await?;
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut got).await?;
        anyhow::Ok(got.len())
    });
    let mut conn = tokio::net::TcpStream::connect(tcp_addr).await?;
    tokio::io::AsyncWriteExt::write_all(&mut conn, &vec![9u8; STREAM]).await?;
    drop(conn);
    assert_eq!(reader.await??, STREAM);
    stored_reach(
        &collector,
        udp_addr,
        DATAGRAMS * SIZE as u64,
        Duration::from_secs(20),
    )
    .await?;
    stored_reach(&collector, tcp_addr, STREAM as u64, Duration::from_secs(20)).await?;
    meter.stop().await?;
    let stored = collector.stored()?;
    collector.stop().await;
    let udp = records_to(&stored, udp_addr);
    assert_eq!(
        (sum(&udp).bytes_up, sum(&udp).packets_up),
        (DATAGRAMS * SIZE as u64, DATAGRAMS)
    );
    assert_eq!(
        udp.iter().map(|r| r.ip_bytes_from_src).sum::<u64>(),
        DATAGRAMS * (SIZE as u64 + 48),
        "IP bytes: 40 of IPv6 header and 8 of UDP header per datagram"
    );
    let tcp = records_to(&stored, tcp_addr);
    assert_eq!(sum(&tcp).bytes_up, STREAM as u64);
    for r in udp.iter().chain(&tcp) {
        assert_eq!(r.src_addr.len(), 16, "IPv6 addresses: {r:?}");
        assert_eq!(r.pid, std::process::id());
    }
    assert_eq!(
        records_from(&stored, udp_addr) + records_from(&stored, tcp_addr),
        0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_udp_exchanges_from_fresh_sockets_are_each_stored_exactly() -> anyhow::Result<()> {
    if ringflow_tests::bpf::skip() {
        return Ok(());
    }
    const EXCHANGES: usize = 10_000;
    const REQUEST: usize = 60;
    const REPLY: usize = 300;
    const NET: u8 = 3;
    let bed = TestBed::new()?;
    let (collector, meter) = meter_with_bpf(&bed, "m", |_| {}).await?;
    let server = std::sync::Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let server_addr = server.local_addr()?;
    let stop = CancellationToken::new();
    let echo = {
        let (server, stop) = (std::sync::Arc::clone(&server), stop.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2_048];
            let reply = vec![0x17u8; REPLY];
            loop {
                let from = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = server.recv_from(&mut buf) => r,
                };
                if let Ok((_, from)) = from {
                    let _ = server.send_to(&reply, from).await;
                }
            }
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..32 {
        tasks.spawn(async move {
            let mut buf = vec![0u8; 2_048];
            for i in (worker..EXCHANGES).step_by(32) {
                let socket = UdpSocket::bind((ip(NET, i), 0)).await?;
                socket.send_to(&[0x33u8; REQUEST], server_addr).await?;
                tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf)).await??;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let want = (EXCHANGES * REQUEST) as u64;
    stored_reach(&collector, server_addr, want, Duration::from_secs(30)).await?;
    meter.stop().await?;
    stop.cancel();
    let _ = echo.await;
    let stored = collector.stored()?;
    collector.stop().await;
    let records = records_to(&stored, server_addr);
    let mut by_client: HashMap<usize, Vec<&pb::FlowRecord>> = HashMap::new();
    for r in &records {
        if let Some(i) = index(NET, &r.src_addr) {
            by_client.entry(i).or_default().push(r);
        }
    }
    assert_eq!(by_client.len(), EXCHANGES, "every exchange stored");
    let exact = Moved {
        bytes_up: REQUEST as u64,
        packets_up: 1,
        bytes_down: REPLY as u64,
        packets_down: 1,
    };
    let wrong: Vec<_> = by_client
        .iter()
        .filter(|(_, rs)| sum(rs.iter().copied()) != exact)
        .take(5)
        .collect();
    assert!(wrong.is_empty(), "each exchange once, exactly: {wrong:?}");
    assert!(
        records.iter().all(|r| r.pid == std::process::id()),
        "every one with its owner"
    );
    assert_eq!(
        records_from(&stored, server_addr),
        0,
        "never from the server's end"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_short_tcp_connections_are_each_stored_exactly_with_their_process() -> anyhow::Result<()>
{
    if ringflow_tests::bpf::skip() {
        return Ok(());
    }
    const CONNECTIONS: usize = 10_000;
    const SCRIPT: Script = Script {
        up: 10_000,
        down: 3_000,
    };
    let bed = TestBed::new()?;
    let (collector, meter) = meter_with_bpf(&bed, "m", |_| {}).await?;
    let stop = CancellationToken::new();
    let server = ScriptServer::start("127.0.0.1:0", SCRIPT, stop.clone()).await?;
    let longest = run_clients(server.addr, CONNECTIONS, 32, SCRIPT).await?;
    let want = (CONNECTIONS * SCRIPT.up) as u64;
    stored_reach(&collector, server.addr, want, Duration::from_secs(30)).await?;
    meter.stop().await?;
    stop.cancel();
    let stored = collector.stored()?;
    collector.stop().await;
    let records = records_to(&stored, server.addr);
    let mut by_client: HashMap<usize, (u64, u64)> = HashMap::new();
    for r in &records {
        if let Some(i) = client_index(&r.src_addr) {
            let e = by_client.entry(i).or_default();
            e.0 += r.bytes_from_src;
            e.1 += r.bytes_from_dst;
        }
    }
    assert_eq!(by_client.len(), CONNECTIONS, "every connection stored");
    let exact = (SCRIPT.up as u64, SCRIPT.down as u64);
    let wrong: Vec<_> = by_client.iter().filter(|(_, b)| **b != exact).take(5).collect();
    assert!(
        wrong.is_empty(),
        "each connection once, exactly its payload: {wrong:?}"
    );
    assert_eq!(
        records_from(&stored, server.addr),
        0,
        "never from the server's end"
    );
    let (pid, name) = (std::process::id(), own_name());
    let unnamed: Vec<_> = records
        .iter()
        .filter(|r| r.pid != pid || r.process_name != name)
        .take(3)
        .collect();
    assert!(
        unnamed.is_empty(),
        "every connection names this process: {unnamed:?}"
    );
    assert!(
        records
            .iter()
            .all(|r| r.server == pb::ServerSide::Dst as i32 && r.ip_protocol == 6)
    );
    println!(
        "{CONNECTIONS} connections, the longest open {longest:?}; {} records",
        records.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_exits_before_the_meter_reads_is_still_named() -> anyhow::Result<()> {
    if ringflow_tests::bpf::skip() {
        return Ok(());
    }
    let bed = TestBed::new()?;
    // Reads a minute apart: the children come and go between two.
    let (collector, meter) = meter_with_bpf(&bed, "m", |s| s.interval_ms = 60_000).await?;
    let udp = UdpSocket::bind("127.0.0.1:0").await?;
    let udp_addr = udp.local_addr()?;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let tcp_addr = tcp.local_addr()?;
    let accepted = tokio::spawn(async move {
        let (mut conn, _) = tcp.accept().await?;
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut got).await?;
        anyhow::Ok(got.len())
    });
    const DATAGRAM: &str = "one datagram from a shell";
    const STREAM: &str = "a few bytes on a stream from a shell";
    let mut children = Vec::new();
    for script in [
        format!("printf '{DATAGRAM}' > /dev/udp/127.0.0.1/{}", udp_addr.port()),
        format!("printf '{STREAM}' > /dev/tcp/127.0.0.1/{}", tcp_addr.port()),
    ] {
        let child = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .spawn()?;
        let pid = child.id().unwrap_or_default();
        let status = child.wait_with_output().await?.status;
        assert!(status.success(), "{script}: {status}");
        children.push(pid);
    }
    assert_eq!(accepted.await??, STREAM.len());
    let mut buf = [0u8; 64];
    assert_eq!(udp.recv(&mut buf).await?, DATAGRAM.len());
    for (addr, pid, bytes) in [
        (udp_addr, children[0], DATAGRAM.len()),
        (tcp_addr, children[1], STREAM.len()),
    ] {
        stored_reach(&collector, addr, bytes as u64, Duration::from_secs(20)).await?;
        let stored = collector.stored()?;
        let records = records_to(&stored, addr);
        assert!(
            records.iter().all(|r| r.pid == pid && r.process_name == "bash"),
            "the exited child {pid}: {records:?}"
        );
    }
    meter.stop().await?;
    collector.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_meter_leaves_no_program_or_link() -> anyhow::Result<()> {
    if ringflow_tests::bpf::skip() {
        return Ok(());
    }
    let bed = TestBed::new()?;
    let config = bed.path().join("meter.toml");
    std::fs::write(
        &config,
        bed.meter_toml(
            "m",
            &["127.0.0.1:9".parse()?],
            "[sources.sockets]\nenabled = true\n[sources.sockets.bpf]\nmode = \"on\"\n",
        ),
    )?;
    let mut meter = ringflow_tests::process::ChildProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_meter-fixture")),
        &["run".as_ref(), "--config".as_ref(), config.as_os_str()],
        "meter",
        "through the meter's eBPF programs",
    )
    .await?;
    let (programs, links) = ringflow_tests::bpf::held_by(meter.pid())?;
    assert_eq!(
        (programs.len(), links.len()),
        (5, 5),
        "five programs, each attached by a link: {programs:?} {links:?}"
    );
    assert_eq!(
        ringflow_tests::bpf::still_loaded(&programs, &links),
        (programs.clone(), links.clone())
    );
    meter.kill();
    poll_until(
        Duration::from_secs(10),
        "the kernel frees the programs",
        async || ringflow_tests::bpf::still_loaded(&programs, &links) == Default::default(),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_flow_map_counts_what_it_missed_and_counts_nothing_twice() -> anyhow::Result<()> {
    if ringflow_tests::bpf::skip() {
        return Ok(());
    }
    const SOCKETS: usize = 400;
    const SIZE: usize = 100;
    const NET: u8 = 4;
    let bed = TestBed::new()?;
    let (collector, meter) = meter_with_bpf(&bed, "m", |s| s.bpf.max_flows = 64).await?;
    let metrics = meter.metrics();
    let server = UdpSocket::bind("127.0.0.1:0").await?;
    let server_addr = server.local_addr()?;
    let mut open = Vec::new();
    for i in 0..SOCKETS {
        let s = UdpSocket::bind((ip(NET, i), 0)).await?;
        s.send_to(&[0x55u8; SIZE], server_addr).await?;
        open.push(s);
    }
    // Live, all at once: more than the map holds.
    ringflow_tests::sockets_reads_after(&metrics, 2).await?;
    drop(open);
    ringflow_tests::sockets_reads_after(&metrics, 2).await?;
    assert!(
        metrics.sockets.sockets_bpf_packets_untracked.get() > 0,
        "the packets the full map could not count are counted"
    );
    // Stopping delivers what the meter holds (every other test's flows keep it busy, so
    // "everything acked" may never be seen while it runs).
    meter.stop().await?;
    let stored = collector.stored()?;
    collector.stop().await;
    let mut by_client: HashMap<usize, u64> = HashMap::new();
    for r in records_to(&stored, server_addr) {
        if let Some(i) = index(NET, &r.src_addr) {
            *by_client.entry(i).or_default() += r.bytes_from_src;
        }
    }
    assert!(
        by_client.len() < SOCKETS,
        "some flows did not fit: {}",
        by_client.len()
    );
    assert!(
        by_client.values().all(|&b| b == SIZE as u64),
        "a flow stored is stored once, exactly: {by_client:?}"
    );
    let lost: u64 = stored
        .iter()
        .filter_map(|b| b.loss.as_ref())
        .map(|l| l.packets_untracked)
        .sum();
    assert!(lost > 0, "the loss reached the collector in-band");
    Ok(())
}

#[test]
fn check_says_which_tier_runs() -> anyhow::Result<()> {
    if ringflow_tests::bpf::skip() {
        return Ok(());
    }
    let bed = TestBed::new()?;
    let path = bed.path().join("check.toml");
    std::fs::write(
        &path,
        bed.meter_toml(
            "m",
            &["127.0.0.1:4433".parse()?],
            "[sources.sockets]\nenabled = true\n",
        ),
    )?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meter-fixture"))
        .args(["check", "--config"])
        .arg(&path)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("source sockets: TCP and UDP sockets every 1000 ms: ok, tier bpf"),
        "{text}"
    );
    Ok(())
}

/// A network namespace joined to this one by a veth pair: `10.201.N.1` here, `10.201.N.2`
/// there; deleted (with the pair) when dropped.
struct PeerNamespace {
    name: String,
    here: std::net::Ipv4Addr,
}

impl PeerNamespace {
    fn create() -> anyhow::Result<Self> {
        let id = std::process::id();
        let n = (id % 250) as u8;
        let (name, veth) = (format!("rf-peer-{id}"), format!("rfv{id}"));
        let this = Self {
            name: name.clone(),
            here: std::net::Ipv4Addr::new(10, 201, n, 1),
        };
        let there = format!("10.201.{n}.2/24");
        for args in [
            vec!["netns", "add", &name],
            vec![
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &name,
            ],
            vec!["addr", "add", &format!("10.201.{n}.1/24"), "dev", &veth],
            vec!["link", "set", &veth, "up"],
            vec!["-n", &name, "addr", "add", &there, "dev", "eth0"],
            vec!["-n", &name, "link", "set", "eth0", "up"],
            vec!["-n", &name, "link", "set", "lo", "up"],
        ] {
            let out = std::process::Command::new("ip").args(&args).output()?;
            anyhow::ensure!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(this)
    }
}

impl Drop for PeerNamespace {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_a_client_elsewhere_is_named_by_its_listener() -> anyhow::Result<()> {
    if ringflow_tests::bpf::skip() {
        return Ok(());
    }
    const STREAM: &str = "a request from another host";
    let bed = TestBed::new()?;
    let (collector, meter) = meter_with_bpf(&bed, "m", |_| {}).await?;
    let peer = PeerNamespace::create()?;
    // Listening after the meter started: listen(2) gives the listener's owner to what it accepts.
    let listener = tokio::net::TcpListener::bind((peer.here, 0)).await?;
    let server = listener.local_addr()?;
    let accepted = tokio::spawn(async move {
        let (mut conn, client) = listener.accept().await?;
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut got).await?;
        anyhow::Ok((got.len(), client))
    });
    let script = format!("printf '{STREAM}' > /dev/tcp/{}/{}", peer.here, server.port());
    let status = tokio::process::Command::new("ip")
        .args(["netns", "exec", &peer.name, "bash", "-c", &script])
        .status()
        .await?;
    assert!(status.success(), "{script}: {status}");
    let (got, client) = accepted.await??;
    assert_eq!(got, STREAM.len());
    // Both ends are reported (two network namespaces, as two hosts would): the client's by bash,
    // the server's by this process.
    stored_reach(&collector, server, STREAM.len() as u64, Duration::from_secs(20)).await?;
    poll_until(
        Duration::from_secs(20),
        "the server's end is stored",
        async || {
            collector.stored().is_ok_and(|s| {
                records_to(&s, client)
                    .iter()
                    .map(|r| r.bytes_from_dst)
                    .sum::<u64>()
                    == STREAM.len() as u64
            })
        },
    )
    .await?;
    meter.stop().await?;
    let stored = collector.stored()?;
    collector.stop().await;
    let from_server = records_to(&stored, client);
    assert!(
        from_server.iter().all(|r| r.pid == std::process::id()
            && r.process_name == own_name()
            && r.server == pb::ServerSide::Src as i32
            && r.src_port == u32::from(server.port())),
        "{from_server:?}"
    );
    let from_client = records_to(&stored, server);
    assert!(
        from_client.iter().all(|r| r.process_name == "bash"),
        "{from_client:?}"
    );
    Ok(())
}

/// Runs `meter-fixture ARGS` as user `nobody` with no capabilities (`setpriv`, util-linux).
fn as_nobody(args: &[&std::ffi::OsStr]) -> anyhow::Result<std::process::Output> {
    Ok(std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_meter-fixture"))
        .args(args)
        .output()?)
}

#[test]
fn without_privileges_auto_falls_back_to_sock_diag_and_on_refuses_to_start() -> anyhow::Result<()> {
    if ringflow_tests::bpf::skip() {
        return Ok(());
    }
    let bed = TestBed::new()?;
    // A directory `nobody` may use, with the bed's CA readable.
    let dir = tempfile::Builder::new().prefix("ringflow-nobody").tempdir()?;
    let open = |p: &std::path::Path, mode| {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode))
    };
    open(dir.path(), 0o777)?;
    let ca = dir.path().join("ca.pem");
    std::fs::copy(&bed.certs.ca, &ca)?;
    open(&ca, 0o644)?;
    let config = |mode: &str| -> anyhow::Result<std::path::PathBuf> {
        let text = bed
            .meter_toml(
                "m",
                &["127.0.0.1:9".parse()?],
                &format!("[sources.sockets]\nenabled = true\n[sources.sockets.bpf]\nmode = \"{mode}\"\n"),
            )
            .replace(&bed.certs.ca.display().to_string(), &ca.display().to_string())
            .replace(
                &bed.path().join("m-state").display().to_string(),
                &dir.path().join("state").display().to_string(),
            );
        let path = dir.path().join(format!("{mode}.toml"));
        std::fs::write(&path, text)?;
        open(&path, 0o644)?;
        Ok(path)
    };
    let auto = config("auto")?;
    let out = as_nobody(&["check".as_ref(), "--config".as_ref(), auto.as_os_str()])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("source sockets: TCP connections every 1000 ms: ok, tier sock_diag")
            && text.contains("bpf tier not used: the meter may not"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let on = config("on")?;
    let out = as_nobody(&["run".as_ref(), "--config".as_ref(), on.as_os_str()])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("sources.sockets.bpf.mode = \"on\", but the bpf tier cannot run: the meter may not")
            && err.contains("CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"),
        "{err}"
    );
    Ok(())
}

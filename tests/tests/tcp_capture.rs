//! The sockets source against ground truth, every TCP connection exactly once: a real meter
//! reads this host over loopback into a real collector, and the stored records are checked
//! exactly against the bytes the test moved.
//!
//! Byte counts are what the kernel counts (`tcpi_bytes_acked`, `tcpi_bytes_received`; pinned by
//! `agent/src/source/sockets/destroy.rs`): a client that sends `up` bytes, reads `down` and
//! closes first is reported with `up + 2` from it (its SYN and its FIN, acknowledged) and
//! `down + 1` to it (the server's FIN).
//!
//! - 10,000 short connections (each from its own loopback address, so each is told apart in
//!   the store): every one stored, exactly once in total, from the client's end.
//! - A 2 GiB transfer that closes the moment it ends: exact.
//! - A dual-stack (`[::]`) server with an IPv4 client: reported from the client's end with
//!   `server` = dst, through the dump path and the close path; its owner is this process.
//! - A notification buffer too small for a burst: the loss is counted, the table recovers,
//!   and nothing is counted twice.

use std::collections::HashMap;
use std::time::Duration;

use ringflow_meter::{MeterMetrics, MeterWatch};
use ringflow_proto::pb;
use ringflow_tests::records::{own_name, records_from, records_to};
use ringflow_tests::tcp_load::{Script, ScriptServer, client_index, run_clients};
use ringflow_tests::{RunningCollector, TestBed, poll_until, start_meter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const SCRIPT: Script = Script {
    up: 10_000,
    down: 3_000,
};
/// What the kernel reports for one [`SCRIPT`] connection from the client's end.
const FROM_CLIENT: u64 = 10_000 + 2;
const TO_CLIENT: u64 = 3_000 + 1;

/// A collector and a meter with only the sockets source, after its baseline read.
async fn meter_reading_sockets(
    bed: &TestBed,
    tweak: impl FnOnce(&mut ringflow_meter::config::SocketsConfig),
) -> anyhow::Result<(RunningCollector, ringflow_meter::Meter)> {
    let collector = bed.start_collector("c1", "").await?;
    let mut config = bed.meter_config("sockets", &[collector.addr]);
    config.sources.sockets.enabled = true;
    config.sources.sockets.interval_ms = 200;
    // Every meter hears every test's closes (they read the whole host), and these tests run
    // side by side: a buffer beyond the default keeps another test's burst from overflowing
    // this one (which would lose its last bytes, rightly, and fail its exact count).
    config.sources.sockets.close_buffer_bytes = 64 << 20;
    // These tests are the sock_diag tier's (tests/tests/bpf_capture.rs has the bpf tier's).
    config.sources.sockets.bpf.mode = ringflow_meter::config::BpfMode::Off;
    tweak(&mut config.sources.sockets);
    let meter = start_meter(config).await?;
    ringflow_tests::sockets_reads_after(&meter.metrics(), 1).await?;
    Ok((collector, meter))
}

/// Bytes from and to each client (by its source address index).
fn per_client(records: &[pb::FlowRecord]) -> HashMap<usize, (u64, u64)> {
    let mut by = HashMap::new();
    for r in records {
        let Some(i) = client_index(&r.src_addr) else {
            continue;
        };
        let e = by.entry(i).or_insert((0, 0));
        e.0 += r.bytes_from_src;
        e.1 += r.bytes_from_dst;
    }
    by
}

fn totals(records: &[pb::FlowRecord]) -> (u64, u64) {
    (
        records.iter().map(|r| r.bytes_from_src).sum(),
        records.iter().map(|r| r.bytes_from_dst).sum(),
    )
}

/// Polls the store until the records to `dst` reach `want` bytes from the source; fails after
/// `timeout` (saying what was stored and what the meter counted), or at once if they go beyond.
async fn stored_reach(
    collector: &RunningCollector,
    meter: &MeterWatch,
    dst: std::net::SocketAddr,
    want: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let reached = poll_until(timeout, "the stored bytes reach what moved", async || {
        let got = collector.stored().map_or(0, |s| totals(&records_to(&s, dst)).0);
        assert!(
            got <= want,
            "stored {got} bytes from clients, more than the {want} that moved"
        );
        got == want
    })
    .await;
    if let Err(e) = reached {
        let got = totals(&records_to(&collector.stored()?, dst));
        let text = meter.encode();
        let counts: Vec<_> = text
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && (l.contains("sockets")
                        || l.contains("dropped")
                        || l.contains("records_")
                        || l.contains("session")
                        || l.contains("reject"))
            })
            .collect();
        let all: Vec<String> = collector
            .stored()?
            .iter()
            .flat_map(|b| &b.records)
            .filter(|r| r.dst_port == u32::from(dst.port()) || r.src_port == u32::from(dst.port()))
            .take(6)
            .map(|r| {
                format!(
                    "{:?}:{} -> {:?}:{} {} {} server={}",
                    r.src_addr,
                    r.src_port,
                    r.dst_addr,
                    r.dst_port,
                    r.bytes_from_src,
                    r.bytes_from_dst,
                    r.server
                )
            })
            .collect();
        anyhow::bail!(
            "{e}: stored {got:?} of {want} (to {dst})\n{}\n{}",
            counts.join("\n"),
            all.join("\n")
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_short_connections_are_each_stored_once_and_exactly() -> anyhow::Result<()> {
    const CONNECTIONS: usize = 10_000;
    let bed = TestBed::new()?;
    let (collector, meter) = meter_reading_sockets(&bed, |_| {}).await?;
    let metrics = meter.metrics();
    let stop = CancellationToken::new();
    let server = ScriptServer::start("127.0.0.1:0", SCRIPT, stop.clone()).await?;

    let longest = run_clients(server.addr, CONNECTIONS, 32, SCRIPT).await?;
    let want = CONNECTIONS as u64 * FROM_CLIENT;
    if let Err(e) = stored_reach(&collector, &metrics, server.addr, want, Duration::from_secs(30)).await {
        let stored = collector.stored()?;
        let by_client = per_client(&records_to(&stored, server.addr));
        let short: Vec<_> = (0..CONNECTIONS)
            .filter(|i| by_client.get(i) != Some(&(FROM_CLIENT, TO_CLIENT)))
            .map(|i| (i, by_client.get(&i)))
            .take(10)
            .collect();
        let text = metrics.encode();
        let lines: Vec<_> = text
            .lines()
            .filter(|l| l.contains("sockets") || l.contains("dropped"))
            .collect();
        anyhow::bail!("{e}: connections not right: {short:?}\n{}", lines.join("\n"));
    }
    meter.stop().await?;
    stop.cancel();
    let stored = collector.stored()?;
    collector.stop().await;

    let records = records_to(&stored, server.addr);
    assert_eq!(
        totals(&records),
        (want, CONNECTIONS as u64 * TO_CLIENT),
        "exactly what moved, nothing more after the meter stopped"
    );
    let by_client = per_client(&records);
    assert_eq!(by_client.len(), CONNECTIONS, "every connection stored");
    let wrong: Vec<_> = by_client
        .iter()
        .filter(|(_, b)| **b != (FROM_CLIENT, TO_CLIENT))
        .take(5)
        .collect();
    assert!(wrong.is_empty(), "each connection once, exactly: {wrong:?}");
    assert_eq!(
        records_from(&stored, server.addr),
        0,
        "never from the server's end"
    );
    assert!(records.iter().all(|r| r.server == pb::ServerSide::Dst as i32));
    // Owners: a connection a dump saw carries this process; one that opened and closed
    // between two dumps has no owner (destroy notifications carry no inode).
    let pid = std::process::id();
    let owned: Vec<_> = records.iter().filter(|r| r.pid != 0).collect();
    assert!(
        owned.iter().all(|r| r.pid == pid && r.process_name == own_name()),
        "an owner, when known, is this process"
    );
    let (accounted, host) = (
        metrics.sockets.sockets_segments_accounted.get(),
        metrics.sockets.sockets_host_segments.get(),
    );
    println!(
        "{CONNECTIONS} connections, the longest open {longest:?}; {} records, {} with an owner; completeness {accounted}/{host} = {:.4}",
        records.len(),
        owned.len(),
        accounted as f64 / host.max(1) as f64
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_gib_transfer_that_closes_at_once_is_stored_exactly() -> anyhow::Result<()> {
    const TOTAL: u64 = 2 << 30;
    let bed = TestBed::new()?;
    let (collector, meter) = meter_reading_sockets(&bed, |_| {}).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let server_addr = listener.local_addr()?;
    let (client, accepted) = tokio::join!(TcpStream::connect(server_addr), listener.accept());
    let (mut client, (mut server, _)) = (client?, accepted?);
    let send = async move {
        let chunk = vec![0x5a; 1 << 20];
        for _ in 0..TOTAL / chunk.len() as u64 {
            client.write_all(&chunk).await?;
        }
        client.shutdown().await?;
        let mut end = [0u8; 1];
        anyhow::ensure!(client.read(&mut end).await? == 0, "the server sent nothing");
        anyhow::Ok(())
    };
    let receive = async move {
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            match server.read(&mut buf).await? {
                0 => break,
                n => got += n as u64,
            }
        }
        drop(server);
        anyhow::Ok(got)
    };
    let (sent, received) = tokio::join!(send, receive);
    sent?;
    assert_eq!(received?, TOTAL);
    stored_reach(
        &collector,
        &meter.metrics(),
        server_addr,
        TOTAL + 2,
        Duration::from_secs(30),
    )
    .await?;
    meter.stop().await?;
    let stored = collector.stored()?;
    collector.stop().await;
    let records = records_to(&stored, server_addr);
    assert_eq!(
        totals(&records),
        (TOTAL + 2, 1),
        "the payload, its SYN and FIN; the server's FIN"
    );
    assert_eq!(records_from(&stored, server_addr), 0);
    println!("{} records for the 2 GiB connection", records.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_servers_clients_are_reported_from_the_client_end() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let (collector, meter) = meter_reading_sockets(&bed, |_| {}).await?;
    let metrics = meter.metrics();
    let listener = TcpListener::bind("[::]:0").await?;
    let port = listener.local_addr()?.port();
    let server_addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    // Held open across reads: the dump path reports it, then the close the rest.
    let (client, accepted) = tokio::join!(TcpStream::connect(server_addr), listener.accept());
    let (mut client, (mut server, peer)) = (client?, accepted?);
    assert!(peer.is_ipv6(), "the server's socket is dual-stack: {peer}");
    let client_addr = client.local_addr()?;
    let mut buf = vec![0u8; 70_000];
    client.write_all(&buf[..50_000]).await?;
    server.read_exact(&mut buf[..50_000]).await?;
    ringflow_tests::sockets_reads_after(&metrics, 2).await?;
    server.write_all(&buf[..7_000]).await?;
    client.read_exact(&mut buf[..7_000]).await?;
    ringflow_tests::sockets_reads_after(&metrics, 2).await?;
    client.write_all(&buf[..20_000]).await?;
    server.read_exact(&mut buf[..20_000]).await?;
    drop(client);
    assert_eq!(server.read(&mut buf).await?, 0);
    drop(server);
    // And a short one, opened and closed between two reads.
    let short = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut b = vec![0u8; 1_000];
        s.read_exact(&mut b).await?;
        s.write_all(&b[..100]).await?;
        let _ = s.read(&mut b).await?;
        anyhow::Ok(())
    });
    let mut c = TcpStream::connect(server_addr).await?;
    let short_addr = c.local_addr()?;
    c.write_all(&[1; 1_000]).await?;
    c.read_exact(&mut buf[..100]).await?;
    drop(c);
    short.await??;

    let want = (50_000 + 20_000 + 2) + (1_000 + 2);
    stored_reach(&collector, &metrics, server_addr, want, Duration::from_secs(20)).await?;
    meter.stop().await?;
    let stored = collector.stored()?;
    collector.stop().await;
    let records = records_to(&stored, server_addr);
    let of = |end: std::net::SocketAddr| -> Vec<&pb::FlowRecord> {
        records
            .iter()
            .filter(|r| r.src_port == u32::from(end.port()))
            .collect()
    };
    let long = of(client_addr);
    assert!(long.len() >= 2, "reported by dumps and at close: {long:?}");
    let sum = |rs: &[&pb::FlowRecord]| {
        (
            rs.iter().map(|r| r.bytes_from_src).sum::<u64>(),
            rs.iter().map(|r| r.bytes_from_dst).sum::<u64>(),
        )
    };
    assert_eq!(sum(&long), (70_002, 7_001));
    assert_eq!(sum(&of(short_addr)), (1_002, 101));
    assert_eq!(
        records_from(&stored, server_addr),
        0,
        "never from the server's end"
    );
    for r in &records {
        assert_eq!(r.src_addr.as_ref(), &[127, 0, 0, 1], "IPv4, not IPv4-mapped IPv6");
        assert_eq!(r.server, pb::ServerSide::Dst as i32, "the listener is the server");
    }
    assert!(
        long.iter()
            .any(|r| r.pid == std::process::id() && r.process_name == own_name()),
        "a connection a dump saw is this process's: {long:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowing_notification_buffer_is_counted_and_nothing_is_counted_twice() -> anyhow::Result<()> {
    const BURST: usize = 2_000;
    let bed = TestBed::new()?;
    let (collector, meter) = meter_reading_sockets(&bed, |s| s.close_buffer_bytes = 1_024).await?;
    let metrics = meter.metrics();
    let stop = CancellationToken::new();
    let server = ScriptServer::start("127.0.0.1:0", SCRIPT, stop.clone()).await?;
    // A connection open across the burst: the recovery dump keeps its count right.
    let long_listener = TcpListener::bind("127.0.0.1:0").await?;
    let (long, accepted) = tokio::join!(
        TcpStream::connect(long_listener.local_addr()?),
        long_listener.accept()
    );
    let (mut long, mut long_server) = (long?, accepted?.0);
    let long_dst = long.peer_addr()?;
    let overflows = |m: &MeterMetrics| m.sockets.sockets_close_overflows.get();
    let mut bursts: u64 = 0;
    let mut buf = vec![0u8; 4_000];
    // At least one burst, and more until the buffer has overflowed (other tests' closes
    // may overflow it too: this meter reads the whole host).
    loop {
        anyhow::ensure!(
            bursts < 10,
            "ten bursts of {BURST} closes never overflowed a 1 KiB buffer"
        );
        run_clients(server.addr, BURST, 64, SCRIPT).await?;
        long.write_all(&buf).await?;
        long_server.read_exact(&mut buf).await?;
        bursts += 1;
        if overflows(&metrics) > 0 {
            break;
        }
    }
    // After the overflow the long connection moves more; the dumps report all of it (its
    // SYN too), exactly, before it closes.
    long.write_all(&buf).await?;
    long_server.read_exact(&mut buf).await?;
    let long_want = 4_000 * (bursts + 1) + 2;
    stored_reach(
        &collector,
        &metrics,
        long_dst,
        long_want - 1,
        Duration::from_secs(20),
    )
    .await?;
    // Its close adds its FIN, unless that notification overflows the tiny buffer too.
    drop(long);
    assert_eq!(long_server.read(&mut buf).await?, 0);
    drop(long_server);
    meter.stop().await?;
    stop.cancel();
    let stored = collector.stored()?;
    collector.stop().await;

    let lost = overflows(&metrics);
    assert!(lost >= 1);
    let records = records_to(&stored, server.addr);
    let by_client = per_client(&records);
    let doubled: Vec<_> = by_client
        .iter()
        .filter(|(_, (up, down))| *up > FROM_CLIENT || *down > TO_CLIENT)
        .take(5)
        .collect();
    // Client addresses repeat across bursts: each address's connections, at most once each.
    let per_address = bursts;
    assert!(
        by_client
            .values()
            .all(|(up, down)| *up <= per_address * FROM_CLIENT && *down <= per_address * TO_CLIENT),
        "nothing counted twice"
    );
    if bursts == 1 {
        assert!(doubled.is_empty(), "nothing counted twice: {doubled:?}");
    }
    let (up, _) = totals(&records);
    let moved = bursts * BURST as u64 * FROM_CLIENT;
    assert!(up <= moved, "stored {up} of {moved}");
    let long_stored = totals(&records_to(&stored, long_dst)).0;
    assert!(
        (long_want - 1..=long_want).contains(&long_stored),
        "the connection open across the overflow: {long_stored} of {long_want}"
    );
    println!(
        "{bursts} burst(s) of {BURST}: {lost} overflow(s) counted; stored {up} of {moved} bytes from clients ({:.1}%)",
        100.0 * up as f64 / moved as f64
    );
    Ok(())
}

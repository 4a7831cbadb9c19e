//! What the bpf tier's programs cost per packet: this host pushes loopback traffic at full speed
//! with the meter's programs attached and without, in alternating rounds of one run, and the
//! ratios are printed. The programs run in the kernel in the sending and receiving threads, so
//! their cost shows as lost throughput, not as the meter's CPU.
//!
//! - TCP: one connection, one thread writing 64 KiB at a time, one reading: bytes per second.
//! - UDP flood: 64-byte datagrams from one socket to another, as fast as one thread sends (one
//!   more drains the receiver): datagrams sent per second; each passes the egress and the ingress program
//!   once, so the difference of the inverse rates is what the programs cost per datagram.
//!
//! Needs root. Run (release, as the figures in docs/benchmarks.md were):
//! `cargo build --release -p ringflow-tests --examples && target/release/examples/bpf_cost [ROUNDS] [SECONDS_PER_TRIAL]`

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ringflow_meter::config::BpfConfig;
use ringflow_meter::source::bpf::load;
use tokio::time::Instant;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(Ok(5), |a| a.parse())?;
    let secs: f64 = args.next().map_or(Ok(2.0), |a| a.parse())?;
    let trial = Duration::from_secs_f64(secs);
    ringflow_tests::bpf::may_load().map_err(anyhow::Error::msg)?;
    let (mut tcp, mut udp) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for round in 0..rounds {
        // Alternate which goes first, so a drift of the machine falls on both alike.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with in order {
            let programs = if with {
                Some(load::load(&BpfConfig::default()).map_err(|e| anyhow::anyhow!("{e}"))?)
            } else {
                None
            };
            tcp[usize::from(with)].push(tcp_rate(trial)?);
            udp[usize::from(with)].push(udp_rate(trial)?);
            drop(programs);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (tcp_off, tcp_on) = (median(&mut tcp[0]), median(&mut tcp[1]));
    let (udp_off, udp_on) = (median(&mut udp[0]), median(&mut udp[1]));
    let per_datagram_ns = (1.0 / udp_on - 1.0 / udp_off) * 1e9;
    let (egress_ns, ingress_ns) = program_run_times(trial)?;
    println!(
        "bpf tier, medians of {rounds} rounds of {secs} s: TCP {:.2} GB/s without, {:.2} GB/s with ({:.1}% lost); \
         UDP 64-byte flood {:.0} k/s without, {:.0} k/s with ({:.1}% lost, {:.0} ns per datagram for its egress and ingress); \
         the programs' own run time (kernel.bpf_stats_enabled, one more UDP trial): egress {:.0} ns, ingress {:.0} ns a run",
        tcp_off / 1e9,
        tcp_on / 1e9,
        100.0 * (1.0 - tcp_on / tcp_off),
        udp_off / 1e3,
        udp_on / 1e3,
        100.0 * (1.0 - udp_on / udp_off),
        per_datagram_ns,
        egress_ns,
        ingress_ns
    );
    Ok(())
}

/// The average run time of the egress and ingress programs over a UDP trial, as the kernel
/// measures it with `kernel.bpf_stats_enabled` (on for this trial only: it adds two clock reads
/// to every run, so the throughput trials run without it).
fn program_run_times(trial: Duration) -> anyhow::Result<(f64, f64)> {
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(STATS)?;
    let programs = load::load(&BpfConfig::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::write(STATS, "1")?;
    let ran = udp_rate(trial);
    let per_run = |name: &str| {
        let (time, count) = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| p.name_as_str() == Some(name))
            .fold((0u128, 0u64), |(t, c), p| {
                (t + p.run_time().as_nanos(), c + p.run_count())
            });
        time as f64 / count.max(1) as f64
    };
    let times = (per_run("rf_egress"), per_run("rf_ingress"));
    std::fs::write(STATS, before.trim())?;
    drop(programs);
    ran?;
    Ok(times)
}

/// Bytes per second over one loopback TCP connection for `trial`.
fn tcp_rate(trial: Duration) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_writer = Arc::clone(&stop);
    let writer = std::thread::spawn(move || -> anyhow::Result<()> {
        let mut conn = TcpStream::connect(addr)?;
        let chunk = vec![0x5au8; 64 << 10];
        while !stop_writer.load(Ordering::Relaxed) {
            conn.write_all(&chunk)?;
        }
        Ok(())
    });
    let (mut conn, _) = listener.accept()?;
    let mut buf = vec![0u8; 256 << 10];
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < trial {
        bytes += conn.read(&mut buf)? as u64;
    }
    let rate = bytes as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    drop(conn);
    let _ = writer.join();
    Ok(rate)
}

/// 64-byte datagrams sent per second over loopback for `trial`. On loopback a send carries the
/// datagram through the egress program and, in the same thread, the ingress one; a reader
/// drains the receiving socket meanwhile.
fn udp_rate(trial: Duration) -> anyhow::Result<f64> {
    let receiver = UdpSocket::bind("127.0.0.1:0")?;
    receiver.set_read_timeout(Some(Duration::from_millis(100)))?;
    let addr = receiver.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_reader = Arc::clone(&stop);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop_reader.load(Ordering::Relaxed) {
            let _ = receiver.recv(&mut buf);
        }
    });
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(addr)?;
    let datagram = [0x42u8; 64];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < trial {
        for _ in 0..64 {
            // A full receive buffer drops on the receiving side, after both programs ran.
            if socket.send(&datagram).is_ok() {
                sent += 1;
            }
        }
    }
    let rate = sent as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    Ok(rate)
}

//! nfcapd (nfdump's collector, Debian's `nfdump` package) taking the bench's synthetic records as
//! NetFlow v5 over loopback UDP into its files: the records per CPU-second of a widely used flow
//! collector, measured on the same machine as ringflow's.
//!
//! Owns: the NetFlow v5 encoding of the records (one v5 record a flow record, src→dst counters,
//! 30 a datagram), starting a fresh nfcapd on a free loopback port and stopping it, the paced
//! sender, nfcapd's CPU over the run and its drain, counting what it stored with `nfdump -I`.
//! Must never: install nfdump (tests/ensure-nfdump.sh does), or decide what the figures mean
//! (the report does).

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use ringflow_proto::pb;
use ringflow_tests::procstat::ThreadsMark;
use tokio::time::Instant;

/// NetFlow v5: a 24-byte header, then up to 30 records of 48 bytes.
const V5_HEADER: usize = 24;
const V5_RECORD: usize = 48;
pub const V5_RECORDS_PER_DATAGRAM: usize = 30;

/// nfcapd's socket receive buffer (`-B`).
const SOCKET_BUFFER: usize = 8 << 20;
/// nfcapd's file rotation interval (`-t`): longer than any run, so it writes one file.
const ROTATION_SECS: u32 = 3600;
/// How long nfcapd may take to listen, to drain, and to exit after SIGTERM.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// nfcapd has drained once its CPU clock has not grown by more than `DRAIN_NOISE` for `QUIET`.
const DRAIN_POLL: Duration = Duration::from_millis(50);
const QUIET: Duration = Duration::from_millis(300);
const DRAIN_NOISE: f64 = 200e-6;

/// What nfcapd did with the records sent to it.
#[derive(Debug, Clone)]
pub struct NfcapdRun {
    /// Records sent.
    pub sent: u64,
    /// Records nfcapd wrote to its files (nfdump's count).
    pub stored: u64,
    /// First datagram to last datagram sent.
    pub seconds: f64,
    /// nfcapd's CPU (user + system) over the run, including its drain after the last datagram.
    pub cpu_seconds: f64,
    pub datagrams: u64,
}

impl NfcapdRun {
    pub fn records_per_cpu_sec(&self) -> f64 {
        self.stored as f64 / self.cpu_seconds
    }
}

/// Sends `records` to a fresh nfcapd (listening on a free 127.0.0.1 UDP port, writing under `dir`)
/// as NetFlow v5 (30 records a datagram), paced at about `records_per_sec`, and counts what it
/// stored. `dir` must be empty or absent (nfdump counts every file in it); nfcapd's output is
/// appended to `logs`/nfcapd.log.
pub async fn nfcapd_run(
    records: &[pb::FlowRecord],
    dir: &Path,
    records_per_sec: f64,
    logs: &Path,
) -> anyhow::Result<NfcapdRun> {
    anyhow::ensure!(
        records_per_sec > 0.0,
        "records_per_sec must be positive, not {records_per_sec}"
    );
    let nfcapd = program("nfcapd")?;
    let nfdump = program("nfdump")?;
    let datagrams = v5_datagrams(records);
    let sent: u64 = datagrams.iter().map(|d| u64::from(v5_count(d))).sum();

    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    anyhow::ensure!(
        std::fs::read_dir(dir)?.next().is_none(),
        "{} is not empty: nfdump would count its files too",
        dir.display()
    );
    std::fs::create_dir_all(logs).with_context(|| format!("creating {}", logs.display()))?;
    let log_path = logs.join("nfcapd.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;

    let addr = ringflow_tests::process::free_udp_addr()?;
    let mut child = tokio::process::Command::new(&nfcapd)
        .arg("-C")
        .arg("none")
        .arg("-w")
        .arg(dir)
        .args(["-b", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(["-B", &SOCKET_BUFFER.to_string(), "-t", &ROTATION_SECS.to_string()])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", nfcapd.display()))?;
    let pid = child.id().context("nfcapd exited at once")?;
    wait_listening(&mut child, addr, &log_path).await?;

    let mark = ThreadsMark::now(pid)?;
    let datagram_count = datagrams.len() as u64;
    let seconds =
        tokio::task::spawn_blocking(move || send_paced(&datagrams, addr, records_per_sec)).await??;
    let cpu_seconds = drained_cpu(&mark).await?;

    let target = rustix::process::Pid::from_raw(pid as i32).context("nfcapd's pid")?;
    rustix::process::kill_process(target, rustix::process::Signal::TERM).context("SIGTERM to nfcapd")?;
    let status = match tokio::time::timeout(EXIT_TIMEOUT, child.wait()).await {
        Ok(status) => status?,
        Err(_) => {
            let _ = child.kill().await;
            anyhow::bail!("nfcapd still running {EXIT_TIMEOUT:?} after SIGTERM (killed)")
        }
    };
    anyhow::ensure!(
        status.success(),
        "nfcapd exited with {status} (see {})",
        log_path.display()
    );

    let stored = stored_flows(&nfdump, dir).await?;
    Ok(NfcapdRun {
        sent,
        stored,
        seconds,
        cpu_seconds,
        datagrams: datagram_count,
    })
}

/// `name` on `$PATH`.
fn program(name: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found: run tests/ensure-nfdump.sh (Debian's nfdump package)"))
}

/// Waits until nfcapd's UDP socket on `addr` shows in /proc/net/udp.
async fn wait_listening(
    child: &mut tokio::process::Child,
    addr: SocketAddr,
    log: &Path,
) -> anyhow::Result<()> {
    let SocketAddr::V4(v4) = addr else {
        anyhow::bail!("{addr} is not IPv4")
    };
    // /proc/net/udp shows the address as the hex of its bytes in memory (little-endian here).
    let local = format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port());
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "nfcapd exited with {status} before listening (see {})",
                log.display()
            );
        }
        let table = std::fs::read_to_string("/proc/net/udp").context("reading /proc/net/udp")?;
        if table
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some(local.as_str()))
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "nfcapd not listening on {addr} after {LISTEN_TIMEOUT:?} (see {})",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `datagrams` to `to` at about `records_per_sec` (a burst whenever the sender is a
/// millisecond behind); returns the seconds from the first send to the last.
fn send_paced(datagrams: &[Vec<u8>], to: SocketAddr, records_per_sec: f64) -> anyhow::Result<f64> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let start = Instant::now();
    let mut records_before = 0u64;
    for datagram in datagrams {
        let due = start + Duration::from_secs_f64(records_before as f64 / records_per_sec);
        let now = Instant::now();
        if due > now + Duration::from_millis(1) {
            std::thread::sleep(due - now);
        }
        socket
            .send_to(datagram, to)
            .with_context(|| format!("sending to nfcapd at {to}"))?;
        records_before += u64::from(v5_count(datagram));
    }
    Ok(start.elapsed().as_secs_f64())
}

/// nfcapd's CPU since `mark`, once it has stopped growing (nfcapd has drained its socket).
async fn drained_cpu(mark: &ThreadsMark) -> anyhow::Result<f64> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut last = mark.since()?.cpu;
    let mut last_grew = Instant::now();
    loop {
        tokio::time::sleep(DRAIN_POLL).await;
        let cpu = mark.since()?.cpu;
        if cpu - last > DRAIN_NOISE {
            last = cpu;
            last_grew = Instant::now();
        } else if last_grew.elapsed() >= QUIET {
            return Ok(cpu);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("nfcapd's CPU still growing {DRAIN_TIMEOUT:?} after the last datagram");
        }
    }
}

/// The flows in the files under `dir`, as `nfdump -R DIR -I` totals them.
async fn stored_flows(nfdump: &Path, dir: &Path) -> anyhow::Result<u64> {
    let mut cmd = std::process::Command::new(nfdump);
    cmd.arg("-R").arg(dir).arg("-I");
    let output = ringflow_tests::process::run_bounded(cmd, Duration::from_secs(60)).await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    parse_flows(&stdout).with_context(|| {
        format!(
            "no \"Flows:\" total in `nfdump -R {} -I` ({}): {stdout}{}",
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// The `Flows: N` line of `nfdump -I`.
fn parse_flows(info: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("Flows:"))
        .and_then(|v| v.trim().parse().ok())
}

/// One direction of a flow, as a v5 record carries it (times in Unix milliseconds).
#[derive(Debug, Clone, Copy)]
struct V5Flow {
    src: [u8; 4],
    dst: [u8; 4],
    packets: u32,
    octets: u32,
    first_ms: u64,
    last_ms: u64,
    src_port: u16,
    dst_port: u16,
    protocol: u8,
}

impl V5Flow {
    /// The src→dst side of `r`; None unless both addresses are IPv4.
    fn of(r: &pb::FlowRecord) -> Option<Self> {
        let clamp32 = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        let first_ms = r.start_unix_nanos / 1_000_000;
        Some(Self {
            src: r.src_addr.as_ref().try_into().ok()?,
            dst: r.dst_addr.as_ref().try_into().ok()?,
            packets: clamp32(r.packets_from_src),
            octets: clamp32(r.bytes_from_src),
            first_ms,
            last_ms: (r.end_unix_nanos / 1_000_000).max(first_ms),
            src_port: r.src_port as u16,
            dst_port: r.dst_port as u16,
            protocol: r.ip_protocol as u8,
        })
    }
}

/// The NetFlow v5 datagrams of `records` (those with IPv4 addresses; the others are left out), 30
/// records a datagram. The exporter "booted" a second before the earliest flow started; each
/// header's time is the latest end among its records, so every record's first/last uptime is at
/// or before the header's.
pub fn v5_datagrams(records: &[pb::FlowRecord]) -> Vec<Vec<u8>> {
    let flows: Vec<V5Flow> = records.iter().filter_map(V5Flow::of).collect();
    let boot_ms = flows
        .iter()
        .map(|f| f.first_ms)
        .min()
        .unwrap_or(0)
        .saturating_sub(1_000);
    let mut sequence = 0u32;
    flows
        .chunks(V5_RECORDS_PER_DATAGRAM)
        .map(|chunk| {
            let datagram = v5_datagram(chunk, boot_ms, sequence);
            sequence = sequence.wrapping_add(chunk.len() as u32);
            datagram
        })
        .collect()
}

/// How many records a v5 datagram says it holds.
fn v5_count(datagram: &[u8]) -> u16 {
    u16::from_be_bytes([datagram[2], datagram[3]])
}

/// One v5 datagram: `flows` (at most 30), after `sequence` flows sent before it.
fn v5_datagram(flows: &[V5Flow], boot_ms: u64, sequence: u32) -> Vec<u8> {
    let uptime = |unix_ms: u64| unix_ms.wrapping_sub(boot_ms) as u32;
    let now_ms = flows.iter().map(|f| f.last_ms).max().unwrap_or(boot_ms);
    let mut d = Vec::with_capacity(V5_HEADER + V5_RECORD * flows.len());
    d.extend_from_slice(&5u16.to_be_bytes());
    d.extend_from_slice(&(flows.len() as u16).to_be_bytes());
    d.extend_from_slice(&uptime(now_ms).to_be_bytes());
    d.extend_from_slice(&((now_ms / 1_000) as u32).to_be_bytes());
    d.extend_from_slice(&((now_ms % 1_000) as u32 * 1_000_000).to_be_bytes());
    d.extend_from_slice(&sequence.to_be_bytes());
    d.push(0); // engine_type
    d.push(0); // engine_id
    d.extend_from_slice(&0u16.to_be_bytes()); // sampling_interval
    for f in flows {
        d.extend_from_slice(&f.src);
        d.extend_from_slice(&f.dst);
        d.extend_from_slice(&[0; 4]); // nexthop
        d.extend_from_slice(&0u16.to_be_bytes()); // input
        d.extend_from_slice(&0u16.to_be_bytes()); // output
        d.extend_from_slice(&f.packets.to_be_bytes());
        d.extend_from_slice(&f.octets.to_be_bytes());
        d.extend_from_slice(&uptime(f.first_ms).to_be_bytes());
        d.extend_from_slice(&uptime(f.last_ms).to_be_bytes());
        d.extend_from_slice(&f.src_port.to_be_bytes());
        d.extend_from_slice(&f.dst_port.to_be_bytes());
        d.push(0); // pad1
        d.push(0); // tcp_flags: the records carry none
        d.push(f.protocol);
        d.push(0); // tos
        d.extend_from_slice(&0u16.to_be_bytes()); // src_as
        d.extend_from_slice(&0u16.to_be_bytes()); // dst_as
        d.push(0); // src_mask
        d.push(0); // dst_mask
        d.extend_from_slice(&0u16.to_be_bytes()); // pad2
    }
    debug_assert_eq!(d.len(), V5_HEADER + V5_RECORD * flows.len());
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ringflow_meter::source::synthetic::FlowAddresses;

    fn be16(d: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([d[at], d[at + 1]])
    }

    fn be32(d: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(d[at..at + 4].try_into().unwrap())
    }

    fn record(i: u64, start_ms: u64, end_ms: u64) -> pb::FlowRecord {
        pb::FlowRecord {
            start_unix_nanos: start_ms * 1_000_000 + 123,
            end_unix_nanos: end_ms * 1_000_000 + 456,
            src_addr: Bytes::from_static(&[10, 0, 0, 1]),
            dst_addr: Bytes::from_static(&[192, 168, 1, 2]),
            src_port: 40_000 + i as u32,
            dst_port: 443,
            ip_protocol: 6,
            bytes_from_src: 1_500 + i,
            packets_from_src: 3 + i,
            bytes_from_dst: 99_999,
            packets_from_dst: 77,
            ..Default::default()
        }
    }

    #[test]
    fn v5_datagram_fields_at_their_offsets() {
        let t0 = 1_700_000_000_000u64; // ms
        let mut records: Vec<pb::FlowRecord> = (0..31).map(|i| record(i, t0 + i, t0 + 2_000 + i)).collect();
        // IPv6 addresses: no v5 record.
        records.insert(
            5,
            pb::FlowRecord {
                src_addr: Bytes::from(vec![0u8; 16]),
                dst_addr: Bytes::from(vec![0u8; 16]),
                ..record(99, t0, t0)
            },
        );
        let datagrams = v5_datagrams(&records);
        assert_eq!(datagrams.len(), 2);
        let (d, second) = (&datagrams[0], &datagrams[1]);
        assert_eq!(d.len(), 24 + 30 * 48);
        assert_eq!(second.len(), 24 + 48);

        // Header: boot is a second before the earliest start (t0), the header's time the latest
        // end among its records (record 29: t0 + 2029 ms).
        let now_ms = t0 + 2_029;
        assert_eq!(be16(d, 0), 5);
        assert_eq!(be16(d, 2), 30);
        assert_eq!(be32(d, 4), 1_000 + 2_029); // sys_uptime
        assert_eq!(u64::from(be32(d, 8)), now_ms / 1_000); // unix_secs
        assert_eq!(be32(d, 12), (now_ms % 1_000) as u32 * 1_000_000); // unix_nsecs
        assert_eq!(be32(d, 16), 0); // flow_sequence
        assert_eq!((d[20], d[21], be16(d, 22)), (0, 0, 0));
        assert_eq!(be32(second, 16), 30);
        assert_eq!(be16(second, 2), 1);

        // Record 2 (the third): src→dst counters only.
        let r = &d[24 + 2 * 48..24 + 3 * 48];
        assert_eq!(&r[0..4], &[10, 0, 0, 1]);
        assert_eq!(&r[4..8], &[192, 168, 1, 2]);
        assert_eq!(&r[8..12], &[0, 0, 0, 0]); // nexthop
        assert_eq!((be16(r, 12), be16(r, 14)), (0, 0)); // input, output
        assert_eq!(be32(r, 16), 5); // dPkts
        assert_eq!(be32(r, 20), 1_502); // dOctets
        assert_eq!(be32(r, 24), 1_000 + 2); // first
        assert_eq!(be32(r, 28), 1_000 + 2_002); // last
        assert_eq!(be16(r, 32), 40_002);
        assert_eq!(be16(r, 34), 443);
        assert_eq!((r[36], r[37], r[38], r[39]), (0, 0, 6, 0)); // pad1, tcp_flags, prot, tos
        assert_eq!((be16(r, 40), be16(r, 42)), (0, 0)); // src_as, dst_as
        assert_eq!((r[44], r[45], be16(r, 46)), (0, 0, 0)); // masks, pad2
        // Record 5 is the one after the IPv6 record.
        assert_eq!(be16(d, 24 + 5 * 48 + 32), 40_005);
    }

    #[test]
    fn parses_nfdumps_flows_total() {
        let info = "Ident: none\nFlows: 3000\nFlows_tcp: 3000\nFlows_udp: 0\nPackets: 16500\n";
        assert_eq!(parse_flows(info), Some(3_000));
        assert_eq!(parse_flows("Ident: none\n"), None);
    }

    /// Fails (rather than passing silently) when nfcapd is not installed.
    #[tokio::test]
    async fn nfcapd_stores_every_record_sent() -> anyhow::Result<()> {
        const RECORDS: u64 = 3_000;
        const RATE: f64 = 100_000.0;
        let now = ringflow_meter::unix_nanos_now();
        let addresses = FlowAddresses::new(100);
        let records: Vec<pb::FlowRecord> = (0..RECORDS).map(|i| addresses.record(i, now)).collect();
        let tmp = tempfile::tempdir()?;
        let run = nfcapd_run(&records, &tmp.path().join("flows"), RATE, tmp.path()).await?;
        eprintln!(
            "nfcapd: {} sent, {} stored in {:.3} s ({:.0} records/s), {} datagrams, {:.4} CPU s, {:.0} records per CPU-second",
            run.sent,
            run.stored,
            run.seconds,
            run.sent as f64 / run.seconds,
            run.datagrams,
            run.cpu_seconds,
            run.records_per_cpu_sec()
        );
        assert_eq!(run.sent, RECORDS);
        assert_eq!(run.datagrams, RECORDS.div_ceil(30));
        assert_eq!(run.stored, run.sent, "nfcapd lost records");
        assert!(run.cpu_seconds > 0.0, "no CPU measured: {run:?}");
        Ok(())
    }
}

//! Spool throughput against the raw file system on the same machine, in one run:
//! `cargo bench -p ringflow-meter --bench spool`.
//!
//! Appends the same batches (40 KiB frames, like a 1000-record batch) with the spool and with
//! plain `write_all` to one file, then reads them back (the spool from a fresh open, so from
//! the page cache rather than its memory of recent batches; raw in 256 KiB reads, the size the
//! spool reads), and prints throughput and the ratios.

#![expect(
    clippy::disallowed_types,
    reason = "a benchmark times real work, outside any runtime"
)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringflow_meter::spool::fs::RealFs;
use ringflow_meter::spool::{Spool, SpoolLimits};

const FRAME: usize = 40 << 10;
const BATCHES: u64 = 2_000;
const ROUNDS: usize = 5;

fn mib_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / took.as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    let frame = Bytes::from((0..FRAME).map(|i| i as u8).collect::<Vec<_>>());
    let limits = SpoolLimits {
        max_bytes: 4 << 30,
        max_entries: 1 << 20,
        segment_bytes: 8 << 20,
        recent_bytes: 8 << 20,
    };
    let total = BATCHES * FRAME as u64;
    let mut best = [Duration::MAX; 4];
    for _ in 0..ROUNDS {
        let dir = tempfile::tempdir()?;
        // Raw: one file, write_all, one fsync at the end.
        let path = dir.path().join("raw");
        let t = Instant::now();
        let mut file = std::fs::File::create(&path)?;
        for _ in 0..BATCHES {
            file.write_all(&frame)?;
        }
        file.sync_data()?;
        best[0] = best[0].min(t.elapsed());
        let t = Instant::now();
        let (mut raw, mut buf, mut back) = (std::fs::File::open(&path)?, vec![0u8; 256 << 10], 0);
        loop {
            match raw.read(&mut buf)? {
                0 => break,
                n => back += n as u64,
            }
        }
        best[1] = best[1].min(t.elapsed());
        anyhow::ensure!(back == total);

        // Spool: entries with headers and CRC32C, segment rotation, one sync at the end.
        let spool_dir = dir.path().join("spool");
        let t = Instant::now();
        let (mut spool, _) = Spool::open(RealFs::new(&spool_dir)?, limits)?;
        for seq in 1..=BATCHES {
            spool.append(seq, 1000, 0, frame.clone())?;
        }
        spool.sync()?;
        best[2] = best[2].min(t.elapsed());
        drop(spool);
        let t = Instant::now();
        let (mut spool, _) = Spool::open(RealFs::new(&spool_dir)?, limits)?;
        let mut after = 0;
        let mut read = 0u64;
        loop {
            let entries = spool.read_after(after, u64::MAX, 64, 4 << 20)?;
            let Some(last) = entries.last() else { break };
            after = last.seq;
            read += entries.iter().map(|e| e.frame.len() as u64).sum::<u64>();
        }
        best[3] = best[3].min(t.elapsed());
        anyhow::ensure!(read == total, "read back {read} of {total} bytes");
    }
    let [raw_w, raw_r, spool_w, spool_r] = best.map(|d| mib_per_s(total, d));
    println!(
        "{BATCHES} batches of {} KiB, best of {ROUNDS} rounds",
        FRAME >> 10
    );
    println!(
        "write  raw {raw_w:8.0} MiB/s   spool {spool_w:8.0} MiB/s   spool/raw {:.2}",
        spool_w / raw_w
    );
    println!(
        "read   raw {raw_r:8.0} MiB/s   spool {spool_r:8.0} MiB/s   spool/raw {:.2}",
        spool_r / raw_r
    );
    Ok(())
}

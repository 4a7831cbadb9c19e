//! Synthetic source: made-up but plausible TCP flows at a fixed rate, for trials and load tests.
//!
//! Record `i` (counting from 0 over the meter's run) belongs to flow `i % flows`; its byte and
//! packet counts are fixed functions of `i`, so a test can compute exactly what must arrive.
//! Paced by elapsed time (tokio's clock), so it keeps its average rate and works under paused
//! time. Uses the waiting send: a load generator measures what the pipeline accepts.

use std::time::Duration;

use bytes::Bytes;
use ringflow_proto::pb;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::RecordsTx;
use crate::config::SyntheticConfig;

/// Largest chunk handed to the batcher at once.
pub const MAX_CHUNK_RECORDS: usize = 1_000;

/// How often the source wakes to generate what is due, at most and at least: once per record
/// within these bounds, so a slow source does not wake a hundred times a second for nothing (a
/// `herd` process runs thousands of them).
const MIN_TICK: Duration = Duration::from_millis(10);
const MAX_TICK: Duration = Duration::from_secs(1);

/// The source's wake-up period at `records_per_second`.
fn tick_period(records_per_second: u64) -> Duration {
    Duration::from_secs_f64(1.0 / records_per_second.max(1) as f64).clamp(MIN_TICK, MAX_TICK)
}

/// Bytes from the source side of synthetic record `i`.
pub fn bytes_from_src(i: u64) -> u64 {
    100 + i % 1400
}

/// Flows whose source addresses are laid out in the shared buffer; beyond this (up to the
/// config's 2^24) a record's source address is allocated on its own.
const SHARED_SOURCE_FLOWS: u32 = 65_536;
/// Distinct destination addresses (192.0.2.1 to 192.0.2.250).
const DESTINATIONS: u32 = 250;

fn src_addr(f: u32) -> [u8; 4] {
    [10, (f >> 16) as u8, (f >> 8) as u8, f as u8]
}

fn dst_addr(f: u32) -> [u8; 4] {
    [192, 0, 2, (f % DESTINATIONS + 1) as u8]
}

/// Every shared source address, then every destination, laid out once per process (256 KiB):
/// a record's addresses are static slices of them, which cost neither an allocation (at full
/// speed once a third of the meter's time) nor a reference count (shared between the source's
/// thread, which clones, and the sealer's, which drops: a fifth of it, bouncing one cache line).
fn address_table() -> (&'static [u8], &'static [u8]) {
    static TABLE: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    let (sources, destinations) = TABLE.get_or_init(|| {
        (
            (0..SHARED_SOURCE_FLOWS).flat_map(src_addr).collect(),
            (0..DESTINATIONS).flat_map(dst_addr).collect(),
        )
    });
    (sources, destinations)
}

/// The addresses of the flows synthetic records cycle through: slices of [`address_table`].
#[derive(Debug, Clone)]
pub struct FlowAddresses {
    flows: u32,
    sources: Bytes,
    destinations: Bytes,
}

impl FlowAddresses {
    pub fn new(flows: u32) -> Self {
        let (sources, destinations) = address_table();
        Self {
            flows: flows.max(1),
            sources: Bytes::from_static(sources),
            destinations: Bytes::from_static(destinations),
        }
    }

    /// Synthetic record `i`.
    pub fn record(&self, i: u64, now_nanos: u64) -> pb::FlowRecord {
        let f = (i % u64::from(self.flows)) as u32;
        let slot = |buf: &Bytes, k: u32| buf.slice(4 * k as usize..4 * k as usize + 4);
        let src_addr = if f < SHARED_SOURCE_FLOWS {
            slot(&self.sources, f)
        } else {
            Bytes::copy_from_slice(&src_addr(f))
        };
        pb::FlowRecord {
            start_unix_nanos: now_nanos.saturating_sub(1_000_000_000),
            end_unix_nanos: now_nanos,
            src_addr,
            dst_addr: slot(&self.destinations, f % DESTINATIONS),
            src_port: 32_768 + f % 28_000,
            dst_port: 443,
            ip_protocol: 6,
            bytes_from_src: bytes_from_src(i),
            packets_from_src: 1 + i % 10,
            bytes_from_dst: 2 * bytes_from_src(i),
            packets_from_dst: 1 + i % 7,
            source: pb::SourceKind::Synthetic as i32,
            rtt_micros: 1_000 + (f % 50) * 100,
            ..Default::default()
        }
    }
}

/// Generates records until `stop` fires, `total_records` have been produced, or the pipeline
/// closes.
pub async fn run(config: SyntheticConfig, out: RecordsTx, stop: CancellationToken) {
    let started = Instant::now();
    let total = if config.total_records == 0 {
        u64::MAX
    } else {
        config.total_records
    };
    let mut produced = 0u64;
    let addresses = FlowAddresses::new(config.flows);
    let mut tick = tokio::time::interval(tick_period(config.records_per_second));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while produced < total {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let elapsed = started.elapsed().as_secs_f64();
        let due = ((elapsed * config.records_per_second as f64) as u64).min(total);
        while produced < due {
            let n = (due - produced).min(MAX_CHUNK_RECORDS as u64);
            let now = crate::unix_nanos_now();
            let chunk = (produced..produced + n)
                .map(|i| addresses.record(i, now))
                .collect();
            tokio::select! {
                _ = stop.cancelled() => return,
                sent = out.send(chunk) => if sent.is_err() { return },
            }
            produced += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::MeterMetrics;
    use std::sync::Arc;

    #[test]
    fn shared_addresses_are_the_flows_own() {
        for flows in [1, 100, SHARED_SOURCE_FLOWS, SHARED_SOURCE_FLOWS + 10] {
            let table = FlowAddresses::new(flows);
            for i in [
                0,
                1,
                249,
                250,
                u64::from(flows) - 1,
                u64::from(flows),
                3 * u64::from(flows) + 7,
            ] {
                let f = (i % u64::from(flows)) as u32;
                let r = table.record(i, 5_000_000_000);
                assert_eq!(&r.src_addr[..], &src_addr(f), "flows {flows}, record {i}");
                assert_eq!(&r.dst_addr[..], &dst_addr(f), "flows {flows}, record {i}");
                assert_eq!(r.src_port, 32_768 + f % 28_000);
                assert_eq!(r.bytes_from_src, bytes_from_src(i));
            }
        }
        assert_eq!(
            &FlowAddresses::new(1 << 24).record((1 << 24) - 1, 0).src_addr[..],
            &[10, 255, 255, 255]
        );
    }

    #[test]
    fn slow_sources_wake_once_per_record_fast_ones_every_ten_ms() {
        assert_eq!(tick_period(1), Duration::from_secs(1));
        assert_eq!(tick_period(20), Duration::from_millis(50));
        assert_eq!(tick_period(100_000), Duration::from_millis(10));
        assert_eq!(tick_period(0), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn produces_exactly_the_total_at_the_configured_rate() {
        let metrics = Arc::new(MeterMetrics::new());
        let (tx, mut rx) = super::super::channel(Arc::clone(&metrics));
        let config = SyntheticConfig {
            enabled: true,
            records_per_second: 2_000,
            flows: 10,
            total_records: 5_000,
        };
        let started = Instant::now();
        let task = tokio::spawn(run(config, tx, CancellationToken::new()));
        let mut got = 0u64;
        let mut bytes = 0u64;
        while let Some(chunk) = rx.recv().await {
            for r in &chunk {
                bytes += r.bytes_from_src;
            }
            got += chunk.len() as u64;
        }
        task.await.unwrap();
        assert_eq!(got, 5_000);
        assert_eq!(bytes, (0..5_000).map(bytes_from_src).sum::<u64>());
        let secs = started.elapsed().as_secs_f64();
        assert!(
            (2.4..2.6).contains(&secs),
            "5,000 records at 2,000/s took {secs}s of virtual time"
        );
        assert_eq!(metrics.records.records_generated.get(), 5_000);
    }
}

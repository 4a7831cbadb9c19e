//! The virtual meters of a `herd run`: real [`Meter`]s from the agent library (synthetic source,
//! batcher, spool, selector, backoff, QUIC sessions), thousands in one process. They share a
//! pool of QUIC endpoints and keep their spools in memory (see [`Embedding`]); everything else is
//! what a meter on a customer's host runs, with the production defaults except where
//! [`MeterShape`] says.
//!
//! Owns: the meters (start by wave, stop), their ids (`herd-SEED-000001`, ...), and the per-meter
//! counters the sampler reads. Must never: touch a collector.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ringflow_meter::{Embedding, Meter, MeterMetrics, MeterWatch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::acks::AckBook;
use ringflow_tests::TestBed;

/// Meters per shared QUIC endpoint (one UDP socket each): 20,000 meters use 100 sockets, well
/// under the process's file limit.
const METERS_PER_ENDPOINT: usize = 200;
/// Meters starting at the same moment (the start itself is local work: config, state
/// directory, spool).
const STARTS_AT_ONCE: usize = 512;
/// Started meters whose first fleet lookup has not finished yet, at most. Each lookup has a
/// socket of its own for each query (A and AAAA), as on a real host; here they share the
/// process's open-file limit (20,000 on the reference machine, which may not raise it), so the
/// herd starts as fast as DNS answers within this bound.
const LOOKUPS_IN_FLIGHT: usize = 2_048;

/// The keys of the meter config `herd` changes from the defaults.
#[derive(Debug, Clone)]
pub struct MeterShape {
    /// Synthetic records per second per meter.
    pub records_per_second: u64,
    /// A batch is closed this long after its first record.
    pub batch_age: Duration,
    /// `reconnect.rebalance_window_ms`: meters move to a better collector within this window
    /// (the default, 60 s, is longer than most runs).
    pub rebalance_window: Duration,
    /// Grace period for flushing at the end.
    pub grace: Duration,
}

impl MeterShape {
    /// Batches a meter of this shape closes per second, about: one per record while records
    /// come slower than `batch_age`, else one per `batch_age`.
    fn batches_per_second(&self) -> u64 {
        let by_age = (1.0 / self.batch_age.as_secs_f64().max(1e-3)).ceil() as u64;
        self.records_per_second.min(by_age).max(1)
    }

    /// The meters' `spool.max_entries`: [`SPOOL_HOLDS`] of batches, at least 512. A spool's
    /// segment closes at an eighth of this count (or at `spool.segment_bytes`), and an acked
    /// segment is deleted only once closed. On a host that is disk; here, where spools live in
    /// memory, it is the process's memory: with the default count (100,000, a segment every
    /// 12,500 batches) a herd meter writing a batch a second held every acked batch of the
    /// last three and a half hours, and a 30-minute soak of 2,000 meters saw the process grow
    /// by 200 KB a second. At this count a meter holds a segment of about 75 s of batches.
    pub fn spool_entries(&self) -> u64 {
        (self.batches_per_second() * SPOOL_HOLDS.as_secs())
            .next_multiple_of(8)
            .max(512)
    }
}

/// How much a herd meter's spool holds at its cap: longer than any outage a scenario makes
/// (the longest, a soak's sink outage, is a third of a period: 100 s in the hour).
const SPOOL_HOLDS: Duration = Duration::from_secs(600);

/// Waits until `meter` has finished its first fleet lookup (answered or failed), or for
/// [`LOOKUP_WAIT`] at most (a meter that stops before its lookup never reports one).
async fn first_lookup(meter: &MeterWatch) {
    let mut changed = meter.changed();
    let wait = async {
        while fleet_lookups(meter) == 0 {
            if changed.changed().await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(LOOKUP_WAIT, wait).await;
}

/// Longest wait for one meter's first lookup: the meters' `fleet.resolve_timeout_ms` (3 s by
/// default) and some.
const LOOKUP_WAIT: Duration = Duration::from_secs(5);

fn fleet_lookups(meter: &MeterMetrics) -> u64 {
    ringflow_meter::fleet::dns::LOOKUP_RESULTS
        .iter()
        .map(|r| MeterMetrics::count(&meter.fleet.fleet_lookups, r))
        .sum()
}

/// The id of meter `index` in a run with `seed`: the seed decides where each meter lands on the
/// ring (live timing is not reproducible; the ring assignment is).
pub fn meter_id(seed: u64, index: usize) -> String {
    format!("herd-{seed}-{index:06}")
}

pub struct Population {
    endpoints: Vec<quinn::Endpoint>,
    /// The first wave's own thread and endpoints: its meters stand for hosts that were already
    /// connected, so the herd's client-side work in this process (starting thousands of
    /// pipelines, their TLS handshakes) must not queue in front of them; what the herd does to
    /// them then is what the fleet does.
    first_wave: FirstWave,
    book: Arc<AckBook>,
    /// Counters of every started meter, by index (None: not started yet).
    metrics: RwLock<Vec<Option<MeterWatch>>>,
    meters: Mutex<Vec<Meter>>,
    shape: MeterShape,
    seed: u64,
}

impl Population {
    /// `count` meters, the first `first_wave` of them on a thread of their own.
    pub fn new(
        bed: &TestBed,
        count: usize,
        first_wave: usize,
        shape: MeterShape,
        book: Arc<AckBook>,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let client = ringflow_meter::transport::client_config(&bed.certs.ca)?;
        let endpoints = (0..count.div_ceil(METERS_PER_ENDPOINT).max(1))
            .map(|_| ringflow_meter::transport::client_endpoint(client.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        // In its guard from the start: dropped on an error below, it must not block.
        let raised = Arc::new(AtomicBool::new(false));
        let mut wave = FirstWave {
            runtime: Some({
                let raised = Arc::clone(&raised);
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("herd-first-wave")
                    .on_thread_start(move || {
                        if crate::placement::raise_this_thread() {
                            raised.store(true, Ordering::Relaxed);
                        }
                    })
                    .enable_all()
                    .build()?
            }),
            endpoints: Vec::new(),
            raised,
        };
        if let Some(rt) = &wave.runtime {
            let _on = rt.enter();
            wave.endpoints = (0..first_wave.div_ceil(METERS_PER_ENDPOINT).max(1))
                .map(|_| ringflow_meter::transport::client_endpoint(client.clone()))
                .collect::<Result<Vec<_>, _>>()?;
        }
        Ok(Population {
            endpoints,
            first_wave: wave,
            book,
            metrics: RwLock::new(vec![None; count]),
            meters: Mutex::new(Vec::with_capacity(count)),
            shape,
            seed,
        })
    }

    fn config(
        &self,
        bed: &TestBed,
        index: usize,
        dns: SocketAddr,
        port: u16,
    ) -> anyhow::Result<ringflow_meter::Config> {
        let s = &self.shape;
        let extra = format!(
            "admin.enabled = false\n\
             [fleet]\nname = \"{fleet}\"\nport = {port}\nnameservers = [\"{dns}\"]\nsrv = false\nrefresh_min_ms = 1000\n\
             [reconnect]\nrebalance_window_ms = {rebalance}\n\
             [batch]\nmax_age_ms = {age}\n\
             [shutdown]\ngrace_ms = {grace}\n\
             [spool]\nmax_entries = {spool_entries}\n\
             [sources.synthetic]\nenabled = true\nrecords_per_second = {rate}\nflows = 16\n",
            fleet = ringflow_tests::dns::FLEET_NAME,
            rebalance = s.rebalance_window.as_millis(),
            age = s.batch_age.as_millis(),
            grace = s.grace.as_millis(),
            rate = s.records_per_second,
            spool_entries = s.spool_entries(),
        );
        Ok(ringflow_meter::Config::parse(&bed.meter_toml(
            &meter_id(self.seed, index),
            &[],
            &extra,
        ))?)
    }

    /// Starts meters `indices`, all at once (their own splay spreads their first attempts).
    pub async fn start(
        &self,
        bed: &TestBed,
        indices: std::ops::Range<usize>,
        first_wave: bool,
        dns: SocketAddr,
        port: u16,
    ) -> anyhow::Result<()> {
        let mut starting = JoinSet::new();
        let mut resolving: std::collections::VecDeque<MeterWatch> = Default::default();
        for index in indices {
            if starting.len() >= STARTS_AT_ONCE
                && let Some(done) = starting.join_next().await
            {
                resolving.push_back(self.started(done??));
            }
            while resolving.len() + starting.len() >= LOOKUPS_IN_FLIGHT {
                match resolving.pop_front() {
                    Some(oldest) => first_lookup(&oldest).await,
                    None => break,
                }
            }
            let config = self.config(bed, index, dns, port)?;
            let (endpoints, runtime) = match (first_wave, &self.first_wave.runtime) {
                (true, Some(rt)) => (&self.first_wave.endpoints, rt.handle().clone()),
                _ => (&self.endpoints, tokio::runtime::Handle::current()),
            };
            let embedding = Embedding {
                endpoint: Some(endpoints[index % endpoints.len()].clone()),
                memory_spool: true,
                ack_observer: Some(self.book.observer(index, first_wave)),
            };
            // The meter's tasks run on the runtime it is started on.
            starting.spawn_on(
                async move {
                    let meter = Meter::start_embedded(config, CancellationToken::new(), embedding).await?;
                    anyhow::Ok((index, meter))
                },
                &runtime,
            );
        }
        while let Some(done) = starting.join_next().await {
            self.started(done??);
        }
        Ok(())
    }

    /// The nice value the first wave's thread runs at, if it could be raised.
    pub fn first_wave_nice(&self) -> Option<i32> {
        self.first_wave
            .raised
            .load(Ordering::Relaxed)
            .then_some(crate::placement::FIRST_WAVE_NICE)
    }

    fn started(&self, (index, meter): (usize, Meter)) -> MeterWatch {
        let metrics = meter.metrics();
        self.metrics.write().unwrap_or_else(|p| p.into_inner())[index] = Some(metrics.clone());
        self.meters.lock().unwrap_or_else(|p| p.into_inner()).push(meter);
        metrics
    }

    /// Runs `f` over the counters of every started meter, by index.
    pub fn each<T>(&self, mut f: impl FnMut(usize, &MeterMetrics) -> T) -> Vec<T> {
        let metrics = self.metrics.read().unwrap_or_else(|p| p.into_inner());
        metrics
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.as_ref().map(|m| f(i, m)))
            .collect()
    }

    /// The collector each meter is connected to, by index (None: not connected or not started).
    pub fn connections(&self) -> Vec<Option<Arc<str>>> {
        let metrics = self.metrics.read().unwrap_or_else(|p| p.into_inner());
        metrics
            .iter()
            .map(|m| m.as_ref().and_then(|m| m.connected_to()))
            .collect()
    }

    /// The id of meter `index`.
    pub fn id(&self, index: usize) -> String {
        meter_id(self.seed, index)
    }

    /// What can be watched of every started meter (its progress signal, its current
    /// collector), by index.
    pub fn watches(&self) -> Vec<(usize, MeterWatch)> {
        let metrics = self.metrics.read().unwrap_or_else(|p| p.into_inner());
        metrics
            .iter()
            .enumerate()
            .filter_map(|(i, m)| Some((i, m.clone()?)))
            .collect()
    }

    /// Stops every meter (all at once; each flushes within its grace period).
    pub async fn stop(&self) -> anyhow::Result<()> {
        let meters = std::mem::take(&mut *self.meters.lock().unwrap_or_else(|p| p.into_inner()));
        let mut stopping = JoinSet::new();
        for m in meters {
            stopping.spawn(m.stop());
        }
        while let Some(done) = stopping.join_next().await {
            done??;
        }
        for e in self.endpoints.iter().chain(&self.first_wave.endpoints) {
            e.close(0u32.into(), b"herd done");
        }
        Ok(())
    }
}

struct FirstWave {
    runtime: Option<tokio::runtime::Runtime>,
    endpoints: Vec<quinn::Endpoint>,
    /// Whether its thread runs at [`crate::placement::FIRST_WAVE_NICE`].
    raised: Arc<AtomicBool>,
}

impl Drop for FirstWave {
    fn drop(&mut self) {
        // Dropped from async code: a runtime may not block there.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ringflow_meter::config::SpoolConfig;
    use ringflow_meter::spool::fs::MemFs;
    use ringflow_meter::spool::{Spool, SpoolLimits};

    /// Bytes a spool in memory holds after an hour of one 60-byte batch a second, each acked
    /// as soon as it is written (the spool checkpoints as the meter's does).
    fn held_after_an_hour(max_entries: u64) -> u64 {
        let config = SpoolConfig {
            max_entries,
            ..SpoolConfig::default()
        };
        let (mut spool, _) = Spool::open(MemFs::default(), SpoolLimits::from(&config)).unwrap();
        for seq in 1..=3_600 {
            spool.append(seq, 1, 0, Bytes::from(vec![7u8; 60])).unwrap();
            spool.ack(seq).unwrap();
            spool.checkpoint().unwrap();
        }
        spool.disk().0
    }

    /// The 30-minute soak's growth: with the default count a herd meter's spool kept every
    /// acked batch in memory (a segment closes only every 12,500 batches); with herd's shape it
    /// holds about one segment, 75 s of batches, however long the run.
    #[test]
    fn a_herd_meters_spool_in_memory_frees_what_was_acked() {
        let shape = MeterShape {
            records_per_second: 1,
            batch_age: Duration::from_secs(1),
            rebalance_window: Duration::from_secs(60),
            grace: Duration::from_secs(5),
        };
        assert_eq!(shape.spool_entries(), 600, "ten minutes of one batch a second");
        let fast = MeterShape {
            records_per_second: 100,
            batch_age: Duration::from_millis(100),
            ..shape.clone()
        };
        assert_eq!(fast.spool_entries(), 6_000, "ten batches a second");
        let default = held_after_an_hour(SpoolConfig::default().max_entries);
        let herd = held_after_an_hour(shape.spool_entries());
        assert!(default > 3_600 * 60, "default: {default} bytes held");
        assert!(herd < 80 * 100, "herd: {herd} bytes held");
    }
}

//! `herd run`: a scenario carried out against a live fleet on loopback, sampled every 100 ms,
//! judged and charted.
//!
//! Owns: the run's clock (plan actions at their offsets, the phases of the latency comparison),
//! the sampler, and turning what was seen into a [`Report`]. Must never: run past its duration
//! plus the stop bounds, or leave a process behind (every child is killed when dropped).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::acks::{AckBook, Phase};
use super::fleet::{Fleet, FleetSpec, SinkKind, SlotView};
use super::meters::{MeterShape, Population, meter_id};
use super::report::{AckLatency, Report, Thresholds};
use super::scenario::{Action, Scenario, balance_threshold};
use super::timeline::{Event, Sample, Timeline};
use crate::TestBed;
use crate::process::CollectorCommand;

/// Sampling interval.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// A collector's `/metrics` must answer within this, or the sample counts it as silent.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);
/// Acks the first wave needs before the herd for the latency comparison to be judged.
const MIN_BASELINE_ACKS: u64 = 1_000;
/// How long a collector may take to drain and exit (its `shutdown.grace_ms` is 5 s in the
/// fleet's configs) before it is killed and counted as a crash.
const COLLECTOR_GRACE: Duration = Duration::from_secs(20);
/// The event marking that every meter of the herd was started.
pub const HERD_STARTED: &str = "herd started";

/// Concurrent sessions of the handshake-capacity probe.
const PROBE_CONCURRENCY: usize = 64;

/// Everything `herd run` was asked for.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub scenario: Scenario,
    pub meters: usize,
    pub collectors: usize,
    pub duration: Duration,
    pub sink: SinkKind,
    pub seed: u64,
    pub out: PathBuf,
    /// Fraction of the meters in the first wave.
    pub first_wave: f64,
    pub shape: MeterShape,
    pub dns_ttl: Duration,
    /// Each collector's `admission.accept_rate` and `accept_burst`.
    pub accept_rate: u32,
    /// How to start a collector process.
    pub collector: CollectorCommand,
    /// Where the run's state (certificates, meter state, collector data) lives; removed after.
    pub work_parent: PathBuf,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
}

/// What one collector's `/metrics` said.
#[derive(Debug, Default, Clone)]
struct Scrape {
    sessions: u64,
    stored: u64,
    /// Refusals (before the handshake) and rejects (at Hello), by reason.
    refusals: BTreeMap<String, u64>,
}

/// Reads the figures the sampler needs from Prometheus text.
fn parse_scrape(text: &str) -> Scrape {
    let mut s = Scrape::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else { continue };
        let value = value.max(0.0) as u64;
        let reason = || {
            key.split_once("reason=\"")
                .and_then(|(_, r)| r.split_once('"'))
                .map(|(r, _)| r.to_owned())
        };
        match key.split_once('{').map_or(key, |(name, _)| name) {
            "ringflow_collector_sessions_active" => s.sessions = value,
            "ringflow_collector_records_stored_total" => s.stored = value,
            "ringflow_collector_connections_refused_total" | "ringflow_collector_hello_rejects_total" => {
                if let Some(r) = reason() {
                    *s.refusals.entry(r).or_default() += value;
                }
            }
            _ => {}
        }
    }
    s
}

async fn scrape(admin: SocketAddr) -> Option<Scrape> {
    match tokio::time::timeout(SCRAPE_TIMEOUT, crate::http_get(admin, "/metrics")).await {
        Ok(Ok((200, body))) => Some(parse_scrape(&body)),
        _ => None,
    }
}

/// A collector's RSS, 0 if it cannot be read (it just exited).
fn rss_bytes(pid: u32) -> u64 {
    crate::process::rss_bytes_of(pid).unwrap_or(0)
}

/// Counter totals that survive a collector's restart (its counters start again at 0).
#[derive(Default)]
struct Accumulated {
    last: Vec<Option<Scrape>>,
    stored: u64,
    refusals: BTreeMap<String, u64>,
}

impl Accumulated {
    /// Adds what slot `i` counted since its last scrape; returns the refusals it added.
    fn add(&mut self, i: usize, now: Scrape) -> BTreeMap<String, u64> {
        if self.last.len() <= i {
            self.last.resize(i + 1, None);
        }
        let before = self.last[i].take().unwrap_or_default();
        let delta = |now: u64, before: u64| if now >= before { now - before } else { now };
        self.stored += delta(now.stored, before.stored);
        let mut added = BTreeMap::new();
        for (reason, n) in &now.refusals {
            let d = delta(*n, before.refusals.get(reason).copied().unwrap_or(0));
            if d > 0 {
                *self.refusals.entry(reason.clone()).or_default() += d;
                added.insert(reason.clone(), d);
            }
        }
        self.last[i] = Some(now);
        added
    }

    /// Slot `i` is down: its next scrape starts from zero.
    fn forget(&mut self, i: usize) {
        if let Some(last) = self.last.get_mut(i) {
            *last = None;
        }
    }
}

/// What the run's clock shares with the sampler.
struct Clock {
    started: Instant,
    first_wave: usize,
    meters: usize,
    herd_at: Mutex<Option<Instant>>,
    all_connected_at: Mutex<Option<Instant>>,
}

impl Clock {
    fn seconds(&self, at: Instant) -> f64 {
        at.duration_since(self.started).as_secs_f64()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The sampler: every 100 ms, the meters' counters, each collector's `/metrics` and RSS, and the
/// ack latency of the interval; moves the latency phases as the meters connect.
async fn sample(
    clock: Arc<Clock>,
    fleet: Arc<Fleet>,
    population: Arc<Population>,
    book: Arc<AckBook>,
    events: Arc<Mutex<Vec<Event>>>,
    progress: indicatif::ProgressBar,
    stop: CancellationToken,
) -> (Timeline, Accumulated) {
    let mut timeline = Timeline {
        collectors: fleet.names(),
        addresses: fleet.addrs().iter().map(|a| a.to_string()).collect(),
        ..Timeline::default()
    };
    let mut acc = Accumulated::default();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut last_at, mut last_attempts) = (Instant::now(), 0u64);
    let mut pids: Vec<Option<u32>> = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let views: Vec<SlotView> = fleet.views();
        pids.resize(views.len(), None);
        for (i, v) in views.iter().enumerate() {
            // Another process in the slot (restarted between two samples): its counters start
            // again at zero.
            if v.pid != pids[i] {
                acc.forget(i);
                pids[i] = v.pid;
            }
        }
        let scrapes = futures_util::future::join_all(views.iter().map(|v| async move {
            match v.admin_addr {
                Some(a) => scrape(a).await,
                None => None,
            }
        }))
        .await;
        let now = Instant::now();
        let dt = now.duration_since(last_at).as_secs_f64().max(1e-3);
        last_at = now;

        let sums = population.each(|_, m| {
            (
                m.connect_attempts.get(),
                m.records_generated.get(),
                m.records_acked.get(),
                m.sessions_started.get() > 0,
            )
        });
        let attempts: u64 = sums.iter().map(|s| s.0).sum();
        // Meters welcomed at least once: the herd is in when all are (some may be moving
        // between collectors at any one moment).
        let welcomed = sums.iter().filter(|s| s.3).count();
        let connections = population.connections();
        let connected = connections.iter().filter(|c| c.is_some()).count();
        let first_connected = connections[..clock.first_wave]
            .iter()
            .filter(|c| c.is_some())
            .count();
        if first_connected == clock.first_wave && book.advance(Phase::Warmup, Phase::BeforeHerd) {
            lock(&events).push(Event {
                t_s: clock.seconds(now),
                what: "first wave connected".into(),
            });
        }
        if welcomed == clock.meters && book.advance(Phase::DuringHerd, Phase::After) {
            *lock(&clock.all_connected_at) = Some(now);
            lock(&events).push(Event {
                t_s: clock.seconds(now),
                what: "all connected".into(),
            });
        }

        let mut refusals_per_s = BTreeMap::new();
        let mut sessions = Vec::with_capacity(views.len());
        for (i, s) in scrapes.into_iter().enumerate() {
            match s {
                Some(s) => {
                    sessions.push(s.sessions);
                    for (reason, n) in acc.add(i, s) {
                        *refusals_per_s.entry(reason).or_insert(0.0) += n as f64 / dt;
                    }
                }
                // Up but too busy to answer within the timeout: its last answer stands.
                None if views[i].admin_addr.is_some() => {
                    timeline.silent_scrapes += 1;
                    sessions.push(acc.last.get(i).and_then(|l| l.as_ref()).map_or(0, |l| l.sessions));
                }
                // Down (its counters were forgotten when its pid went).
                None => sessions.push(0),
            }
        }
        let latency = book.take_interval();
        let sample = Sample {
            t_s: clock.seconds(now),
            sessions,
            attempts_per_s: attempts.saturating_sub(last_attempts) as f64 / dt,
            refusals_per_s,
            records_sent: sums.iter().map(|s| s.1).sum(),
            records_acked: sums.iter().map(|s| s.2).sum(),
            records_stored: acc.stored,
            ack_p50_ms: latency.p50,
            ack_p99_ms: latency.p99,
            collector_rss_bytes: views.iter().map(|v| v.pid.map_or(0, rss_bytes)).collect(),
        };
        last_attempts = attempts;
        progress.set_position(now.duration_since(clock.started).as_millis() as u64);
        progress.set_message(format!(
            "connected {connected}/{} · attempts {:.0}/s · acked {}",
            clock.meters, sample.attempts_per_s, sample.records_acked
        ));
        timeline.samples.push(sample);
    }
    timeline.events = lock(&events).clone();
    timeline.events.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
    (timeline, acc)
}

/// The highest attempts per second over any stretch of whole samples at least a second long.
/// Each sample covers the time since the one before (longer than 100 ms when the sampler was
/// held up), so attempts are its rate times its own interval.
pub(super) fn peak_per_second(samples: &[Sample]) -> f64 {
    let starts: Vec<f64> = std::iter::once(0.0)
        .chain(samples.iter().map(|s| s.t_s))
        .collect();
    let mut peak: f64 = 0.0;
    for end in 0..samples.len() {
        let mut attempts = 0.0;
        for j in (0..=end).rev() {
            attempts += samples[j].attempts_per_s * (samples[j].t_s - starts[j]);
            let span = samples[end].t_s - starts[j];
            if span >= 1.0 - 1e-9 {
                peak = peak.max(attempts / span);
                break;
            }
        }
    }
    peak
}

/// Runs the scenario; writes `report.json`, `report.md` and the charts into `options.out`.
pub async fn run(options: RunOptions) -> anyhow::Result<Report> {
    let RunOptions {
        scenario,
        meters,
        collectors,
        duration,
        seed,
        ..
    } = options;
    anyhow::ensure!(meters >= 1, "--meters must be at least 1");
    anyhow::ensure!(collectors >= 1, "--collectors must be at least 1");
    let sink = if scenario.needs_nats() {
        SinkKind::Nats
    } else {
        options.sink
    };
    std::fs::create_dir_all(&options.out)?;
    let logs = options.out.join("logs");
    std::fs::create_dir_all(&logs)?;
    std::fs::create_dir_all(&options.work_parent)?;
    let bed = TestBed::new_in(&options.work_parent)?;
    let plan = scenario.plan(duration);
    let spare = usize::from(scenario == Scenario::AddCollector);
    let command = CollectorCommand {
        log_dir: Some(logs),
        ..options.collector.clone()
    };
    let fleet = Arc::new(
        Fleet::start(
            bed,
            command,
            FleetSpec {
                collectors,
                spare,
                sink,
                single_answer: plan.single_answer,
                ttl: options.dns_ttl,
                extra: format!(
                    "[admission]\naccept_rate = {rate}\naccept_burst = {rate}\n",
                    rate = options.accept_rate
                ),
            },
        )
        .await?,
    );
    let bed = fleet.bed();
    let initial: Vec<SocketAddr> = fleet.addrs()[..collectors].to_vec();

    // The fleet's capacity for new sessions, measured now on this machine.
    let probe =
        ringflow_agent::transport::client_endpoint(ringflow_agent::transport::client_config(&bed.certs.ca)?)?;
    // Within the collectors' accept bursts: the probe measures the machine, not the budget.
    let probes = (options.accept_rate as usize * collectors * 4 / 5).clamp(collectors, 1_000);
    let capacity = super::capacity::fleet_session_rate(
        &probe,
        &initial,
        &bed.org,
        &bed.token,
        probes,
        PROBE_CONCURRENCY,
    )
    .await?;
    probe.close(0u32.into(), b"");

    let book = AckBook::new(meters)?;
    let first_wave = ((meters as f64 * options.first_wave).round() as usize).clamp(1, meters);
    let population = Arc::new(Population::new(
        bed,
        meters,
        first_wave,
        options.shape.clone(),
        Arc::clone(&book),
        seed,
    )?);
    let clock = Arc::new(Clock {
        started: Instant::now(),
        first_wave,
        meters,
        herd_at: Mutex::new(None),
        all_connected_at: Mutex::new(None),
    });
    let events = Arc::new(Mutex::new(Vec::new()));
    let progress = if options.progress {
        let bar = indicatif::ProgressBar::new(duration.as_millis() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {elapsed}/{duration} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!("herd {}", scenario.name()));
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let stop_sampling = CancellationToken::new();
    let sampler = tokio::spawn(sample(
        Arc::clone(&clock),
        Arc::clone(&fleet),
        Arc::clone(&population),
        Arc::clone(&book),
        Arc::clone(&events),
        progress.clone(),
        stop_sampling.clone(),
    ));
    let event = |what: String| {
        lock(&events).push(Event {
            t_s: clock.seconds(Instant::now()),
            what,
        })
    };
    let (dns, port) = (fleet.dns_addr(), fleet.port());

    let mut starts = tokio::task::JoinSet::new();
    {
        let (population, fleet) = (Arc::clone(&population), Arc::clone(&fleet));
        starts.spawn(async move {
            population
                .start(fleet.bed(), 0..first_wave, true, dns, port)
                .await
        });
    }
    let mut added: Option<String> = None;
    for (at, action) in plan.actions {
        tokio::time::sleep_until(clock.started + at).await;
        match action {
            Action::Herd => {
                book.set_phase(Phase::DuringHerd);
                *lock(&clock.herd_at) = Some(Instant::now());
                event(format!("herd: {} meters", meters - first_wave));
                let (population, fleet) = (Arc::clone(&population), Arc::clone(&fleet));
                let (events, clock) = (Arc::clone(&events), Arc::clone(&clock));
                starts.spawn(async move {
                    population
                        .start(fleet.bed(), first_wave..meters, false, dns, port)
                        .await?;
                    // Starting thousands of meters here takes a while (their state, their DNS
                    // lookups): `herd sim --start-spread-ms` takes this from a live run.
                    lock(&events).push(Event {
                        t_s: clock.seconds(Instant::now()),
                        what: HERD_STARTED.to_owned(),
                    });
                    Ok(())
                });
            }
            Action::KillCollector(i) => {
                fleet.kill(i);
                event(format!("c{} killed", i + 1));
            }
            Action::RollingRestart(span) => {
                let each = span / collectors as u32;
                for i in 0..collectors {
                    let began = Instant::now();
                    event(format!("c{} drains", i + 1));
                    fleet.restart(i, COLLECTOR_GRACE).await?;
                    event(format!("c{} back", i + 1));
                    tokio::time::sleep_until(began + each).await;
                }
            }
            Action::AddCollector => {
                let i = fleet.add().await?;
                added = Some(fleet.addrs()[i].to_string());
                event(format!("c{} added", i + 1));
            }
            Action::SinkDown => {
                fleet.sink_down().await;
                event("sink down".into());
            }
            Action::SinkUp => {
                fleet.sink_up().await?;
                event("sink up".into());
            }
        }
    }
    tokio::time::sleep_until(clock.started + duration).await;
    while let Some(started) = starts.join_next().await {
        started??;
    }
    let at_end = population.connections();
    stop_sampling.cancel();
    let (timeline, acc) = sampler.await?;
    progress.finish_and_clear();

    population.stop().await?;
    fleet.stop(COLLECTOR_GRACE).await?;
    let stored = fleet.stored().await?;
    let summary = crate::summarize(&stored);

    // Acked but not stored, batch by batch.
    let stored_ids: HashSet<(&str, u64)> = stored.iter().map(|b| (b.meter_id.as_str(), b.seq)).collect();
    let ids: Vec<String> = (0..meters).map(|i| meter_id(seed, i)).collect();
    let mut lost = 0u64;
    for (i, acked) in book.acked_batches().into_iter().enumerate() {
        let mut seen = HashSet::new();
        for (seq, records) in acked {
            if seen.insert(seq) && !stored_ids.contains(&(ids[i].as_str(), seq)) {
                lost += u64::from(records);
            }
        }
    }
    let totals = population.each(|_, m| (m.records_generated.get(), m.records_acked.get()));

    let last = timeline.samples.last();
    let live: Vec<u64> = last
        .map(|s| {
            s.sessions
                .iter()
                .zip(&s.collector_rss_bytes)
                .filter(|(_, rss)| **rss > 0)
                .map(|(n, _)| *n)
                .collect()
        })
        .unwrap_or_default();
    let total: u64 = live.iter().sum();
    let max_over_mean = (total > 0).then(|| {
        let mean = total as f64 / live.len() as f64;
        live.iter().copied().max().unwrap_or(0) as f64 / mean
    });
    let connected_at_end = at_end.iter().filter(|c| c.is_some()).count();
    // Meters that went over to the added collector, of those connected at the end.
    let moved_fraction = added.map(|added| {
        let moved = at_end
            .iter()
            .filter(|c| c.as_deref() == Some(added.as_str()))
            .count();
        moved as f64 / connected_at_end.max(1) as f64
    });
    let moved_range = scenario
        .moves_meters()
        .then(|| super::scenario::moved_range(collectors, meters));
    let herd_at = *lock(&clock.herd_at);
    let all_at = *lock(&clock.all_connected_at);
    let acks = book.summary();
    let mut report = Report {
        scenario: scenario.name().to_owned(),
        mode: "live".to_owned(),
        meters,
        collectors,
        seed,
        sink: match sink {
            SinkKind::File => "file",
            SinkKind::Nats => "nats",
            SinkKind::Kafka => "kafka",
        }
        .to_owned(),
        duration_s: duration.as_secs_f64(),
        records_sent: totals.iter().map(|t| t.0).sum(),
        records_acked: totals.iter().map(|t| t.1).sum(),
        records_stored: summary.records,
        records_lost: lost,
        duplicates_stored: summary.duplicate_batches as u64,
        time_to_all_connected_s: match (herd_at, all_at) {
            (Some(h), Some(a)) => Some(a.duration_since(h).as_secs_f64()),
            _ => None,
        },
        peak_attempts_per_s: peak_per_second(&timeline.samples),
        handshake_capacity_per_s: capacity,
        sessions_max_over_mean: max_over_mean,
        meters_connected_at_end: connected_at_end,
        moved_fraction,
        ack_latency_ms: AckLatency {
            p50: acks.all.p50,
            p99: acks.all.p99,
            p99_before_herd: acks.before_herd.p99,
            p99_during_herd: acks.during_herd.p99,
            acks_before_herd: acks.before_herd.count,
            acks_during_herd: acks.during_herd.count,
        },
        collector_crashes: fleet.crashes(),
        collector_rss_max_bytes: timeline
            .samples
            .iter()
            .flat_map(|s| s.collector_rss_bytes.iter().copied())
            .max()
            .unwrap_or(0),
        collector_scrapes_missed: timeline.silent_scrapes,
        refusals: acc.refusals,
        verdict: String::new(),
        failures: Vec::new(),
        thresholds: Thresholds {
            records_lost: 0,
            collector_crashes: 0,
            sessions_max_over_mean: balance_threshold(scenario, meters, live.len().max(1)),
            p99_during_over_before: (scenario == Scenario::ColdStart).then_some(2.0),
            min_baseline_acks: MIN_BASELINE_ACKS,
            moved_fraction: moved_range,
            all_connected: true,
            min_connected_at_end: (meters as f64 * 0.99).floor() as usize,
            peak_attempts_over_capacity: None,
            time_to_all_connected_max_s: None,
        },
    };
    report.judge();
    report.write(&options.out)?;
    std::fs::write(
        options.out.join("timeline.json"),
        serde_json::to_string(&timeline)? + "\n",
    )?;
    let title = format!(
        "herd {} ({meters} meters, {collectors} collectors)",
        scenario.name()
    );
    super::charts::write_charts(&options.out, &title, &timeline)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_reads_sessions_stored_and_refusals_by_reason() {
        let text = "# HELP x\n\
            ringflow_collector_sessions_active 42\n\
            ringflow_collector_records_stored_total 1000\n\
            ringflow_collector_connections_refused_total{reason=\"accept_rate\"} 7\n\
            ringflow_collector_hello_rejects_total{reason=\"overloaded_sessions\"} 3\n\
            ringflow_collector_sessions_welcomed_total 50\n";
        let s = parse_scrape(text);
        assert_eq!((s.sessions, s.stored), (42, 1000));
        assert_eq!(s.refusals.get("accept_rate"), Some(&7));
        assert_eq!(s.refusals.get("overloaded_sessions"), Some(&3));
    }

    #[test]
    fn counters_keep_counting_across_a_collector_restart() {
        let mut acc = Accumulated::default();
        let s = |stored| Scrape {
            stored,
            ..Scrape::default()
        };
        acc.add(0, s(100));
        acc.add(0, s(150));
        acc.forget(0);
        acc.add(0, s(20));
        acc.add(0, s(30));
        assert_eq!(acc.stored, 180);
    }

    #[test]
    fn the_peak_counts_each_sample_over_its_own_interval() {
        // The sampler was held up: one sample covers 2 s at 500/s, the others 100 ms at 0.
        let mut t = 0.0;
        let samples: Vec<Sample> = (0..20)
            .map(|i| {
                t += if i == 10 { 2.0 } else { 0.1 };
                Sample {
                    t_s: t,
                    attempts_per_s: if i == 10 { 500.0 } else { 0.0 },
                    ..Sample::default()
                }
            })
            .collect();
        let peak = peak_per_second(&samples);
        assert!((peak - 500.0).abs() < 1.0, "{peak}");
    }

    #[test]
    fn the_peak_is_over_a_second_not_one_sample() {
        let samples: Vec<Sample> = (1..=30)
            .map(|i| Sample {
                t_s: i as f64 * 0.1,
                attempts_per_s: if i == 15 { 1000.0 } else { 0.0 },
                ..Sample::default()
            })
            .collect();
        let peak = peak_per_second(&samples);
        assert!((peak - 100.0).abs() < 1.0, "{peak}");
    }
}

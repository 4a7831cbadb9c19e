//! The sampler of a live run: every 100 ms, the meters' counters, each collector's `/metrics`
//! and RSS, and the ack latency of the interval, into a [`Timeline`]; it also moves the latency
//! phases as the meters connect.
//!
//! Owns: the scrape parser, counter totals that survive a collector's restart, and the run's
//! [`Clock`]. Must never: block the run's clock (a collector too busy to answer within
//! `SCRAPE_TIMEOUT` keeps its last answer).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::acks::{AckBook, Phase};
use crate::fleet::{Fleet, SlotView};
use crate::meters::Population;
use crate::timeline::{Event, ResourceSample, Sample, Timeline};

/// Sampling interval.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// What each process holds is read every this many samples (once a second).
const RESOURCES_EVERY: u64 = 10;
/// A collector's `/metrics` must answer within this, or the sample counts it as silent.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

/// What one collector's `/metrics` said.
#[derive(Debug, Default, Clone)]
pub(super) struct Scrape {
    sessions: u64,
    /// `ringflow_collector_ready`: the sink is healthy and the collector not draining.
    ready: bool,
    /// `ringflow_collector_tasks_active`, every kind.
    tasks: u64,
    /// `ringflow_collector_sink_queue_batches`.
    queue: u64,
    stored: u64,
    /// Handshakes completed (`ringflow_collector_handshake_seconds_count`).
    handshakes: u64,
    /// `ringflow_collector_admission_accept_rate`.
    accept_rate: f64,
    /// `ringflow_collector_control_lag_seconds`.
    lag_s: f64,
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
        let Ok(exact) = value.parse::<f64>() else { continue };
        let value = exact.max(0.0) as u64;
        let reason = || {
            key.split_once("reason=\"")
                .and_then(|(_, r)| r.split_once('"'))
                .map(|(r, _)| r.to_owned())
        };
        match key.split_once('{').map_or(key, |(name, _)| name) {
            "ringflow_collector_sessions_active" => s.sessions = value,
            "ringflow_collector_ready" => s.ready = value == 1,
            "ringflow_collector_tasks_active" => s.tasks += value,
            "ringflow_collector_sink_queue_batches" => s.queue = value,
            "ringflow_collector_records_stored_total" => s.stored = value,
            "ringflow_collector_handshake_seconds_count" => s.handshakes = value,
            "ringflow_collector_admission_accept_rate" => s.accept_rate = exact,
            "ringflow_collector_control_lag_seconds" => s.lag_s = exact,
            // Collectors export the known reasons at 0 from start: only those that happened count.
            "ringflow_collector_connections_refused_total" | "ringflow_collector_hello_rejects_total"
                if value > 0 =>
            {
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
    match tokio::time::timeout(SCRAPE_TIMEOUT, ringflow_tests::http_get(admin, "/metrics")).await {
        Ok(Ok((200, body))) => Some(parse_scrape(&body)),
        _ => None,
    }
}

/// A collector's RSS, 0 if it cannot be read (it just exited).
fn rss_bytes(pid: u32) -> u64 {
    ringflow_tests::process::rss_bytes_of(pid).unwrap_or(0)
}

/// Cores process `pid` used since `last` (its pid, CPU seconds and when), which it updates;
/// 0 for a first reading, another process, or none.
fn cores_since(last: &mut Option<(u32, f64, Instant)>, pid: Option<u32>) -> f64 {
    let now = Instant::now();
    let reading = pid.and_then(|pid| Some((pid, ringflow_tests::procstat::cpu_seconds(pid).ok()?, now)));
    let cores = match (*last, reading) {
        (Some((was, before, at)), Some((pid, secs, _))) if was == pid => {
            (secs - before).max(0.0) / now.duration_since(at).as_secs_f64().max(1e-3)
        }
        _ => 0.0,
    };
    *last = reading;
    cores
}

/// Each collector's figures of one sample, by slot.
#[derive(Default)]
struct PerCollector {
    cpu: Vec<f64>,
    handshakes_per_s: Vec<f64>,
    accept_rate: Vec<f64>,
    lag_ms: Vec<f64>,
}

/// Each collector's CPU (cores), handshakes per second, accept rate and lag, from
/// its scrape against the one before (`last`, as `acc` holds it before this sample is tallied)
/// and its CPU clock against the last reading (`cpu`, by slot: pid, CPU seconds, when).
fn per_collector(
    views: &[SlotView],
    scrapes: &[Option<Scrape>],
    acc: &Accumulated,
    cpu: &mut Vec<Option<(u32, f64, Instant)>>,
    dt: f64,
) -> PerCollector {
    cpu.resize(views.len(), None);
    let mut out = PerCollector::default();
    for (i, v) in views.iter().enumerate() {
        let cores = cores_since(&mut cpu[i], v.pid);
        let (handshakes, rate, lag_s) = match &scrapes[i] {
            Some(s) => {
                let before = acc
                    .last
                    .get(i)
                    .and_then(|l| l.as_ref())
                    .map_or(0, |l| l.handshakes);
                let done = if s.handshakes >= before {
                    s.handshakes - before
                } else {
                    s.handshakes
                };
                (done as f64 / dt, s.accept_rate, s.lag_s)
            }
            None => (0.0, 0.0, 0.0),
        };
        out.cpu.push(cores);
        out.handshakes_per_s.push(handshakes);
        out.accept_rate.push(rate);
        out.lag_ms.push(lag_s * 1e3);
    }
    out
}

/// Counter totals that survive a collector's restart (its counters start again at 0).
#[derive(Default)]
pub(super) struct Accumulated {
    /// Each slot's last scrape (`None` after its process went: the next starts from zero).
    last: Vec<Option<Scrape>>,
    /// Records stored by the fleet, over every process each slot has had.
    pub(super) stored: u64,
    /// Refusals and rejects by reason, over every process each slot has had.
    pub(super) refusals: BTreeMap<String, u64>,
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
pub(super) struct Clock {
    /// When the run began; every event and sample is timed from here.
    pub(super) started: Instant,
    /// Meters in the first wave (the first `first_wave` of the population).
    pub(super) first_wave: usize,
    /// Meters in the run.
    pub(super) meters: usize,
    /// When the herd was let go; written by the run, read for the report.
    pub(super) herd_at: Mutex<Option<Instant>>,
    /// When every meter had been welcomed at least once; written by the sampler.
    pub(super) all_connected_at: Mutex<Option<Instant>>,
}

impl Clock {
    pub(super) fn seconds(&self, at: Instant) -> f64 {
        at.duration_since(self.started).as_secs_f64()
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The sampler: every 100 ms, the meters' counters, each collector's `/metrics` and RSS, and the
/// ack latency of the interval; moves the latency phases as the meters connect.
pub(super) async fn sample(
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
    let mut cpu_marks = Vec::new();
    let mut own_cpu: Option<(u32, f64, Instant)> = None;
    let mut ticks = 0u64;
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
                m.sessions.connect_attempts.get(),
                m.records.records_generated.get(),
                m.delivery.records_acked.get(),
                m.sessions.sessions_started.get() > 0,
            )
        });
        let attempts: u64 = sums.iter().map(|s| s.0).sum();
        // Meters welcomed at least once: the herd is in when all are (some may be moving
        // between collectors at any one moment).
        let welcomed = sums.iter().filter(|s| s.3).count();
        let connections = population.connections();
        let connected = connections.iter().filter(|c| c.is_some()).count();
        move_phases(&clock, &book, &events, &connections, welcomed, now);

        if ticks.is_multiple_of(RESOURCES_EVERY) {
            timeline
                .resources
                .push(resources_now(clock.seconds(now), &views, &scrapes));
        }
        ticks += 1;
        let per = per_collector(&views, &scrapes, &acc, &mut cpu_marks, dt);
        let meters_cpu = cores_since(&mut own_cpu, Some(std::process::id()));
        let (sessions, ready, refusals_per_s) = tally_scrapes(&mut acc, &mut timeline, &views, scrapes, dt);
        let latency = book.take_interval();
        let sample = Sample {
            t_s: clock.seconds(now),
            sessions,
            attempts_per_s: attempts.saturating_sub(last_attempts) as f64 / dt,
            meters_started: sums.len() as u64,
            meters_dialled: sums.iter().filter(|s| s.0 > 0).count() as u64,
            refusals_per_s,
            records_sent: sums.iter().map(|s| s.1).sum(),
            records_acked: sums.iter().map(|s| s.2).sum(),
            records_stored: acc.stored,
            ack_p50_ms: latency.p50,
            ack_p99_ms: latency.p99,
            collector_rss_bytes: views.iter().map(|v| v.pid.map_or(0, rss_bytes)).collect(),
            collector_ready: ready,
            collector_cpu: per.cpu,
            meters_cpu,
            handshakes_per_s: per.handshakes_per_s,
            accept_rate: per.accept_rate,
            control_lag_ms: per.lag_ms,
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

/// What each collector process and this one (the meters') hold now.
fn resources_now(t_s: f64, views: &[SlotView], scrapes: &[Option<Scrape>]) -> ResourceSample {
    let collectors = views
        .iter()
        .zip(scrapes)
        .map(|(v, s)| {
            let (tasks, queue, sessions) = s.as_ref().map_or((0, 0, 0), |s| (s.tasks, s.queue, s.sessions));
            v.pid
                .and_then(|pid| super::resources::read(pid, tasks, queue, sessions))
        })
        .collect();
    let tasks = tokio::runtime::Handle::current().metrics().num_alive_tasks() as u64;
    ResourceSample {
        t_s,
        collectors,
        meters: super::resources::read(std::process::id(), tasks, 0, 0),
    }
}

/// Moves the latency phases: the baseline starts once the first wave is in, and the herd's phase
/// ends once every meter has been welcomed.
fn move_phases(
    clock: &Clock,
    book: &AckBook,
    events: &Mutex<Vec<Event>>,
    connections: &[Option<Arc<str>>],
    welcomed: usize,
    now: Instant,
) {
    let first_connected = connections[..clock.first_wave]
        .iter()
        .filter(|c| c.is_some())
        .count();
    if first_connected == clock.first_wave && book.advance(Phase::Warmup, Phase::BeforeHerd) {
        lock(events).push(Event {
            t_s: clock.seconds(now),
            what: "first wave connected".into(),
        });
    }
    if welcomed == clock.meters && book.advance(Phase::DuringHerd, Phase::After) {
        *lock(&clock.all_connected_at) = Some(now);
        lock(events).push(Event {
            t_s: clock.seconds(now),
            what: super::ALL_CONNECTED.into(),
        });
    }
}

/// Each collector's sessions and readiness from its scrape (a silent one keeps its last answer,
/// a down one holds none and is not ready), and the refusals per second the interval added.
fn tally_scrapes(
    acc: &mut Accumulated,
    timeline: &mut Timeline,
    views: &[SlotView],
    scrapes: Vec<Option<Scrape>>,
    dt: f64,
) -> (Vec<u64>, Vec<bool>, BTreeMap<String, f64>) {
    let mut refusals_per_s = BTreeMap::new();
    let mut sessions = Vec::with_capacity(views.len());
    let mut ready = Vec::with_capacity(views.len());
    for (i, s) in scrapes.into_iter().enumerate() {
        match s {
            Some(s) => {
                sessions.push(s.sessions);
                ready.push(s.ready);
                for (reason, n) in acc.add(i, s) {
                    *refusals_per_s.entry(reason).or_insert(0.0) += n as f64 / dt;
                }
            }
            // Up but too busy to answer within the timeout: its last answer stands.
            None if views[i].admin_addr.is_some() => {
                timeline.silent_scrapes += 1;
                let last = acc.last.get(i).and_then(|l| l.as_ref());
                sessions.push(last.map_or(0, |l| l.sessions));
                ready.push(last.is_some_and(|l| l.ready));
            }
            // Down (its counters were forgotten when its pid went).
            None => {
                sessions.push(0);
                ready.push(false);
            }
        }
    }
    (sessions, ready, refusals_per_s)
}

/// The highest of `rate` (a per-second figure of each sample: attempts, the fleet's
/// handshakes) over any stretch of whole samples at least a second long. Each sample covers the
/// time since the one before (longer than 100 ms when the sampler was held up), so its count is
/// its rate times its own interval.
pub fn peak_per_second(samples: &[Sample], rate: fn(&Sample) -> f64) -> f64 {
    let starts: Vec<f64> = std::iter::once(0.0)
        .chain(samples.iter().map(|s| s.t_s))
        .collect();
    let mut peak: f64 = 0.0;
    for end in 0..samples.len() {
        let mut attempts = 0.0;
        for j in (0..=end).rev() {
            attempts += rate(&samples[j]) * (samples[j].t_s - starts[j]);
            let span = samples[end].t_s - starts[j];
            if span >= 1.0 - 1e-9 {
                peak = peak.max(attempts / span);
                break;
            }
        }
    }
    peak
}

/// The handshakes per second the fleet sustained while the herd connected: the median of the
/// fleet's completed handshakes per second over the samples after `from_s` (every herd meter
/// started) up to `to_s` (all connected, or the end), taken only while under nine tenths of
/// `meters` held a session: the stretch where what the collectors complete is their service
/// rate, not how fast the last stragglers come back. None when no sample falls there.
pub fn sustained_handshakes(samples: &[Sample], from_s: f64, to_s: f64, meters: usize) -> Option<f64> {
    let mut rates: Vec<f64> = samples
        .iter()
        .filter(|s| s.t_s > from_s && s.t_s <= to_s)
        .filter(|s| (s.sessions.iter().sum::<u64>() as f64) < 0.9 * meters as f64)
        .map(fleet_handshakes)
        .collect();
    rates.sort_by(f64::total_cmp);
    rates.get(rates.len() / 2).copied()
}

/// A sample's connection attempts per second.
pub fn attempts(s: &Sample) -> f64 {
    s.attempts_per_s
}

/// A sample's handshakes per second, the whole fleet.
pub fn fleet_handshakes(s: &Sample) -> f64 {
    s.handshakes_per_s.iter().sum()
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
            ringflow_collector_hello_rejects_total{reason=\"sink_unavailable\"} 0\n\
            ringflow_collector_sessions_welcomed_total 50\n\
            ringflow_collector_handshake_seconds_count 12\n\
            ringflow_collector_admission_accept_rate 62.5\n";
        let s = parse_scrape(text);
        assert_eq!((s.sessions, s.stored, s.handshakes), (42, 1000, 12));
        assert_eq!(s.accept_rate, 62.5);
        assert_eq!(s.refusals.get("accept_rate"), Some(&7));
        assert_eq!(s.refusals.get("overloaded_sessions"), Some(&3));
        assert_eq!(
            s.refusals.get("sink_unavailable"),
            None,
            "reasons at 0 are left out"
        );
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
        let peak = peak_per_second(&samples, attempts);
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
        let peak = peak_per_second(&samples, attempts);
        assert!((peak - 100.0).abs() < 1.0, "{peak}");
    }

    #[test]
    fn the_sustained_rate_is_the_median_while_most_meters_still_wait() {
        // 100 meters on two collectors: 10 samples with 40 in and rates 100..1000 (the fleet's
        // sum), then the stragglers' stretch (95 in) at 5/s, then samples after "all connected".
        let samples: Vec<Sample> = (1..=30)
            .map(|i| {
                let (sessions, rate) = match i {
                    1..=10 => (40, i as f64 * 100.0),
                    11..=20 => (95, 5.0),
                    _ => (100, 0.0),
                };
                Sample {
                    t_s: i as f64 * 0.1,
                    sessions: vec![sessions / 2, sessions - sessions / 2],
                    handshakes_per_s: vec![rate / 2.0, rate / 2.0],
                    ..Sample::default()
                }
            })
            .collect();
        // The stragglers' and the settled samples are left out: the median of 100..1000.
        assert_eq!(sustained_handshakes(&samples, 0.0, 2.05, 100), Some(600.0));
        // Only what lies after `from_s`: 800, 900, 1000.
        assert_eq!(sustained_handshakes(&samples, 0.75, 2.05, 100), Some(900.0));
        assert_eq!(sustained_handshakes(&samples, 1.05, 3.0, 100), None);
    }
}

//! `herd sim`: the herd scenarios at internet scale (a million meters, hundreds of collectors) in
//! virtual time, driven by the production selection, backoff and admission code (see
//! [`engine`] for what is modelled and what is not).
//!
//! Owns: turning `herd sim` options into a simulated world and model, the ablations (what each
//! defence buys), the run's report (the same keys as `herd run`, `mode` "sim") and `--compare`.
//! Must never: open a socket or read the wall clock inside the simulation (the wall time of the
//! whole run is measured around it, for the report's `sim_wall_s` line in report.md only).

pub mod engine;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use super::meters::meter_id;
use super::report::{AckLatency, Report, Thresholds};
use super::scenario::{Action, Scenario, balance_threshold, moved_range};
use super::timeline::Timeline;
use engine::{Model, Outcome, World};

/// The defences an ablation can take away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Ablations {
    /// Every random delay (backoff, walk steps, rebalance moves, retry hints) takes its full
    /// length: meters that fail together retry together.
    pub no_jitter: bool,
    /// Meters dial at the moment they start (no `reconnect.splay_ms`).
    pub no_splay: bool,
    /// DNS answers every meter with the same one collector (as a caching resolver did in the
    /// outage this product learns from); `Welcome` views still tell meters the whole fleet.
    pub single_record_dns: bool,
    /// Collectors take every meter their own budgets allow (no ⌈(1 + ε) · mean⌉ cap).
    pub no_bounded_load: bool,
}

impl Ablations {
    /// "baseline", or the defences taken away, e.g. "no-jitter".
    pub fn name(&self) -> String {
        let names: Vec<&str> = [
            (self.no_jitter, "no-jitter"),
            (self.no_splay, "no-splay"),
            (self.single_record_dns, "single-record-dns"),
            (self.no_bounded_load, "no-bounded-load"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        if names.is_empty() {
            "baseline".to_owned()
        } else {
            names.join("+")
        }
    }

    /// The variants `--compare` runs: these flags, then each defence taken away alone.
    fn variants(self) -> Vec<Ablations> {
        let mut out = vec![self];
        for v in [
            Ablations {
                no_jitter: true,
                ..self
            },
            Ablations {
                no_splay: true,
                ..self
            },
            Ablations {
                single_record_dns: true,
                ..self
            },
            Ablations {
                no_bounded_load: true,
                ..self
            },
        ] {
            if !out.contains(&v) {
                out.push(v);
            }
        }
        out
    }
}

/// Everything `herd sim` is told.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub scenario: Scenario,
    pub meters: usize,
    pub collectors: usize,
    pub duration: Duration,
    pub seed: u64,
    pub first_wave: f64,
    /// The herd's meters start one after the other over this long.
    pub start_spread: Duration,
    /// Or: when each further tenth of the herd first dialled (a live run's); empty: not given.
    pub first_dials: Vec<Duration>,
    /// Collectors are `127.0.0.{2..}:port`, as in `herd run` (the ring hashes addresses).
    pub port: u16,
    /// Collectors killed at once in crash-one.
    pub crash: usize,
    /// Handshakes per second each collector completes.
    pub capacity: f64,
    pub rtt: Duration,
    /// Each collector's `admission.accept_rate` and `accept_burst` (default: its capacity).
    pub accept_rate: Option<f64>,
    /// `admission.adaptive_lag_ms` (0: a fixed accept rate).
    pub adaptive_lag_ms: u32,
    /// `admission.bounded_load_epsilon`.
    pub epsilon: f64,
    /// The collectors' `fleet.load_poll_ms`.
    pub poll_interval: Duration,
    /// The meters' `reconnect.rebalance_window_ms`.
    pub rebalance_window: Duration,
    /// The meters' `batch.max_age_ms` (how soon a meter writes to a collector that died).
    pub batch_age: Duration,
    pub dns_ttl: Duration,
    pub ablations: Ablations,
}

/// How long a handshake holds its slot, for sizing `admission.max_handshakes` by Little's law
/// (the collector's default, 256, is 1,000/s × this).
const HANDSHAKE_SECONDS: f64 = 0.256;

/// How long a collector takes to come back after it stopped (rolling restart).
const RESTART_TIME: Duration = Duration::from_secs(1);

impl SimOptions {
    fn model(&self) -> Model {
        let mut reconnect = ringflow_meter::config::ReconnectConfig {
            rebalance_window_ms: self.rebalance_window.as_millis() as u64,
            ..Default::default()
        };
        if self.ablations.no_splay {
            reconnect.splay_ms = 0;
        }
        let rate = self.accept_rate.unwrap_or(self.capacity).max(1.0);
        let admission = ringflow_collector::config::AdmissionConfig {
            accept_rate: rate.round() as u32,
            accept_burst: rate.round() as u32,
            // Little's law, as the default (256 at 1,000/s) was sized: handshakes last about a
            // quarter of a second over the internet; never below the default.
            max_handshakes: ((rate * HANDSHAKE_SECONDS).round() as u32)
                .max(ringflow_collector::config::AdmissionConfig::default().max_handshakes),
            adaptive_lag_ms: self.adaptive_lag_ms,
            bounded_load_epsilon: if self.ablations.no_bounded_load {
                0.0
            } else {
                self.epsilon
            },
            ..Default::default()
        };
        let shutdown = ringflow_collector::config::ShutdownConfig::default();
        Model {
            capacity: self.capacity,
            rtt: self.rtt,
            budgets: ringflow_collector::control::admission::Budgets::from_config(
                &admission,
                &ringflow_collector::config::LimitsConfig::default(),
            ),
            poll_interval: self.poll_interval,
            selection: ringflow_meter::selector::SelectorConfig::from(&reconnect),
            jitter: ringflow_meter::selector::backoff::JitterParams::from(&reconnect),
            jitter_on: !self.ablations.no_jitter,
            connect_timeout: reconnect.connect_timeout(),
            // `herd run`'s meters make 1 record a second: a batch each `batch_age`, but not more
            // often than a record comes.
            write_every: self.batch_age.max(Duration::from_secs(1)),
            silence_detect: {
                let liveness = ringflow_meter::session::liveness::LivenessConfig::from(&reconnect);
                let bound =
                    ringflow_meter::session::liveness::Liveness::new(liveness).silence_bound(self.rtt);
                bound + bound / 8
            },
            drain_window: Duration::from_millis(shutdown.drain_window_ms.into()),
            restart_time: RESTART_TIME,
            dns_ttl: self.dns_ttl,
            unavailable_retry: Duration::from_millis(
                ringflow_collector::control::session::RETRY_AFTER_UNAVAILABLE_MS.into(),
            ),
        }
    }

    fn world(&self) -> World {
        let mut plan = self.scenario.plan(self.duration);
        // crash-one with --crash N: N collectors killed at the same moment.
        let mut actions = Vec::new();
        for (at, action) in plan.actions {
            match action {
                Action::KillCollector(_) => actions.extend(
                    (0..self.crash.clamp(1, self.collectors)).map(|c| (at, Action::KillCollector(c))),
                ),
                other => actions.push((at, other)),
            }
        }
        plan.actions = actions;
        let spare = usize::from(self.scenario == Scenario::AddCollector);
        World {
            meter_ids: (0..self.meters).map(|i| meter_id(self.seed, i)).collect(),
            first_wave: ((self.meters as f64 * self.first_wave).round() as usize).clamp(1, self.meters),
            start_spread: self.start_spread,
            first_dials: self.first_dials.clone(),
            addresses: (0..self.collectors + spare)
                .map(|i| sim_address(i, self.port))
                .collect(),
            collectors: self.collectors,
            single_record_dns: plan.single_answer || self.ablations.single_record_dns,
            plan,
            duration: self.duration,
            seed: self.seed,
        }
    }

    /// The time a perfectly paced herd takes: N / the fleet's capacity, and no less than the
    /// meters' splay (the last of them does not dial before it ends).
    pub fn ideal_time_s(&self) -> f64 {
        let splay = if self.ablations.no_splay {
            0.0
        } else {
            self.model().selection.splay.as_secs_f64()
        };
        (self.meters as f64 / self.fleet_capacity()).max(splay)
    }

    /// The fleet's handshake capacity: the collectors at the start, each at `capacity`, or its
    /// accept rate when that is lower.
    pub fn fleet_capacity(&self) -> f64 {
        self.capacity.min(self.accept_rate.unwrap_or(self.capacity)) * self.collectors as f64
    }
}

/// The address of collector `i`: 127.0.0.2, 127.0.0.3, ... as `herd run` starts them. Past 253
/// collectors the third octet counts too (127.0.1.x, ...).
pub fn sim_address(i: usize, port: u16) -> String {
    let n = i + 2;
    format!("127.0.{}.{}:{port}", n / 256, n % 256)
}

/// One simulated run: its report (not yet written) and timeline.
pub fn simulate(options: &SimOptions) -> anyhow::Result<(Report, Outcome)> {
    anyhow::ensure!(options.meters >= 1, "--meters must be at least 1");
    anyhow::ensure!(
        (1..=60_000).contains(&options.collectors),
        "--collectors must be between 1 and 60,000"
    );
    anyhow::ensure!(options.capacity > 0.0, "--capacity must be positive");
    let world = options.world();
    let outcome = engine::run(&world, &options.model());
    Ok((report(options, &outcome), outcome))
}

fn report(o: &SimOptions, outcome: &Outcome) -> Report {
    let up: Vec<usize> = (0..outcome.up_at_end.len())
        .filter(|&c| outcome.up_at_end[c])
        .collect();
    let mut per_collector = vec![0u64; outcome.up_at_end.len()];
    for c in outcome.connected_at_end.iter().flatten() {
        per_collector[*c] += 1;
    }
    let connected: u64 = per_collector.iter().sum();
    let max_over_mean = (connected > 0 && !up.is_empty()).then(|| {
        let max = up.iter().map(|&c| per_collector[c]).max().unwrap_or(0);
        max as f64 / (connected as f64 / up.len() as f64)
    });
    let added = (o.scenario == Scenario::AddCollector).then_some(o.collectors);
    let capacity = o.fleet_capacity();
    let capacity_bounds = o.scenario != Scenario::DnsSingleAnswer;
    let mut report = Report {
        scenario: o.scenario.name().to_owned(),
        mode: "sim".to_owned(),
        meters: o.meters,
        collectors: o.collectors,
        seed: o.seed,
        sink: "not modelled".to_owned(),
        placement: None,
        duration_s: o.duration.as_secs_f64(),
        records_sent: 0,
        records_acked: 0,
        records_stored: 0,
        records_lost: 0,
        duplicates_stored: 0,
        time_to_all_connected_s: outcome.time_to_all_connected.map(|d| d.as_secs_f64()),
        peak_attempts_per_s: super::live::peak_per_second(&outcome.timeline.samples, super::live::attempts),
        handshakes_peak_per_s: super::live::peak_per_second(
            &outcome.timeline.samples,
            super::live::fleet_handshakes,
        ),
        handshakes_sustained_per_s: None,
        handshake_capacity_per_s: capacity,
        sessions_max_over_mean: max_over_mean,
        meters_connected_at_end: connected as usize,
        moved_fraction: added.map(|a| per_collector[a] as f64 / connected.max(1) as f64),
        // Failover is measured live only (the meters' own signal of a new collector).
        failover_max_s: None,
        failover_p50_s: None,
        failover_meters: None,
        failover_unmoved: None,
        moved_from_live: None,
        failover_exceptions: Vec::new(),
        node_loss: None,
        growth: Vec::new(),
        ack_latency_ms: AckLatency::default(),
        collector_crashes: 0,
        collector_rss_max_bytes: 0,
        collector_scrapes_missed: 0,
        refusals: outcome.refusals.clone(),
        verdict: String::new(),
        failures: Vec::new(),
        thresholds: Thresholds {
            records_lost: 0,
            collector_crashes: 0,
            sessions_max_over_mean: balance_threshold(o.scenario, o.meters, up.len().max(1)),
            p99_during_over_before: None,
            min_baseline_acks: 0,
            moved_fraction: added.map(|_| moved_range(o.collectors, o.meters)),
            all_connected: true,
            min_connected_at_end: (o.meters as f64 * 0.99).floor() as usize,
            peak_attempts_over_capacity: capacity_bounds.then_some(PEAK_OVER_CAPACITY),
            time_to_all_connected_max_s: capacity_bounds.then(|| TIME_OVER_IDEAL * o.ideal_time_s()),
            failover_max_s: None,
            failover_unmoved: None,
            moved_from_live: None,
        },
    };
    report.judge();
    report
}

/// Highest peak attempts/s, as a multiple of the fleet's handshake capacity, that passes.
const PEAK_OVER_CAPACITY: f64 = 1.5;
/// Longest time to connect every meter that passes, as a multiple of the time a perfectly paced
/// herd would take ([`SimOptions::ideal_time_s`]).
const TIME_OVER_IDEAL: f64 = 1.25;

/// Runs one simulation and writes `report.json`, `report.md`, `timeline.json` and the charts
/// into `out`.
pub fn run(options: &SimOptions, out: &Path) -> anyhow::Result<Report> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (report, outcome) = simulate(options)?;
    write(options, out, &report, &outcome.timeline)?;
    Ok(report)
}

fn write(options: &SimOptions, out: &Path, report: &Report, timeline: &Timeline) -> anyhow::Result<()> {
    report.write(out)?;
    std::fs::write(out.join("timeline.json"), serde_json::to_string(timeline)? + "\n")?;
    let title = format!(
        "herd sim {} {} ({} meters, {} collectors)",
        options.scenario.name(),
        options.ablations.name(),
        options.meters,
        options.collectors
    );
    super::charts::write_charts(out, &title, timeline)?;
    Ok(())
}

/// One variant of a `--compare` run.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    pub variant: String,
    pub verdict: String,
    pub time_to_all_connected_s: Option<f64>,
    pub peak_attempts_per_s: f64,
    pub peak_attempts_over_capacity: f64,
    pub sessions_max_over_mean: Option<f64>,
    /// The highest max/mean over the run (after the herd started).
    pub worst_max_over_mean: Option<f64>,
    pub meters_connected_at_end: usize,
    pub attempts: u64,
    pub refusals: u64,
    /// Directory holding the variant's own report and charts.
    pub dir: PathBuf,
}

/// `herd sim --compare`: the scenario with these flags, and with each defence taken away; each
/// variant's output in `out/VARIANT/`, and `compare.json`, `compare.md` and the two comparison
/// charts (attempts/s and max/mean over time, one line per variant) in `out`.
pub fn compare(options: &SimOptions, out: &Path) -> anyhow::Result<Vec<Variant>> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut variants = Vec::new();
    let mut series = Vec::new();
    for ablations in options.ablations.variants() {
        let o = SimOptions {
            ablations,
            ..options.clone()
        };
        let name = ablations.name();
        let dir = out.join(&name);
        std::fs::create_dir_all(&dir)?;
        let (report, outcome) = simulate(&o)?;
        write(&o, &dir, &report, &outcome.timeline)?;
        let herd_s = o.duration.as_secs_f64() * 0.2;
        let balance = outcome.balance.clone();
        variants.push(Variant {
            variant: name.clone(),
            verdict: report.verdict.clone(),
            time_to_all_connected_s: report.time_to_all_connected_s,
            peak_attempts_per_s: report.peak_attempts_per_s,
            peak_attempts_over_capacity: report.peak_attempts_per_s / report.handshake_capacity_per_s,
            sessions_max_over_mean: report.sessions_max_over_mean,
            worst_max_over_mean: balance
                .iter()
                .filter(|(t, _)| *t > herd_s + 1.0)
                .map(|(_, v)| *v)
                .reduce(f64::max),
            meters_connected_at_end: report.meters_connected_at_end,
            attempts: outcome.attempts,
            refusals: outcome.refusals.values().sum(),
            dir,
        });
        series.push((name, outcome.timeline, balance));
    }
    std::fs::write(
        out.join("compare.json"),
        serde_json::to_string_pretty(&variants)? + "\n",
    )?;
    std::fs::write(out.join("compare.md"), compare_markdown(options, &variants))?;
    let title = format!(
        "herd sim {} ({} meters, {} collectors)",
        options.scenario.name(),
        options.meters,
        options.collectors
    );
    let drawn: Vec<super::charts::Variant<'_>> = series
        .iter()
        .map(|(name, timeline, balance)| super::charts::Variant {
            name,
            timeline,
            balance,
        })
        .collect();
    super::charts::write_comparison(out, &title, &drawn)?;
    Ok(variants)
}

fn compare_markdown(o: &SimOptions, variants: &[Variant]) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# herd sim --compare: {} ({} meters, {} collectors, capacity {:.0}/s each, RTT {} ms, seed {})\n",
        o.scenario.name(),
        o.meters,
        o.collectors,
        o.capacity,
        o.rtt.as_millis(),
        o.seed
    );
    let _ = writeln!(
        md,
        "| variant | verdict | time to all connected | peak attempts/s (× capacity) | max/mean at end | worst max/mean | attempts | refusals |\n|---|---|---|---|---|---|---|---|"
    );
    for v in variants {
        let opt = |x: Option<f64>, unit: &str| x.map_or("never".to_owned(), |x| format!("{x:.2}{unit}"));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} (×{:.2}) | {} | {} | {} | {} |",
            v.variant,
            v.verdict,
            opt(v.time_to_all_connected_s, " s"),
            v.peak_attempts_per_s,
            v.peak_attempts_over_capacity,
            opt(v.sessions_max_over_mean, ""),
            opt(v.worst_max_over_mean, ""),
            v.attempts,
            v.refusals
        );
    }
    let _ = writeln!(
        md,
        "\nCharts: compare_attempts.png, compare_balance.png (and .svg); each variant's report in its own directory."
    );
    md
}

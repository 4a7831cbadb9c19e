//! `herd run`: a scenario carried out against a live fleet on loopback, sampled every 100 ms,
//! judged and charted.
//!
//! Owns: the run's clock (plan actions at their offsets, the phases of the latency comparison)
//! and the order of a run: fleet, capacity probe, meters and sampler, the plan, the stop, the
//! verdict. The sampler is in [`sampler`], the watch of a killed collector's meters in
//! [`failover`], the verdict in [`outcome`]. Must never: run past its
//! duration plus the stop bounds, or leave a process behind (every child is killed when dropped).

mod failover;
pub mod node_loss;
mod outcome;
mod resources;
mod sampler;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::acks::{AckBook, Phase};
use crate::fleet::{Fleet, FleetSpec, NodeLoss, SinkKind};
use crate::meters::{MeterShape, Population};
use crate::report::Report;
use crate::scenario::{Action, Scenario};
use crate::timeline::{Event, Timeline};
use ringflow_tests::TestBed;
use ringflow_tests::process::CollectorCommand;

use failover::FailoverWatch;
use node_loss::NodeLossSeen;
use outcome::Ended;
use sampler::{Accumulated, Clock, lock, sample};
pub use sampler::{attempts, fleet_handshakes, peak_per_second};

/// How long a collector may take to drain and exit (its `shutdown.grace_ms` is 5 s in the
/// fleet's configs) before it is killed and counted as a crash.
const COLLECTOR_GRACE: Duration = Duration::from_secs(20);
/// The event marking that every meter of the herd was started.
pub const HERD_STARTED: &str = "herd started";
/// The start of the event marking the herd's release ("herd: N meters").
pub const HERD_EVENT_PREFIX: &str = "herd: ";
/// The event marking that every meter had been welcomed.
pub const ALL_CONNECTED: &str = "all connected";

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
    /// Each collector's `admission.adaptive_lag_ms` (0: a fixed accept rate).
    pub adaptive_lag_ms: u32,
    /// How to start a collector process (under `taskset` when the placement is split).
    pub collector: CollectorCommand,
    /// Which CPUs each side runs on.
    pub placement: crate::placement::Placement,
    /// Where the run's state (certificates, meter state, collector data) lives; removed after.
    pub work_parent: PathBuf,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
}

/// Runs the scenario; writes `report.json`, `report.md` and the charts into `options.out`.
pub async fn run(options: RunOptions) -> anyhow::Result<Report> {
    anyhow::ensure!(options.meters >= 1, "--meters must be at least 1");
    anyhow::ensure!(options.collectors >= 1, "--collectors must be at least 1");
    // Before the fleet, the meters and their runtimes start: threads started later inherit it.
    options.placement.pin_this_process()?;
    let sink = if options.scenario.needs_nats() {
        SinkKind::Nats
    } else if options.scenario.needs_nats_cluster() {
        SinkKind::NatsCluster
    } else {
        options.sink
    };
    let fleet = Arc::new(start_fleet(&options, sink).await?);
    let capacity = probe_capacity(&fleet, &options).await?;
    let mut live = Live::start(&options, Arc::clone(&fleet))?;
    live.first_wave();
    let added = live.carry_out(&options).await?;
    let ended = live.stop(&fleet, options.duration).await?;
    outcome::judge(&options, sink, capacity, &fleet, ended, added)
}

/// The fleet of the run: its directories, collectors, DNS and sink.
async fn start_fleet(options: &RunOptions, sink: SinkKind) -> anyhow::Result<Fleet> {
    std::fs::create_dir_all(&options.out)?;
    let logs = options.out.join("logs");
    std::fs::create_dir_all(&logs)?;
    std::fs::create_dir_all(&options.work_parent)?;
    let bed = TestBed::new_in(&options.work_parent)?;
    let plan = options.scenario.plan(options.duration);
    let command = CollectorCommand {
        log_dir: Some(logs),
        ..options.collector.clone()
    };
    let spec = FleetSpec {
        collectors: options.collectors,
        spare: usize::from(options.scenario == Scenario::AddCollector),
        sink,
        single_answer: plan.single_answer,
        ttl: options.dns_ttl,
        extra: format!(
            "[admission]\naccept_rate = {rate}\naccept_burst = {rate}\nadaptive_lag_ms = {lag}\n",
            rate = options.accept_rate,
            lag = options.adaptive_lag_ms,
        ),
    };
    Fleet::start(bed, command, spec).await
}

/// The fleet's capacity for new sessions, measured now on this machine.
async fn probe_capacity(fleet: &Fleet, options: &RunOptions) -> anyhow::Result<f64> {
    let bed = fleet.bed();
    let initial: Vec<SocketAddr> = fleet.addrs()[..options.collectors].to_vec();
    let probe =
        ringflow_meter::transport::client_endpoint(ringflow_meter::transport::client_config(&bed.certs.ca)?)?;
    // Within the collectors' accept bursts: the probe measures the machine, not the budget.
    let probes = (options.accept_rate as usize * options.collectors * 4 / 5).clamp(options.collectors, 1_000);
    let capacity = crate::capacity::fleet_session_rate(
        &probe,
        &initial,
        &bed.org,
        &bed.token,
        probes,
        PROBE_CONCURRENCY,
    )
    .await?;
    probe.close(0u32.into(), b"");
    Ok(capacity)
}

/// A run in progress: the meters, the clock, the sampler, and the tasks starting meters.
struct Live {
    fleet: Arc<Fleet>,
    population: Arc<Population>,
    book: Arc<AckBook>,
    clock: Arc<Clock>,
    /// Written by the run and by the herd's start task, read by the sampler at its end.
    events: Arc<Mutex<Vec<Event>>>,
    progress: indicatif::ProgressBar,
    stop_sampling: CancellationToken,
    sampler: JoinHandle<(Timeline, Accumulated)>,
    /// Tasks starting meters (the first wave, the herd): each must succeed.
    starts: JoinSet<anyhow::Result<()>>,
    /// The meters' failover from the collector the plan killed, watched from the kill on.
    failover: Option<FailoverWatch>,
    /// The NATS node the plan killed, and the wait for its stream's new leader.
    node_loss: Option<NodeLoss>,
}

impl Live {
    /// Builds the meters (none started yet) and starts the sampler.
    fn start(options: &RunOptions, fleet: Arc<Fleet>) -> anyhow::Result<Live> {
        let meters = options.meters;
        let book = AckBook::new(meters)?;
        let first_wave = ((meters as f64 * options.first_wave).round() as usize).clamp(1, meters);
        let population = Arc::new(Population::new(
            fleet.bed(),
            meters,
            first_wave,
            options.shape.clone(),
            Arc::clone(&book),
            options.seed,
        )?);
        let clock = Arc::new(Clock {
            started: Instant::now(),
            first_wave,
            meters,
            herd_at: Mutex::new(None),
            all_connected_at: Mutex::new(None),
        });
        let events = Arc::new(Mutex::new(Vec::new()));
        let progress = progress_bar(options);
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
        Ok(Live {
            fleet,
            population,
            book,
            clock,
            events,
            progress,
            stop_sampling,
            sampler,
            starts: JoinSet::new(),
            failover: None,
            node_loss: None,
        })
    }

    fn event(&self, what: String) {
        lock(&self.events).push(Event {
            t_s: self.clock.seconds(Instant::now()),
            what,
        })
    }

    /// Starts the first wave (with its splay), in the background.
    fn first_wave(&mut self) {
        let (population, fleet) = (Arc::clone(&self.population), Arc::clone(&self.fleet));
        let (dns, port, first_wave) = (self.fleet.dns_addr(), self.fleet.port(), self.clock.first_wave);
        self.starts.spawn(async move {
            population
                .start(fleet.bed(), 0..first_wave, true, dns, port)
                .await
        });
    }

    /// Carries out the scenario's plan, each action at its offset; returns the address of the
    /// collector added, if one was.
    async fn carry_out(&mut self, options: &RunOptions) -> anyhow::Result<Option<String>> {
        let mut added = None;
        for (at, action) in options.scenario.plan(options.duration).actions {
            tokio::time::sleep_until(self.clock.started + at).await;
            match action {
                Action::Herd => self.let_the_herd_go(),
                Action::KillCollector(i) => {
                    let named: Vec<String> = self.fleet.addrs()[..options.collectors]
                        .iter()
                        .map(|a| a.to_string())
                        .collect();
                    // Watched only where failover is judged (a soak's kills are just events).
                    if options.scenario.judges_failover() {
                        self.failover = Some(FailoverWatch::arm(&self.population, &named[i], &named));
                    }
                    self.fleet.kill(i);
                    self.event(format!("c{} killed", i + 1));
                }
                Action::RollingRestart(span) => self.rolling_restart(span, options.collectors).await?,
                Action::AddCollector => {
                    let i = self.fleet.add().await?;
                    added = Some(self.fleet.addrs()[i].to_string());
                    self.event(format!("c{} added", i + 1));
                }
                Action::SinkDown => {
                    self.fleet.sink_down().await;
                    self.event("sink down".into());
                }
                Action::SinkUp => {
                    self.fleet.sink_up().await?;
                    self.event("sink up".into());
                }
                Action::NodeDown => {
                    let loss = self.fleet.node_down().await?;
                    self.event(format!("NATS node-{} (stream leader) killed", loss.node));
                    self.node_loss = Some(loss);
                }
                Action::NodeUp => {
                    if let Some(node) = self.fleet.node_up().await? {
                        self.event(format!("NATS node-{node} back"));
                    }
                }
                Action::RestartCollector(i) => {
                    self.event(format!("c{} drains", i + 1));
                    self.fleet.restart(i, COLLECTOR_GRACE).await?;
                    self.event(format!("c{} back", i + 1));
                }
                Action::StartCollector(i) => {
                    self.fleet.restart(i, COLLECTOR_GRACE).await?;
                    self.event(format!("c{} started again", i + 1));
                }
                Action::DnsDrop(i) => {
                    self.fleet.dns_drop(i);
                    self.event(format!("DNS drops c{}", i + 1));
                }
                Action::DnsRestore(i) => {
                    self.fleet.dns_restore(i);
                    self.event(format!("DNS names c{} again", i + 1));
                }
            }
        }
        Ok(added)
    }

    /// Starts every meter after the first wave at once, in the background.
    fn let_the_herd_go(&mut self) {
        let (first_wave, meters) = (self.clock.first_wave, self.clock.meters);
        self.book.set_phase(Phase::DuringHerd);
        *lock(&self.clock.herd_at) = Some(Instant::now());
        self.event(format!("{HERD_EVENT_PREFIX}{} meters", meters - first_wave));
        let (population, fleet) = (Arc::clone(&self.population), Arc::clone(&self.fleet));
        let (events, clock) = (Arc::clone(&self.events), Arc::clone(&self.clock));
        let (dns, port) = (self.fleet.dns_addr(), self.fleet.port());
        self.starts.spawn(async move {
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

    /// Drains and restarts each collector in turn, spread over `span`.
    async fn rolling_restart(&self, span: Duration, collectors: usize) -> anyhow::Result<()> {
        let each = span / collectors as u32;
        for i in 0..collectors {
            let began = Instant::now();
            self.event(format!("c{} drains", i + 1));
            self.fleet.restart(i, COLLECTOR_GRACE).await?;
            self.event(format!("c{} back", i + 1));
            tokio::time::sleep_until(began + each).await;
        }
        Ok(())
    }

    /// Waits out the run's duration, then stops the sampler, the meters and the fleet, in that
    /// order; returns what the verdict is made of.
    async fn stop(mut self, fleet: &Fleet, duration: Duration) -> anyhow::Result<Ended> {
        tokio::time::sleep_until(self.clock.started + duration).await;
        while let Some(started) = self.starts.join_next().await {
            started??;
        }
        let at_end = self.population.connections();
        let failover = match self.failover.take() {
            Some(watch) => Some(watch.finish().await?),
            None => None,
        };
        let node_loss = match self.node_loss.take() {
            Some(loss) => {
                let (node, killed) = (loss.node, loss.killed);
                let elected = loss.elected(Duration::from_secs(1)).await;
                Some(NodeLossSeen {
                    node,
                    killed_s: self.clock.seconds(killed),
                    elected_s: elected.map(|at| self.clock.seconds(at)),
                })
            }
            None => None,
        };
        self.stop_sampling.cancel();
        let (timeline, acc) = self.sampler.await?;
        self.progress.finish_and_clear();
        self.population.stop().await?;
        fleet.stop(COLLECTOR_GRACE).await?;
        let stored = fleet.stored().await?;
        Ok(Ended {
            timeline,
            acc,
            at_end,
            failover,
            node_loss,
            stored,
            population: self.population,
            book: self.book,
            herd_at: *lock(&self.clock.herd_at),
            all_connected_at: *lock(&self.clock.all_connected_at),
        })
    }
}

/// The progress bar on stderr, or a hidden one.
fn progress_bar(options: &RunOptions) -> indicatif::ProgressBar {
    if !options.progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(options.duration.as_millis() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {elapsed}/{duration} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(format!("herd {}", options.scenario.name()));
    bar
}

//! The running meter: the task [`Meter::start_embedded`](crate::Meter::start_embedded) spawns,
//! as a script of steps (start the spool task, the admin endpoint, the sources and the batcher;
//! learn the fleet; run the connect loop; then stop everything in order, flushing by the grace
//! deadline).
//!
//! Owns: the order things start and stop in, the first fleet lookup, and the task that stops
//! the sources on shutdown. Must never: check configuration or open files and sockets (that
//! happened before, in `Meter::start_embedded`, so a bad config fails the start, not the run);
//! leave a spawned task running when it returns.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use ringflow_proto::codes::ConnectionCode;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::batcher::{self, BatchLimits, SealError, Sealer};
use crate::observe::{AckObserver, CurrentCollector, Progress};
use crate::session::{Credentials, SessionContext};
use crate::state::SeqAllocator;
use crate::stop::StopClock;
use crate::telemetry::events::{Event, FleetLookupFailed, FleetResolved, LastKnownGoodUsed};
use crate::telemetry::{self, MeterMetrics};
use crate::{Config, OpenSpool, RunError, admin, connect, fleet, source, spool};

/// Everything [`Meter::start_embedded`] checked and opened, handed to the task that runs the
/// meter (and owned by it alone).
pub(crate) struct Pipeline {
    /// The validated config; sections go to the tasks that use them.
    pub(crate) config: Config,
    /// Who this meter is, for every `Hello`.
    pub(crate) credentials: Credentials,
    /// The QUIC client endpoint sessions dial from.
    pub(crate) endpoint: quinn::Endpoint,
    /// False when the endpoint is shared with other meters (it is not this meter's to close).
    pub(crate) own_endpoint: bool,
    /// The seq reservation, handed to the sealer.
    pub(crate) seqs: SeqAllocator,
    /// The spool, opened and recovered, with its task not yet spawned.
    pub(crate) spool: OpenSpool,
    /// The admin listener, bound at start (`None`: `admin.enabled = false`).
    pub(crate) admin: Option<tokio::net::TcpListener>,
    /// The NetFlow listener, bound at start (`None`: the source is off).
    pub(crate) netflow: Option<source::netflow::NetflowListener>,
    /// The sockets source's tier, chosen at start (`None`: the source is off).
    pub(crate) sockets: Option<source::bpf::Choice>,
    /// Shared with [`crate::Meter`]'s watch and every task.
    pub(crate) metrics: Arc<MeterMetrics>,
    /// Shared with [`crate::Meter`]'s watch and every task that makes progress.
    pub(crate) progress: Progress,
    /// Written by the connect loop, read through [`crate::Meter`]'s watch.
    pub(crate) current: Arc<CurrentCollector>,
    /// From the embedding; called by sessions on every ack.
    pub(crate) ack_observer: Option<AckObserver>,
    /// Told once the sources, the batcher and the spool task run ([`crate::Meter::started`]).
    pub(crate) started: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The running pipeline's parts that the end of [`Pipeline::run`] stops, in order.
struct Running {
    /// Shared with the connect loop, its sessions and the stop watch.
    ctx: Arc<SessionContext>,
    /// The pipeline's own handle: it gives up on a failing disk, and its drop (the last) ends
    /// the spool task.
    spool: spool::handle::SpoolHandle,
    /// Not tracked with the others: the spool task must outlive them all, and ends when its
    /// last handle goes.
    spool_task: JoinHandle<()>,
    /// Ends when the sources have stopped and it has handed its last batch to the spool.
    batcher: JoinHandle<Result<(), SealError>>,
    /// Stops the sources (at shutdown, or when the connect loop is done).
    sources_stop: CancellationToken,
    /// Stops the admin endpoint, last, so `/metrics` answers while the meter flushes.
    admin_stop: CancellationToken,
}

impl Pipeline {
    pub(crate) async fn run(mut self, shutdown: CancellationToken) -> Result<(), RunError> {
        let tasks = TaskTracker::new();
        let started = self.started.take();
        let (config, endpoint, own_endpoint, metrics) = (
            self.config.clone(),
            self.endpoint.clone(),
            self.own_endpoint,
            Arc::clone(&self.metrics),
        );
        let running = self.start(&shutdown, &tasks);
        if let Some(started) = started {
            let _ = started.send(());
        }
        let fleet_stop = CancellationToken::new();
        let fleet = tokio::select! {
            fleet = discover_fleet(&config, &running.ctx, &tasks, &fleet_stop) => fleet,
            // Stopped before the fleet was known: nothing can be flushed anywhere.
            _ = running.ctx.stop.requested() => fleet::FleetWatch::new(fleet::FleetView::new(&config.collectors, None), None),
        };
        // Returns on shutdown, or once every source has finished and all they produced is
        // settled (a synthetic source with `total_records`): the meter then has nothing to do.
        connect::run(&running.ctx, &config, fleet).await;
        fleet_stop.cancel();
        let result = running.stop(&tasks).await;
        if own_endpoint {
            ConnectionCode::ShuttingDown.close_endpoint(&endpoint);
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
        info!(
            acked_records = metrics.delivery.records_acked.get(),
            spooled_records_total = metrics.spool.spool_accepted_records.get(),
            "meter stopped"
        );
        result
    }

    /// Spawns the spool task, the admin endpoint, the sources and the batcher, and the watch
    /// that stops the sources on shutdown.
    fn start(self, shutdown: &CancellationToken, tasks: &TaskTracker) -> Running {
        let Pipeline {
            config,
            credentials,
            endpoint,
            own_endpoint: _,
            seqs,
            spool,
            admin,
            netflow,
            sockets,
            metrics,
            progress,
            current,
            ack_observer,
            started: _,
        } = self;
        let OpenSpool {
            acked_through,
            handle: spool,
            task,
        } = spool;
        let spool_task = tokio::spawn(task);
        let admin_stop = CancellationToken::new();
        if let Some(listener) = admin {
            serve_admin(listener, &metrics, &spool, tasks, &admin_stop);
        }
        let (records_tx, records_rx) = source::channel(Arc::clone(&metrics));
        // The sources count what they lose in the channel's ledger; each batch sealed takes it.
        let loss = Arc::clone(records_tx.loss());
        let sealer = Arc::new(Sealer::new(seqs, spool.clone(), Arc::clone(&metrics), loss));
        let local_limits = BatchLimits {
            max_records: config.batch.max_records,
            columns_max_records: config.batch.columns_max_records,
            max_frame_bytes: config.batch.max_bytes,
            max_age: Duration::from_millis(config.batch.max_age_ms),
            // Columns from the start when offered, at the collectors' default level: a collector
            // that reads them answers so in its Welcome (and its level then applies); batches
            // sealed before a Welcome from one that does not are sealed again as rows when sent.
            columns: config
                .batch
                .columns
                .then_some(ringflow_proto::columns::DEFAULT_ZSTD_LEVEL),
        };
        let (limits_tx, limits_rx) = watch::channel(local_limits);
        let sources_stop = CancellationToken::new();
        source::spawn_all(
            &config.sources,
            netflow,
            sockets,
            &records_tx,
            &metrics,
            &progress,
            &sources_stop,
            tasks,
        );
        // Only the sources hold senders now: when they stop, the batcher sees the end.
        drop(records_tx);
        let batcher = tasks.spawn(batcher::run(records_rx, Arc::clone(&sealer), limits_rx));
        info!(meter_id = %credentials.meter_id, org = %credentials.org_id, collectors = ?config.collectors, "meter started");
        let ctx = Arc::new(SessionContext {
            endpoint,
            credentials,
            connect_timeout: config.reconnect.connect_timeout(),
            liveness: (&config.reconnect).into(),
            sealer,
            spool: spool.clone(),
            metrics,
            progress,
            current,
            ack_observer,
            stop: StopClock::new(shutdown.clone(), Duration::from_millis(config.shutdown.grace_ms)),
            local_limits,
            limits_tx,
            last_acked: AtomicU64::new(acked_through),
        });
        stop_sources_on_shutdown(&ctx, &sources_stop, tasks);
        Running {
            ctx,
            spool,
            spool_task,
            batcher,
            sources_stop,
            admin_stop,
        }
    }
}

impl Running {
    /// After the connect loop: stops the sources, lets the batcher finish, stops every task,
    /// then lets the spool task save its state. The batcher's result is the meter's.
    async fn stop(self, tasks: &TaskTracker) -> Result<(), RunError> {
        self.sources_stop.cancel();
        // The spool is settled, or the flush deadline has passed: nothing may wait any longer
        // on a disk that fails (the batcher could be waiting to hand it a batch).
        self.spool.give_up();
        let result = match self.batcher.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(SealError::State(error))) => {
                tracing::error!(%error, "batching stopped: the meter cannot reserve sequence numbers");
                Err(RunError::State(error))
            }
            Ok(Err(SealError::SpoolStopped)) => Err(RunError::SpoolStopped),
            Err(join) => Err(RunError::Panicked(join.to_string())),
        };
        self.admin_stop.cancel();
        tasks.close();
        tasks.wait().await;
        let left = self.spool.status();
        // The last handles: the spool task saves its state, syncs and ends.
        drop((self.ctx, self.spool));
        if let Err(join) = self.spool_task.await {
            tracing::error!(error = %join, "the spool task failed");
        }
        if left.pending_batches > 0 {
            info!(
                batches = left.pending_batches,
                records = left.pending_records,
                "batches not yet acked stay in the spool; they are sent first at the next start"
            );
        }
        result
    }
}

/// Serves `/healthz` and `/metrics` on `listener` until `stop`.
fn serve_admin(
    listener: tokio::net::TcpListener,
    metrics: &Arc<MeterMetrics>,
    spool: &spool::handle::SpoolHandle,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "admin endpoint listening (/healthz, /metrics)");
    }
    tasks.spawn(admin::serve(
        listener,
        Arc::clone(metrics),
        spool.watch(),
        stop.clone(),
    ));
}

/// On shutdown the sources stop first; the batcher then seals its open batch and closes the
/// spool's input, and the connect loop delivers what it can by the stop clock's deadline.
/// Whatever is not acked then stays in the spool.
fn stop_sources_on_shutdown(
    ctx: &Arc<SessionContext>,
    sources_stop: &CancellationToken,
    tasks: &TaskTracker,
) {
    let (ctx, sources_stop) = (Arc::clone(ctx), sources_stop.clone());
    tasks.spawn(async move {
        let _task = ctx.metrics.task(telemetry::task::STOP_WATCH);
        tokio::select! {
            _ = ctx.stop.requested() => {}
            _ = sources_stop.cancelled() => {}
        }
        sources_stop.cancel();
    });
}

/// The fleet at start: static collectors, plus DNS if configured, or the last-known-good fleet
/// if DNS fails now. Starts the task that keeps the DNS answer fresh.
async fn discover_fleet(
    config: &Config,
    ctx: &SessionContext,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> fleet::FleetWatch {
    use fleet::LastKnownGood;
    use fleet::dns::FleetResolver;
    let mut view = fleet::FleetView::new(&config.collectors, Some(config.state_dir.clone()));
    let resolver = match FleetResolver::new(&config.fleet) {
        Ok(r) => r,
        Err(error) => {
            tracing::error!(%error, "cannot resolve the fleet");
            None
        }
    };
    let Some(resolver) = resolver else {
        // No DNS: static collectors, plus the fleet views collectors sent before a restart.
        if let Some(lkg) = LastKnownGood::load(&config.state_dir) {
            view.set_welcome(lkg.collectors);
        }
        return fleet::FleetWatch::new(view, None);
    };
    let (first_wait, answer) = first_lookup(&resolver, config, ctx).await;
    view.set_dns(answer.clone());
    let (members_tx, members_rx) = watch::channel(answer);
    tasks.spawn(fleet::dns::refresh(
        resolver,
        config.fleet.clone(),
        first_wait,
        members_tx,
        Arc::clone(&ctx.metrics),
        stop.clone(),
    ));
    fleet::FleetWatch::new(view, Some(members_rx))
}

/// The first DNS lookup of the fleet: its answer and when to look again, or (DNS failing) the
/// last-known-good fleet, or nothing yet.
async fn first_lookup(
    resolver: &fleet::dns::FleetResolver,
    config: &Config,
    ctx: &SessionContext,
) -> (Duration, Vec<String>) {
    use fleet::LastKnownGood;
    let metrics = &ctx.metrics;
    let retry = Duration::from_millis(config.fleet.refresh_min_ms);
    let first = resolver.resolve().await;
    let fleet = resolver.name();
    let outcome = match first {
        Ok(resolved) => {
            FleetResolved {
                fleet,
                collectors: resolved.members.len(),
                ttl_s: resolved.ttl.as_secs(),
            }
            .emit(metrics);
            (
                fleet::dns::next_refresh(resolved.ttl, &config.fleet),
                resolved.members,
            )
        }
        Err(error) => {
            FleetLookupFailed {
                fleet,
                result: error.label(),
                error: &error,
                log: false,
            }
            .emit(metrics);
            match LastKnownGood::load(&config.state_dir) {
                Some(lkg) => {
                    LastKnownGoodUsed {
                        fleet,
                        error: &error,
                        collectors: lkg.collectors.len(),
                        saved_unix_ms: lkg.saved_unix_ms,
                    }
                    .emit(metrics);
                    (retry, lkg.collectors)
                }
                None => {
                    warn!(fleet, %error, "DNS fails and there is no last-known-good fleet yet; retrying");
                    (retry, Vec::new())
                }
            }
        }
    };
    // Whoever waits for this meter's first lookup (an embedding pacing its starts) hears of it.
    ctx.progress.notify();
    outcome
}

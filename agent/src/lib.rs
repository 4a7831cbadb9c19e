//! ringflow meter: measures flows (host sockets, interfaces, NetFlow/IPFIX it receives, or a
//! synthetic load), batches them, and ships them to
//! a collector fleet over QUIC (ringflow/1), keeping every batch until a collector acks it.
//!
//! ```text
//! sources ─records_tx (bounded, drop+count)─► batcher ─► spool task ─► STATE_DIR/spool
//!                        (memory_batches, bounded, batcher waits) ┘        │ read, ack, nack
//!        fleet (DNS task, Welcome views) ──► connect loop: selector ──► session ◄┘
//! ```
//!
//! Module map (see ARCHITECTURE.md): `config`, `state` (id, seq reservation), `source`, `batcher`,
//! `spool` (disk spool; sans-IO over a filesystem trait, plus its task), `session` (QUIC driver +
//! sans-IO `window`), `ring` (consistent hash), `selector` (sans-IO fleet selection), `fleet`
//! (discovery, last-known-good), `connect` (drives the selector), `stop`, `transport`,
//! `telemetry`, `admin` (local `/healthz`, `/metrics`), `cli`.

pub mod admin;
pub mod batcher;
pub mod cli;
pub mod config;
pub mod connect;
pub mod fleet;

pub mod ring;
pub mod selector;
pub mod session;
pub mod source;
pub mod spool;
pub mod state;
pub mod stop;
pub mod telemetry;
pub mod transport;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::Config;
use ringflow_proto::quic::TlsError;
pub use telemetry::{AckObserver, AckedBatch, MeterMetrics};

use batcher::{BatchLimits, SealError, Sealer};
use config::ConfigError;

use ringflow_proto::codes::ConnectionCode;
use session::{Credentials, SessionContext};
use spool::fs::{MemFs, RealFs};
use spool::{Spool, SpoolError};
use state::{SeqAllocator, StateError};
use stop::StopClock;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Admin(#[from] admin::AdminBindError),
    #[error("cannot open a UDP socket for QUIC: {0}")]
    Socket(std::io::Error),
    #[error(transparent)]
    Netflow(#[from] source::netflow::ListenError),
}

impl StartError {
    /// True when the operator's configuration is at fault (exit code 64).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            StartError::Config(_) | StartError::Tls(_) | StartError::Admin(_) | StartError::Netflow(_)
        )
    }
}

/// Why a running meter stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the state directory failed: {0}")]
    State(#[from] StateError),
    #[error("the spool stopped before the batcher was done")]
    SpoolStopped,
    #[error("the meter's pipeline panicked: {0}")]
    Panicked(String),
}

/// Why [`run`] failed.
#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Run(#[from] RunError),
}

impl MeterError {
    /// True when the operator's configuration is at fault (exit code 64).
    pub fn is_config(&self) -> bool {
        matches!(self, MeterError::Start(e) if e.is_config())
    }
}

/// How a meter shares its process with other meters. The `herd` harness runs thousands of meters
/// in one process: one UDP socket and one spool directory each would pass the process's file
/// limit, so they share QUIC endpoints and keep their spools in memory. A real meter uses
/// [`Embedding::default`]: its own endpoint, its spool on disk.
#[derive(Clone, Default)]
pub struct Embedding {
    /// A QUIC client endpoint shared with other meters, made by [`transport::client_endpoint`]
    /// with the same CA (`None`: the meter opens its own). A meter never closes a shared
    /// endpoint; it closes its own connection when it stops.
    pub endpoint: Option<quinn::Endpoint>,
    /// Keeps the spool in memory instead of `STATE_DIR/spool`: nothing survives the process, so
    /// only for load tests.
    pub memory_spool: bool,
    /// Told of every batch a collector acks.
    pub ack_observer: Option<AckObserver>,
}

impl std::fmt::Debug for Embedding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedding")
            .field("shared_endpoint", &self.endpoint.is_some())
            .field("memory_spool", &self.memory_spool)
            .field("ack_observer", &self.ack_observer.is_some())
            .finish()
    }
}

/// An opened spool (on disk or in memory), with the task that owns it, spawned when the pipeline
/// runs.
struct OpenSpool {
    acked_through: u64,
    handle: spool::handle::SpoolHandle,
    task: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl OpenSpool {
    fn new<F: spool::fs::SpoolFs>(spool: Spool<F>, config: &Config, metrics: &Arc<MeterMetrics>) -> Self {
        let acked_through = spool.acked_through();
        let (handle, task) = spool::task::start(spool, config.spool.run(), Arc::clone(metrics));
        OpenSpool {
            acked_through,
            handle,
            task: Box::pin(task),
        }
    }
}

/// A running meter.
pub struct Meter {
    id: String,
    metrics: Arc<MeterMetrics>,
    admin_addr: Option<std::net::SocketAddr>,
    netflow_addr: Option<std::net::SocketAddr>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), RunError>>,
}

impl Meter {
    /// Checks everything that can be checked up front (config, state dir, token, CA, socket),
    /// then starts the pipeline and returns. It runs until [`stop`](Self::stop) or `shutdown`.
    pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Meter, StartError> {
        Self::start_embedded(config, shutdown, Embedding::default()).await
    }

    /// As [`start`](Self::start), sharing the process with other meters as `embedding` says.
    pub async fn start_embedded(
        config: Config,
        shutdown: CancellationToken,
        embedding: Embedding,
    ) -> Result<Meter, StartError> {
        config.validate()?;
        state::open_dir(&config.state_dir)?;
        let id = state::meter_id(&config.state_dir, config.meter_id.as_deref())?;
        let mut seqs = SeqAllocator::open(&config.state_dir)?;
        let metrics = Arc::new(MeterMetrics::new());
        if let Some(observer) = embedding.ack_observer {
            metrics.observe_acks(observer);
        }
        let spool = match embedding.memory_spool {
            false => {
                let disk = open_spool(&config)?;
                seqs.skip_past(disk.last_seq())?;
                OpenSpool::new(disk, &config, &metrics)
            }
            // Empty at every start: no seq to skip.
            true => OpenSpool::new(
                Spool::open(MemFs::default(), config.spool.limits())?.0,
                &config,
                &metrics,
            ),
        };
        let credentials = Credentials {
            meter_id: id.clone(),
            org_id: config.org_id.clone(),
            org_token: config.org_token()?,
        };
        let (endpoint, own_endpoint) = match embedding.endpoint {
            Some(shared) => (shared, false),
            None => {
                let client =
                    transport::client_config_with_identity(&config.ca_file, config.client_identity())?;
                (
                    transport::client_endpoint(client).map_err(StartError::Socket)?,
                    true,
                )
            }
        };
        let admin = match config.admin.enabled {
            true => Some(admin::bind(config.admin.listen).await?),
            false => None,
        };
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
        let netflow = match config.sources.netflow.enabled {
            true => Some(source::netflow::NetflowListener::bind(&config.sources.netflow)?),
            false => None,
        };
        let netflow_addr = netflow.as_ref().and_then(|l| l.local_addr().ok());
        let pipeline = Pipeline {
            config,
            credentials,
            endpoint,
            own_endpoint,
            seqs,
            spool,
            admin,
            netflow,
            metrics: Arc::clone(&metrics),
        };
        let task = tokio::spawn(pipeline.run(shutdown.clone()));
        Ok(Meter {
            id,
            metrics,
            admin_addr,
            netflow_addr,
            shutdown,
            task,
        })
    }

    /// Where the admin endpoint listens (`None` when `admin.enabled = false`).
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin_addr
    }

    /// Where the NetFlow/IPFIX listener receives (`None` when the source is off).
    pub fn netflow_addr(&self) -> Option<std::net::SocketAddr> {
        self.netflow_addr
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn metrics(&self) -> Arc<MeterMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Asks the meter to stop (flushing within its grace period) and waits for it.
    pub async fn stop(self) -> Result<(), RunError> {
        self.shutdown.cancel();
        self.join().await
    }

    /// Waits until the meter has stopped (on shutdown, or by itself once every source has
    /// finished and everything is acked).
    pub async fn join(self) -> Result<(), RunError> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(RunError::Panicked(e.to_string())),
        }
    }
}

/// Runs a meter until `shutdown` fires and it has flushed (or its grace period ran out).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), MeterError> {
    Meter::start(config, shutdown).await?.join().await?;
    Ok(())
}

/// Opens (and recovers) the spool in `STATE_DIR/spool`: at start, and for tools and tests that
/// look at a stopped meter's spool.
pub fn open_spool(config: &Config) -> Result<Spool<RealFs>, SpoolError> {
    let dir = spool_dir(&config.state_dir);
    let fs = RealFs::new(&dir).map_err(|source| SpoolError::Io {
        op: "create",
        name: dir.display().to_string(),
        source,
    })?;
    let (spool, recovery) = Spool::open(fs, config.spool.limits())?;
    info!(
        pending_batches = recovery.pending_batches,
        segments = recovery.segments,
        segments_read = recovery.segments_read,
        truncated_bytes = recovery.truncated_bytes,
        dropped_records_total = spool.dropped().records,
        "spool opened"
    );
    Ok(spool)
}

/// The spool's directory inside a state directory.
pub fn spool_dir(state_dir: &std::path::Path) -> std::path::PathBuf {
    state_dir.join("spool")
}

struct Pipeline {
    config: Config,
    credentials: Credentials,
    endpoint: quinn::Endpoint,
    /// False when the endpoint is shared with other meters (it is not this meter's to close).
    own_endpoint: bool,
    seqs: SeqAllocator,
    spool: OpenSpool,
    admin: Option<tokio::net::TcpListener>,
    netflow: Option<source::netflow::NetflowListener>,
    metrics: Arc<MeterMetrics>,
}

impl Pipeline {
    async fn run(self, shutdown: CancellationToken) -> Result<(), RunError> {
        let Pipeline {
            config,
            credentials,
            endpoint,
            own_endpoint,
            seqs,
            spool,
            admin,
            netflow,
            metrics,
        } = self;
        let tasks = TaskTracker::new();
        let sources_stop = CancellationToken::new();
        let OpenSpool {
            acked_through,
            handle: spool,
            task,
        } = spool;
        // Not tracked with the others: the spool task must outlive them all, and ends when its
        // last handle goes.
        let spool_task = tokio::spawn(task);
        let admin_stop = CancellationToken::new();
        if let Some(listener) = admin {
            if let Ok(addr) = listener.local_addr() {
                info!(%addr, "admin endpoint listening (/healthz, /metrics)");
            }
            tasks.spawn(admin::serve(
                listener,
                Arc::clone(&metrics),
                spool.watch(),
                admin_stop.clone(),
            ));
        }
        let sealer = Arc::new(Sealer::new(seqs, spool.clone(), Arc::clone(&metrics)));
        let local_limits = BatchLimits {
            max_records: config.batch.max_records,
            max_frame_bytes: config.batch.max_bytes,
            max_age: Duration::from_millis(config.batch.max_age_ms),
        };
        let (limits_tx, limits_rx) = watch::channel(local_limits);

        let (records_tx, records_rx) = source::channel(Arc::clone(&metrics));
        source::spawn_all(
            &config.sources,
            netflow,
            &records_tx,
            &metrics,
            &sources_stop,
            &tasks,
        );
        // Only the sources hold senders now: when they stop, the batcher sees the end.
        drop(records_tx);
        let batcher = tasks.spawn(batcher::run(records_rx, Arc::clone(&sealer), limits_rx));

        info!(meter_id = %credentials.meter_id, org = %credentials.org_id, collectors = ?config.collectors, "meter started");
        let ctx = Arc::new(SessionContext {
            endpoint: endpoint.clone(),
            credentials,
            connect_timeout: config.reconnect.connect_timeout(),
            sealer,
            spool: spool.clone(),
            metrics: Arc::clone(&metrics),
            stop: StopClock::new(shutdown.clone(), Duration::from_millis(config.shutdown.grace_ms)),
            local_limits,
            limits_tx,
            last_acked: AtomicU64::new(acked_through),
        });
        // On shutdown the sources stop first; the batcher then seals its open batch and closes
        // the spool's input, and the connect loop below delivers what it can by the stop clock's
        // deadline. Whatever is not acked then stays in the spool.
        {
            let (ctx, sources_stop) = (Arc::clone(&ctx), sources_stop.clone());
            tasks.spawn(async move {
                let _task = ctx.metrics.task("stop_watch");
                tokio::select! {
                    _ = ctx.stop.requested() => {}
                    _ = sources_stop.cancelled() => {}
                }
                sources_stop.cancel();
            });
        }
        let fleet_stop = CancellationToken::new();
        let fleet = tokio::select! {
            fleet = discover_fleet(&config, &metrics, &tasks, &fleet_stop) => fleet,
            // Stopped before the fleet was known: nothing can be flushed anywhere.
            _ = ctx.stop.requested() => fleet::FleetWatch::new(fleet::FleetView::new(&config.collectors, None), None),
        };
        // Returns on shutdown, or once every source has finished and all they produced is
        // settled (a synthetic source with `total_records`): the meter then has nothing to do.
        connect::run(&ctx, &config, fleet).await;
        fleet_stop.cancel();
        sources_stop.cancel();
        // The spool is settled, or the flush deadline has passed: nothing may wait any longer
        // on a disk that fails (the batcher could be waiting to hand it a batch).
        spool.give_up();
        let result = match batcher.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(SealError::State(error))) => {
                tracing::error!(%error, "batching stopped: the meter cannot reserve sequence numbers");
                Err(RunError::State(error))
            }
            Ok(Err(SealError::SpoolStopped)) => Err(RunError::SpoolStopped),
            Err(join) => Err(RunError::Panicked(join.to_string())),
        };
        admin_stop.cancel();
        tasks.close();
        tasks.wait().await;
        let left = spool.status();
        // The last handles: the spool task saves its state, syncs and ends.
        drop((ctx, spool));
        if let Err(join) = spool_task.await {
            tracing::error!(error = %join, "the spool task failed");
        }
        if left.pending_batches > 0 {
            info!(
                batches = left.pending_batches,
                records = left.pending_records,
                "batches not yet acked stay in the spool; they are sent first at the next start"
            );
        }
        if own_endpoint {
            ConnectionCode::ShuttingDown.close_endpoint(&endpoint);
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
        info!(
            acked_records = metrics.records_acked.get(),
            spooled_records_total = metrics.spool_accepted_records.get(),
            "meter stopped"
        );
        result
    }
}

/// The fleet at start: static collectors, plus DNS if configured, or the last-known-good fleet
/// if DNS fails now. Starts the task that keeps the DNS answer fresh.
async fn discover_fleet(
    config: &Config,
    metrics: &Arc<MeterMetrics>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> fleet::FleetWatch {
    use fleet::LastKnownGood;
    use fleet::dns::{FleetResolver, next_refresh};
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
    let retry = Duration::from_millis(config.fleet.refresh_min_ms);
    let first = resolver.resolve().await;
    let label = match &first {
        Ok(_) => "ok",
        Err(error) => error.label(),
    };
    MeterMetrics::inc(&metrics.fleet_lookups, label);
    // Whoever waits for this meter's first lookup (an embedding pacing its starts) hears of it.
    metrics.notify();
    let (first_wait, answer) = match first {
        Ok(resolved) => {
            info!(
                fleet = resolver.name(),
                collectors = resolved.members.len(),
                ttl_s = resolved.ttl.as_secs(),
                "fleet resolved"
            );
            (next_refresh(resolved.ttl, &config.fleet), resolved.members)
        }
        Err(error) => match LastKnownGood::load(&config.state_dir) {
            Some(lkg) => {
                metrics.fleet_last_known_good.inc();
                warn!(
                    fleet = resolver.name(),
                    %error,
                    collectors = lkg.collectors.len(),
                    saved_unix_ms = lkg.saved_unix_ms,
                    "DNS fails: using the last-known-good fleet from state_dir/fleet.json"
                );
                (retry, lkg.collectors)
            }
            None => {
                warn!(fleet = resolver.name(), %error, "DNS fails and there is no last-known-good fleet yet; retrying");
                (retry, Vec::new())
            }
        },
    };
    view.set_dns(answer.clone());
    let (members_tx, members_rx) = watch::channel(answer);
    tasks.spawn(fleet::dns::refresh(
        resolver,
        config.fleet.clone(),
        first_wait,
        members_tx,
        Arc::clone(metrics),
        stop.clone(),
    ));
    fleet::FleetWatch::new(view, Some(members_rx))
}

/// Sleeps until `deadline`, or forever if there is none (for an optional branch of a `select!`).
pub(crate) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Now, as nanoseconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_nanos_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

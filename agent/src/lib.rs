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
//! Module map (see ARCHITECTURE.md):
//! - `config/`: the typed config, one module per section (struct, defaults, checks); imports
//!   nothing from the rest of the meter.
//! - `state` (meter id, seq reservation), `source/` (sockets, interfaces, netflow, synthetic),
//!   `batcher`.
//! - `spool/`: the disk spool, sans-IO over a filesystem trait (`recover`, `read`, `caps`,
//!   `files`, `format`, `fs`), plus its `handle` and its `task/`.
//! - `session/` (QUIC driver + sans-IO `window`), `ring` (consistent hash), `selector/`
//!   (sans-IO fleet selection, `backoff`), `fleet/` (discovery, last-known-good), `connect`
//!   (drives the selector), `stop`, `transport`.
//! - `telemetry/` (metric groups, label values, named events), `observe` (progress signal,
//!   current collector, ack observer), `admin` (local `/healthz`, `/metrics`), `cli`.

pub mod admin;
pub mod batcher;
pub mod cli;
pub mod config;
pub mod connect;
pub mod fleet;
pub mod observe;
mod pipeline;
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

use ringflow_proto::quic::TlsError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::Config;
pub use observe::{AckObserver, AckedBatch, MeterWatch};
pub use telemetry::MeterMetrics;

use config::ConfigError;
use observe::{CurrentCollector, Progress};
use pipeline::Pipeline;
use session::Credentials;
use spool::fs::{MemFs, RealFs};
use spool::handle::SpoolRun;
use spool::{Spool, SpoolError, SpoolLimits};
use state::{SeqAllocator, StateError};

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
    #[error("sources.sockets.bpf.mode = \"on\", but the bpf tier cannot run: {0}")]
    Bpf(#[from] source::bpf::load::Unavailable),
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
pub(crate) struct OpenSpool {
    /// The ack watermark found at start, reported in the first `Hello`.
    acked_through: u64,
    /// How the rest of the meter talks to the spool task.
    handle: spool::handle::SpoolHandle,
    /// The spool task, not yet spawned.
    task: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl OpenSpool {
    fn new<F: spool::fs::SpoolFs>(
        spool: Spool<F>,
        config: &Config,
        metrics: &Arc<MeterMetrics>,
        progress: &Progress,
    ) -> Self {
        let acked_through = spool.acked_through();
        let (handle, task) = spool::task::start(
            spool,
            SpoolRun::from(&config.spool),
            Arc::clone(metrics),
            progress.clone(),
        );
        OpenSpool {
            acked_through,
            handle,
            task: Box::pin(task),
        }
    }
}

/// A running meter.
pub struct Meter {
    /// This meter's id (configured, or generated and kept in the state directory).
    id: String,
    /// What callers watch: metrics, progress, the current collector. Shared with the pipeline's
    /// tasks, which write them.
    watch: MeterWatch,
    /// Where the admin endpoint listens, as bound at start.
    admin_addr: Option<std::net::SocketAddr>,
    /// Where the NetFlow listener receives, as bound at start.
    netflow_addr: Option<std::net::SocketAddr>,
    /// Cancelled by [`stop`](Self::stop) (or the caller's own clone): the pipeline then flushes
    /// within its grace period and ends.
    shutdown: CancellationToken,
    /// The pipeline's task; its result is the meter's.
    task: JoinHandle<Result<(), RunError>>,
    /// Fires once the pipeline has started its sources, batcher and spool task (taken by
    /// [`started`](Self::started)).
    started: Option<tokio::sync::oneshot::Receiver<()>>,
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
        let progress = Progress::new();
        let current = Arc::new(CurrentCollector::default());
        let spool = match embedding.memory_spool {
            false => {
                let disk = open_spool(&config)?;
                seqs.skip_past(disk.last_seq())?;
                OpenSpool::new(disk, &config, &metrics, &progress)
            }
            // Empty at every start: no seq to skip.
            true => OpenSpool::new(
                Spool::open(MemFs::default(), SpoolLimits::from(&config.spool))?.0,
                &config,
                &metrics,
                &progress,
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
                let client = transport::client_config_with_identity(
                    &config.ca_file,
                    transport::ClientIdentity::of(&config),
                )?;
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
        let sockets = match config.sources.sockets.enabled {
            true => Some(source::bpf::choose(&config.sources.sockets)?),
            false => None,
        };
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let pipeline = Pipeline {
            config,
            credentials,
            endpoint,
            own_endpoint,
            seqs,
            spool,
            admin,
            netflow,
            sockets,
            metrics: Arc::clone(&metrics),
            progress: progress.clone(),
            current: Arc::clone(&current),
            ack_observer: embedding.ack_observer,
            started: Some(started_tx),
        };
        let task = tokio::spawn(pipeline.run(shutdown.clone()));
        Ok(Meter {
            id,
            watch: MeterWatch::new(metrics, progress, current),
            admin_addr,
            netflow_addr,
            shutdown,
            task,
            started: Some(started),
        })
    }

    /// Returns true once the meter runs: its state and spool are open (as they are when
    /// [`start`](Self::start) returns) and its sources, batcher and spool task have started.
    /// False if the pipeline ended before that (a panic); [`join`](Self::join) says why.
    pub async fn started(&mut self) -> bool {
        match self.started.take() {
            Some(started) => started.await.is_ok(),
            None => true,
        }
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

    /// The meter's metrics, with its progress signal and current collector; outlives the meter.
    pub fn metrics(&self) -> MeterWatch {
        self.watch.clone()
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
    let (spool, recovery) = Spool::open(fs, SpoolLimits::from(&config.spool))?;
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

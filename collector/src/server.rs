//! The collector's lifecycle: bind, recover, serve, drain, stop.
//!
//! Two planes on two runtimes. The control plane runs on the runtime that calls [`Collector::bind`]
//! and [`Collector::run`] (`collector run` gives it `runtime.control_threads` threads): the QUIC
//! endpoint and its packet I/O, the accept loop and admission, handshakes, `Hello`, control
//! streams, drain and the admin HTTP server. The data plane gets a runtime of its own, owned by the
//! collector ([`DataRuntime`], `runtime.data_threads`): data streams, the sink and the sink's
//! client. However busy the data plane is, the control plane's work never waits in its run queue.
//!
//! Owns: the order of start (validate → TLS → data runtime → open and recover the sink → bind
//! QUIC and admin → start the sink, the load poll, the admin server and the accept loop) and of
//! shutdown: refuse new connections, send `Drain` and stop polling → wait for meters to leave
//! (bounded by `shutdown.grace_ms`) → close what remains → let the data streams and the sink
//! flush their queue (bounded by [`SINK_FLUSH_TIMEOUT`]) → stop the admin server → exit. The
//! pieces themselves live in [`crate::control`] and [`crate::data`]. Must never: start serving
//! before the store has recovered, or exit while a batch that was acked is unwritten.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::Endpoint;
use ringflow_ops::sd_notify::Notifier;
use ringflow_proto::codes::ConnectionCode;
use ringflow_proto::quic::TlsError;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{Config, ConfigError};
use crate::control::accept::accept_loop;
use crate::control::admin::{self, AdminState, Readiness};
use crate::control::admission::{Admission, Budgets};
use crate::control::auth::OrgDirectory;
use crate::control::auth_throttle::{AuthThrottle, ThrottleSettings};
use crate::control::fleet_poll::{NoPoll, PollPlan, Poller, SharedFleetLoad};
use crate::control::listener::{self, ListenerError};
use crate::control::load::LoadCounters;
use crate::control::session::{DataPlane, Shared};
use crate::control::systemd::Notifying;
use crate::control::udp_stats::UdpSocketProbe;
use crate::data::ingest::DataLimits;
use crate::data::runtime::DataRuntime;
use crate::data::sink::file::store::RecoveryReport;
use crate::data::sink::registry::{OpenError, open_sink};
use crate::data::sink::{self, ConfiguredSink, QueueBounds, SinkContext, SinkHandle, SinkHealth};
use crate::telemetry::{CollectorMetrics, LogThrottle};

/// How long, after the grace period, the data streams and the sink get to settle what is queued.
const SINK_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Sink(#[from] OpenError),
    #[error("cannot create data_dir {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error("cannot start the data-plane runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot bind the {what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl StartError {
    /// True when the operator's configuration is at fault (exit code 64).
    pub fn is_config(&self) -> bool {
        match self {
            StartError::Config(_) | StartError::Tls(_) => true,
            StartError::Listener(e) => matches!(e, ListenerError::Tls(_)),
            StartError::Sink(e) => e.is_config(),
            _ => false,
        }
    }
}

/// A collector that has bound its sockets and recovered its store, ready to [`run`](Self::run).
pub struct Collector {
    /// The validated configuration.
    config: Config,
    /// The orgs and their token hashes, checked at every `Hello`.
    orgs: OrgDirectory,
    /// The bound QUIC endpoint (accepting nothing until `run` starts the accept loop).
    endpoint: Endpoint,
    /// The bound admin listener (served once `run` starts).
    admin: TcpListener,
    /// One registry for this collector; shared with every task once it runs.
    metrics: Arc<CollectorMetrics>,
    /// The opened (and recovered) sink, not yet taking jobs.
    sink: ConfiguredSink,
    /// What the file sink's recovery found, for the "ready" log line.
    recovery: RecoveryReport,
    /// `limits.max_frame_bytes`, lowered if the sink cannot take batches that large.
    max_frame_bytes: u32,
    /// The data plane's runtime, which the sink was opened on.
    data_runtime: DataRuntime,
    /// The QUIC socket's kernel counters, read at each scrape.
    udp: UdpSocketProbe,
    /// What systemd is told (disabled unless [`notify_systemd`](Self::notify_systemd)).
    notifier: Notifier,
}

impl Collector {
    /// Validates the config, loads TLS material, opens (and recovers) the store, binds the QUIC
    /// and admin sockets. Nothing is served until [`run`](Self::run).
    pub async fn bind(config: Config) -> Result<Collector, StartError> {
        config.validate()?;
        let orgs = OrgDirectory::from_config(&config)?;
        let crypto = listener::server_crypto(&config.tls)?;
        let data_runtime = DataRuntime::start(config.runtime.data_threads()).map_err(StartError::Runtime)?;
        let (sink, recovery, max_frame_bytes) = recover(&config, &data_runtime).await?;
        let (endpoint, udp) = listener::bind(&config, crypto)?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|source| StartError::Bind {
                what: "admin",
                addr: config.admin_listen,
                source,
            })?;
        Ok(Collector {
            config,
            orgs,
            endpoint,
            admin,
            metrics: Arc::new(CollectorMetrics::new()),
            sink,
            recovery,
            max_frame_bytes,
            data_runtime,
            udp,
            notifier: Notifier::disabled(),
        })
    }

    /// Tells systemd through `notifier` when the collector is ready, when it stops, and that it
    /// is alive ([`crate::control::systemd`]); `collector run` passes the one its environment
    /// names.
    pub fn notify_systemd(&mut self, notifier: Notifier) {
        self.notifier = notifier;
    }

    /// The bound QUIC address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap_or(self.config.listen)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().unwrap_or(self.config.admin_listen)
    }

    pub fn metrics(&self) -> Arc<CollectorMetrics> {
        Arc::clone(&self.metrics)
    }

    /// The data plane's runtime (for an embedding that wants to run or watch work there).
    pub fn data_runtime(&self) -> tokio::runtime::Handle {
        self.data_runtime.handle()
    }

    /// Serves until `shutdown` fires, then drains and stops (see the module docs).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut running = self.serve();
        shutdown.cancelled().await;
        running.drain().await;
        running.stop().await;
        info!("collector stopped");
    }

    /// Starts the sink, the load poll, the admin server and the accept loop.
    fn serve(self) -> Running {
        let Collector {
            config,
            orgs,
            endpoint,
            admin: admin_listener,
            metrics,
            sink: configured_sink,
            recovery,
            max_frame_bytes,
            data_runtime,
            udp,
            notifier,
        } = self;
        metrics
            .runtime
            .udp_receive_buffer_bytes
            .set(udp.receive_buffer_bytes as i64);
        metrics.ingest.max_frame_bytes.set(i64::from(max_frame_bytes));
        let collector_id: Arc<str> = Arc::from(config.collector_id());
        let admin_addr = admin_listener.local_addr().unwrap_or(config.admin_listen);
        let sink_kind = configured_sink.kind();
        let sink = start_sink(&config, configured_sink, &metrics, &data_runtime);
        let load = LoadCounters::new(Arc::clone(&metrics), sink.handle.buffered());
        let budgets = Budgets::from_config(&config.admission, &config.limits);
        let poll = start_poll(&config, admin_addr, &collector_id, &metrics, &load);
        if let Some(why) = poll.why
            && budgets.bounded_load.is_some()
        {
            info!(%why, "bounded load: no peers to poll, so no cap on this collector's share");
        }
        // The control plane's shared state, then the admin server and the accept loop on it.
        let data_plane = DataPlane {
            runtime: data_runtime.handle(),
            tasks: TaskTracker::new(),
        };
        let draining = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            collector_id: Arc::clone(&collector_id),
            orgs,
            auth_throttle: std::sync::Mutex::new(AuthThrottle::new(ThrottleSettings {
                burst: config.auth.failure_burst,
                per_minute: config.auth.failures_per_minute,
                max_addresses: config.auth.max_tracked_addresses as usize,
            })),
            welcome_limits: welcome_limits(&config, max_frame_bytes),
            columns_zstd_level: config
                .limits
                .columns
                .then_some(config.limits.columns_zstd_level as i32),
            fleet_view: config.fleet.view(&collector_id),
            data_limits: data_limits(&config, max_frame_bytes),
            handshake_timeout: Duration::from_millis(config.limits.handshake_timeout_ms),
            hello_timeout: Duration::from_millis(config.limits.hello_timeout_ms),
            drain_window_ms: config.shutdown.drain_window_ms,
            budgets,
            fleet_load: poll.view.clone(),
            load: Arc::clone(&load),
            sink: sink.handle,
            sink_health: sink.health.clone(),
            metrics: Arc::clone(&metrics),
            reject_log: LogThrottle::new(Duration::from_secs(10), 64),
            draining: draining.clone(),
            hard_stop: hard_stop.clone(),
            data_plane: data_plane.clone(),
        });
        let readiness = Readiness {
            draining: draining.clone(),
            sink: sink.health,
        };
        let admin_state = AdminState {
            collector_id: Arc::clone(&collector_id),
            fleet_load: poll.view.clone(),
            metrics: Arc::clone(&metrics),
            load: Arc::clone(&load),
            readiness: readiness.clone(),
            udp,
        };
        let (admin_task, admin_stop) = start_admin(admin_listener, admin_state);
        let connections = TaskTracker::new();
        let accept_task = tokio::spawn(accept_loop(
            endpoint.clone(),
            Arc::clone(&shared),
            connections.clone(),
            Admission::new(budgets, Instant::now()),
        ));
        log_ready(
            &config,
            &endpoint,
            admin_addr,
            &collector_id,
            sink_kind,
            &recovery,
        );
        // After the admin server and the accept loop: `READY=1` means both serve.
        let notifying = Notifying::start(notifier, readiness, Arc::clone(&load));
        Running {
            grace: Duration::from_millis(config.shutdown.grace_ms),
            drain_window_ms: config.shutdown.drain_window_ms,
            endpoint,
            shared,
            load,
            draining,
            hard_stop,
            connections,
            accept_task,
            poll_task: poll.task,
            poll_stop: poll.stop,
            data_plane,
            sink_task: sink.task,
            abandon: sink.abandon,
            admin_task,
            admin_stop,
            data_runtime,
            notifying,
        }
    }
}

/// Serves the admin HTTP server until the returned token fires.
fn start_admin(listener: TcpListener, state: AdminState) -> (JoinHandle<()>, CancellationToken) {
    let stop = CancellationToken::new();
    let task = tokio::spawn(admin::serve(listener, Arc::new(state), stop.clone()));
    (task, stop)
}

/// The line an operator waits for: where the collector listens and what its store recovered.
fn log_ready(
    config: &Config,
    endpoint: &Endpoint,
    admin_addr: SocketAddr,
    collector_id: &str,
    sink_kind: &str,
    recovery: &RecoveryReport,
) {
    info!(
        listen = %endpoint.local_addr().unwrap_or(config.listen),
        admin = %admin_addr,
        collector_id = %collector_id,
        sink = sink_kind,
        data_dir = %config.data_dir.display(),
        recovered_segments = recovery.segments,
        recovered_bytes = recovery.bytes,
        truncated_bytes = recovery.truncated_bytes,
        "collector ready"
    );
}

/// Opens the configured sink on the data plane's runtime (the sink and its client, such as the
/// NATS connection tasks, live there): for the file sink, recovering the store's tail segment.
/// Returns the sink, the recovery report and the largest data frame the sink can take.
async fn recover(
    config: &Config,
    data_runtime: &DataRuntime,
) -> Result<(ConfiguredSink, RecoveryReport, u32), StartError> {
    let (sink_config, site) = (config.sink.clone(), config.sink_site());
    let opened = data_runtime
        .handle()
        .spawn(async move { open_sink(&sink_config, &site).await })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    Ok(opened)
}

/// The running sink: its queue's front door and the task that empties it.
struct StartedSink {
    /// The queue's front door, for the sessions' data streams.
    handle: SinkHandle,
    /// Written by the sink task; read at every `Hello` and by `/readyz`.
    health: SinkHealth,
    /// The sink task on the data plane; ends once the queue is closed and flushed.
    task: JoinHandle<()>,
    /// Fired at stop when the sink or the data streams did not settle in time.
    abandon: CancellationToken,
}

/// Starts the sink task on the data plane, behind its bounded queue.
fn start_sink(
    config: &Config,
    configured: ConfiguredSink,
    metrics: &Arc<CollectorMetrics>,
    data_runtime: &DataRuntime,
) -> StartedSink {
    let abandon = CancellationToken::new();
    let health = SinkHealth::starting(Arc::clone(metrics), configured.starts_healthy());
    let bounds = QueueBounds {
        batches: config.sink.queue_batches,
        bytes: config.sink.queue_bytes,
    };
    let (handle, jobs) = sink::queue(bounds, Arc::clone(metrics));
    let ctx = SinkContext {
        metrics: Arc::clone(metrics),
        health: health.clone(),
        abandon: abandon.clone(),
    };
    let task = data_runtime.handle().spawn(configured.run(jobs, ctx));
    StartedSink {
        handle,
        health,
        task,
        abandon,
    }
}

/// The bounded-load poll, when this collector has peers to poll.
struct StartedPoll {
    /// The fleet's load as the poll last learned it (None: not polling, no cap).
    view: Option<SharedFleetLoad>,
    /// The poll loop's task, awaited at drain.
    task: Option<JoinHandle<()>>,
    /// Fired at drain: a draining collector no longer needs the fleet's load.
    stop: CancellationToken,
    /// Why there is no poll.
    why: Option<NoPoll>,
}

/// Bounded load: starts the poll loop that learns the fleet's load from the peers' admin servers.
fn start_poll(
    config: &Config,
    admin_addr: SocketAddr,
    collector_id: &Arc<str>,
    metrics: &Arc<CollectorMetrics>,
    load: &Arc<LoadCounters>,
) -> StartedPoll {
    let stop = CancellationToken::new();
    match PollPlan::from_config(config, admin_addr, Arc::clone(collector_id)) {
        Ok(plan) => {
            let (poller, view) = Poller::new(plan, Arc::clone(metrics), Arc::clone(load));
            let task = tokio::spawn(poller.run(stop.clone()));
            StartedPoll {
                view: Some(view),
                task: Some(task),
                stop,
                why: None,
            }
        }
        Err(why) => StartedPoll {
            view: None,
            task: None,
            stop,
            why: Some(why),
        },
    }
}

/// The limits every `Welcome` tells the meter.
fn welcome_limits(config: &Config, max_frame_bytes: u32) -> ringflow_proto::pb::Limits {
    let l = &config.limits;
    ringflow_proto::pb::Limits {
        max_frame_bytes,
        max_records_per_batch: l.max_records_per_batch,
        max_unacked_batches: l.max_unacked_batches,
        batch_hint_records: l.batch_hint_records,
        batch_hint_max_age_ms: l.batch_hint_max_age_ms,
        heartbeat_interval_ms: l.heartbeat_interval_ms,
    }
}

/// The limits the data plane enforces on every frame.
fn data_limits(config: &Config, max_frame_bytes: u32) -> DataLimits {
    let l = &config.limits;
    DataLimits {
        max_frame_bytes: max_frame_bytes as usize,
        max_records_per_batch: l.max_records_per_batch as usize,
        max_unacked_batches: l.max_unacked_batches as usize,
        max_field_bytes: l.max_field_bytes as usize,
    }
}

/// A serving collector: what it started, held until it has stopped each, in order.
struct Running {
    /// `shutdown.grace_ms`: how long meters get to leave after `Drain`.
    grace: Duration,
    /// `shutdown.drain_window_ms`, for the shutdown log line.
    drain_window_ms: u32,
    /// Closed at the hard stop, then waited on (briefly) to go idle.
    endpoint: Endpoint,
    /// Dropped once every connection and data stream has ended: its sink handle is the last,
    /// and the sink's queue closes with it.
    shared: Arc<Shared>,
    /// For the sessions still open, in the shutdown log lines.
    load: Arc<LoadCounters>,
    /// Fired when shutdown begins (see [`Shared::draining`]).
    draining: CancellationToken,
    /// Fired when the grace period is over (see [`Shared::hard_stop`]).
    hard_stop: CancellationToken,
    /// Every connection task the accept loop spawned.
    connections: TaskTracker,
    /// The accept loop; ends when the endpoint closes.
    accept_task: JoinHandle<()>,
    /// The load poll (None: not polling), awaited at drain.
    poll_task: Option<JoinHandle<()>>,
    poll_stop: CancellationToken,
    /// The data streams' tracker, waited on (bounded) before the sink's queue closes.
    data_plane: DataPlane,
    /// The sink task, waited on (bounded) after the queue closes.
    sink_task: JoinHandle<()>,
    /// Fired when the data streams or the sink did not settle in time.
    abandon: CancellationToken,
    /// The admin server, stopped last so `/metrics` and `/readyz` answer through the drain.
    admin_task: JoinHandle<()>,
    admin_stop: CancellationToken,
    /// Dropped last: shuts the data plane's threads down.
    data_runtime: DataRuntime,
    /// Tells systemd `STOPPING=1` as the drain starts; pings its watchdog until the end.
    notifying: Notifying,
}

impl Running {
    /// Refuses new connections, sends `Drain`, stops polling, and waits for the meters to leave,
    /// at most `shutdown.grace_ms`.
    async fn drain(&mut self) {
        let deadline = Instant::now() + self.grace;
        info!(
            sessions = self.load.sessions(),
            drain_window_ms = self.drain_window_ms,
            "shutting down: refusing new connections, asking meters to move"
        );
        self.notifying.stopping();
        self.draining.cancel();
        // A draining collector refuses every Hello: it no longer needs the fleet's load.
        self.poll_stop.cancel();
        if let Some(task) = self.poll_task.take() {
            let _ = task.await;
        }
        self.connections.close();
        if tokio::time::timeout_at(deadline, self.connections.wait())
            .await
            .is_err()
        {
            warn!(
                sessions = self.load.sessions(),
                "grace period over: closing the remaining sessions"
            );
        }
    }

    /// Closes what remains, lets the data streams and the sink settle what is queued (bounded),
    /// and stops the admin server last.
    async fn stop(mut self) {
        self.hard_stop.cancel();
        ConnectionCode::ShuttingDown.close_endpoint(&self.endpoint);
        self.connections.wait().await;
        let _ = (&mut self.accept_task).await;
        // Data streams settle what they handed to the sink; then the last handle to the sink
        // queue goes with `shared`, and the sink writes what is queued and stops. Both are
        // bounded: a sink that cannot write (a failed disk) is abandoned, leaving its batches
        // unacked for meters to send again elsewhere.
        let flush_deadline = Instant::now() + SINK_FLUSH_TIMEOUT;
        self.settle_data_streams(flush_deadline).await;
        let Running {
            shared,
            mut sink_task,
            abandon,
            endpoint,
            admin_task,
            admin_stop,
            data_runtime,
            notifying,
            ..
        } = self;
        drop(shared);
        if tokio::time::timeout_at(flush_deadline, &mut sink_task)
            .await
            .is_err()
        {
            warn!("sink did not flush in time: abandoning its queue (those batches were not acked)");
            abandon.cancel();
            let _ = sink_task.await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        admin_stop.cancel();
        let _ = admin_task.await;
        drop(data_runtime);
        notifying.stop();
    }

    /// Waits for the data streams until `deadline`, then abandons the sink's queue.
    async fn settle_data_streams(&self, deadline: Instant) {
        let tasks = &self.data_plane.tasks;
        tasks.close();
        if tokio::time::timeout_at(deadline, tasks.wait()).await.is_err() {
            warn!("data streams still waiting on the sink: abandoning the sink's queue (not acked)");
            self.abandon.cancel();
            tasks.wait().await;
        }
    }
}

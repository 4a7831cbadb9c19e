//! The collector's lifecycle: bind, serve, drain, stop.
//!
//! Two planes on two runtimes. The control plane runs on the runtime that calls [`Collector::bind`]
//! and [`Collector::run`] (`collector run` gives it `runtime.control_threads` threads): the QUIC
//! endpoint and its packet I/O, the accept loop and admission, handshakes, `Hello`, control
//! streams, drain and the admin HTTP server. The data plane gets a runtime of its own, owned by the
//! collector (`runtime.data_threads`): data streams, the sink and the sink's client. However busy
//! the data plane is, the control plane's work never waits in its run queue.
//!
//! Owns: the QUIC endpoint and its accept loop, the admin listener, the sink task, the load poll
//! task (bounded load), and the order of shutdown: refuse new connections, send `Drain` and stop
//! polling → wait for meters to leave (bounded by `shutdown.grace_ms`) → close what remains → let
//! the sink flush its queue → exit. Must never: start serving before the store has recovered, or
//! exit while a batch that was acked is unwritten.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Endpoint, EndpointConfig, ServerConfig, TokioRuntime, TransportConfig, VarInt};
use ringflow_proto::codes::ConnectionCode;
use ringflow_proto::quic::{self, SOCKET_BUFFER_BYTES, TlsError};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::{self, AdminState, Readiness};
use crate::admission::{Admission, Admit, Load};
use crate::auth::OrgDirectory;
use crate::auth_throttle::{AuthThrottle, ThrottleSettings};
use crate::config::{Config, ConfigError, LimitsConfig, SinkKind};
use crate::fleet_poll::{PollPlan, Poller};
use crate::ingest::DataLimits;
use crate::session::{self, DataPlane, Shared, TrackedConnection};
use crate::sink::file::FileSink;
use crate::sink::nats::NatsSink;
use crate::sink::nats::link::LinkError;
use crate::sink::{self, ConfiguredSink, QueueBounds, SinkContext, SinkHealth};
use crate::store::{RecoveryReport, StoreError};
use crate::telemetry::{CollectorMetrics, LogThrottle};
use crate::udp_stats::UdpSocketProbe;

/// How long, after the grace period, the data streams and the sink get to settle what is queued.
const SINK_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot open the store in data_dir: {0}")]
    Store(#[from] StoreError),
    #[error("cannot use the NATS sink: {0}")]
    Nats(#[from] LinkError),
    #[cfg(feature = "kafka")]
    #[error("cannot use the Kafka sink: {0}")]
    Kafka(#[from] crate::sink::kafka::KafkaOpenError),
    #[error("cannot create data_dir {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use the QUIC reset key {path}: {source}")]
    ResetKey {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
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
            StartError::Config(_) | StartError::Tls(_) | StartError::Nats(_) => true,
            #[cfg(feature = "kafka")]
            StartError::Kafka(_) => true,
            StartError::Store(e) => e.is_unusable_directory(),
            _ => false,
        }
    }
}

/// A collector that has bound its sockets and recovered its store, ready to [`run`](Self::run).
pub struct Collector {
    config: Config,
    orgs: OrgDirectory,
    endpoint: Endpoint,
    admin: TcpListener,
    metrics: Arc<CollectorMetrics>,
    sink: ConfiguredSink,
    recovery: RecoveryReport,
    /// `limits.max_frame_bytes`, lowered if the sink cannot take batches that large.
    max_frame_bytes: u32,
    data_runtime: DataRuntime,
    udp: UdpSocketProbe,
}

thread_local! {
    /// A data-plane thread's scoped subscriber, held until the thread stops.
    static DATA_THREAD_LOG: std::cell::RefCell<Option<tracing::dispatcher::DefaultGuard>> =
        const { std::cell::RefCell::new(None) };
}

/// The data plane's runtime. Shut down without blocking when dropped, so a collector can be
/// dropped (or finish) inside an async context.
struct DataRuntime(Option<tokio::runtime::Runtime>);

impl DataRuntime {
    fn start(threads: usize) -> std::io::Result<Self> {
        // The data plane's threads log to the creator's subscriber, even one scoped to the
        // creating thread (an embedding such as `herd`, or a test capturing logs). tracing cannot
        // tell a scoped subscriber from the global one, so this is done in every case.
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("collector-data")
            .on_thread_start(move || {
                let guard = tracing::dispatcher::set_default(&dispatch);
                DATA_THREAD_LOG.with(|g| *g.borrow_mut() = Some(guard));
            })
            .on_thread_stop(|| DATA_THREAD_LOG.with(|g| drop(g.borrow_mut().take())))
            .enable_all()
            .build()
            .map(|rt| DataRuntime(Some(rt)))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(rt) => rt.handle().clone(),
            None => tokio::runtime::Handle::current(),
        }
    }
}

impl Drop for DataRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Collector {
    /// Validates the config, loads TLS material, opens (and recovers) the store, binds the QUIC
    /// and admin sockets. Nothing is served until [`run`](Self::run).
    pub async fn bind(config: Config) -> Result<Collector, StartError> {
        config.validate()?;
        let orgs = config.org_directory()?;
        let chain = quic::load_certificates("tls.cert", &config.tls.cert)?;
        let key = quic::load_private_key("tls.key", &config.tls.key)?;
        let clients = match &config.tls.client_ca {
            None => quic::ClientCerts::None,
            Some(path) => {
                let roots = Arc::new(quic::load_ca("tls.client_ca", path)?);
                if config.tls.require_client_cert {
                    quic::ClientCerts::Required(roots)
                } else {
                    quic::ClientCerts::Optional(roots)
                }
            }
        };
        let crypto = quic::server_crypto_with_clients(chain, key, clients)?;
        let data_runtime = DataRuntime::start(config.runtime.data_threads()).map_err(StartError::Runtime)?;
        // The sink and its client (NATS connection tasks) live on the data plane.
        let sink_config = config.clone();
        let (sink, recovery, max_frame_bytes) = data_runtime
            .handle()
            .spawn(async move { open_sink(&sink_config).await })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        let bind_err = |what, addr| move |source| StartError::Bind { what, addr, source };
        let socket =
            quic::bind_udp(config.listen, SOCKET_BUFFER_BYTES).map_err(bind_err("QUIC", config.listen))?;
        let udp = UdpSocketProbe::of(&socket);
        // Linux reports twice the usable size it granted.
        if udp.receive_buffer_bytes / 2 < SOCKET_BUFFER_BYTES {
            warn!(
                granted = udp.receive_buffer_bytes / 2,
                wanted = SOCKET_BUFFER_BYTES,
                "the kernel granted a smaller UDP receive buffer than asked for: a burst of \
                 handshakes may be dropped; raise net.core.rmem_max"
            );
        }
        let endpoint = Endpoint::new(
            endpoint_config(&config.data_dir)?,
            Some(server_config(crypto, &config.limits)),
            socket,
            Arc::new(TokioRuntime),
        )
        .map_err(bind_err("QUIC", config.listen))?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .map_err(bind_err("admin", config.admin_listen))?;
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
        })
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
        } = self;
        metrics
            .udp_receive_buffer_bytes
            .set(udp.receive_buffer_bytes as i64);
        let data = data_runtime.handle();
        let collector_id: Arc<str> = Arc::from(config.collector_id());
        let listen = endpoint.local_addr().unwrap_or(config.listen);
        let admin_addr = admin_listener.local_addr().unwrap_or(config.admin_listen);

        let draining = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let abandon = CancellationToken::new();
        let health = SinkHealth::starting(Arc::clone(&metrics), configured_sink.starts_healthy());
        let (sink_handle, jobs) = sink::queue(
            QueueBounds {
                batches: config.sink.queue_batches,
                bytes: config.sink.queue_bytes,
            },
            Arc::clone(&metrics),
        );
        let sink_kind = configured_sink.kind();
        let sink_task = data.spawn(configured_sink.run(
            jobs,
            SinkContext {
                metrics: Arc::clone(&metrics),
                health: health.clone(),
                abandon: abandon.clone(),
            },
        ));

        let l = &config.limits;
        let data_plane = DataPlane {
            runtime: data.clone(),
            tasks: TaskTracker::new(),
        };
        let budgets = config.admission.budgets(&config.limits);
        // Bounded load: the poll loop learns the fleet's load from the peers' admin servers.
        let poll_stop = CancellationToken::new();
        let (fleet_load, poll_task) =
            match PollPlan::from_config(&config, admin_addr, Arc::clone(&collector_id)) {
                Ok(plan) => {
                    let (poller, view) = Poller::new(plan, Arc::clone(&metrics));
                    (Some(view), Some(tokio::spawn(poller.run(poll_stop.clone()))))
                }
                Err(why) => {
                    if budgets.bounded_load.is_some() {
                        info!(%why, "bounded load: no peers to poll, so no cap on this collector's share");
                    }
                    (None, None)
                }
            };
        let shared = Arc::new(Shared {
            collector_id: Arc::clone(&collector_id),
            orgs,
            auth_throttle: std::sync::Mutex::new(AuthThrottle::new(ThrottleSettings {
                burst: config.auth.failure_burst,
                per_minute: config.auth.failures_per_minute,
                max_addresses: config.auth.max_tracked_addresses as usize,
            })),
            welcome_limits: ringflow_proto::pb::Limits {
                max_frame_bytes,
                max_records_per_batch: l.max_records_per_batch,
                max_unacked_batches: l.max_unacked_batches,
                batch_hint_records: l.batch_hint_records,
                batch_hint_max_age_ms: l.batch_hint_max_age_ms,
                heartbeat_interval_ms: l.heartbeat_interval_ms,
            },
            fleet_view: config.fleet.view(&collector_id),
            data_limits: DataLimits {
                max_frame_bytes: max_frame_bytes as usize,
                max_records_per_batch: l.max_records_per_batch as usize,
                max_unacked_batches: l.max_unacked_batches as usize,
                max_field_bytes: l.max_field_bytes as usize,
            },
            handshake_timeout: Duration::from_millis(l.handshake_timeout_ms),
            hello_timeout: Duration::from_millis(l.hello_timeout_ms),
            drain_window_ms: config.shutdown.drain_window_ms,
            budgets,
            fleet_load: fleet_load.clone(),
            sink: sink_handle,
            sink_health: health.clone(),
            metrics: Arc::clone(&metrics),
            reject_log: LogThrottle::new(Duration::from_secs(10), 64),
            draining: draining.clone(),
            hard_stop: hard_stop.clone(),
            data_plane: data_plane.clone(),
        });

        let admin_stop = CancellationToken::new();
        let admin_task = tokio::spawn(admin::serve(
            admin_listener,
            Arc::new(AdminState {
                collector_id: Arc::clone(&collector_id),
                fleet_load,
                metrics: Arc::clone(&metrics),
                readiness: Readiness {
                    draining: draining.clone(),
                    sink: health.clone(),
                },
                udp,
            }),
            admin_stop.clone(),
        ));
        let connections = TaskTracker::new();
        let accept_task = tokio::spawn(accept_loop(
            endpoint.clone(),
            Arc::clone(&shared),
            connections.clone(),
            Admission::new(budgets, Instant::now()),
        ));
        info!(
            %listen,
            admin = %admin_addr,
            collector_id = %collector_id,
            sink = sink_kind,
            data_dir = %config.data_dir.display(),
            recovered_segments = recovery.segments,
            recovered_bytes = recovery.bytes,
            truncated_bytes = recovery.truncated_bytes,
            "collector ready"
        );

        shutdown.cancelled().await;
        let deadline = Instant::now() + Duration::from_millis(config.shutdown.grace_ms);
        info!(
            sessions = metrics.sessions_active.get(),
            drain_window_ms = config.shutdown.drain_window_ms,
            "shutting down: refusing new connections, asking meters to move"
        );
        draining.cancel();
        // A draining collector refuses every Hello: it no longer needs the fleet's load.
        poll_stop.cancel();
        if let Some(task) = poll_task {
            let _ = task.await;
        }
        connections.close();
        if tokio::time::timeout_at(deadline, connections.wait())
            .await
            .is_err()
        {
            warn!(
                sessions = metrics.sessions_active.get(),
                "grace period over: closing the remaining sessions"
            );
        }
        hard_stop.cancel();
        ConnectionCode::ShuttingDown.close_endpoint(&endpoint);
        connections.wait().await;
        let _ = accept_task.await;
        // Data streams settle what they handed to the sink; then the last handle to the sink
        // queue goes with `shared`, and the sink writes what is queued and stops. Both are
        // bounded: a sink that cannot write (a failed disk) is abandoned, leaving its batches
        // unacked for meters to send again elsewhere.
        let flush_deadline = Instant::now() + SINK_FLUSH_TIMEOUT;
        data_plane.tasks.close();
        if tokio::time::timeout_at(flush_deadline, data_plane.tasks.wait())
            .await
            .is_err()
        {
            warn!("data streams still waiting on the sink: abandoning the sink's queue (not acked)");
            abandon.cancel();
            data_plane.tasks.wait().await;
        }
        drop(shared);
        let mut sink_task = sink_task;
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
        info!("collector stopped");
    }
}

/// Opens the configured sink: the store's recovery report (file) and the largest data frame the
/// sink can take.
async fn open_sink(config: &Config) -> Result<(ConfiguredSink, RecoveryReport, u32), StartError> {
    let limit = config.limits.max_frame_bytes;
    match config.sink.kind {
        SinkKind::File => {
            let (sink, recovery) = FileSink::open(&config.data_dir, &config.sink.file)?;
            Ok((ConfiguredSink::File(sink), recovery, limit))
        }
        SinkKind::Nats => {
            // No store here, but the endpoint keys live in data_dir.
            std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
                path: config.data_dir.clone(),
                source,
            })?;
            let (sink, start) =
                NatsSink::open(&config.sink.nats, &config.collector_id(), limit as usize).await?;
            let fits = u32::try_from(start.max_frame_bytes).unwrap_or(limit);
            if fits < limit {
                info!(
                    max_frame_bytes = fits,
                    nats_max_payload = start.max_payload,
                    "limits.max_frame_bytes lowered so that every batch fits one NATS message"
                );
            }
            Ok((
                ConfiguredSink::Nats(Box::new(sink)),
                RecoveryReport::default(),
                fits,
            ))
        }
        SinkKind::Kafka => open_kafka(config).await,
    }
}

/// The Kafka sink, in a collector built with it.
#[cfg(feature = "kafka")]
async fn open_kafka(config: &Config) -> Result<(ConfiguredSink, RecoveryReport, u32), StartError> {
    let limit = config.limits.max_frame_bytes;
    // No store here, but the endpoint keys live in data_dir.
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let (sink, start) =
        crate::sink::kafka::KafkaSink::open(&config.sink.kafka, &config.collector_id(), limit as usize)
            .await?;
    let fits = u32::try_from(start.max_frame_bytes).unwrap_or(limit);
    if fits < limit {
        info!(
            max_frame_bytes = fits,
            kafka_max_message_bytes = config.sink.kafka.max_message_bytes,
            "limits.max_frame_bytes lowered so that every batch fits one Kafka record"
        );
    }
    Ok((
        ConfiguredSink::Kafka(Box::new(sink)),
        RecoveryReport::default(),
        fits,
    ))
}

/// A collector built without the `kafka` feature cannot use the Kafka sink.
#[cfg(not(feature = "kafka"))]
async fn open_kafka(_: &Config) -> Result<(ConfiguredSink, RecoveryReport, u32), StartError> {
    Err(StartError::Config(crate::config::ConfigError::invalid(
        "sink.kind",
        "\"kafka\" needs a collector built with the `kafka` feature (the default); this one was built without it",
    )))
}

/// Accepts connections until the endpoint closes, deciding on each before any handshake work.
/// The decision runs inline, so the counts it reads cannot be overtaken by connections it let in.
async fn accept_loop(
    endpoint: Endpoint,
    shared: Arc<Shared>,
    connections: TaskTracker,
    mut admission: Admission,
) {
    let _task = shared.metrics.task("accept_loop");
    let m = &shared.metrics;
    let refusal_log = LogThrottle::new(Duration::from_secs(10), 16);
    while let Some(incoming) = endpoint.accept().await {
        let load = Load {
            // quinn counts a connection only once its task has called `accept`; our gauge counts
            // it from this loop's decision. The larger of the two cannot be overtaken.
            connections: endpoint
                .open_connections()
                .max(m.connections_open.get().max(0) as usize),
            handshakes: m.handshakes_in_flight(),
            sessions: m.sessions_active.get().max(0) as usize,
            buffered_bytes: m.buffered_bytes(),
            draining: shared.draining.is_cancelled(),
            fleet: None,
        };
        let now = Instant::now();
        match admission.on_incoming(&load, incoming.remote_address_validated(), now) {
            Admit::Refuse(reason) => {
                m.refused(reason);
                incoming.refuse();
                if reason != "draining"
                    && let Some(suppressed) = refusal_log.check(reason, now)
                {
                    warn!(
                        reason,
                        connections = load.connections,
                        handshakes = load.handshakes,
                        buffered_bytes = load.buffered_bytes,
                        suppressed,
                        "refusing new connections: over the admission budget"
                    );
                }
            }
            Admit::Retry if incoming.may_retry() => {
                m.connections_retried.inc();
                if let Err(error) = incoming.retry() {
                    error.into_incoming().refuse();
                }
            }
            Admit::Retry => {
                // Not expected: quinn lets every unvalidated address retry (it answers a bad
                // Retry token itself). Refuse rather than start a handshake over budget.
                m.refused("max_handshakes");
                incoming.refuse();
            }
            Admit::Accept => {
                m.connections_accepted.inc();
                let tracked = TrackedConnection::new(m);
                connections.spawn(session::serve_connection(incoming, Arc::clone(&shared), tracked));
            }
        }
    }
}

/// Bytes of the stateless-reset key.
const RESET_KEY_BYTES: usize = 64;

/// The endpoint's QUIC stateless-reset key, kept in `DATA_DIR/reset-key` (mode 0600) and created
/// on first start. Because it survives a restart, a collector restarted on the same data
/// directory (after a crash or `kill -9`) answers its previous incarnation's connections with a
/// valid stateless reset (RFC 9000, 10.3): their meters learn at their next packet that the
/// collector restarted and reconnect at once, instead of waiting out the idle timeout. The
/// connection-ID key is derived from it for the same reason.
fn endpoint_config(data_dir: &std::path::Path) -> Result<EndpointConfig, StartError> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("reset-key");
    let err = |source| StartError::ResetKey {
        path: path.clone(),
        source,
    };
    let mut key = [0u8; RESET_KEY_BYTES];
    match std::fs::File::open(&path) {
        Ok(mut f) => f.read_exact(&mut key).map_err(err)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            key = rand::random();
            let tmp = data_dir.join("reset-key.tmp");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(err)?;
            f.write_all(&key).and_then(|()| f.sync_all()).map_err(err)?;
            std::fs::rename(&tmp, &path).map_err(err)?;
        }
        Err(e) => return Err(err(e)),
    }
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    // Connection IDs carry a keyed hash so that packets with made-up IDs are dropped without a
    // reply. That key must survive restarts too, or the old connections' IDs would be dropped as
    // made-up and never reset.
    let tag = ring::hmac::sign(&reset_key, b"ringflow connection id key");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&tag.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    Ok(config)
}

/// The QUIC server configuration a collector runs with: stream counts, flow-control windows and
/// idle timeout from `limits`. Public so that `herd bench` measures raw quinn with the same setup.
pub fn server_config(crypto: quinn::crypto::rustls::QuicServerConfig, limits: &LimitsConfig) -> ServerConfig {
    let mut transport = TransportConfig::default();
    // One control stream plus the data streams; meters never get unidirectional streams.
    transport.max_concurrent_bidi_streams(VarInt::from_u32(1 + limits.max_data_streams));
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    transport.stream_receive_window(VarInt::from_u32(limits.stream_receive_window));
    // Bounds what one connection can make us buffer across all its streams.
    transport.receive_window(VarInt::from_u32(
        limits
            .stream_receive_window
            .saturating_mul(1 + limits.max_data_streams),
    ));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_millis(limits.idle_timeout_ms))
            .unwrap_or(quinn::IdleTimeout::from(VarInt::from_u32(30_000))),
    ));
    let mut server = ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport));
    server
}

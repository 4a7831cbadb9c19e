//! The collector's configuration: one typed [`Config`], loaded from TOML and validated before
//! anything starts.
//!
//! Owns: every configuration key, its default and why, and the checks that turn a bad file into
//! one clear message (the binary exits 64). [`EXAMPLE_CONFIG`] is the commented file printed by
//! `collector example-config`; a test keeps it equal to the defaults. Must never: open sockets or
//! files other than the config file itself.

use ringflow_proto::ops::valid_dns_name;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use ringflow_proto::ops::ConfigError;
use ringflow_proto::ops::{check_range, parse_toml, read_toml, resolve_paths};

mod kafka;
pub use kafka::{KafkaCompression, KafkaSinkConfig};

use crate::auth::{NamePattern, OrgCredentials, OrgDirectory, TokenHash};
use crate::sink::nats::stream::loggable_servers;

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::invalid(key, message)
}

/// A commented configuration file with every key at its default (required keys filled with
/// placeholders). Printed by `collector example-config`.
pub const EXAMPLE_CONFIG: &str = include_str!("example-config.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name this collector gives itself in `Welcome`, in stored batches and in logs.
    /// Default: the host name.
    #[serde(default)]
    pub collector_id: Option<String>,
    /// UDP address for QUIC. Default `[::]:4433` (all addresses, IPv4 and IPv6).
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// TCP address of the admin HTTP server (`/healthz`, `/readyz`, `/metrics`). Default
    /// `127.0.0.1:9464`: local only, it is not meant for the internet.
    #[serde(default = "defaults::admin_listen")]
    pub admin_listen: SocketAddr,
    /// Directory of the file sink's segments and the collector's lock file.
    /// Default `/var/lib/ringflow/collector`.
    #[serde(default = "defaults::data_dir")]
    pub data_dir: PathBuf,
    pub tls: TlsConfig,
    /// Organisations allowed to send, each with the hashes of its valid tokens.
    #[serde(default)]
    pub orgs: Vec<OrgConfig>,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub fleet: FleetConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub admission: AdmissionConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub sink: SinkConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain presented to meters (leaf first).
    pub cert: PathBuf,
    /// PEM private key of that certificate.
    pub key: PathBuf,
    /// PEM CA(s) that sign meters' client certificates (mTLS). Unset: no client certificates are
    /// asked for. Set: a meter may present one, and its DNS names map it to an org
    /// (`orgs[].client_names`).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: a meter without a valid client certificate fails the handshake.
    /// Default false (tokens still work).
    #[serde(default)]
    pub require_client_cert: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgConfig {
    /// Org id: 1-64 characters of `a-z 0-9 - _` (it names a directory and a subject).
    pub id: String,
    /// `sha256:<64 hex>` lines printed by `collector token`. Several allow rotation.
    #[serde(default)]
    pub token_hashes: Vec<String>,
    /// Client-certificate DNS names that prove this org (needs `tls.client_ca`): exact names, or
    /// `*.suffix` for any name under `suffix`.
    #[serde(default)]
    pub client_names: Vec<String>,
}

/// Failed authentications, limited per source address (IPv4 address or IPv6 /64).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Failed `Hello`s an address may make in a burst. Default 10.
    pub failure_burst: u32,
    /// Failed `Hello`s per minute it regains. Default 6. An address out of attempts gets
    /// `Reject(auth)` with a retry hint and its credentials are not checked.
    pub failures_per_minute: u32,
    /// Addresses tracked at once. Default 65536.
    pub max_tracked_addresses: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            failure_burst: 10,
            failures_per_minute: 6,
            max_tracked_addresses: 65_536,
        }
    }
}

/// What this collector tells meters about its fleet in `Welcome`, and where it finds its peers
/// to learn the fleet's load (bounded load, `admission.bounded_load_epsilon`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// The address meters dial to reach this collector, `host:port`.
    pub advertise: Option<String>,
    /// Every collector of the fleet, as meters dial them (`host:port`). Sent to each meter in
    /// `Welcome`, so a meter whose DNS told it about only one collector still learns them all and
    /// spreads itself over the whole fleet. Their hosts are also peers polled for their load.
    pub members: Vec<String>,
    /// The fleet's DNS name, the one meters use. Each load poll resolves it with the system
    /// resolver and polls every address it gives. Default: unset.
    pub name: Option<String>,
    /// Port of the peers' admin servers, where `GET /load` is asked. Default 0: the port of this
    /// collector's own `admin_listen` (a fleet configured alike).
    pub load_admin_port: u16,
    /// How often the peers are polled for their load; a peer silent for three intervals is
    /// forgotten. Default 1 s: a herd fills a collector by at most one interval's arrivals
    /// before the others' counts catch up, and a poll is one small HTTP request per peer.
    pub load_poll_ms: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            advertise: None,
            members: Vec::new(),
            name: None,
            load_admin_port: 0,
            load_poll_ms: 1_000,
        }
    }
}

impl FleetConfig {
    /// The fleet view sent in `Welcome`: the members and this collector's own address.
    pub fn view(&self, collector_id: &str) -> Vec<ringflow_proto::pb::FleetMember> {
        let mut view: Vec<ringflow_proto::pb::FleetMember> = self
            .members
            .iter()
            .filter(|m| Some(*m) != self.advertise.as_ref())
            .map(|m| ringflow_proto::pb::FleetMember {
                collector_id: String::new(),
                address: m.clone(),
            })
            .collect();
        if let Some(own) = &self.advertise {
            view.push(ringflow_proto::pb::FleetMember {
                collector_id: collector_id.to_owned(),
                address: own.clone(),
            });
        }
        view
    }
}

/// Most fleet members a config may list: what a meter puts on its ring at most.
pub const MAX_FLEET_MEMBERS: usize = 512;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most connections held at once; beyond it new connections are refused before the TLS
    /// handshake. Default 10,000.
    pub max_connections: usize,
    /// Data streams one connection may have open at once. Default 4.
    pub max_data_streams: u32,
    /// Largest data frame accepted (bytes, length prefix excluded). Default 1 MiB.
    pub max_frame_bytes: u32,
    /// Most records in one batch. Default 10,000.
    pub max_records_per_batch: u32,
    /// Most batches a meter may have unsettled per data stream. Default 32.
    pub max_unacked_batches: u32,
    /// Longest string or bytes field in a record (interface name). Default 64.
    pub max_field_bytes: u32,
    /// Time allowed for the QUIC/TLS handshake. Default 10 s.
    pub handshake_timeout_ms: u64,
    /// Time a new connection has to send `Hello`. Default 5 s.
    pub hello_timeout_ms: u64,
    /// A connection with no traffic for this long is closed. Default 30 s.
    pub idle_timeout_ms: u64,
    /// Heartbeat interval suggested to meters in `Welcome`. Default 10 s.
    pub heartbeat_interval_ms: u32,
    /// Batch size and age suggested to meters in `Welcome`. Defaults 1,000 records, 1 s.
    pub batch_hint_records: u32,
    pub batch_hint_max_age_ms: u32,
    /// Per-stream QUIC receive window: what one data stream can make us buffer. Default 1.25 MiB
    /// (one maximum frame and change).
    pub stream_receive_window: u32,
}

/// Admission budgets (see `admission.rs`). Hard budgets refuse a new connection before the TLS
/// handshake; soft budgets answer an authenticated `Hello` with `Reject(overloaded)` and a spread
/// `retry_after_ms`. Defaults come from the handshake capacity measured on a 2-core machine
/// (README, "Admission budgets").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Hard: handshakes in flight (accepted, not yet answered with Welcome or Reject). Past half
    /// of it, addresses not yet validated get a stateless Retry first. Default 256.
    pub max_handshakes: u32,
    /// Hard: sustained new connections per second (token bucket rate). Default 1,000.
    pub accept_rate: u32,
    /// Hard: new connections accepted in one burst (token bucket size). Default 1,000.
    pub accept_burst: u32,
    /// Hard: bytes the data plane holds across all connections (the sink queue and frames
    /// waiting to enter it). Default 512 MiB.
    pub max_buffered_bytes: u64,
    /// Soft: sessions beyond this are told `Reject(overloaded)`; at or above
    /// `limits.max_connections` only the hard budget applies. Default 9,000.
    pub soft_max_sessions: u32,
    /// Soft: buffered bytes beyond this make new sessions `Reject(overloaded)`. Must be more
    /// than `sink.queue_bytes` (a full queue alone is back-pressure, not overload). Default 256 MiB.
    pub soft_buffered_bytes: u64,
    /// Range of the retry hint sent with `Reject(overloaded)`: uniform over a window that grows
    /// from `retry_after_min_ms` wide (just over a soft budget) to the whole range (at the hard
    /// one). Defaults 1 s and 30 s.
    pub retry_after_min_ms: u32,
    pub retry_after_max_ms: u32,
    /// Bounded load: a collector holding ⌈(1 + ε) · the fleet's mean⌉ sessions answers further
    /// Hellos with `Reject(overloaded)`, so meters walk their ring to the next collector. The
    /// fleet's load comes from polling the peers' admin servers (`fleet.name`, `fleet.members`,
    /// `fleet.load_admin_port`, `fleet.load_poll_ms`); with no peer answering there is no cap.
    /// 0 turns the cap (and the polling) off. Default 0.05.
    pub bounded_load_epsilon: f64,
}

/// Threads of the two planes. The control plane (accepting, handshakes, QUIC packet I/O, Hello,
/// control streams, drain, admin HTTP) and the data plane (data streams, the sink) run on
/// separate tokio runtimes, so a saturated data plane cannot queue the control plane's work.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Worker threads of the control plane (used by `collector run`); 0 means one per CPU.
    /// Default 0: QUIC packet I/O (for data too) runs on the control plane.
    pub control_threads: u32,
    /// Worker threads of the data plane; 0 means one per CPU. Default 0.
    pub data_threads: u32,
}

impl AdmissionConfig {
    pub fn budgets(&self, limits: &LimitsConfig) -> crate::admission::Budgets {
        crate::admission::Budgets {
            max_connections: limits.max_connections,
            max_handshakes: self.max_handshakes as usize,
            accept_rate: f64::from(self.accept_rate),
            accept_burst: self.accept_burst,
            max_buffered_bytes: self.max_buffered_bytes,
            soft_max_sessions: (self.soft_max_sessions as usize).min(limits.max_connections),
            soft_buffered_bytes: self.soft_buffered_bytes,
            retry_after_min_ms: self.retry_after_min_ms,
            retry_after_max_ms: self.retry_after_max_ms,
            bounded_load: (self.bounded_load_epsilon > 0.0).then_some(crate::admission::BoundedLoad {
                epsilon: self.bounded_load_epsilon,
            }),
        }
    }
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_handshakes: 256,
            accept_rate: 1_000,
            accept_burst: 1_000,
            max_buffered_bytes: 512 << 20,
            soft_max_sessions: 9_000,
            soft_buffered_bytes: 256 << 20,
            retry_after_min_ms: 1_000,
            retry_after_max_ms: 30_000,
            bounded_load_epsilon: 0.05,
        }
    }
}

impl RuntimeConfig {
    /// Data-plane worker threads, with 0 resolved to the number of CPUs.
    pub fn data_threads(&self) -> usize {
        threads_or_cpus(self.data_threads)
    }

    /// Control-plane worker threads, with 0 resolved to the number of CPUs.
    pub fn control_threads(&self) -> usize {
        threads_or_cpus(self.control_threads)
    }
}

fn threads_or_cpus(n: u32) -> usize {
    match n {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n as usize,
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// Which sink stores accepted batches: `file` (default), `nats` or `kafka`.
    pub kind: SinkKind,
    /// Batches waiting for the sink across all connections. When full, data streams stop reading
    /// (QUIC flow control pushes back to meters). Default 4,096.
    pub queue_batches: usize,
    /// Bytes waiting for the sink across all connections. Default 64 MiB.
    pub queue_bytes: usize,
    pub file: FileSinkConfig,
    pub nats: NatsSinkConfig,
    pub kafka: KafkaSinkConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SinkKind {
    File,
    Nats,
    Kafka,
}

/// A secret from the config file (a token or a password): never printed, not even by `{:?}`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The NATS JetStream sink: where the fleet's collectors forward batches (see the README,
/// "A collector fleet on NATS JetStream").
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSinkConfig {
    /// NATS server URLs (`nats://host:port`, `tls://host:port`); the client fails over between
    /// them and learns the rest of the cluster from the servers. Default `nats://127.0.0.1:4222`.
    pub servers: Vec<String>,
    /// Credentials: at most one of `token`, `user` + `password`, `creds_file` (a `.creds` file
    /// with a JWT and NKey seed). Default: none.
    pub token: Option<Secret>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub creds_file: Option<PathBuf>,
    /// PEM CA that signs the NATS servers' certificates; setting it requires TLS. Default: none
    /// (plain connections unless a `tls://` URL is given, then the system roots).
    pub ca_file: Option<PathBuf>,
    /// JetStream stream the batches go to; created if missing. Default `RINGFLOW`.
    pub stream: String,
    /// Batches of org ORG are published on subject `PREFIX.ORG`; the stream holds `PREFIX.>`.
    /// Default `ringflow.flows`.
    pub subject_prefix: String,
    /// Stream limits used when the collector creates the stream: oldest messages are removed
    /// after `max_age_ms` (0: kept until `max_bytes`), or once the stream holds `max_bytes`
    /// (0: no limit of its own; the server's JetStream storage limit applies). Defaults 7 days, 0.
    pub max_age_ms: u64,
    pub max_bytes: u64,
    /// Copies of each message in a clustered JetStream (1-5). Default 1.
    pub replicas: u32,
    /// JetStream drops a message whose `Nats-Msg-Id` (`ORG:METER_ID:SEQ`) it has seen within this
    /// window: a batch re-sent after a collector failover is stored once. The stream must have at
    /// least this window. Default 2 min.
    pub duplicate_window_ms: u64,
    /// Publishes awaiting their JetStream ack at once (pipelining). Default 256.
    pub max_in_flight: usize,
    /// A publish not acked within this is retried (same `Nats-Msg-Id`, so never stored twice
    /// within the window). Default 5 s.
    pub publish_timeout_ms: u64,
    /// Time allowed for one connection attempt. Default 5 s.
    pub connect_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSinkConfig {
    /// A segment is closed and a new one started once it reaches this size. Default 64 MiB.
    pub segment_bytes: u64,
    /// Cap on the total size of all segments of all orgs. At the cap the oldest segment is
    /// deleted and its batches counted as dropped. At least two segments. Default 1 GiB.
    pub max_bytes: u64,
    /// When a batch counts as stored, i.e. when it is acked. Default `always`.
    pub fsync: FsyncPolicy,
    /// For `fsync = "interval"`: how often written data is flushed to disk. Default 1 s.
    pub fsync_interval_ms: u64,
}

/// What "the sink holds it" means for the file sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsyncPolicy {
    /// Ack after `fdatasync`: survives a power loss. Writes are grouped, so one sync covers every
    /// batch that arrived while the previous one ran.
    Always,
    /// Ack after `write(2)`; sync every `fsync_interval_ms`. Survives a collector crash, not a
    /// power loss of the last interval.
    Interval,
    /// Ack after `write(2)`; the OS decides when to sync.
    Never,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// On SIGTERM meters are told to reconnect elsewhere at a random moment within this window,
    /// so they do not all land on the next collector at once. Default 10 s.
    pub drain_window_ms: u32,
    /// Longest wait for meters to leave and the sink to flush before closing. Default 30 s.
    pub grace_ms: u64,
}

mod defaults {
    use super::*;

    pub fn listen() -> SocketAddr {
        SocketAddr::from(([0u16; 8], 4433))
    }
    pub fn admin_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9464))
    }
    pub fn data_dir() -> PathBuf {
        PathBuf::from("/var/lib/ringflow/collector")
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_data_streams: 4,
            max_frame_bytes: ringflow_proto::frame::DEFAULT_MAX_FRAME_BYTES as u32,
            max_records_per_batch: 10_000,
            max_unacked_batches: 32,
            max_field_bytes: 64,
            handshake_timeout_ms: 10_000,
            hello_timeout_ms: 5_000,
            idle_timeout_ms: 30_000,
            heartbeat_interval_ms: 10_000,
            batch_hint_records: 1_000,
            batch_hint_max_age_ms: 1_000,
            stream_receive_window: 1_310_720,
        }
    }
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            kind: SinkKind::File,
            queue_batches: 4_096,
            queue_bytes: 64 << 20,
            file: FileSinkConfig::default(),
            nats: NatsSinkConfig::default(),
            kafka: KafkaSinkConfig::default(),
        }
    }
}

impl Default for NatsSinkConfig {
    fn default() -> Self {
        Self {
            servers: vec!["nats://127.0.0.1:4222".to_owned()],
            token: None,
            user: None,
            password: None,
            creds_file: None,
            ca_file: None,
            stream: "RINGFLOW".to_owned(),
            subject_prefix: "ringflow.flows".to_owned(),
            max_age_ms: 7 * 24 * 3_600_000,
            max_bytes: 0,
            replicas: 1,
            duplicate_window_ms: 120_000,
            max_in_flight: 256,
            publish_timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
        }
    }
}

/// Written out by hand so that no secret, and no credential inside a server URL, is printed.
impl std::fmt::Debug for NatsSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSinkConfig")
            .field("servers", &loggable_servers(&self.servers))
            .field("token", &self.token)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("creds_file", &self.creds_file)
            .field("ca_file", &self.ca_file)
            .field("stream", &self.stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("max_age_ms", &self.max_age_ms)
            .field("max_bytes", &self.max_bytes)
            .field("replicas", &self.replicas)
            .field("duplicate_window_ms", &self.duplicate_window_ms)
            .field("max_in_flight", &self.max_in_flight)
            .field("publish_timeout_ms", &self.publish_timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .finish()
    }
}

impl NatsSinkConfig {
    /// Checks every key of `[sink.nats]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.servers.is_empty() {
            return Err(invalid("sink.nats.servers", "lists no server"));
        }
        for (i, (url, shown)) in self
            .servers
            .iter()
            .zip(loggable_servers(&self.servers))
            .enumerate()
        {
            if url.parse::<async_nats::ServerAddr>().is_err() {
                return Err(invalid(
                    format!("sink.nats.servers[{i}]"),
                    format!("{shown:?} is not a NATS URL (e.g. \"nats://10.0.0.5:4222\")"),
                ));
            }
        }
        let credentials = [
            self.token.is_some(),
            self.user.is_some(),
            self.creds_file.is_some(),
        ];
        if credentials.iter().filter(|c| **c).count() > 1 {
            return Err(invalid(
                "sink.nats",
                "set at most one of token, user (with password) and creds_file",
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(invalid("sink.nats.password", "user and password go together"));
        }
        if !valid_stream_name(&self.stream) {
            return Err(invalid(
                "sink.nats.stream",
                format!(
                    "{:?} is not a JetStream stream name: 1-64 characters, no spaces, '.', '*', '>', '/' or '\\'",
                    self.stream
                ),
            ));
        }
        if !valid_subject_prefix(&self.subject_prefix) {
            return Err(invalid(
                "sink.nats.subject_prefix",
                format!(
                    "{:?} is not a subject prefix: dot-separated tokens of letters, digits, '-' and '_' (e.g. \"ringflow.flows\")",
                    self.subject_prefix
                ),
            ));
        }
        check_range("sink.nats.replicas", self.replicas.into(), 1, 5)?;
        check_range(
            "sink.nats.duplicate_window_ms",
            self.duplicate_window_ms,
            1_000,
            7 * 24 * 3_600_000,
        )?;
        if self.max_age_ms != 0 && self.max_age_ms < self.duplicate_window_ms {
            return Err(invalid(
                "sink.nats.max_age_ms",
                "must be 0 (no age limit) or at least sink.nats.duplicate_window_ms",
            ));
        }
        check_range("sink.nats.max_in_flight", self.max_in_flight as u64, 1, 4_096)?;
        check_range(
            "sink.nats.publish_timeout_ms",
            self.publish_timeout_ms,
            100,
            600_000,
        )?;
        check_range(
            "sink.nats.connect_timeout_ms",
            self.connect_timeout_ms,
            100,
            600_000,
        )?;
        Ok(())
    }
}

fn valid_stream_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '.' | '*' | '>' | '/' | '\\'))
}

fn valid_subject_prefix(prefix: &str) -> bool {
    prefix.len() <= 128
        && prefix.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl Default for FileSinkConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            max_bytes: 1 << 30,
            fsync: FsyncPolicy::Always,
            fsync_interval_ms: 1_000,
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_window_ms: 10_000,
            grace_ms: 30_000,
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file. Relative paths in it are taken relative to the
    /// file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = read_toml(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        resolve_paths(
            base,
            [&mut config.data_dir, &mut config.tls.cert, &mut config.tls.key]
                .into_iter()
                .chain(config.tls.client_ca.as_mut())
                .chain(config.sink.nats.creds_file.as_mut())
                .chain(config.sink.nats.ca_file.as_mut()),
        );
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates TOML text (paths are left as written).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = parse_toml(text, Path::new("<text>"))?;
        config.validate()?;
        Ok(config)
    }

    /// The collector id, defaulting to the host name.
    pub fn collector_id(&self) -> String {
        self.collector_id.clone().unwrap_or_else(host_name)
    }

    /// Checks every value; the first problem found is reported with its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(id) = &self.collector_id
            && (id.is_empty() || id.len() > 128)
        {
            return Err(invalid("collector_id", "must be 1-128 characters"));
        }
        self.org_directory()?;
        if self.tls.require_client_cert && self.tls.client_ca.is_none() {
            return Err(invalid(
                "tls.require_client_cert",
                "needs tls.client_ca, the CA that signs meters' client certificates",
            ));
        }
        let a = &self.auth;
        check_range("auth.failure_burst", a.failure_burst.into(), 1, 1_000_000)?;
        check_range(
            "auth.failures_per_minute",
            a.failures_per_minute.into(),
            1,
            1_000_000,
        )?;
        check_range(
            "auth.max_tracked_addresses",
            a.max_tracked_addresses.into(),
            16,
            16 << 20,
        )?;
        let f = &self.fleet;
        if f.members.len() > MAX_FLEET_MEMBERS {
            return Err(invalid(
                "fleet.members",
                format!("lists more than {MAX_FLEET_MEMBERS} collectors"),
            ));
        }
        for (key, address) in f
            .advertise
            .iter()
            .map(|a| ("fleet.advertise".to_owned(), a))
            .chain(
                f.members
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (format!("fleet.members[{i}]"), m)),
            )
        {
            if !valid_host_port(address) {
                return Err(invalid(
                    key,
                    format!("{address:?} is not \"host:port\" (IPv6: \"[::1]:4433\")"),
                ));
            }
        }
        if let Some(name) = &f.name
            && !valid_dns_name(name)
        {
            return Err(invalid(
                "fleet.name",
                format!("{name:?} is not a DNS name (labels of a-z, 0-9, '-', '_', dot-separated)"),
            ));
        }
        check_range("fleet.load_poll_ms", f.load_poll_ms, 100, 60_000)?;
        let view = prost::Message::encoded_len(&ringflow_proto::pb::Welcome {
            fleet: f.view(&self.collector_id()),
            ..Default::default()
        });
        if view > ringflow_proto::frame::MAX_COLLECTOR_CONTROL_FRAME_BYTES / 2 {
            return Err(invalid(
                "fleet.members",
                format!(
                    "the fleet view takes {view} bytes, too much for a Welcome: list fewer or shorter addresses"
                ),
            ));
        }
        let l = &self.limits;
        check_range("limits.max_connections", l.max_connections as u64, 1, 1 << 20)?;
        check_range("limits.max_data_streams", l.max_data_streams.into(), 1, 64)?;
        check_range("limits.max_frame_bytes", l.max_frame_bytes.into(), 1024, 16 << 20)?;
        check_range(
            "limits.max_records_per_batch",
            l.max_records_per_batch.into(),
            1,
            1 << 20,
        )?;
        check_range(
            "limits.max_unacked_batches",
            l.max_unacked_batches.into(),
            1,
            4096,
        )?;
        check_range("limits.max_field_bytes", l.max_field_bytes.into(), 16, 4096)?;
        check_range(
            "limits.handshake_timeout_ms",
            l.handshake_timeout_ms,
            100,
            600_000,
        )?;
        check_range("limits.hello_timeout_ms", l.hello_timeout_ms, 100, 600_000)?;
        check_range("limits.idle_timeout_ms", l.idle_timeout_ms, 1_000, 3_600_000)?;
        if u64::from(l.stream_receive_window) < u64::from(l.max_frame_bytes) + 4 {
            return Err(invalid(
                "limits.stream_receive_window",
                format!(
                    "must be at least limits.max_frame_bytes + 4 ({}), or a full frame could never arrive",
                    u64::from(l.max_frame_bytes) + 4
                ),
            ));
        }
        let s = &self.sink;
        check_range("sink.queue_batches", s.queue_batches as u64, 1, 1 << 20)?;
        if (s.queue_bytes as u64) < u64::from(l.max_frame_bytes) {
            return Err(invalid(
                "sink.queue_bytes",
                "must be at least limits.max_frame_bytes, or one full batch could never be queued",
            ));
        }
        let f = &s.file;
        check_range("sink.file.segment_bytes", f.segment_bytes, 64 << 10, 16 << 30)?;
        if f.max_bytes < 2 * f.segment_bytes {
            return Err(invalid(
                "sink.file.max_bytes",
                format!(
                    "must be at least twice sink.file.segment_bytes ({} bytes), got {}",
                    2 * f.segment_bytes,
                    f.max_bytes
                ),
            ));
        }
        check_range("sink.file.fsync_interval_ms", f.fsync_interval_ms, 1, 3_600_000)?;
        s.nats.validate()?;
        s.kafka.validate()?;
        self.validate_admission()?;
        check_range("shutdown.grace_ms", self.shutdown.grace_ms, 0, 3_600_000)?;
        Ok(())
    }

    fn validate_admission(&self) -> Result<(), ConfigError> {
        let a = &self.admission;
        check_range("admission.max_handshakes", a.max_handshakes.into(), 1, 1 << 20)?;
        check_range("admission.accept_rate", a.accept_rate.into(), 1, 1_000_000)?;
        check_range("admission.accept_burst", a.accept_burst.into(), 1, 1_000_000)?;
        let queue = self.sink.queue_bytes as u64;
        if a.soft_buffered_bytes <= queue {
            return Err(invalid(
                "admission.soft_buffered_bytes",
                format!(
                    "must be more than sink.queue_bytes ({queue}): a full sink queue is back-pressure, not overload"
                ),
            ));
        }
        if a.max_buffered_bytes < a.soft_buffered_bytes {
            return Err(invalid(
                "admission.max_buffered_bytes",
                "must be at least admission.soft_buffered_bytes",
            ));
        }
        check_range(
            "admission.soft_max_sessions",
            a.soft_max_sessions.into(),
            1,
            1 << 20,
        )?;
        check_range(
            "admission.retry_after_min_ms",
            a.retry_after_min_ms.into(),
            100,
            600_000,
        )?;
        // The hint window starts min wide and grows to [min, max]: max is at least 2 x min.
        check_range(
            "admission.retry_after_max_ms",
            a.retry_after_max_ms.into(),
            2 * u64::from(a.retry_after_min_ms),
            3_600_000,
        )?;
        if !(0.0..=1.0).contains(&a.bounded_load_epsilon) {
            return Err(invalid(
                "admission.bounded_load_epsilon",
                format!("must be between 0 (off) and 1, got {}", a.bounded_load_epsilon),
            ));
        }
        check_range(
            "runtime.control_threads",
            self.runtime.control_threads.into(),
            0,
            256,
        )?;
        check_range("runtime.data_threads", self.runtime.data_threads.into(), 0, 256)?;
        Ok(())
    }

    /// The orgs and their token hashes, parsed.
    pub fn org_directory(&self) -> Result<OrgDirectory, ConfigError> {
        let mut dir = OrgDirectory::default();
        for (i, org) in self.orgs.iter().enumerate() {
            let key = format!("orgs[{i}]");
            if !valid_org_id(&org.id) {
                return Err(invalid(
                    format!("{key}.id"),
                    format!(
                        "{:?} is not a valid org id: use 1-64 characters of a-z, 0-9, '-' and '_'",
                        org.id
                    ),
                ));
            }
            if org.token_hashes.is_empty() && org.client_names.is_empty() {
                return Err(invalid(
                    format!("{key}.token_hashes"),
                    "needs at least one hash (create one with `collector token --org ID`), or client_names with tls.client_ca",
                ));
            }
            if !org.client_names.is_empty() && self.tls.client_ca.is_none() {
                return Err(invalid(
                    format!("{key}.client_names"),
                    "needs tls.client_ca, the CA that signs meters' client certificates",
                ));
            }
            let client_names = org
                .client_names
                .iter()
                .enumerate()
                .map(|(j, n)| {
                    n.parse::<NamePattern>()
                        .map_err(|e| invalid(format!("{key}.client_names[{j}]"), e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let hashes = org
                .token_hashes
                .iter()
                .enumerate()
                .map(|(j, h)| {
                    h.parse::<TokenHash>()
                        .map_err(|e| invalid(format!("{key}.token_hashes[{j}]"), e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let credentials = OrgCredentials {
                token_hashes: hashes,
                client_names,
            };
            if !dir.insert(&org.id, credentials) {
                return Err(invalid(
                    format!("{key}.id"),
                    format!("org {:?} is listed twice", org.id),
                ));
            }
        }
        if dir.is_empty() {
            return Err(invalid(
                "orgs",
                "no org is configured, so no meter could ever send; add an [[orgs]] entry (see `collector token`)",
            ));
        }
        Ok(dir)
    }
}

/// "host:port" or "[v6]:port" with a non-empty host and a numeric port.
fn valid_host_port(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && !host.contains(':') && port.parse::<u16>().is_ok(),
        None => false,
    }
}

/// Org ids name directories and message subjects, so they are kept to a safe alphabet.
pub fn valid_org_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "collector".to_owned())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The smallest valid config: TLS files and one org (tables only, so keys can go before it).
    pub(crate) const MINIMAL: &str = r#"
        [tls]
        cert = "server.pem"
        key = "server.key"
        [[orgs]]
        id = "acme"
        token_hashes = ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
    "#;

    #[test]
    fn example_config_parses_to_the_defaults() {
        let example = Config::parse(EXAMPLE_CONFIG).unwrap();
        let minimal = Config::parse(MINIMAL).unwrap();
        // Every default written in the example file is the default in code.
        assert_eq!(format!("{:?}", example.limits), format!("{:?}", minimal.limits));
        assert_eq!(format!("{:?}", example.sink), format!("{:?}", minimal.sink));
        assert_eq!(format!("{:?}", example.fleet), format!("{:?}", minimal.fleet));
        assert_eq!(
            format!("{:?}", example.admission),
            format!("{:?}", minimal.admission)
        );
        assert_eq!(format!("{:?}", example.runtime), format!("{:?}", minimal.runtime));
        assert_eq!(format!("{:?}", example.auth), format!("{:?}", minimal.auth));
        assert_eq!(
            (&example.tls.client_ca, example.tls.require_client_cert),
            (&minimal.tls.client_ca, minimal.tls.require_client_cert)
        );
        assert_eq!(
            format!("{:?}", example.shutdown),
            format!("{:?}", minimal.shutdown)
        );
        assert_eq!(example.listen, minimal.listen);
        assert_eq!(example.admin_listen, minimal.admin_listen);
        assert_eq!(example.data_dir, minimal.data_dir);
    }

    #[test]
    fn client_certificates_need_a_client_ca() {
        let with_names = MINIMAL.replace(
            "token_hashes = [",
            "client_names = [\"*.acme.example\"]\n        token_hashes = [",
        );
        let err = Config::parse(&with_names).unwrap_err();
        assert!(err.to_string().contains("orgs[0].client_names"), "{err}");
        let with_ca = with_names.replace("[tls]", "[tls]\nclient_ca = \"ca.pem\"");
        Config::parse(&with_ca).unwrap();
        let bad = with_ca.replace("*.acme.example", "*");
        let err = Config::parse(&bad).unwrap_err();
        assert!(err.to_string().contains("orgs[0].client_names[0]"), "{err}");
        let required = MINIMAL.replace("[tls]", "[tls]\nrequire_client_cert = true");
        let err = Config::parse(&required).unwrap_err();
        assert!(err.to_string().contains("tls.require_client_cert"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = Config::parse(&format!("{MINIMAL}\n[limits]\nmax_frame_byte = 5\n")).unwrap_err();
        assert!(err.to_string().contains("max_frame_byte"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let err = Config::parse(&format!("{MINIMAL}\n[limits]\nmax_frame_bytes = 10\n")).unwrap_err();
        assert!(err.to_string().contains("limits.max_frame_bytes"), "{err}");
        let err = Config::parse(&format!(
            "{MINIMAL}\n[sink.file]\nsegment_bytes = 1048576\nmax_bytes = 1048577\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("sink.file.max_bytes"), "{err}");
    }

    #[test]
    fn admission_budgets_must_be_consistent() {
        let err =
            Config::parse(&format!("{MINIMAL}\n[admission]\nsoft_buffered_bytes = 1000\n")).unwrap_err();
        assert!(err.to_string().contains("admission.soft_buffered_bytes"), "{err}");
        let err = Config::parse(&format!(
            "{MINIMAL}\n[admission]\nmax_buffered_bytes = 100000000\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("admission.max_buffered_bytes"), "{err}");
        let err = Config::parse(&format!(
            "{MINIMAL}\n[admission]\nretry_after_min_ms = 5000\nretry_after_max_ms = 1000\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("admission.retry_after_max_ms"), "{err}");
        // A soft session budget above the hard one is cut to it.
        let c = Config::parse(&format!("{MINIMAL}\n[limits]\nmax_connections = 10\n")).unwrap();
        assert_eq!(c.admission.budgets(&c.limits).soft_max_sessions, 10);
    }

    #[test]
    fn bad_orgs_are_refused() {
        let no_orgs = "[tls]\ncert = \"a\"\nkey = \"b\"\n";
        assert!(Config::parse(no_orgs).unwrap_err().to_string().contains("orgs"));
        let bad_id = MINIMAL.replace("\"acme\"", "\"../etc\"");
        assert!(
            Config::parse(&bad_id)
                .unwrap_err()
                .to_string()
                .contains("orgs[0].id")
        );
        let bad_hash = MINIMAL.replace("sha256:0000", "md5:0000");
        let err = Config::parse(&bad_hash).unwrap_err();
        assert!(err.to_string().contains("orgs[0].token_hashes[0]"), "{err}");
    }
    #[test]
    fn the_welcome_view_is_the_members_and_this_collector() {
        let c = Config::parse(&format!(
            "{MINIMAL}\n[fleet]\nadvertise = \"10.0.0.2:4433\"\nmembers = [\"10.0.0.1:4433\", \"10.0.0.2:4433\"]\n"
        ))
        .unwrap();
        let view = c.fleet.view("c2");
        let addrs: Vec<_> = view
            .iter()
            .map(|m| (m.address.as_str(), m.collector_id.as_str()))
            .collect();
        assert_eq!(addrs, [("10.0.0.1:4433", ""), ("10.0.0.2:4433", "c2")]);
        let err = Config::parse(&format!("{MINIMAL}\n[fleet]\nmembers = [\"nope\"]\n")).unwrap_err();
        assert!(err.to_string().contains("fleet.members[0]"), "{err}");
    }

    #[test]
    fn fleet_load_polling_keys_are_checked_by_name() {
        let with = |table: &str| Config::parse(&format!("{MINIMAL}\n[fleet]\n{table}\n"));
        let ok =
            with("name = \"collectors.example.net\"\nload_admin_port = 9464\nload_poll_ms = 500").unwrap();
        assert_eq!(ok.fleet.name.as_deref(), Some("collectors.example.net"));
        assert_eq!((ok.fleet.load_admin_port, ok.fleet.load_poll_ms), (9464, 500));
        for (table, key) in [
            ("name = \"not a name\"", "fleet.name"),
            ("name = \"\"", "fleet.name"),
            ("load_poll_ms = 10", "fleet.load_poll_ms"),
            ("load_poll_ms = 600000", "fleet.load_poll_ms"),
            ("load_admin_port = 70000", "load_admin_port"),
        ] {
            let err = with(table).unwrap_err().to_string();
            assert!(err.contains(key), "{table}: {err}");
        }
        let err =
            Config::parse(&format!("{MINIMAL}\n[admission]\nbounded_load_epsilon = 1.5\n")).unwrap_err();
        assert!(
            err.to_string().contains("admission.bounded_load_epsilon"),
            "{err}"
        );
        let off = Config::parse(&format!("{MINIMAL}\n[admission]\nbounded_load_epsilon = 0\n")).unwrap();
        assert_eq!(off.admission.budgets(&off.limits).bounded_load, None);
    }

    #[test]
    fn a_fleet_view_too_large_for_a_welcome_is_refused() {
        let long: Vec<String> = (0..512)
            .map(|i| format!("\"{}{i}.example:4433\"", "c".repeat(240)))
            .collect();
        let text = format!("{MINIMAL}\n[fleet]\nmembers = [{}]\n", long.join(", "));
        let err = Config::parse(&text).unwrap_err();
        assert!(err.to_string().contains("too much for a Welcome"), "{err}");
        let too_many: Vec<String> = (0..513)
            .map(|i| format!("\"10.0.{}.{}:1\"", i / 250, i % 250))
            .collect();
        let text = format!("{MINIMAL}\n[fleet]\nmembers = [{}]\n", too_many.join(", "));
        assert!(
            Config::parse(&text)
                .unwrap_err()
                .to_string()
                .contains("more than 512")
        );
    }

    #[test]
    fn nats_sink_keys_are_checked_by_name() {
        let with = |table: &str| {
            Config::parse(&format!(
                "{MINIMAL}\n[sink]\nkind = \"nats\"\n[sink.nats]\n{table}\n"
            ))
        };
        let ok = with("servers = [\"nats://10.0.0.1:4222\", \"tls://n2:4222\"]\ntoken = \"t\"").unwrap();
        assert_eq!(ok.sink.kind, SinkKind::Nats);
        assert!(
            !format!("{:?}", ok.sink.nats).contains("\"t\""),
            "a token never shows in Debug output"
        );
        let cases = [
            ("servers = []", "sink.nats.servers"),
            ("servers = [\"nats://bad host:4222\"]", "sink.nats.servers[0]"),
            ("token = \"t\"\nuser = \"u\"\npassword = \"p\"", "at most one of"),
            ("user = \"u\"", "sink.nats.password"),
            ("stream = \"a.b\"", "sink.nats.stream"),
            ("subject_prefix = \"flows.>\"", "sink.nats.subject_prefix"),
            ("subject_prefix = \"flows..x\"", "sink.nats.subject_prefix"),
            ("replicas = 7", "sink.nats.replicas"),
            ("max_in_flight = 0", "sink.nats.max_in_flight"),
            ("max_age_ms = 1000", "sink.nats.max_age_ms"),
            ("stream_name = \"x\"", "stream_name"),
        ];
        for (table, key) in cases {
            let err = with(table).unwrap_err().to_string();
            assert!(err.contains(key), "{table}: {err}");
        }
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, format!("data_dir = \"data\"\n{MINIMAL}")).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.data_dir, dir.path().join("data"));
        assert_eq!(c.tls.cert, dir.path().join("server.pem"));
    }
}

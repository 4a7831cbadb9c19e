//! The meter's configuration: one typed [`Config`], loaded from TOML and validated before
//! anything starts.
//!
//! Owns: every key, its default and why; [`EXAMPLE_CONFIG`] (printed by `meter example-config`,
//! kept equal to the defaults by a test). Must never: open sockets or read files other than the
//! config file and the token file it names.

use ringflow_proto::ops::valid_dns_name;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const EXAMPLE_CONFIG: &str = include_str!("example-config.toml");

pub use ringflow_proto::ops::ConfigError;
use ringflow_proto::ops::{check_range, parse_toml, read_toml, resolve_paths};

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::invalid(key, message)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Stable id of this meter. Default: generated on first start and kept in `state_dir`.
    #[serde(default)]
    pub meter_id: Option<String>,
    /// Where the meter keeps its id, sequence numbers, last-known fleet and spool. Default
    /// `/var/lib/ringflow/meter`.
    #[serde(default = "defaults::state_dir")]
    pub state_dir: PathBuf,
    /// Org this meter sends for.
    pub org_id: String,
    /// The org's token (from `collector token`). Prefer `org_token_file` so the secret is not in
    /// the config file.
    #[serde(default)]
    pub org_token: Option<String>,
    /// File holding the org token (first line).
    #[serde(default)]
    pub org_token_file: Option<PathBuf>,
    /// Static collector addresses, `host:port`, used together with (or instead of) the fleet
    /// found through DNS.
    #[serde(default)]
    pub collectors: Vec<String>,
    /// Name the collectors' certificates must carry. Default: `fleet.name`, or for a static
    /// address without a fleet name, its host part.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM CA certificate(s) that sign collector certificates. There is no way to skip this check.
    pub ca_file: PathBuf,
    /// PEM client certificate chain (leaf first) presented to collectors that ask for one
    /// (mTLS). Its DNS names map the meter to an org at the collector (`orgs[].client_names`);
    /// with it, `org_token` is optional. Set together with `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    #[serde(default)]
    pub fleet: FleetConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub spool: SpoolConfig,
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    #[serde(default)]
    pub sources: SourcesConfig,
    #[serde(default)]
    pub admin: AdminConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Close a batch at this many records (the collector's limit, from Welcome, wins if lower).
    pub max_records: usize,
    /// Close a batch before its frame would pass this many bytes (likewise capped by the collector).
    pub max_bytes: usize,
    /// Close a batch this long after its first record, however small.
    pub max_age_ms: u64,
}

/// The disk spool in `STATE_DIR/spool`, where every batch waits until a collector acks it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Cap on the spool's bytes on disk. At the cap the oldest segment is deleted and what it
    /// held that was not yet acked is counted as dropped.
    pub max_bytes: u64,
    /// Cap on the batches in the spool; same drop-oldest policy.
    pub max_entries: u64,
    /// Size at which a segment file is closed and a new one started.
    pub segment_bytes: u64,
    /// When a written batch is forced to disk.
    pub fsync: FsyncMode,
    /// With `fsync = "interval"`: how often.
    pub fsync_interval_ms: u64,
    /// Sealed batches held in memory on their way to disk. When full, the batcher waits and the
    /// sources, which never wait, drop and count.
    pub memory_batches: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// Every write is synced before the batch is sent: survives power loss.
    Always,
    /// Synced every `fsync_interval_ms`: a crash of the meter loses nothing, a power loss at
    /// most that interval.
    Interval,
    /// Left to the OS.
    Never,
}

/// The meter's local HTTP endpoint: `/healthz` and `/metrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub enabled: bool,
    /// A loopback address (`127.0.0.1:PORT`, `[::1]:PORT`); port 0 picks a free one.
    pub listen: std::net::SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectConfig {
    /// Backoff after a round of attempts in which every collector failed: the n-th such round
    /// waits a uniform random time in [0, min(max_delay, initial_delay x multiplier^n)] (full
    /// jitter), so meters that failed together do not retry together.
    pub initial_delay_ms: u64,
    pub max_delay_ms: u64,
    pub multiplier: f64,
    /// Time allowed to connect (QUIC + TLS) and get Welcome.
    pub connect_timeout_ms: u64,
    /// The first attempt after start waits a uniform random time in [0, splay).
    pub splay_ms: u64,
    /// Before trying the next collector after a failure, wait a uniform random time in [0, this).
    pub step_delay_ms: u64,
    /// A session that lasts this long resets the backoff; one that ends sooner counts as a failure.
    pub healthy_after_ms: u64,
    /// When this meter's first choice is not the collector it is connected to (after a failover,
    /// or a fleet change), it moves at a uniform random moment within this window.
    pub rebalance_window_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// DNS name of the collector fleet. Every A/AAAA record (with `port`) and every SRV record of
    /// `_ringflow._udp.NAME` (host and port) is a collector. Unset: only static `collectors`.
    pub name: Option<String>,
    /// Port for addresses found in A/AAAA records.
    pub port: u16,
    /// Also look up SRV records.
    pub srv: bool,
    /// DNS servers to ask, `ip:port`. Empty: the system's resolvers (/etc/resolv.conf).
    pub nameservers: Vec<std::net::SocketAddr>,
    /// The fleet is looked up again when its records' TTL expires, but never more often than
    /// `refresh_min_ms` nor less often than `refresh_max_ms`.
    pub refresh_min_ms: u64,
    pub refresh_max_ms: u64,
    /// Time allowed for one lookup.
    pub resolve_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// On SIGTERM, how long to keep sending what is spooled and waiting for acks before exiting
    /// (what is not acked by then stays in the spool for the next start).
    pub grace_ms: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourcesConfig {
    pub sockets: SocketsConfig,
    pub interfaces: InterfacesConfig,
    pub netflow: NetflowConfig,
    pub synthetic: SyntheticConfig,
}

/// This host's TCP connections, read through netlink sock_diag (Linux).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketsConfig {
    pub enabled: bool,
    /// How often the kernel's socket table is read; each connection that moved bytes since the
    /// last read becomes one record of the deltas.
    pub interval_ms: u64,
    /// Cap on connections tracked between reads. Connections beyond it are not reported and
    /// are counted (`ringflow_meter_source_flows_dropped_total{source="sockets"}`).
    pub max_flows: usize,
    /// Also report connections with both ends on this host (127.0.0.0/8, ::1).
    pub include_loopback: bool,
}

/// Per-interface counters from `/proc/net/dev`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InterfacesConfig {
    pub enabled: bool,
    /// How often the counters are read; each interface whose counters moved becomes one record
    /// of the deltas.
    pub interval_ms: u64,
    /// The file read (another path is for tests and containers that mount the host's /proc
    /// elsewhere).
    pub path: PathBuf,
    /// Cap on interfaces tracked; more are counted as dropped.
    pub max_interfaces: usize,
}

/// A UDP listener for NetFlow v5, v9 and IPFIX from routers, switches and software exporters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetflowConfig {
    pub enabled: bool,
    /// Address to receive on (NetFlow's customary port is 2055, IPFIX's 4739; one listener
    /// takes all three formats).
    pub listen: std::net::SocketAddr,
    /// Exporters (per address and observation domain) whose templates are kept; the least
    /// recently heard is forgotten beyond this.
    pub max_exporters: usize,
    /// Templates kept per exporter (least recently used evicted).
    pub max_templates: usize,
    /// v9/IPFIX data that arrives before its template is held (per exporter, up to this many
    /// data sets) and decoded when the template comes; 0 drops it at once.
    pub max_pending_sets: usize,
    /// The socket's kernel receive buffer, so bursts from many exporters are not lost.
    pub receive_buffer_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    /// Generate made-up flows (for trials and load tests).
    pub enabled: bool,
    /// Records generated per second.
    pub records_per_second: u64,
    /// Distinct flows (address/port tuples) the records cycle through.
    pub flows: u32,
    /// Stop after this many records (0: never stop).
    pub total_records: u64,
}

mod defaults {
    use std::path::PathBuf;
    pub fn state_dir() -> PathBuf {
        PathBuf::from("/var/lib/ringflow/meter")
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_records: 1_000,
            max_bytes: 512 << 10,
            max_age_ms: 1_000,
        }
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            max_entries: 100_000,
            segment_bytes: 8 << 20,
            fsync: FsyncMode::Interval,
            fsync_interval_ms: 1_000,
            memory_batches: 64,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9465)),
        }
    }
}

/// Recently spooled batches also kept in memory, so a sender that keeps up never reads the disk.
const RECENT_BYTES: u64 = 8 << 20;

impl SpoolConfig {
    pub fn limits(&self) -> crate::spool::SpoolLimits {
        crate::spool::SpoolLimits {
            max_bytes: self.max_bytes,
            max_entries: self.max_entries,
            segment_bytes: self.segment_bytes,
            recent_bytes: RECENT_BYTES.min(self.max_bytes),
        }
    }

    pub fn run(&self) -> crate::spool::handle::SpoolRun {
        use crate::spool::handle::FsyncPolicy;
        crate::spool::handle::SpoolRun {
            fsync: match self.fsync {
                FsyncMode::Always => FsyncPolicy::Always,
                FsyncMode::Interval => FsyncPolicy::Interval(Duration::from_millis(self.fsync_interval_ms)),
                FsyncMode::Never => FsyncPolicy::Never,
            },
            memory_batches: self.memory_batches,
        }
    }
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        Self {
            initial_delay_ms: 1_000,
            max_delay_ms: 60_000,
            multiplier: 2.0,
            connect_timeout_ms: 10_000,
            splay_ms: 1_000,
            step_delay_ms: 500,
            healthy_after_ms: 30_000,
            rebalance_window_ms: 60_000,
        }
    }
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            name: None,
            port: 4433,
            srv: true,
            nameservers: Vec::new(),
            refresh_min_ms: 5_000,
            refresh_max_ms: 300_000,
            resolve_timeout_ms: 3_000,
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { grace_ms: 5_000 }
    }
}

impl Default for SocketsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: 1_000,
            max_flows: 65_536,
            include_loopback: true,
        }
    }
}

impl Default for InterfacesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: 10_000,
            path: PathBuf::from("/proc/net/dev"),
            max_interfaces: 1_024,
        }
    }
}

impl Default for NetflowConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: std::net::SocketAddr::from(([0, 0, 0, 0], 2055)),
            max_exporters: 1_024,
            max_templates: 1_000,
            max_pending_sets: 64,
            receive_buffer_bytes: 4 << 20,
        }
    }
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            records_per_second: 1_000,
            flows: 100,
            total_records: 0,
        }
    }
}

impl FleetConfig {
    pub fn resolve_timeout(&self) -> Duration {
        Duration::from_millis(self.resolve_timeout_ms)
    }
}

impl ReconnectConfig {
    /// The selection timing rules.
    pub fn selection(&self) -> crate::selector::SelectorConfig {
        let (ms, r) = (Duration::from_millis, self);
        crate::selector::SelectorConfig {
            splay: ms(r.splay_ms),
            step_delay: ms(r.step_delay_ms),
            healthy_after: ms(r.healthy_after_ms),
            rebalance_window: ms(r.rebalance_window_ms),
            max_hold: ms(r.max_delay_ms),
        }
    }

    /// The backoff between failed rounds.
    pub fn jitter(&self) -> crate::selector::backoff::JitterParams {
        crate::selector::backoff::JitterParams {
            initial: Duration::from_millis(self.initial_delay_ms),
            max: Duration::from_millis(self.max_delay_ms),
            multiplier: self.multiplier,
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

impl Config {
    /// Reads, parses and validates a config file; relative paths are taken relative to its
    /// directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = read_toml(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        resolve_paths(
            base,
            [
                Some(&mut config.state_dir),
                Some(&mut config.ca_file),
                config.org_token_file.as_mut(),
                config.client_cert.as_mut(),
                config.client_key.as_mut(),
            ]
            .into_iter()
            .flatten(),
        );
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates TOML text (paths left as written).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = parse_toml(text, Path::new("<text>"))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(id) = &self.meter_id
            && !valid_meter_id(id)
        {
            return Err(invalid(
                "meter_id",
                "must be 1-128 characters of A-Z a-z 0-9 . _ : - (or leave it out to generate one)",
            ));
        }
        if self.org_id.is_empty() {
            return Err(invalid("org_id", "must not be empty"));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(invalid(
                if self.client_cert.is_some() {
                    "client_key"
                } else {
                    "client_cert"
                },
                "client_cert and client_key go together",
            ));
        }
        match (&self.org_token, &self.org_token_file) {
            (Some(_), Some(_)) => {
                return Err(invalid("org_token", "set org_token or org_token_file, not both"));
            }
            (None, None) if self.client_cert.is_none() => {
                return Err(invalid(
                    "org_token_file",
                    "the org's token is required: set org_token_file (or org_token), or a client certificate (client_cert, client_key)",
                ));
            }
            (Some(t), None) if t.trim().is_empty() => return Err(invalid("org_token", "is empty")),
            _ => {}
        }
        if self.collectors.is_empty() && self.fleet.name.is_none() {
            return Err(invalid(
                "fleet.name",
                "no collector is configured: set fleet.name (the fleet's DNS name) or list collectors as \"host:port\"",
            ));
        }
        if let Some(name) = &self.fleet.name
            && !valid_dns_name(name)
        {
            return Err(invalid("fleet.name", format!("{name:?} is not a DNS name")));
        }
        for (i, c) in self.collectors.iter().enumerate() {
            if split_host_port(c).is_none() {
                return Err(invalid(
                    &format!("collectors[{i}]"),
                    format!("{c:?} is not \"host:port\" (IPv6: \"[::1]:4433\")"),
                ));
            }
        }
        let b = &self.batch;
        check_range("batch.max_records", b.max_records as u64, 1, 1 << 20)?;
        check_range("batch.max_bytes", b.max_bytes as u64, 1024, 16 << 20)?;
        check_range("batch.max_age_ms", b.max_age_ms, 1, 3_600_000)?;
        let sp = &self.spool;
        check_range("spool.segment_bytes", sp.segment_bytes, 64 << 10, 64 << 20)?;
        if sp.segment_bytes < b.max_bytes as u64 {
            return Err(invalid(
                "spool.segment_bytes",
                "must be at least batch.max_bytes (a segment holds at least one batch)",
            ));
        }
        check_range("spool.max_bytes", sp.max_bytes, 2 * sp.segment_bytes, 1 << 50)?;
        check_range("spool.max_entries", sp.max_entries, 16, 1 << 40)?;
        check_range("spool.fsync_interval_ms", sp.fsync_interval_ms, 10, 3_600_000)?;
        check_range("spool.memory_batches", sp.memory_batches as u64, 1, 1 << 16)?;
        if self.admin.enabled && !self.admin.listen.ip().is_loopback() {
            return Err(invalid(
                "admin.listen",
                format!(
                    "{} is not a loopback address; the meter's admin endpoint is local only (use 127.0.0.1:PORT or [::1]:PORT)",
                    self.admin.listen
                ),
            ));
        }
        let r = &self.reconnect;
        check_range("reconnect.initial_delay_ms", r.initial_delay_ms, 1, 3_600_000)?;
        check_range(
            "reconnect.max_delay_ms",
            r.max_delay_ms,
            r.initial_delay_ms,
            86_400_000,
        )?;
        check_range("reconnect.connect_timeout_ms", r.connect_timeout_ms, 100, 600_000)?;
        if !(1.0..=10.0).contains(&r.multiplier) {
            return Err(invalid(
                "reconnect.multiplier",
                format!("must be between 1.0 and 10.0, got {}", r.multiplier),
            ));
        }
        check_range("reconnect.splay_ms", r.splay_ms, 0, 3_600_000)?;
        check_range("reconnect.step_delay_ms", r.step_delay_ms, 0, 600_000)?;
        check_range("reconnect.healthy_after_ms", r.healthy_after_ms, 0, 3_600_000)?;
        check_range(
            "reconnect.rebalance_window_ms",
            r.rebalance_window_ms,
            0,
            86_400_000,
        )?;
        let f = &self.fleet;
        check_range("fleet.port", f.port.into(), 1, 65_535)?;
        check_range("fleet.refresh_min_ms", f.refresh_min_ms, 100, 86_400_000)?;
        check_range(
            "fleet.refresh_max_ms",
            f.refresh_max_ms,
            f.refresh_min_ms,
            86_400_000,
        )?;
        check_range("fleet.resolve_timeout_ms", f.resolve_timeout_ms, 100, 60_000)?;
        check_range("shutdown.grace_ms", self.shutdown.grace_ms, 0, 3_600_000)?;
        let s = &self.sources.synthetic;
        if s.enabled {
            check_range(
                "sources.synthetic.records_per_second",
                s.records_per_second,
                1,
                100_000_000,
            )?;
            check_range("sources.synthetic.flows", s.flows.into(), 1, 1 << 24)?;
        }
        let so = &self.sources.sockets;
        if so.enabled {
            check_range("sources.sockets.interval_ms", so.interval_ms, 10, 3_600_000)?;
            check_range("sources.sockets.max_flows", so.max_flows as u64, 1, 1 << 24)?;
        }
        let i = &self.sources.interfaces;
        if i.enabled {
            check_range("sources.interfaces.interval_ms", i.interval_ms, 10, 3_600_000)?;
            check_range(
                "sources.interfaces.max_interfaces",
                i.max_interfaces as u64,
                1,
                1 << 20,
            )?;
        }
        let n = &self.sources.netflow;
        if n.enabled {
            check_range(
                "sources.netflow.max_exporters",
                n.max_exporters as u64,
                1,
                1 << 20,
            )?;
            check_range(
                "sources.netflow.max_templates",
                n.max_templates as u64,
                1,
                1 << 20,
            )?;
            check_range(
                "sources.netflow.max_pending_sets",
                n.max_pending_sets as u64,
                0,
                1 << 16,
            )?;
            check_range(
                "sources.netflow.receive_buffer_bytes",
                n.receive_buffer_bytes as u64,
                64 << 10,
                1 << 30,
            )?;
        }
        Ok(())
    }

    /// The client certificate to present, if one is configured.
    pub fn client_identity(&self) -> Option<crate::transport::ClientIdentity<'_>> {
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some(crate::transport::ClientIdentity { cert, key }),
            _ => None,
        }
    }

    /// The org token, read from `org_token` or the first line of `org_token_file`; empty for a
    /// meter that proves its org with a client certificate alone.
    pub fn org_token(&self) -> Result<String, ConfigError> {
        if let Some(t) = &self.org_token {
            return Ok(t.trim().to_owned());
        }
        if self.org_token_file.is_none() && self.client_cert.is_some() {
            return Ok(String::new());
        }
        let path = self.org_token_file.as_deref().unwrap_or(Path::new(""));
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            what: "org_token_file =",
            path: path.to_owned(),
            source,
        })?;
        let token = text.lines().next().unwrap_or("").trim().to_owned();
        if token.is_empty() {
            return Err(invalid("org_token_file", format!("{} is empty", path.display())));
        }
        Ok(token)
    }

    /// The name a collector's certificate must carry: `server_name`, else `fleet.name`, else the
    /// host part of its address.
    pub fn server_name_for(&self, address: &str) -> String {
        self.server_name
            .clone()
            .or_else(|| self.fleet.name.clone())
            .or_else(|| split_host_port(address).map(|(h, _)| h.to_owned()))
            .unwrap_or_else(|| address.to_owned())
    }

    /// The selection timing rules.
    pub fn selection(&self) -> crate::selector::SelectorConfig {
        self.reconnect.selection()
    }

    /// The backoff between failed rounds.
    pub fn jitter(&self) -> crate::selector::backoff::JitterParams {
        self.reconnect.jitter()
    }
}

/// Splits "host:port" (or "[v6]:port") into host and port.
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(':') && !s.starts_with('[') {
        return None;
    }
    Some((host, port.parse().ok()?))
}

pub fn valid_meter_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        org_id = "acme"
        org_token = "rft_x"
        collectors = ["127.0.0.1:4433"]
        ca_file = "ca.pem"
    "#;

    #[test]
    fn example_config_parses_to_the_defaults() {
        let example = Config::parse(EXAMPLE_CONFIG).unwrap();
        let minimal = Config::parse(MINIMAL).unwrap();
        assert_eq!(format!("{:?}", example.batch), format!("{:?}", minimal.batch));
        assert_eq!(format!("{:?}", example.fleet), format!("{:?}", minimal.fleet));
        assert_eq!(format!("{:?}", example.spool), format!("{:?}", minimal.spool));
        assert_eq!(format!("{:?}", example.admin), format!("{:?}", minimal.admin));
        assert_eq!(
            format!("{:?}", example.reconnect),
            format!("{:?}", minimal.reconnect)
        );
        assert_eq!(
            format!("{:?}", example.shutdown),
            format!("{:?}", minimal.shutdown)
        );
        assert_eq!(example.state_dir, minimal.state_dir);
        assert_eq!(format!("{:?}", example.sources), format!("{:?}", minimal.sources));
    }

    #[test]
    fn spool_and_admin_settings_are_checked() {
        let with = |table: &str| Config::parse(&format!("{MINIMAL}\n{table}\n"));
        let err = with("[spool]\nsegment_bytes = 1024").unwrap_err();
        assert!(err.to_string().contains("spool.segment_bytes"), "{err}");
        let err = with("[spool]\nmax_bytes = 1048576\nsegment_bytes = 1048576").unwrap_err();
        assert!(err.to_string().contains("spool.max_bytes"), "{err}");
        let err = with("[spool]\nfsync = \"sometimes\"").unwrap_err();
        assert!(err.to_string().contains("fsync"), "{err}");
        let err = with("[admin]\nlisten = \"0.0.0.0:9465\"").unwrap_err();
        assert!(
            err.to_string().contains("admin.listen") && err.to_string().contains("loopback"),
            "{err}"
        );
        assert!(with("[admin]\nenabled = false\nlisten = \"0.0.0.0:9465\"").is_ok());
        assert!(with("[spool]\nfsync = \"always\"\n[admin]\nlisten = \"[::1]:0\"").is_ok());
    }

    #[test]
    fn addresses_are_checked() {
        assert_eq!(
            split_host_port("collector.example:4433"),
            Some(("collector.example", 4433))
        );
        assert_eq!(split_host_port("[::1]:4433"), Some(("::1", 4433)));
        assert_eq!(split_host_port("::1:4433"), None);
        assert_eq!(split_host_port("host"), None);
        let err = Config::parse(&MINIMAL.replace("127.0.0.1:4433", "127.0.0.1")).unwrap_err();
        assert!(err.to_string().contains("collectors[0]"), "{err}");
    }

    #[test]
    fn token_is_required_once() {
        let none = MINIMAL.replace("org_token = \"rft_x\"", "");
        assert!(
            Config::parse(&none)
                .unwrap_err()
                .to_string()
                .contains("org_token_file")
        );
        let both = format!("{MINIMAL}\norg_token_file = \"t\"\n");
        assert!(Config::parse(&both).unwrap_err().to_string().contains("not both"));
    }

    #[test]
    fn server_name_defaults_to_the_fleet_name_then_the_host() {
        let c = Config::parse(&MINIMAL.replace("127.0.0.1:4433", "c1.example:4433")).unwrap();
        assert_eq!(c.server_name_for("c1.example:4433"), "c1.example");
        let c = Config::parse(&format!("{MINIMAL}\n[fleet]\nname = \"collectors.example\"\n")).unwrap();
        assert_eq!(c.server_name_for("10.0.0.1:4433"), "collectors.example");
    }

    #[test]
    fn a_fleet_name_or_a_static_collector_is_required() {
        let none = MINIMAL.replace("collectors = [\"127.0.0.1:4433\"]", "");
        let err = Config::parse(&none).unwrap_err();
        assert!(err.to_string().contains("fleet.name"), "{err}");
        let fleet_only = format!("{none}\n[fleet]\nname = \"collectors.example\"\n");
        assert!(Config::parse(&fleet_only).is_ok());
        let bad = format!("{none}\n[fleet]\nname = \"not a name\"\n");
        assert!(
            Config::parse(&bad)
                .unwrap_err()
                .to_string()
                .contains("not a DNS name")
        );
    }
}

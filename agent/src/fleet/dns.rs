//! Looking the fleet up in DNS: every A/AAAA record of the fleet name (with the configured port)
//! and every SRV record of `_ringflow._udp.NAME` (its host's addresses, with its port).
//!
//! Owns: the resolver (no cache of its own: the meter refreshes by the records' TTL) and the
//! refresh task. Must never: run in the connect loop's path; lookups happen on their own task and
//! their results arrive through a channel.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::Resolver;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::FleetConfig;
use crate::telemetry::MeterMetrics;
use crate::telemetry::events::{Event, FleetLookupFailed, FleetRefreshed};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    #[error("{name} has no A, AAAA or SRV records")]
    NoRecords { name: String },
    #[error("the DNS server answered {code} for {name}")]
    Server { name: String, code: String },
    #[error("DNS lookup of {name} failed: {message}")]
    Transport { name: String, message: String },
    #[error("cannot set up DNS resolution: {0}")]
    Setup(String),
}

impl ResolveError {
    /// The `result` label of `fleet_lookups` for this failure (one of [`LOOKUP_RESULTS`]).
    pub fn label(&self) -> &'static str {
        match self {
            ResolveError::NoRecords { .. } => "no_records",
            ResolveError::Server { .. } => "server_error",
            ResolveError::Transport { .. } => "unreachable",
            ResolveError::Setup(_) => "setup",
        }
    }
}

/// The `result` label of `fleet_lookups` for a lookup that answered.
pub const LOOKUP_OK: &str = crate::telemetry::lookup::OK;
/// Every `result` label of the `fleet_lookups` counter.
pub const LOOKUP_RESULTS: [&str; 5] = crate::telemetry::lookup::RESULTS;

/// The fleet as DNS last described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Collector addresses, `ip:port`, sorted, without duplicates.
    pub members: Vec<String>,
    /// The smallest TTL among the records.
    pub ttl: Duration,
}

/// Looks the fleet up. Each lookup builds its own hickory resolver and drops it after, so a meter
/// holds no socket between lookups (hickory keeps a connection per name server for as long as
/// the resolver lives), and a changed `/etc/resolv.conf` is read at the next lookup.
pub struct FleetResolver {
    /// `fleet.nameservers` (empty: the system's).
    nameservers: Vec<SocketAddr>,
    opts: ResolverOpts,
    name: Name,
    display: String,
    port: u16,
    srv: bool,
}

/// How a single lookup ended.
enum Lookup<T> {
    Found(Vec<T>),
    Missing,
    Failed(ResolveError),
}

impl FleetResolver {
    /// A resolver for `config.name`; `None` when no fleet name is configured.
    pub fn new(config: &FleetConfig) -> Result<Option<Self>, ResolveError> {
        let Some(display) = config.name.clone() else {
            return Ok(None);
        };
        let mut name = Name::from_ascii(&display).map_err(|e| ResolveError::Setup(e.to_string()))?;
        // Fully qualified: no search-list expansion.
        name.set_fqdn(true);
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_millis(config.resolve_timeout_ms);
        opts.attempts = 0;
        // No cache: the meter asks again when the TTL it saw runs out, and wants a fresh answer.
        opts.cache_size = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let resolver = FleetResolver {
            nameservers: config.nameservers.clone(),
            opts,
            name,
            display,
            port: config.port,
            srv: config.srv,
        };
        // Fails now, at start, if the system's DNS configuration cannot be read.
        resolver.build()?;
        Ok(Some(resolver))
    }

    /// A hickory resolver for one lookup.
    fn build(&self) -> Result<TokioResolver, ResolveError> {
        if self.nameservers.is_empty() {
            Resolver::builder_tokio()
                .map_err(|e| ResolveError::Setup(format!("reading the system's DNS configuration: {e}")))?
                .with_options(self.opts.clone())
                .build()
        } else {
            let servers = self
                .nameservers
                .iter()
                .map(|ns| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = ns.port();
                    let mut server = NameServerConfig::udp(ns.ip());
                    server.connections = vec![udp];
                    server
                })
                .collect();
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
            .with_options(self.opts.clone())
            .build()
        }
        .map_err(|e| ResolveError::Setup(e.to_string()))
    }

    /// The fleet name as configured.
    pub fn name(&self) -> &str {
        &self.display
    }

    /// Looks the fleet up once.
    pub async fn resolve(&self) -> Result<Resolved, ResolveError> {
        let resolver = self.build()?;
        let resolver = &resolver;
        let mut members = Vec::new();
        let mut ttl = u32::MAX;
        let mut failure = None;
        match self.addresses(resolver, &self.name).await {
            Lookup::Found(found) => {
                for (ip, t) in found {
                    members.push(SocketAddr::new(ip, self.port).to_string());
                    ttl = ttl.min(t);
                }
            }
            Lookup::Missing => {}
            Lookup::Failed(e) => failure = Some(e),
        }
        if self.srv {
            match self.srv_targets(resolver).await {
                Lookup::Found(targets) => {
                    for (host, port, srv_ttl) in targets {
                        match self.addresses(resolver, &host).await {
                            Lookup::Found(found) => {
                                for (ip, t) in found {
                                    members.push(SocketAddr::new(ip, port).to_string());
                                    ttl = ttl.min(t).min(srv_ttl);
                                }
                            }
                            Lookup::Missing => {}
                            Lookup::Failed(e) => failure = Some(e),
                        }
                    }
                }
                Lookup::Missing => {}
                Lookup::Failed(e) => failure = failure.or(Some(e)),
            }
        }
        // A lookup that failed may have hidden collectors: keep the last complete answer instead
        // of publishing a partial one.
        if let Some(failure) = failure {
            return Err(failure);
        }
        members.sort();
        members.dedup();
        if members.is_empty() {
            return Err(ResolveError::NoRecords {
                name: self.display.clone(),
            });
        }
        Ok(Resolved {
            members,
            ttl: Duration::from_secs(ttl.into()),
        })
    }

    /// A and AAAA records of `name`, with their TTLs.
    async fn addresses(&self, resolver: &TokioResolver, name: &Name) -> Lookup<(IpAddr, u32)> {
        let (v4, v6) = tokio::join!(
            self.lookup(resolver, name, RecordType::A, |d| match d {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                _ => None,
            }),
            self.lookup(resolver, name, RecordType::AAAA, |d| match d {
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            }),
        );
        match (v4, v6) {
            (Lookup::Found(mut a), Lookup::Found(b)) => {
                a.extend(b);
                Lookup::Found(a)
            }
            (Lookup::Found(a), _) | (_, Lookup::Found(a)) => Lookup::Found(a),
            (Lookup::Failed(e), _) | (_, Lookup::Failed(e)) => Lookup::Failed(e),
            (Lookup::Missing, Lookup::Missing) => Lookup::Missing,
        }
    }

    /// SRV records of `_ringflow._udp.NAME`: (host, port, ttl).
    async fn srv_targets(&self, resolver: &TokioResolver) -> Lookup<(Name, u16, u32)> {
        let Ok(srv_name) = Name::from_ascii("_ringflow._udp").and_then(|n| n.append_domain(&self.name))
        else {
            return Lookup::Missing;
        };
        self.lookup(resolver, &srv_name, RecordType::SRV, |d| match d {
            RData::SRV(srv) => Some((srv.target.clone(), srv.port)),
            _ => None,
        })
        .await
        .map(|((host, port), ttl)| (host, port, ttl))
    }

    async fn lookup<T>(
        &self,
        resolver: &TokioResolver,
        name: &Name,
        kind: RecordType,
        pick: impl Fn(&RData) -> Option<T>,
    ) -> Lookup<(T, u32)> {
        match resolver.lookup(name.clone(), kind).await {
            Ok(lookup) => {
                let found: Vec<_> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| pick(&r.data).map(|v| (v, r.ttl)))
                    .collect();
                if found.is_empty() {
                    Lookup::Missing
                } else {
                    Lookup::Found(found)
                }
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(_))) => Lookup::Missing,
            Err(NetError::Dns(DnsError::ResponseCode(code))) if code != ResponseCode::NoError => {
                Lookup::Failed(ResolveError::Server {
                    name: name.to_string(),
                    code: code.to_string(),
                })
            }
            Err(e) => Lookup::Failed(ResolveError::Transport {
                name: name.to_string(),
                message: e.to_string(),
            }),
        }
    }
}

impl<T> Lookup<T> {
    fn map<U>(self, f: impl Fn(T) -> U) -> Lookup<U> {
        match self {
            Lookup::Found(v) => Lookup::Found(v.into_iter().map(f).collect()),
            Lookup::Missing => Lookup::Missing,
            Lookup::Failed(e) => Lookup::Failed(e),
        }
    }
}

/// When to look again after an answer with `ttl`.
pub fn next_refresh(ttl: Duration, config: &FleetConfig) -> Duration {
    ttl.clamp(
        Duration::from_millis(config.refresh_min_ms),
        Duration::from_millis(config.refresh_max_ms),
    )
}

/// Keeps the fleet fresh: looks it up again when the TTL runs out (clamped to the configured
/// bounds), and publishes every successful answer. A failed lookup keeps the last answer and is
/// retried after `refresh_min_ms`.
pub async fn refresh(
    resolver: FleetResolver,
    config: FleetConfig,
    first_wait: std::time::Duration,
    members_tx: watch::Sender<Vec<String>>,
    metrics: std::sync::Arc<MeterMetrics>,
    stop: CancellationToken,
) {
    let _task = metrics.task(crate::telemetry::task::FLEET_DNS);
    let mut wait = first_wait;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            answer = resolver.resolve() => answer,
        };
        match answer {
            Ok(resolved) => {
                FleetRefreshed {
                    fleet: resolver.name(),
                    collectors: resolved.members.len(),
                    recovered: std::mem::take(&mut failing),
                }
                .emit(&metrics);
                members_tx.send_if_modified(|m| {
                    let changed = *m != resolved.members;
                    *m = resolved.members.clone();
                    changed
                });
                wait = next_refresh(resolved.ttl, &config);
            }
            Err(error) => {
                FleetLookupFailed {
                    fleet: resolver.name(),
                    result: error.label(),
                    error: &error,
                    log: !std::mem::replace(&mut failing, true),
                }
                .emit(&metrics);
                wait = Duration::from_millis(config.refresh_min_ms);
            }
        }
    }
}

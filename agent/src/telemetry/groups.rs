//! The meter's metrics, one struct per area, each registering its own metrics.
//!
//! Owns: every metric's name (under the registry's `ringflow_meter` prefix), type and help text.
//! The field of each metric is named after it, so grepping a name exposed on `/metrics` finds
//! the field. Must never: be read back to make a decision (metrics mirror what the meter does;
//! they are not its state), or carry payloads or tokens.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

use super::{CollectorLabel, ReasonLabel, SourceLabel, SourceReasonLabel, TaskLabel};

/// Registers `metric` under `name` and returns it (metrics are handles: the clone registered and
/// the one returned count together).
fn reg<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// Records on their way from the sources to the spool.
pub struct RecordMetrics {
    pub records_generated: Counter,
    /// By [`DropReason`](super::DropReason).
    pub records_dropped: Family<ReasonLabel, Counter>,
    pub batches_built: Counter,
}

impl RecordMetrics {
    pub(super) fn register(r: &mut Registry) -> Self {
        Self {
            records_generated: reg(
                r,
                "records_generated",
                "Records produced by sources",
                Counter::default(),
            ),
            records_dropped: reg(
                r,
                "records_dropped",
                "Records dropped outside the spool's caps, by reason: source_queue_full (the pipeline was behind), record_too_large, seq_unavailable (the state directory failed), spool_write_failed (shutdown while the disk failed), undecodable_spooled; drops at the caps or of damaged segments are spool_dropped_records",
                Family::default(),
            ),
            batches_built: reg(
                r,
                "batches_built",
                "Batches numbered and handed to the spool (splits included)",
                Counter::default(),
            ),
        }
    }
}

/// The disk spool: what went in, what was dropped at its caps, how full it is.
pub struct SpoolMetrics {
    pub spool_accepted_records: Counter,
    pub spool_dropped_batches: Counter,
    pub spool_dropped_records: Counter,
    pub spool_written_bytes: Counter,
    pub spool_bytes: Gauge,
    pub spool_batches: Gauge,
    pub spool_oldest_age_seconds: Gauge,
}

impl SpoolMetrics {
    pub(super) fn register(r: &mut Registry) -> Self {
        Self {
            spool_accepted_records: reg(
                r,
                "spool_accepted_records",
                "Records written to the spool over the meter's whole life (survives restarts)",
                Counter::default(),
            ),
            spool_dropped_batches: reg(
                r,
                "spool_dropped_batches",
                "Batches dropped because the spool was full, over the meter's whole life (survives restarts)",
                Counter::default(),
            ),
            spool_dropped_records: reg(
                r,
                "spool_dropped_records",
                "Records dropped because the spool was full, over the meter's whole life (survives restarts)",
                Counter::default(),
            ),
            spool_written_bytes: reg(
                r,
                "spool_written_bytes",
                "Bytes appended to the spool by this process",
                Counter::default(),
            ),
            spool_bytes: reg(
                r,
                "spool_bytes",
                "Bytes of the spool's segment files",
                Gauge::default(),
            ),
            spool_batches: reg(
                r,
                "spool_batches",
                "Batches in the spool not yet acked",
                Gauge::default(),
            ),
            spool_oldest_age_seconds: reg(
                r,
                "spool_oldest_age_seconds",
                "Age of the oldest batch not yet acked (0 when none)",
                Gauge::default(),
            ),
        }
    }
}

/// Connection attempts and sessions with collectors.
pub struct SessionMetrics {
    /// 1 for the collector of the current session (0 for those of earlier ones).
    pub collector_info: Family<CollectorLabel, Gauge>,
    /// 1 while the meter has a session with a collector, 0 otherwise (from start): what an
    /// alert on a meter not connected reads, since `collector_info` has no series before the
    /// first session. Moved with `collector_info` by `CollectorChanged`.
    pub connected: Gauge,
    pub sessions_started: Counter,
    pub session_ends: Family<ReasonLabel, Counter>,
    pub rejects: Family<ReasonLabel, Counter>,
    pub connect_attempts: Counter,
}

impl SessionMetrics {
    pub(super) fn register(r: &mut Registry) -> Self {
        Self {
            collector_info: reg(
                r,
                "collector_info",
                "1 for the collector of the current session",
                Family::default(),
            ),
            connected: reg(
                r,
                "connected",
                "1 while the meter has a session with a collector, else 0",
                Gauge::default(),
            ),
            sessions_started: reg(
                r,
                "sessions_started",
                "Sessions welcomed by a collector",
                Counter::default(),
            ),
            session_ends: reg(
                r,
                "session_ends",
                "Sessions or attempts that ended, by reason",
                Family::default(),
            ),
            rejects: reg(
                r,
                "rejects",
                "Rejects received from collectors, by reason",
                Family::default(),
            ),
            connect_attempts: reg(
                r,
                "connect_attempts",
                "Connection attempts: sessions, and checks that the first choice answers before moving to it",
                Counter::default(),
            ),
        }
    }
}

/// Batches on the wire: sent, acked, refused, split.
pub struct DeliveryMetrics {
    pub batches_resealed: Counter,
    pub batches_sent: Counter,
    pub batches_acked: Counter,
    pub records_acked: Counter,
    pub batches_nacked: Family<ReasonLabel, Counter>,
    pub records_nacked: Counter,
    /// From writing a batch to the collector's ack of it.
    pub ack_latency_seconds: Histogram,
}

impl DeliveryMetrics {
    pub(super) fn register(r: &mut Registry) -> Self {
        Self {
            batches_resealed: reg(
                r,
                "batches_resealed",
                "Spooled batches split because a collector allows smaller batches than they were built for",
                Counter::default(),
            ),
            batches_sent: reg(
                r,
                "batches_sent",
                "Batch frames written to a collector (resends included)",
                Counter::default(),
            ),
            batches_acked: reg(
                r,
                "batches_acked",
                "Batches a collector acked (stored)",
                Counter::default(),
            ),
            records_acked: reg(r, "records_acked", "Records in acked batches", Counter::default()),
            batches_nacked: reg(
                r,
                "batches_nacked",
                "Batches a collector refused for good (removed from the spool, never resent), by reason",
                Family::default(),
            ),
            records_nacked: reg(
                r,
                "records_nacked",
                "Records in nacked batches",
                Counter::default(),
            ),
            ack_latency_seconds: reg(
                r,
                "ack_latency_seconds",
                "From writing a batch to the collector's ack of it (resends count from the resend)",
                Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            ),
        }
    }
}

/// The fleet as this meter knows it.
pub struct FleetMetrics {
    pub fleet_collectors: Gauge,
    pub fleet_lookups: Family<ReasonLabel, Counter>,
    pub fleet_last_known_good: Counter,
}

impl FleetMetrics {
    pub(super) fn register(r: &mut Registry) -> Self {
        Self {
            fleet_collectors: reg(
                r,
                "fleet_collectors",
                "Collectors on this meter's ring (static, DNS and the last Welcome's fleet view)",
                Gauge::default(),
            ),
            fleet_lookups: reg(
                r,
                "fleet_lookups",
                "DNS lookups of the fleet, by result (ok, no_records, server_error, unreachable)",
                Family::default(),
            ),
            fleet_last_known_good: reg(
                r,
                "fleet_last_known_good",
                "Starts that used the last-known-good fleet because DNS failed",
                Counter::default(),
            ),
        }
    }
}

/// The flow sources, by source.
pub struct SourceMetrics {
    /// Completed reads of a host source's kernel tables (sockets, interfaces).
    pub source_reads: Family<SourceLabel, Counter>,
    /// Packets a listening source received (netflow).
    pub source_packets: Family<SourceLabel, Counter>,
    /// What a source could not read or decode, by source and reason.
    pub source_errors: Family<SourceReasonLabel, Counter>,
    /// Flows (or interfaces, or exporters) a source could not track because its table was full.
    pub source_flows_dropped: Family<SourceLabel, Counter>,
    /// Flows (or interfaces) a source tracks now.
    pub source_flows_tracked: Family<SourceLabel, Gauge>,
}

impl SourceMetrics {
    pub(super) fn register(r: &mut Registry) -> Self {
        Self {
            source_reads: reg(
                r,
                "source_reads",
                "Completed reads of a host source's kernel tables, by source (sockets, interfaces)",
                Family::default(),
            ),
            source_packets: reg(
                r,
                "source_packets",
                "Packets received by a listening source, by source (netflow)",
                Family::default(),
            ),
            source_errors: reg(
                r,
                "source_errors",
                "What a source could not read or decode, by source and reason (netflow: truncated, malformed, unsupported_version, no_template_dropped per datagram, no_init_time per record timed by its export time; sockets: netlink, close_events, snmp; interfaces: read, parse)",
                Family::default(),
            ),
            source_flows_dropped: reg(
                r,
                "source_flows_dropped",
                "Flows, interfaces or exporters a source could not track because its table was at its cap, by source",
                Family::default(),
            ),
            source_flows_tracked: reg(
                r,
                "source_flows_tracked",
                "Flows (sockets) or interfaces a source tracks now, by source",
                Family::default(),
            ),
        }
    }
}

/// The meter's own tasks.
pub struct TaskMetrics {
    pub tasks_active: Family<TaskLabel, Gauge>,
}

impl TaskMetrics {
    pub(super) fn register(r: &mut Registry) -> Self {
        Self {
            tasks_active: reg(r, "tasks_active", "Running tasks, by kind", Family::default()),
        }
    }
}

/// The sockets source's joins of dumps and close notifications, and its completeness.
pub struct SocketMetrics {
    pub sockets_close_events: Counter,
    pub sockets_close_overflows: Counter,
    pub sockets_segments_accounted: Counter,
    pub sockets_host_segments: Counter,
    /// Accounted ÷ host segments over the last interval.
    pub sockets_completeness_ratio: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// 1 for the capture tier in use (`bpf` or `sock_diag`).
    pub sockets_tier: Family<TierLabel, Gauge>,
    pub sockets_bpf_ends: Counter,
    pub sockets_bpf_ends_lost: Counter,
    pub sockets_bpf_packets_untracked: Counter,
    pub sockets_bpf_owners_untracked: Counter,
    pub sockets_bpf_packets_unparsed: Counter,
}

/// `tier`: which capture tier measures the host's sockets.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct TierLabel {
    pub tier: &'static str,
}

impl SocketMetrics {
    pub(super) fn register(r: &mut Registry) -> Self {
        Self {
            sockets_close_events: reg(
                r,
                "sockets_close_events",
                "TCP socket-destroy notifications the sockets source received",
                Counter::default(),
            ),
            sockets_close_overflows: reg(
                r,
                "sockets_close_overflows",
                "Times the kernel dropped destroy notifications because the meter's receive buffer was full (ENOBUFS; each stands for at least one lost notification; sources.sockets.close_buffer_bytes)",
                Counter::default(),
            ),
            sockets_segments_accounted: reg(
                r,
                "sockets_segments_accounted",
                "TCP segments in and out the sockets source accounted for (twice for a connection with both ends on this host, as the host's counters see it)",
                Counter::default(),
            ),
            sockets_host_segments: reg(
                r,
                "sockets_host_segments",
                "The host's TCP segments in and out (/proc/net/snmp Tcp: InSegs + OutSegs) since the sockets source started",
                Counter::default(),
            ),
            sockets_completeness_ratio: reg(
                r,
                "sockets_completeness_ratio",
                "Segments the sockets source accounted for over the host's TCP segments, over its last interval (about 1.0 when it misses nothing)",
                Gauge::default(),
            ),
            sockets_tier: reg(
                r,
                "sockets_tier",
                "1 for the capture tier measuring this host's sockets: bpf (eBPF programs, TCP and UDP) or sock_diag (netlink, TCP)",
                Family::default(),
            ),
            sockets_bpf_ends: reg(
                r,
                "sockets_bpf_ends",
                "Socket ends (a TCP connection closed, a socket released) the BPF programs told",
                Counter::default(),
            ),
            sockets_bpf_ends_lost: reg(
                r,
                "sockets_bpf_ends_lost",
                "Socket ends the BPF programs could not tell because their ring buffer was full (sources.sockets.bpf.ring_bytes); those flows end at a later read",
                Counter::default(),
            ),
            sockets_bpf_packets_untracked: reg(
                r,
                "sockets_bpf_packets_untracked",
                "Packets the BPF programs could not count because their flow map was full (sources.sockets.bpf.max_flows)",
                Counter::default(),
            ),
            sockets_bpf_owners_untracked: reg(
                r,
                "sockets_bpf_owners_untracked",
                "Sockets whose owner the BPF programs could not keep because their owner map was full",
                Counter::default(),
            ),
            sockets_bpf_packets_unparsed: reg(
                r,
                "sockets_bpf_packets_unparsed",
                "Packets of TCP and UDP sockets whose headers the BPF programs could not read (more than two IPv6 extension headers, or a fragment header)",
                Counter::default(),
            ),
        }
    }
}

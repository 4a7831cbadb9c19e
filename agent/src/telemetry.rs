//! The meter's metrics.
//!
//! Owns: one registry per meter instance (`herd` runs many meters in one process), every metric's
//! name and help, and the `changed` signal that lets a caller wait for progress instead of
//! polling. Must never: carry payloads or tokens.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

/// A batch a collector acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckedBatch {
    pub seq: u64,
    pub records: u32,
    /// From writing the batch (its last send) to the ack.
    pub latency: std::time::Duration,
}

/// Told of each acked batch (see [`MeterMetrics::observe_acks`]); runs on the session's task, so
/// it must be quick.
pub type AckObserver = std::sync::Arc<dyn Fn(AckedBatch) + Send + Sync>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CollectorLabel {
    pub collector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceReasonLabel {
    pub source: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabel {
    pub task: &'static str,
}

pub struct MeterMetrics {
    registry: Registry,
    pub records_generated: Counter,
    pub records_dropped: Family<ReasonLabel, Counter>,
    pub batches_built: Counter,
    pub spool_accepted_records: Counter,
    pub spool_dropped_batches: Counter,
    pub spool_dropped_records: Counter,
    pub spool_written_bytes: Counter,
    pub spool_bytes: Gauge,
    pub spool_batches: Gauge,
    pub spool_oldest_age_seconds: Gauge,
    pub collector_info: Family<CollectorLabel, Gauge>,
    pub batches_resealed: Counter,
    pub batches_sent: Counter,
    pub batches_acked: Counter,
    pub records_acked: Counter,
    pub batches_nacked: Family<ReasonLabel, Counter>,
    pub records_nacked: Counter,
    pub sessions_started: Counter,
    pub session_ends: Family<ReasonLabel, Counter>,
    pub rejects: Family<ReasonLabel, Counter>,
    pub connect_attempts: Counter,
    pub fleet_collectors: Gauge,
    pub fleet_lookups: Family<ReasonLabel, Counter>,
    pub fleet_last_known_good: Counter,
    pub tasks_active: Family<TaskLabel, Gauge>,
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
    /// From writing a batch to the collector's ack of it.
    pub ack_latency_seconds: Histogram,
    /// Told of every acked batch, when an embedding asked (`herd`); see [`Self::observe_acks`].
    ack_observer: std::sync::OnceLock<AckObserver>,
    changed: watch::Sender<()>,
    /// The collector of the current session, for tools and tests (not exported).
    connected: std::sync::Mutex<Option<std::sync::Arc<str>>>,
}

impl MeterMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ringflow_meter");
        macro_rules! reg {
            ($name:literal, $help:literal, $metric:expr) => {{
                let m = $metric;
                registry.register($name, $help, m.clone());
                m
            }};
        }
        Self {
            records_generated: reg!(
                "records_generated",
                "Records produced by sources",
                Counter::default()
            ),
            records_dropped: reg!(
                "records_dropped",
                "Records dropped outside the spool's caps, by reason: source_queue_full (the pipeline was behind), record_too_large, seq_unavailable (the state directory failed), spool_write_failed (shutdown while the disk failed), undecodable_spooled; drops at the caps or of damaged segments are spool_dropped_records",
                Family::default()
            ),
            batches_built: reg!(
                "batches_built",
                "Batches numbered and handed to the spool (splits included)",
                Counter::default()
            ),
            spool_accepted_records: reg!(
                "spool_accepted_records",
                "Records written to the spool over the meter's whole life (survives restarts)",
                Counter::default()
            ),
            spool_dropped_batches: reg!(
                "spool_dropped_batches",
                "Batches dropped because the spool was full, over the meter's whole life (survives restarts)",
                Counter::default()
            ),
            spool_dropped_records: reg!(
                "spool_dropped_records",
                "Records dropped because the spool was full, over the meter's whole life (survives restarts)",
                Counter::default()
            ),
            spool_written_bytes: reg!(
                "spool_written_bytes",
                "Bytes appended to the spool by this process",
                Counter::default()
            ),
            spool_bytes: reg!(
                "spool_bytes",
                "Bytes of the spool's segment files",
                Gauge::default()
            ),
            spool_batches: reg!(
                "spool_batches",
                "Batches in the spool not yet acked",
                Gauge::default()
            ),
            spool_oldest_age_seconds: reg!(
                "spool_oldest_age_seconds",
                "Age of the oldest batch not yet acked (0 when none)",
                Gauge::default()
            ),
            collector_info: reg!(
                "collector_info",
                "1 for the collector of the current session",
                Family::default()
            ),
            batches_resealed: reg!(
                "batches_resealed",
                "Spooled batches split because a collector allows smaller batches than they were built for",
                Counter::default()
            ),
            batches_sent: reg!(
                "batches_sent",
                "Batch frames written to a collector (resends included)",
                Counter::default()
            ),
            batches_acked: reg!(
                "batches_acked",
                "Batches a collector acked (stored)",
                Counter::default()
            ),
            records_acked: reg!("records_acked", "Records in acked batches", Counter::default()),
            batches_nacked: reg!(
                "batches_nacked",
                "Batches a collector refused for good (removed from the spool, never resent), by reason",
                Family::default()
            ),
            records_nacked: reg!("records_nacked", "Records in nacked batches", Counter::default()),
            sessions_started: reg!(
                "sessions_started",
                "Sessions welcomed by a collector",
                Counter::default()
            ),
            session_ends: reg!(
                "session_ends",
                "Sessions or attempts that ended, by reason",
                Family::default()
            ),
            rejects: reg!(
                "rejects",
                "Rejects received from collectors, by reason",
                Family::default()
            ),
            connect_attempts: reg!(
                "connect_attempts",
                "Connection attempts: sessions, and checks that the first choice answers before moving to it",
                Counter::default()
            ),
            fleet_collectors: reg!(
                "fleet_collectors",
                "Collectors on this meter's ring (static, DNS and the last Welcome's fleet view)",
                Gauge::default()
            ),
            fleet_lookups: reg!(
                "fleet_lookups",
                "DNS lookups of the fleet, by result (ok, no_records, server_error, unreachable)",
                Family::default()
            ),
            fleet_last_known_good: reg!(
                "fleet_last_known_good",
                "Starts that used the last-known-good fleet because DNS failed",
                Counter::default()
            ),
            tasks_active: reg!("tasks_active", "Running tasks, by kind", Family::default()),
            source_reads: reg!(
                "source_reads",
                "Completed reads of a host source's kernel tables, by source (sockets, interfaces)",
                Family::default()
            ),
            source_packets: reg!(
                "source_packets",
                "Packets received by a listening source, by source (netflow)",
                Family::default()
            ),
            source_errors: reg!(
                "source_errors",
                "What a source could not read or decode, by source and reason (netflow: truncated, malformed, unsupported_version, no_template_dropped; sockets: netlink; interfaces: read, parse)",
                Family::default()
            ),
            source_flows_dropped: reg!(
                "source_flows_dropped",
                "Flows, interfaces or exporters a source could not track because its table was at its cap, by source",
                Family::default()
            ),
            source_flows_tracked: reg!(
                "source_flows_tracked",
                "Flows (sockets) or interfaces a source tracks now, by source",
                Family::default()
            ),
            ack_latency_seconds: reg!(
                "ack_latency_seconds",
                "From writing a batch to the collector's ack of it (resends count from the resend)",
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            ),
            ack_observer: std::sync::OnceLock::new(),
            changed: watch::Sender::new(()),
            connected: std::sync::Mutex::new(None),
            registry,
        }
    }

    /// Sends every batch acked from now on to `observer` as well (once per meter; a second
    /// observer is ignored). For harnesses that need each ack, not a histogram of them.
    pub fn observe_acks(&self, observer: AckObserver) {
        let _ = self.ack_observer.set(observer);
    }

    /// Counts an acked batch: latency histogram, and the observer if there is one.
    pub fn acked(&self, batch: AckedBatch) {
        self.ack_latency_seconds.observe(batch.latency.as_secs_f64());
        if let Some(observer) = self.ack_observer.get() {
            observer(batch);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Wakes everyone waiting on [`changed`](Self::changed): called after acks, nacks, rejects,
    /// session changes, every change of the spool's status and the first fleet lookup.
    pub fn notify(&self) {
        self.changed.send_replace(());
    }
    /// Records the collector of the current session (`None`: not connected) and signals it.
    pub fn set_connected(&self, collector: Option<std::sync::Arc<str>>) {
        let mut current = self.connected.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = current.as_ref() {
            self.collector_info
                .get_or_create(&CollectorLabel {
                    collector: old.to_string(),
                })
                .set(0);
        }
        if let Some(new) = collector.as_ref() {
            self.collector_info
                .get_or_create(&CollectorLabel {
                    collector: new.to_string(),
                })
                .set(1);
        }
        *current = collector;
        drop(current);
        self.notify();
    }

    /// The collector of the current session, if any.
    pub fn connected_to(&self) -> Option<std::sync::Arc<str>> {
        self.connected.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A receiver that is marked changed whenever progress is made.
    pub fn changed(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    pub fn count(family: &Family<ReasonLabel, Counter>, reason: &'static str) -> u64 {
        family.get_or_create(&ReasonLabel { reason }).get()
    }

    pub fn inc(family: &Family<ReasonLabel, Counter>, reason: &'static str) {
        family.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn inc_by(family: &Family<ReasonLabel, Counter>, reason: &'static str, n: u64) {
        family.get_or_create(&ReasonLabel { reason }).inc_by(n);
    }

    /// Counts a running task of kind `task` until the guard is dropped.
    /// Counts `n` errors of `source` for `reason`.
    pub fn source_error(&self, source: &'static str, reason: &'static str, n: u64) {
        self.source_errors
            .get_or_create(&SourceReasonLabel { source, reason })
            .inc_by(n);
    }

    /// A source-labelled counter's value.
    pub fn source_count(family: &Family<SourceLabel, Counter>, source: &'static str) -> u64 {
        family.get_or_create(&SourceLabel { source }).get()
    }

    pub fn task(&self, task: &'static str) -> TaskGuard {
        let gauge = self.tasks_active.get_or_create(&TaskLabel { task }).clone();
        gauge.inc();
        TaskGuard(gauge)
    }
}

impl Default for MeterMetrics {
    fn default() -> Self {
        Self::new()
    }
}

pub struct TaskGuard(Gauge);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

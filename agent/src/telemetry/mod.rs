//! The meter's metrics and its named telemetry events.
//!
//! Owns: one registry per meter instance (`herd` runs many meters in one process), the metric
//! groups registered in it ([`groups`], one struct per area), the label types and the label
//! values (enums and constants, never strings made up at a call site), and the named events
//! ([`events`]) that update a metric and write its log line together. Must never: carry
//! payloads or tokens; hold the meter's state (the progress signal, the current collector and
//! the ack observer are in [`crate::observe`]); be read back to make a decision.

pub mod events;
pub mod groups;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use events::Event;
pub use groups::{
    DeliveryMetrics, FleetMetrics, RecordMetrics, SessionMetrics, SocketMetrics, SourceMetrics, SpoolMetrics,
    TaskMetrics,
};

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

/// Why records were dropped outside the spool's caps: the `reason` of `records_dropped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A source could not hand records on: the pipeline was behind.
    SourceQueueFull,
    /// One record larger than a whole frame.
    RecordTooLarge,
    /// The state directory failed: no seq can be reserved for them.
    SeqUnavailable,
    /// Shutdown while the disk failed: they never reached the spool.
    SpoolWriteFailed,
    /// A spooled batch that does not decode (cannot happen for a frame this meter encoded).
    UndecodableSpooled,
}

impl DropReason {
    pub const fn label(self) -> &'static str {
        match self {
            DropReason::SourceQueueFull => "source_queue_full",
            DropReason::RecordTooLarge => "record_too_large",
            DropReason::SeqUnavailable => "seq_unavailable",
            DropReason::SpoolWriteFailed => "spool_write_failed",
            DropReason::UndecodableSpooled => "undecodable_spooled",
        }
    }
}

/// The `reason` values of `session_ends` the connect loop decides itself (the others are a
/// session error's own label).
pub mod session_end {
    /// The collector's name did not resolve to an address.
    pub const RESOLVE: &str = "resolve";
    /// The meter is stopping.
    pub const SHUTDOWN: &str = "shutdown";
    /// The collector drained the session.
    pub const DRAINED: &str = "drained";
    /// The meter left to move to its first choice.
    pub const MOVED: &str = "moved";
    /// The meter left a collector that stopped acking, for one that answered.
    pub const STALLED: &str = "stalled";
    /// The collector answered `Reject`.
    pub const REJECTED: &str = "rejected";
}

/// The `task` values of `tasks_active`.
/// `source` label values: the name of each host source (what `meter check` and the
/// `source_errors` counter call it).
pub mod source {
    pub const SOCKETS: &str = "sockets";
    pub const INTERFACES: &str = "interfaces";
    pub const NETFLOW: &str = "netflow";
}

/// `result` label values of the `fleet_lookups` counter.
pub mod lookup {
    /// A lookup that answered.
    pub const OK: &str = "ok";
    /// Every `result` label of the `fleet_lookups` counter.
    pub const RESULTS: [&str; 5] = [OK, "no_records", "server_error", "unreachable", "setup"];
}

pub mod task {
    pub const ADMIN_HTTP: &str = "admin_http";
    pub const BATCHER: &str = "batcher";
    pub const CONNECT_LOOP: &str = "connect_loop";
    pub const FLEET_DNS: &str = "fleet_dns";
    pub const SOURCE_INTERFACES: &str = "source_interfaces";
    pub const SOURCE_NETFLOW: &str = "source_netflow";
    pub const SOURCE_SOCKETS: &str = "source_sockets";
    pub const SOURCE_SYNTHETIC: &str = "source_synthetic";
    pub const SPOOL: &str = "spool";
    pub const STOP_WATCH: &str = "stop_watch";
}

/// Every metric of one meter, by area. Shared (in an `Arc`) by every task of the meter.
pub struct MeterMetrics {
    registry: Registry,
    pub records: RecordMetrics,
    pub spool: SpoolMetrics,
    pub sessions: SessionMetrics,
    pub delivery: DeliveryMetrics,
    pub fleet: FleetMetrics,
    pub sources: SourceMetrics,
    pub sockets: SocketMetrics,
    pub tasks: TaskMetrics,
}

impl MeterMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ringflow_meter");
        let r = &mut registry;
        let (records, spool, sessions) = (
            RecordMetrics::register(r),
            SpoolMetrics::register(r),
            SessionMetrics::register(r),
        );
        let (delivery, fleet, tasks, sources) = (
            DeliveryMetrics::register(r),
            FleetMetrics::register(r),
            TaskMetrics::register(r),
            SourceMetrics::register(r),
        );
        let sockets = SocketMetrics::register(r);
        Self {
            registry,
            records,
            spool,
            sessions,
            delivery,
            fleet,
            sources,
            sockets,
            tasks,
        }
    }

    /// The Prometheus (OpenMetrics) text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// A reason-labelled counter's value.
    pub fn count(family: &Family<ReasonLabel, Counter>, reason: &'static str) -> u64 {
        family.get_or_create(&ReasonLabel { reason }).get()
    }

    pub fn inc(family: &Family<ReasonLabel, Counter>, reason: &'static str) {
        family.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn inc_by(family: &Family<ReasonLabel, Counter>, reason: &'static str, n: u64) {
        family.get_or_create(&ReasonLabel { reason }).inc_by(n);
    }

    /// A source-labelled counter's value.
    pub fn source_count(family: &Family<SourceLabel, Counter>, source: &'static str) -> u64 {
        family.get_or_create(&SourceLabel { source }).get()
    }

    /// Counts a running task of kind `task` until the guard is dropped.
    pub fn task(&self, task: &'static str) -> TaskGuard {
        let gauge = self.tasks.tasks_active.get_or_create(&TaskLabel { task }).clone();
        gauge.inc();
        TaskGuard(gauge)
    }
}

impl Default for MeterMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Keeps a task counted in `tasks_active` while it lives.
pub struct TaskGuard(Gauge);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::events::CollectorChanged;
    use super::*;

    #[test]
    fn connected_is_zero_from_start_and_follows_the_current_collector() {
        let m = MeterMetrics::new();
        assert!(m.encode().contains("ringflow_meter_connected 0\n"));
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("c1"), Arc::from("c2"));
        CollectorChanged {
            old: None,
            new: Some(&a),
        }
        .emit(&m);
        assert_eq!(m.sessions.connected.get(), 1);
        CollectorChanged {
            old: Some(&a),
            new: Some(&b),
        }
        .emit(&m);
        assert_eq!(m.sessions.connected.get(), 1);
        CollectorChanged {
            old: Some(&b),
            new: None,
        }
        .emit(&m);
        assert_eq!(m.sessions.connected.get(), 0);
        let text = m.encode();
        assert!(
            text.contains("ringflow_meter_collector_info{collector=\"c2\"} 0"),
            "{text}"
        );
    }
}

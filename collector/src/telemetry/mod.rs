//! The collector's telemetry: its metrics, the named events that move them and write the log
//! line beside them, and log throttling.
//!
//! Owns: one Prometheus registry per collector instance (several collectors can share a process,
//! as in `herd`), every metric's name and help text (grouped by area: [`control`], [`data`],
//! [`runtime`]), every label value ([`labels`]), the events ([`events`]) and [`LogThrottle`].
//! Every metric field is named as its metric (without the `ringflow_collector_` prefix and the
//! `_total` suffix), so grepping a metric's name finds its writers.
//!
//! Must never: put payloads, tokens or unbounded label values (only configured orgs and fixed
//! reasons) into a metric or a log line; be read back by an admission decision (the control
//! plane keeps its own counters and these metrics mirror them).

pub mod control;
pub mod data;
pub mod events;
pub mod labels;
pub mod runtime;
#[cfg(test)]
mod tests;
mod throttle;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

pub use control::{ConnectionMetrics, FleetMetrics, SessionMetrics};
pub use data::{IngestMetrics, OrgCounters, OutputMetrics, QueueMetrics, SinkMetrics, StoreMetrics};
pub use events::{
    BatchNacked, BatchStored, ConnectionRefused, DataStreamClosed, FileWriteFailed, HandshakeFailed,
    HelloRejected, MeterLossReported, PeerPollFailed, SegmentEvicted, SessionEnded, SinkSendFailed,
    StreamFault,
};
pub(crate) use labels::reason;
pub use labels::{
    ConnState, ControlRequest, DropReason, LossKind, OrgKindLabel, OrgLabel, ReasonLabel, RefuseReason,
    RequestLabel, SessionEnd, StateLabel, Task, TaskLabel,
};
pub use runtime::{RuntimeMetrics, TaskGuard};
pub use throttle::LogThrottle;

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;
type F64Gauge = Gauge<f64, std::sync::atomic::AtomicU64>;
type F64Counter = Counter<f64, std::sync::atomic::AtomicU64>;

/// Registers `metric` under `name` and returns it (a clone of a metric handle shares its value).
fn add<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// Every metric a collector exports, by area. One per collector, shared (`Arc`) by every task
/// of both planes and by the admin server, which encodes it.
pub struct CollectorMetrics {
    /// Where every metric below is registered; encoded by [`CollectorMetrics::encode`].
    registry: Registry,
    /// Connections and admission. Written by the accept loop and the connection tasks.
    pub connections: ConnectionMetrics,
    /// `Hello`s answered, sessions open and ended, control latency. Written by the connection
    /// tasks and the admin server.
    pub sessions: SessionMetrics,
    /// Data streams: what came in, acks, nacks, stream errors. Written by the data streams.
    pub ingest: IngestMetrics,
    /// What the sink holds, and what was let go. Written by the sinks, the data streams and the
    /// sink queue.
    pub output: OutputMetrics,
    /// The sink queue. Written by the sink handle and the sink jobs.
    pub queue: QueueMetrics,
    /// The sink's health and remote sends. Written by `SinkHealth` and the sinks.
    pub sink: SinkMetrics,
    /// The file sink's segment store. Written by the file sink.
    pub store: StoreMetrics,
    /// The fleet's bounded load. Written by the peer poll loop.
    pub fleet: FleetMetrics,
    /// Running tasks and the QUIC socket. Written by every task's guard and the UDP probe.
    pub runtime: RuntimeMetrics,
}

impl CollectorMetrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("ringflow_collector");
        Self {
            connections: ConnectionMetrics::register(&mut r),
            sessions: SessionMetrics::register(&mut r),
            ingest: IngestMetrics::register(&mut r),
            output: OutputMetrics::register(&mut r),
            queue: QueueMetrics::register(&mut r),
            sink: SinkMetrics::register(&mut r),
            store: StoreMetrics::register(&mut r),
            runtime: RuntimeMetrics::register(&mut r),
            fleet: FleetMetrics::register(&mut r),
            registry: r,
        }
        .with_known_series_at_zero()
    }

    /// Creates at 0 the series whose label values are known up front (refusals, drops, session
    /// ends, the load and sink `Hello` refusals, control-request latency), so that `rate()`,
    /// `increase()`, the alerts and the dashboards in `monitoring/` see a collector's first
    /// event rather than a series that appears already counting it.
    fn with_known_series_at_zero(self) -> Self {
        for why in RefuseReason::VALUES {
            let _ = self
                .connections
                .connections_refused
                .get_or_create(&reason(why.as_str()));
        }
        for why in DropReason::VALUES {
            let _ = self.output.batches_dropped.get_or_create(&reason(why.as_str()));
        }
        for end in SessionEnd::VALUES {
            let _ = self.sessions.sessions_ended.get_or_create(&reason(end.as_str()));
        }
        for why in labels::hello_reject::AT_START {
            let _ = self.sessions.hello_rejects.get_or_create(&reason(why));
        }
        for request in ControlRequest::VALUES {
            let label = RequestLabel {
                request: request.as_str(),
            };
            let _ = self.sessions.control_request_seconds.get_or_create(&label);
        }
        self
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let out_bytes = self.output.bytes_out.get();
        if out_bytes > 0 {
            self.output
                .ingress_egress_ratio
                .set(self.ingest.ingress_bytes.get() as f64 / out_bytes as f64);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The `connections{state}` gauge of `state`.
    pub fn connection_state(&self, state: ConnState) -> Gauge {
        self.connections.state(state)
    }

    /// Counts a running task of kind `task` until the guard is dropped.
    pub fn task(&self, task: Task) -> TaskGuard {
        self.runtime.task(task)
    }

    /// Per-org `*_in` counters, looked up once per session rather than once per batch.
    pub fn org_counters(&self, org: &str) -> OrgCounters {
        self.ingest.org_counters(org)
    }

    /// Value of a reason-labelled counter (for tests and reports).
    pub fn count(family: &Family<ReasonLabel, Counter>, why: &'static str) -> u64 {
        family.get_or_create(&reason(why)).get()
    }
}

impl Default for CollectorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

//! The collector's metrics and log throttling.
//!
//! Owns: one Prometheus registry per collector instance (several collectors can share a process,
//! as in `herd`), every metric's name and help text, and [`LogThrottle`], which turns a storm of
//! identical errors into one line per interval with a count. Must never: put payloads, tokens or
//! unbounded label values (only configured orgs and fixed reasons) into a metric or a log line.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OrgLabel {
    pub org: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabel {
    pub task: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub request: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn control_latency_histogram() -> Histogram {
    // 50 µs to ~1.6 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

/// A connection's place in its life, as counted by `connections{state}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// QUIC/TLS handshake in progress.
    Handshaking,
    /// Handshake done; waiting for (or judging) the meter's `Hello`.
    AwaitingHello,
    /// Welcomed: a session.
    Session,
    /// Its `Hello` was rejected; waiting for the peer to read the `Reject` and close.
    Closing,
}

impl ConnState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::Handshaking => "handshaking",
            ConnState::AwaitingHello => "awaiting_hello",
            ConnState::Session => "session",
            ConnState::Closing => "closing",
        }
    }
}

pub(crate) fn reason(reason: &'static str) -> ReasonLabel {
    ReasonLabel { reason }
}

/// Every metric a collector exports. Cloning a metric handle shares its value.
pub struct CollectorMetrics {
    registry: Registry,
    pub connections_accepted: Counter,
    pub connections_refused: Family<ReasonLabel, Counter>,
    pub connections_retried: Counter,
    pub connections_open: Gauge,
    pub connections: Family<StateLabel, Gauge>,
    pub handshake_failures: Counter,
    pub handshake_seconds: Histogram,
    pub sessions_active: Gauge,
    pub sessions_welcomed: Counter,
    pub hello_rejects: Family<ReasonLabel, Counter>,
    pub sessions_ended: Family<ReasonLabel, Counter>,
    pub control_request_seconds: HistogramFamily<RequestLabel>,
    pub batches_in: Family<OrgLabel, Counter>,
    pub records_in: Family<OrgLabel, Counter>,
    pub bytes_in: Family<OrgLabel, Counter>,
    pub ingress_bytes: Counter,
    pub frame_bytes: Histogram,
    pub batches_stored: Counter,
    pub records_stored: Counter,
    pub bytes_out: Counter,
    pub org_batches_out: Family<OrgLabel, Counter>,
    pub org_records_out: Family<OrgLabel, Counter>,
    pub org_bytes_out: Family<OrgLabel, Counter>,
    pub ingress_egress_ratio: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub acks_sent: Counter,
    pub nacks: Family<ReasonLabel, Counter>,
    pub stream_errors: Family<ReasonLabel, Counter>,
    pub sink_queue_batches: Gauge,
    pub sink_queue_bytes: Gauge,
    pub sink_seconds: Histogram,
    pub frames_waiting_bytes: Gauge,
    pub buffered_bytes: Gauge,
    pub batches_dropped: Family<ReasonLabel, Counter>,
    pub sink_healthy: Gauge,
    pub sink_write_errors: Counter,
    pub sink_outages: Counter,
    pub sink_outage_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    pub sink_in_flight: Gauge,
    pub sink_ack_seconds: Histogram,
    pub sink_duplicates: Counter,
    pub store_bytes: Gauge,
    pub store_dropped_segments: Counter,
    pub store_dropped_batches: Counter,
    pub store_dropped_records: Counter,
    pub store_dropped_bytes: Counter,
    pub tasks_active: Family<TaskLabel, Gauge>,
    pub udp_receive_buffer_bytes: Gauge,
    pub udp_socket_drops: Gauge,
    pub udp_receive_buffer_errors: Gauge,
    pub fleet_peers: Gauge,
    pub fleet_poll_rounds: Counter,
    pub fleet_poll_failures: Counter,
    pub fleet_mean_sessions: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl CollectorMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ringflow_collector");
        macro_rules! reg {
            ($name:literal, $help:literal, $metric:expr) => {{
                let m = $metric;
                registry.register($name, $help, m.clone());
                m
            }};
        }
        Self {
            connections_accepted: reg!(
                "connections_accepted",
                "Connections admitted to the TLS handshake",
                Counter::default()
            ),
            connections_refused: reg!(
                "connections_refused",
                "Connections refused before the handshake, by reason",
                Family::default()
            ),
            connections_retried: reg!(
                "connections_retried",
                "Connection attempts answered with a stateless QUIC Retry (address validation under load)",
                Counter::default()
            ),
            connections_open: reg!("connections_open", "Connections currently open", Gauge::default()),
            connections: reg!(
                "connections",
                "Connections by state: handshaking, awaiting_hello, session, closing (rejected, waiting for the peer to close)",
                Family::default()
            ),
            handshake_failures: reg!(
                "handshake_failures",
                "QUIC/TLS handshakes that failed or timed out",
                Counter::default()
            ),
            handshake_seconds: reg!(
                "handshake_seconds",
                "Time from accepting a connection to sending Welcome or Reject",
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            ),
            sessions_active: reg!(
                "sessions_active",
                "Sessions that got Welcome and are still connected",
                Gauge::default()
            ),
            sessions_welcomed: reg!(
                "sessions_welcomed",
                "Hellos answered with Welcome",
                Counter::default()
            ),
            hello_rejects: reg!(
                "hello_rejects",
                "Hellos answered with Reject, by reason",
                Family::default()
            ),
            sessions_ended: reg!(
                "sessions_ended",
                "Welcomed sessions that ended, by why: meter_closed, idle_timeout, connection_lost, protocol_violation, bad_control_frame, shutdown",
                Family::default()
            ),
            control_request_seconds: reg!(
                "control_request_seconds",
                "Control-plane request latency, by request: hello (Hello read to Welcome/Reject written), heartbeat, admin (an HTTP request)",
                Family::new_with_constructor(control_latency_histogram as fn() -> Histogram)
            ),
            batches_in: reg!("batches_in", "Batches received, by org", Family::default()),
            records_in: reg!("records_in", "Records received, by org", Family::default()),
            bytes_in: reg!("bytes_in", "Data frame bytes received, by org", Family::default()),
            ingress_bytes: reg!(
                "ingress_bytes",
                "Data frame bytes received, all orgs",
                Counter::default()
            ),
            frame_bytes: reg!(
                "frame_bytes",
                "Size of data frames received; compare with limits.max_frame_bytes to see the limit coming",
                Histogram::new(exponential_buckets(256.0, 2.0, 14))
            ),
            batches_stored: reg!(
                "batches_stored",
                "Batches the sink holds (acked)",
                Counter::default()
            ),
            records_stored: reg!(
                "records_stored",
                "Records the sink holds (acked)",
                Counter::default()
            ),
            bytes_out: reg!(
                "bytes_out",
                "Bytes handed to the sink; bytes_in / bytes_out is the ingress:egress ratio",
                Counter::default()
            ),
            org_batches_out: reg!(
                "org_batches_out",
                "Batches the sink holds (acked), by org",
                Family::default()
            ),
            org_records_out: reg!(
                "org_records_out",
                "Records the sink holds (acked), by org",
                Family::default()
            ),
            org_bytes_out: reg!(
                "org_bytes_out",
                "Bytes handed to the sink and held by it, by org",
                Family::default()
            ),
            ingress_egress_ratio: reg!(
                "ingress_egress_ratio",
                "bytes_in / bytes_out over the collector's life (frames received per byte stored)",
                Gauge::default()
            ),
            acks_sent: reg!("acks_sent", "Ack frames sent", Counter::default()),
            nacks: reg!(
                "nacks",
                "Batches refused for good (Nack), by reason",
                Family::default()
            ),
            stream_errors: reg!(
                "stream_errors",
                "Streams closed because of a protocol violation, by error code",
                Family::default()
            ),
            sink_queue_batches: reg!(
                "sink_queue_batches",
                "Batches waiting for the sink",
                Gauge::default()
            ),
            sink_queue_bytes: reg!("sink_queue_bytes", "Bytes waiting for the sink", Gauge::default()),
            sink_seconds: reg!(
                "sink_seconds",
                "Time from a batch entering the sink queue to the sink settling it (queue wait plus write or publish)",
                Histogram::new(exponential_buckets(0.0001, 2.0, 18))
            ),
            frames_waiting_bytes: reg!(
                "frames_waiting_bytes",
                "Bytes of data frames read and waiting for room in the sink queue",
                Gauge::default()
            ),
            buffered_bytes: reg!(
                "buffered_bytes",
                "Bytes the data plane holds (sink queue plus frames waiting for it), as admission sees it",
                Gauge::default()
            ),
            batches_dropped: reg!(
                "batches_dropped",
                "Batches the collector let go, by reason: nacked (refused for good), sink_stopped (abandoned unacked at shutdown; meters send them again), store_byte_cap (stored, then deleted by sink.file.max_bytes)",
                Family::default()
            ),
            sink_healthy: reg!(
                "sink_healthy",
                "1 when the sink can store batches (its last write succeeded, its server is reachable)",
                Gauge::default()
            ),
            sink_write_errors: reg!(
                "sink_write_errors",
                "Failed sink writes or publishes (retried; nothing is acked until they succeed)",
                Counter::default()
            ),
            sink_outages: reg!(
                "sink_outages",
                "Times the sink went from healthy to unavailable",
                Counter::default()
            ),
            sink_outage_seconds: reg!(
                "sink_outage_seconds",
                "Time spent with the sink unavailable, counted when it recovers",
                Counter::default()
            ),
            sink_in_flight: reg!(
                "sink_in_flight",
                "Batches handed to a remote sink (NATS) and not yet acknowledged by it",
                Gauge::default()
            ),
            sink_ack_seconds: reg!(
                "sink_ack_seconds",
                "Time from handing a batch to a remote sink to its acknowledgement",
                Histogram::new(exponential_buckets(0.0001, 2.0, 18))
            ),
            sink_duplicates: reg!(
                "sink_duplicates",
                "Batches the sink recognised as already stored (JetStream Nats-Msg-Id de-duplication)",
                Counter::default()
            ),
            store_bytes: reg!("store_bytes", "Bytes of all segment files", Gauge::default()),
            store_dropped_segments: reg!(
                "store_dropped_segments",
                "Segments deleted by the byte cap (sink.file.max_bytes)",
                Counter::default()
            ),
            store_dropped_batches: reg!(
                "store_dropped_batches",
                "Batches in segments deleted by the byte cap",
                Counter::default()
            ),
            store_dropped_records: reg!(
                "store_dropped_records",
                "Records in segments deleted by the byte cap",
                Counter::default()
            ),
            store_dropped_bytes: reg!(
                "store_dropped_bytes",
                "Bytes of segments deleted by the byte cap",
                Counter::default()
            ),
            tasks_active: reg!(
                "tasks_active",
                "Spawned tasks and threads currently running, by kind",
                Family::default()
            ),
            udp_receive_buffer_bytes: reg!(
                "udp_receive_buffer_bytes",
                "Receive buffer the kernel granted the QUIC socket (Linux reports twice the usable size)",
                Gauge::default()
            ),
            udp_socket_drops: reg!(
                "udp_socket_drops",
                "Datagrams the kernel dropped on the QUIC socket (its receive buffer was full), from /proc/net/udp",
                Gauge::default()
            ),
            udp_receive_buffer_errors: reg!(
                "udp_receive_buffer_errors",
                "UDP receive-buffer errors of the whole host (RcvbufErrors of Udp and Udp6 in /proc/net/snmp*)",
                Gauge::default()
            ),
            fleet_peers: reg!(
                "fleet_peers",
                "Peers that answered the last load poll (bounded load), this collector not included",
                Gauge::default()
            ),
            fleet_poll_rounds: reg!(
                "fleet_poll_rounds",
                "Load poll rounds completed (every fleet.load_poll_ms while bounded load is on and peers are configured)",
                Counter::default()
            ),
            fleet_poll_failures: reg!(
                "fleet_poll_failures",
                "Load polls of a peer that failed: no connection, no answer in time, or not a load report",
                Counter::default()
            ),
            fleet_mean_sessions: reg!(
                "fleet_mean_sessions",
                "The fleet's mean sessions per collector as estimated after the last load poll (this collector alone while no peer is known)",
                Gauge::default()
            ),
            registry,
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let out_bytes = self.bytes_out.get();
        if out_bytes > 0 {
            self.ingress_egress_ratio
                .set(self.ingress_bytes.get() as f64 / out_bytes as f64);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn refused(&self, why: &'static str) {
        self.connections_refused.get_or_create(&reason(why)).inc();
    }

    pub fn rejected(&self, why: &'static str) {
        self.hello_rejects.get_or_create(&reason(why)).inc();
    }

    /// Counts a batch the sink now holds: totals and the org's.
    pub fn stored(&self, org: &str, records: u32, bytes: usize) {
        self.batches_stored.inc();
        self.records_stored.inc_by(u64::from(records));
        self.bytes_out.inc_by(bytes as u64);
        let label = OrgLabel { org: org.to_owned() };
        self.org_batches_out.get_or_create(&label).inc();
        self.org_records_out
            .get_or_create(&label)
            .inc_by(u64::from(records));
        self.org_bytes_out.get_or_create(&label).inc_by(bytes as u64);
    }

    pub fn dropped(&self, why: &'static str, batches: u64) {
        self.batches_dropped.get_or_create(&reason(why)).inc_by(batches);
    }

    /// Times one control-plane request.
    pub fn control_request(&self, request: &'static str, seconds: f64) {
        self.control_request_seconds
            .get_or_create(&RequestLabel { request })
            .observe(seconds);
    }

    /// What admission counts as buffered: the sink queue and frames waiting for it.
    pub fn buffered_bytes(&self) -> u64 {
        let bytes = self.sink_queue_bytes.get() + self.frames_waiting_bytes.get();
        self.buffered_bytes.set(bytes);
        bytes.max(0) as u64
    }

    /// Handshakes in flight: connections not yet answered with Welcome or Reject.
    pub fn handshakes_in_flight(&self) -> usize {
        let n = self.connection_state(ConnState::Handshaking).get()
            + self.connection_state(ConnState::AwaitingHello).get();
        n.max(0) as usize
    }

    pub fn connection_state(&self, state: ConnState) -> Gauge {
        self.connections
            .get_or_create(&StateLabel {
                state: state.as_str(),
            })
            .clone()
    }

    pub fn nacked(&self, why: &'static str) {
        self.nacks.get_or_create(&reason(why)).inc();
    }

    pub fn stream_error(&self, code: ringflow_proto::codes::StreamCode) {
        self.stream_errors.get_or_create(&reason(code.as_str())).inc();
    }

    /// Counts a running task of kind `task` until the guard is dropped.
    pub fn task(&self, task: &'static str) -> TaskGuard {
        let gauge = self.tasks_active.get_or_create(&TaskLabel { task }).clone();
        gauge.inc();
        TaskGuard(gauge)
    }

    /// Per-org counters, looked up once per session rather than once per batch.
    pub fn org_counters(&self, org: &str) -> OrgCounters {
        let label = OrgLabel { org: org.to_owned() };
        OrgCounters {
            batches: self.batches_in.get_or_create(&label).clone(),
            records: self.records_in.get_or_create(&label).clone(),
            bytes: self.bytes_in.get_or_create(&label).clone(),
            all_bytes: self.ingress_bytes.clone(),
        }
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

pub struct OrgCounters {
    pub batches: Counter,
    pub records: Counter,
    bytes: Counter,
    all_bytes: Counter,
}

impl OrgCounters {
    pub fn received_bytes(&self, n: u64) {
        self.bytes.inc_by(n);
        self.all_bytes.inc_by(n);
    }
}

/// Decrements its task gauge when dropped.
pub struct TaskGuard(Gauge);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Rate limit for repeated log lines: the first occurrence of a key is logged, then at most one
/// line per `interval`, carrying how many were suppressed in between. Sans-IO: time is passed in.
#[derive(Debug)]
pub struct LogThrottle {
    interval: Duration,
    /// Bounded: at most `max_keys` keys are tracked; past that, new keys share one slot.
    max_keys: usize,
    keys: Mutex<HashMap<String, (Instant, u64)>>,
}

impl LogThrottle {
    pub fn new(interval: Duration, max_keys: usize) -> Self {
        Self {
            interval,
            max_keys,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(suppressed)` if a line for `key` should be logged now (`suppressed` lines were
    /// dropped since the last one), `None` if it should be dropped.
    pub fn check(&self, key: &str, now: Instant) -> Option<u64> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let key = if keys.len() >= self.max_keys && !keys.contains_key(key) {
            "(other)"
        } else {
            key
        };
        match keys.get_mut(key) {
            Some((last, suppressed)) if now.duration_since(*last) < self.interval => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                *last = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                keys.insert(key.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_logs_first_then_once_per_interval_with_a_count() {
        let t = LogThrottle::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        assert_eq!(t.check("auth", t0), Some(0));
        for i in 1..=5 {
            assert_eq!(t.check("auth", t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(t.check("auth", t0 + Duration::from_secs(11)), Some(5));
        assert_eq!(t.check("other-key", t0), Some(0), "keys are independent");
        // Past max_keys, new keys share one slot instead of growing the map.
        assert_eq!(t.check("k3", t0), Some(0));
        assert_eq!(t.check("k4", t0), None);
    }

    #[test]
    fn metrics_encode_with_their_prefix() {
        let m = CollectorMetrics::new();
        m.refused("max_connections");
        m.org_counters("acme").batches.inc();
        let text = m.encode();
        assert!(
            text.contains("ringflow_collector_connections_refused_total{reason=\"max_connections\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ringflow_collector_batches_in_total{org=\"acme\"} 1"),
            "{text}"
        );
    }
}

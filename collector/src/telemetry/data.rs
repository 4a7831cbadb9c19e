//! The data plane's metric groups: data streams, what the sink holds, the sink queue, the sink's
//! health, the file sink's segment store.
//!
//! Owns: each group's fields, names and help texts, and the short function that registers them.
//! Must never: be read back by an admission decision (the data plane counts its buffered bytes
//! itself; `buffered_bytes` only mirrors that count).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::labels::{DropReason, LossKind, OrgKindLabel, OrgLabel, ReasonLabel, reason};
use super::{F64Counter, F64Gauge, add};

/// Data streams: frames and batches received, acks and nacks sent, streams closed.
pub struct IngestMetrics {
    /// `batches_in{org}`: batches received. Written by data streams (through [`OrgCounters`]).
    pub batches_in: Family<OrgLabel, Counter>,
    /// `records_in{org}`: records received. Written by data streams (through [`OrgCounters`]).
    pub records_in: Family<OrgLabel, Counter>,
    /// `bytes_in{org}`: data frame bytes received. Written by data streams (through [`OrgCounters`]).
    pub bytes_in: Family<OrgLabel, Counter>,
    /// `ingress_bytes`: data frame bytes received, all orgs. Written with `bytes_in`.
    pub ingress_bytes: Counter,
    /// `columnar_batches_in`: batches accepted whose records came as columns, all orgs (the
    /// rest of `batches_in` came as rows). Written by data streams.
    pub columnar_batches_in: Counter,
    /// `frame_bytes`: size of each data frame received. Written by data streams.
    pub frame_bytes: Histogram,
    /// `max_frame_bytes`: the largest data frame accepted (`limits.max_frame_bytes`, lowered if
    /// the sink cannot take batches that large), so `frame_bytes` can be read against it. Set at
    /// start by the lifecycle.
    pub max_frame_bytes: Gauge,
    /// `acks_sent`: cumulative `Ack` frames sent. Written by data streams.
    pub acks_sent: Counter,
    /// `nacks{reason}`: batches refused for good, by nack reason. Written by data streams through
    /// `BatchNacked`.
    pub nacks: Family<ReasonLabel, Counter>,
    /// `stream_errors{reason}`: streams closed for a protocol violation, by stream code. Written
    /// by data streams through `DataStreamClosed`.
    pub stream_errors: Family<ReasonLabel, Counter>,
    /// `meter_loss{org,kind}`: what meters reported they failed to measure, summed from the
    /// batches accepted. Written by data streams (through [`OrgCounters`], `MeterLossReported`).
    pub meter_loss: Family<OrgKindLabel, Counter>,
}

impl IngestMetrics {
    pub(super) fn register(r: &mut Registry) -> Self {
        Self {
            batches_in: add(r, "batches_in", "Batches received, by org", Family::default()),
            records_in: add(r, "records_in", "Records received, by org", Family::default()),
            bytes_in: add(
                r,
                "bytes_in",
                "Data frame bytes received, by org",
                Family::default(),
            ),
            ingress_bytes: add(
                r,
                "ingress_bytes",
                "Data frame bytes received, all orgs",
                Counter::default(),
            ),
            columnar_batches_in: add(
                r,
                "columnar_batches_in",
                "Batches accepted whose records came as columns (FlowBatch.columns), all orgs; the rest of batches_in came as rows",
                Counter::default(),
            ),
            frame_bytes: add(
                r,
                "frame_bytes",
                "Size of data frames received; compare with limits.max_frame_bytes to see the limit coming",
                Histogram::new(exponential_buckets(256.0, 2.0, 14)),
            ),
            max_frame_bytes: add(
                r,
                "max_frame_bytes",
                "The largest data frame accepted (limits.max_frame_bytes, lowered if the sink cannot take batches that large)",
                Gauge::default(),
            ),
            acks_sent: add(r, "acks_sent", "Ack frames sent", Counter::default()),
            nacks: add(
                r,
                "nacks",
                "Batches refused for good (Nack), by reason",
                Family::default(),
            ),
            stream_errors: add(
                r,
                "stream_errors",
                "Streams closed because of a protocol violation, by error code",
                Family::default(),
            ),
            meter_loss: add(
                r,
                "meter_loss",
                "What meters reported they failed to measure, from the batches accepted, by org and kind: close_events_lost (kernel close notifications lost), flows_untracked (a flow table was full), records_dropped (the meter's pipeline was full), packets_untracked (the meter's eBPF flow map was full)",
                Family::default(),
            ),
        }
    }

    /// Per-org counters, looked up once per session rather than once per batch.
    pub fn org_counters(&self, org: &str) -> OrgCounters {
        let label = OrgLabel { org: org.to_owned() };
        OrgCounters {
            batches: self.batches_in.get_or_create(&label).clone(),
            records: self.records_in.get_or_create(&label).clone(),
            bytes: self.bytes_in.get_or_create(&label).clone(),
            all_bytes: self.ingress_bytes.clone(),
            loss: LossKind::ALL.map(|kind| {
                let label = OrgKindLabel {
                    org: org.to_owned(),
                    kind: kind.as_str(),
                };
                self.meter_loss.get_or_create(&label).clone()
            }),
        }
    }
}

/// One org's `*_in` counters, held by its session's data streams.
pub struct OrgCounters {
    /// `batches_in{org}`.
    pub batches: Counter,
    /// `records_in{org}`.
    pub records: Counter,
    /// `bytes_in{org}`, moved with `ingress_bytes` by [`OrgCounters::received_bytes`].
    bytes: Counter,
    /// `ingress_bytes`.
    all_bytes: Counter,
    /// `meter_loss{org,kind}`, in [`LossKind::ALL`] order; moved by `MeterLossReported`.
    pub(super) loss: [Counter; LossKind::ALL.len()],
}

impl OrgCounters {
    pub fn received_bytes(&self, n: u64) {
        self.bytes.inc_by(n);
        self.all_bytes.inc_by(n);
    }

    /// The org's `meter_loss` counter of `kind`.
    pub fn loss(&self, kind: LossKind) -> &Counter {
        let i = LossKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        &self.loss[i]
    }
}

/// What the sink holds (acked) and what the collector let go.
pub struct OutputMetrics {
    /// `batches_stored`: batches the sink holds. Written by every sink through `BatchStored`.
    pub batches_stored: Counter,
    /// `records_stored`: records the sink holds. Written with `batches_stored`.
    pub records_stored: Counter,
    /// `bytes_out`: bytes the sink holds. Written with `batches_stored`.
    pub bytes_out: Counter,
    /// `org_batches_out{org}`. Written with `batches_stored`.
    pub org_batches_out: Family<OrgLabel, Counter>,
    /// `org_records_out{org}`. Written with `batches_stored`.
    pub org_records_out: Family<OrgLabel, Counter>,
    /// `org_bytes_out{org}`. Written with `batches_stored`.
    pub org_bytes_out: Family<OrgLabel, Counter>,
    /// `ingress_egress_ratio`: `ingress_bytes / bytes_out`, set when `/metrics` is encoded.
    pub ingress_egress_ratio: F64Gauge,
    /// `batches_dropped{reason}`: batches let go, by [`DropReason`]. Written by data streams
    /// (nacked), the sink queue (sink_stopped) and the file sink (store_byte_cap).
    pub batches_dropped: Family<ReasonLabel, Counter>,
}

impl OutputMetrics {
    pub(super) fn register(r: &mut Registry) -> Self {
        Self {
            batches_stored: add(
                r,
                "batches_stored",
                "Batches the sink holds (acked)",
                Counter::default(),
            ),
            records_stored: add(
                r,
                "records_stored",
                "Records the sink holds (acked)",
                Counter::default(),
            ),
            bytes_out: add(
                r,
                "bytes_out",
                "Bytes handed to the sink; bytes_in / bytes_out is the ingress:egress ratio",
                Counter::default(),
            ),
            org_batches_out: add(
                r,
                "org_batches_out",
                "Batches the sink holds (acked), by org",
                Family::default(),
            ),
            org_records_out: add(
                r,
                "org_records_out",
                "Records the sink holds (acked), by org",
                Family::default(),
            ),
            org_bytes_out: add(
                r,
                "org_bytes_out",
                "Bytes handed to the sink and held by it, by org",
                Family::default(),
            ),
            ingress_egress_ratio: add(
                r,
                "ingress_egress_ratio",
                "bytes_in / bytes_out over the collector's life (frames received per byte stored)",
                Gauge::default(),
            ),
            batches_dropped: add(
                r,
                "batches_dropped",
                "Batches the collector let go, by reason: nacked (refused for good), sink_stopped (abandoned unacked at shutdown; meters send them again), store_byte_cap (stored, then deleted by sink.file.max_bytes)",
                Family::default(),
            ),
        }
    }

    /// Counts `batches` let go for `why`.
    pub fn dropped(&self, why: DropReason, batches: u64) {
        self.batches_dropped
            .get_or_create(&reason(why.as_str()))
            .inc_by(batches);
    }
}

/// The sink queue: what the data plane holds for the sink, and how long the sink takes.
pub struct QueueMetrics {
    /// `sink_queue_batches`: batches in the sink queue. Moved by the sink handle's queue slots.
    pub sink_queue_batches: Gauge,
    /// `sink_queue_bytes`: bytes in the sink queue. Moved with `sink_queue_batches`.
    pub sink_queue_bytes: Gauge,
    /// `sink_queue_max_batches`: the queue's bound by count (`sink.queue_batches`). Set when the
    /// queue is made.
    pub sink_queue_max_batches: Gauge,
    /// `sink_queue_max_bytes`: the queue's bound by bytes (`sink.queue_bytes`). Set when the
    /// queue is made.
    pub sink_queue_max_bytes: Gauge,
    /// `sink_seconds`: queue entry to settlement. Written when a sink job completes.
    pub sink_seconds: Histogram,
    /// `frames_waiting_bytes`: bytes of frames waiting for room in the sink queue. Moved by the
    /// sink handle while a submit waits.
    pub frames_waiting_bytes: Gauge,
    /// `buffered_bytes`: what admission counts as buffered, mirrored when `/metrics` is read.
    pub buffered_bytes: Gauge,
}

impl QueueMetrics {
    pub(super) fn register(r: &mut Registry) -> Self {
        Self {
            sink_queue_batches: add(
                r,
                "sink_queue_batches",
                "Batches waiting for the sink",
                Gauge::default(),
            ),
            sink_queue_bytes: add(
                r,
                "sink_queue_bytes",
                "Bytes waiting for the sink",
                Gauge::default(),
            ),
            sink_queue_max_batches: add(
                r,
                "sink_queue_max_batches",
                "Batches the sink queue holds at most (sink.queue_batches)",
                Gauge::default(),
            ),
            sink_queue_max_bytes: add(
                r,
                "sink_queue_max_bytes",
                "Bytes the sink queue holds at most (sink.queue_bytes)",
                Gauge::default(),
            ),
            sink_seconds: add(
                r,
                "sink_seconds",
                "Time from a batch entering the sink queue to the sink settling it (queue wait plus write or publish)",
                Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            ),
            frames_waiting_bytes: add(
                r,
                "frames_waiting_bytes",
                "Bytes of data frames read and waiting for room in the sink queue",
                Gauge::default(),
            ),
            buffered_bytes: add(
                r,
                "buffered_bytes",
                "Bytes the data plane holds (sink queue plus frames waiting for it), as admission sees it",
                Gauge::default(),
            ),
        }
    }
}

/// The sink's health and, for a remote sink, its in-flight sends.
pub struct SinkMetrics {
    /// `sink_healthy`: 1 while the sink can store. Written by `SinkHealth`.
    pub sink_healthy: Gauge,
    /// `sink_write_errors`: failed writes or sends (retried). Written by the sinks through
    /// `FileWriteFailed` and `SinkSendFailed`.
    pub sink_write_errors: Counter,
    /// `sink_outages`: healthy → unavailable transitions. Written by `SinkHealth`.
    pub sink_outages: Counter,
    /// `sink_outage_seconds`: time unavailable, added when the sink recovers. Written by `SinkHealth`.
    pub sink_outage_seconds: F64Counter,
    /// `sink_in_flight`: batches handed to a remote sink, not yet acknowledged. Written by the
    /// remote sinks' pipeline.
    pub sink_in_flight: Gauge,
    /// `sink_ack_seconds`: hand-off to a remote sink to its acknowledgement. Written by the pipeline.
    pub sink_ack_seconds: Histogram,
    /// `sink_duplicates`: batches the sink recognised as already stored. Written by the NATS sink.
    pub sink_duplicates: Counter,
}

impl SinkMetrics {
    pub(super) fn register(r: &mut Registry) -> Self {
        Self {
            sink_healthy: add(
                r,
                "sink_healthy",
                "1 when the sink can store batches (its last write succeeded, its server is reachable)",
                Gauge::default(),
            ),
            sink_write_errors: add(
                r,
                "sink_write_errors",
                "Failed sink writes or publishes (retried; nothing is acked until they succeed)",
                Counter::default(),
            ),
            sink_outages: add(
                r,
                "sink_outages",
                "Times the sink went from healthy to unavailable",
                Counter::default(),
            ),
            sink_outage_seconds: add(
                r,
                "sink_outage_seconds",
                "Time spent with the sink unavailable, counted when it recovers",
                Counter::default(),
            ),
            sink_in_flight: add(
                r,
                "sink_in_flight",
                "Batches handed to a remote sink (NATS) and not yet acknowledged by it",
                Gauge::default(),
            ),
            sink_ack_seconds: add(
                r,
                "sink_ack_seconds",
                "Time from handing a batch to a remote sink to its acknowledgement",
                Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            ),
            sink_duplicates: add(
                r,
                "sink_duplicates",
                "Batches the sink recognised as already stored (JetStream Nats-Msg-Id de-duplication)",
                Counter::default(),
            ),
        }
    }
}

/// The file sink's segment store.
pub struct StoreMetrics {
    /// `store_bytes`: bytes of all segment files. Set by the file sink after each write.
    pub store_bytes: Gauge,
    /// `store_max_bytes`: the store's byte cap (`sink.file.max_bytes`); 0 with another sink.
    /// Set by the file sink when it starts.
    pub store_max_bytes: Gauge,
    /// `store_dropped_segments`: segments deleted by the byte cap. Written through `SegmentEvicted`.
    pub store_dropped_segments: Counter,
    /// `store_dropped_batches`: batches in those segments. Written through `SegmentEvicted`.
    pub store_dropped_batches: Counter,
    /// `store_dropped_records`: records in those segments. Written through `SegmentEvicted`.
    pub store_dropped_records: Counter,
    /// `store_dropped_bytes`: bytes of those segments. Written through `SegmentEvicted`.
    pub store_dropped_bytes: Counter,
}

impl StoreMetrics {
    pub(super) fn register(r: &mut Registry) -> Self {
        Self {
            store_bytes: add(r, "store_bytes", "Bytes of all segment files", Gauge::default()),
            store_max_bytes: add(
                r,
                "store_max_bytes",
                "The segment store's byte cap (sink.file.max_bytes), past which its oldest segments are deleted; 0 when the sink is not the file sink",
                Gauge::default(),
            ),
            store_dropped_segments: add(
                r,
                "store_dropped_segments",
                "Segments deleted by the byte cap (sink.file.max_bytes)",
                Counter::default(),
            ),
            store_dropped_batches: add(
                r,
                "store_dropped_batches",
                "Batches in segments deleted by the byte cap",
                Counter::default(),
            ),
            store_dropped_records: add(
                r,
                "store_dropped_records",
                "Records in segments deleted by the byte cap",
                Counter::default(),
            ),
            store_dropped_bytes: add(
                r,
                "store_dropped_bytes",
                "Bytes of segments deleted by the byte cap",
                Counter::default(),
            ),
        }
    }
}

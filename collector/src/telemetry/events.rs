//! Named telemetry events: each one moves its metrics and writes its log line together, so a
//! counter and the line an operator reads beside it cannot drift apart.
//!
//! Owns: the events' metric updates, log messages, log fields and throttle keys. Must never:
//! log a payload, a token or an unbounded claimed value unescaped (claimed values go through
//! [`loggable`]), or log a storm: a repeated failure goes through the caller's [`LogThrottle`].

use std::fmt::Display;
use std::net::SocketAddr;

use ringflow_proto::codes::StreamCode;
use ringflow_proto::pb;
use tokio::time::Instant;
use tracing::{debug, error, warn};

use super::data::OrgCounters;
use super::labels::{DropReason, LossKind, OrgLabel, RefuseReason, SessionEnd, reason};
use super::{CollectorMetrics, LogThrottle};

/// A connection attempt refused before the handshake by the admission budgets. Logged (per
/// reason, throttled) unless the collector is draining, which refuses everything on purpose.
pub struct ConnectionRefused<'a> {
    pub reason: RefuseReason,
    /// The load the decision saw.
    pub connections: usize,
    pub handshakes: usize,
    pub buffered_bytes: u64,
    pub log: &'a LogThrottle,
    pub now: Instant,
}

impl ConnectionRefused<'_> {
    pub fn emit(self, m: &CollectorMetrics) {
        m.connections.refused(self.reason);
        if self.reason == RefuseReason::Draining {
            return;
        }
        if let Some(suppressed) = self.log.check(self.reason.as_str(), self.now) {
            warn!(
                reason = self.reason.as_str(),
                connections = self.connections,
                handshakes = self.handshakes,
                buffered_bytes = self.buffered_bytes,
                suppressed,
                "refusing new connections: over the admission budget"
            );
        }
    }
}

/// A TLS handshake that did not complete (logged at debug: a client's problem, not ours).
pub enum HandshakeFailed<'a> {
    /// The handshake failed.
    Failed(&'a dyn Display),
    /// It did not finish within `limits.handshake_timeout_ms`.
    TimedOut,
    /// quinn could not start it.
    NotAccepted(&'a dyn Display),
}

impl HandshakeFailed<'_> {
    pub fn emit(self, m: &CollectorMetrics) {
        m.connections.handshake_failures.inc();
        match self {
            HandshakeFailed::Failed(error) => debug!(%error, "handshake failed"),
            HandshakeFailed::TimedOut => debug!("handshake timed out"),
            HandshakeFailed::NotAccepted(error) => debug!(%error, "connection could not be accepted"),
        }
    }
}

/// A `Hello` answered with `Reject`, logged per reason through the throttle.
pub struct HelloRejected<'a> {
    /// The `hello_rejects` label value, also the throttle key.
    pub reason: &'static str,
    /// What the meter claimed (unauthenticated: escaped and bounded before it is logged).
    pub claimed_org: &'a str,
    pub meter_id: &'a str,
    /// What the meter is told.
    pub message: &'a str,
    pub log: &'a LogThrottle,
}

impl HelloRejected<'_> {
    pub fn emit(self, m: &CollectorMetrics) {
        m.sessions.rejected(self.reason);
        if let Some(suppressed) = self.log.check(self.reason, Instant::now()) {
            warn!(
                reason = self.reason,
                claimed_org = %loggable(self.claimed_org),
                meter_id = %loggable(self.meter_id),
                suppressed,
                "rejected hello: {}",
                self.message
            );
        }
    }
}

/// A claimed (unauthenticated) value made safe for a log line: bounded and escaped.
pub fn loggable(claimed: &str) -> String {
    let mut s: String = claimed.chars().take(64).collect();
    if claimed.len() > s.len() {
        s.push('…');
    }
    format!("{s:?}")
}

/// A welcomed session ended.
pub struct SessionEnded<'a> {
    pub end: SessionEnd,
    /// The session's span (the event is written after the session's work is done).
    pub span: &'a tracing::Span,
}

impl SessionEnded<'_> {
    pub fn emit(self, m: &CollectorMetrics) {
        m.sessions
            .sessions_ended
            .get_or_create(&reason(self.end.as_str()))
            .inc();
        debug!(parent: self.span, end = self.end.as_str(), "session ended");
    }
}

/// A data stream closed with a stream error code.
pub struct DataStreamClosed<'a> {
    pub code: StreamCode,
    pub cause: StreamFault<'a>,
}

/// What closed a data stream.
pub enum StreamFault<'a> {
    /// A frame could not be read (logged at debug: the meter's connection, not our data).
    Unreadable(&'a dyn Display),
    /// A frame was read and judged a protocol violation.
    Judged(&'a str),
}

impl DataStreamClosed<'_> {
    pub fn emit(self, m: &CollectorMetrics) {
        m.ingest
            .stream_errors
            .get_or_create(&reason(self.code.as_str()))
            .inc();
        let code = self.code.as_str();
        match self.cause {
            StreamFault::Unreadable(error) => debug!(%error, code, "closing data stream"),
            StreamFault::Judged(message) => warn!(code, %message, "closing data stream"),
        }
    }
}

/// A batch refused for good: its `Nack` is being sent. (Logged where it is judged.)
pub struct BatchNacked {
    pub reason: pb::NackReason,
}

impl BatchNacked {
    pub fn emit(self, m: &CollectorMetrics) {
        let label = reason(ringflow_proto::names::nack_reason(self.reason));
        m.ingest.nacks.get_or_create(&label).inc();
        m.output.dropped(DropReason::Nacked, 1);
    }
}

/// An accepted batch in which its meter reports what it failed to measure (`FlowBatch.loss`):
/// summed per org and kind in `meter_loss`. Logged at debug only: the counter is what an
/// operator watches, and a meter that loses records reports it in batch after batch.
pub struct MeterLossReported<'a> {
    pub loss: &'a pb::MeasurementLoss,
    pub meter_id: &'a str,
    pub seq: u64,
}

impl MeterLossReported<'_> {
    /// Moves the session org's counters (looked up once per session).
    pub fn emit(self, org: &OrgCounters) {
        for kind in LossKind::ALL {
            let n = kind.of(self.loss);
            if n > 0 {
                org.loss(kind).inc_by(n);
            }
        }
        debug!(
            meter_id = %self.meter_id,
            seq = self.seq,
            close_events_lost = self.loss.close_events_lost,
            flows_untracked = self.loss.flows_untracked,
            records_dropped = self.loss.records_dropped,
            packets_untracked = self.loss.packets_untracked,
            "meter reports measurement loss"
        );
    }
}

/// A batch the sink now holds: the totals and the org's.
pub struct BatchStored<'a> {
    pub org: &'a str,
    pub records: u32,
    pub bytes: usize,
}

impl BatchStored<'_> {
    pub fn emit(self, m: &CollectorMetrics) {
        let o = &m.output;
        let (records, bytes) = (u64::from(self.records), self.bytes as u64);
        o.batches_stored.inc();
        o.records_stored.inc_by(records);
        o.bytes_out.inc_by(bytes);
        let label = OrgLabel {
            org: self.org.to_owned(),
        };
        o.org_batches_out.get_or_create(&label).inc();
        o.org_records_out.get_or_create(&label).inc_by(records);
        o.org_bytes_out.get_or_create(&label).inc_by(bytes);
    }
}

/// A segment the file store deleted at its byte cap (`sink.file.max_bytes`).
pub struct SegmentEvicted<'a> {
    pub org: &'a str,
    pub segment: u64,
    pub batches: u64,
    pub records: u64,
    pub bytes: u64,
}

impl SegmentEvicted<'_> {
    pub fn emit(self, m: &CollectorMetrics) {
        let s = &m.store;
        s.store_dropped_segments.inc();
        s.store_dropped_batches.inc_by(self.batches);
        m.output.dropped(DropReason::StoreByteCap, self.batches);
        s.store_dropped_records.inc_by(self.records);
        s.store_dropped_bytes.inc_by(self.bytes);
        warn!(
            org = %self.org,
            segment = self.segment,
            batches = self.batches,
            records = self.records,
            "store at its byte cap (sink.file.max_bytes): deleted the oldest segment"
        );
    }
}

/// A failed file-sink write or sync (retried; nothing is acked until it succeeds).
pub struct FileWriteFailed<'a> {
    pub error: &'a dyn Display,
    /// The disk is full: the log line says what to do about it.
    pub disk_full: bool,
    pub log: &'a LogThrottle,
}

impl FileWriteFailed<'_> {
    pub fn emit(self, m: &CollectorMetrics) {
        m.sink.sink_write_errors.inc();
        if let Some(suppressed) = self.log.check("write", Instant::now()) {
            let hint = if self.disk_full {
                "the disk is full: free space or lower sink.file.max_bytes; batches are held (not acked) and retried"
            } else {
                "batches are held (not acked) and retried"
            };
            error!(error = %self.error, suppressed, hint, "file sink write failed");
        }
    }
}

/// A failed send to a remote sink (the batch is held and sent again).
pub struct SinkSendFailed<'a> {
    /// The sink's name in logs (`NATS`, `Kafka`).
    pub sink: &'a str,
    pub error: &'a dyn Display,
    pub log: &'a LogThrottle,
}

impl SinkSendFailed<'_> {
    pub fn emit(self, m: &CollectorMetrics) {
        m.sink.sink_write_errors.inc();
        if let Some(suppressed) = self.log.check("send", Instant::now()) {
            let name = self.sink;
            warn!(
                error = %self.error,
                suppressed,
                "{name} send failed; holding the batch (not acked) and sending it again"
            );
        }
    }
}

/// A peer that did not answer a load poll; logged per peer through the throttle.
pub struct PeerPollFailed<'a> {
    pub peer: SocketAddr,
    pub error: &'a dyn Display,
    pub log: &'a LogThrottle,
}

impl PeerPollFailed<'_> {
    pub fn emit(self, m: &CollectorMetrics) {
        m.fleet.fleet_poll_failures.inc();
        let peer = self.peer;
        if let Some(suppressed) = self.log.check(&peer.to_string(), Instant::now()) {
            warn!(%peer, error = %self.error, suppressed, "bounded load: a peer did not report its load");
        }
    }
}

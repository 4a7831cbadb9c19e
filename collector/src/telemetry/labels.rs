//! Label sets and label values of the collector's metrics.
//!
//! Owns: every label name (the `EncodeLabelSet` structs) and every fixed label value (the enums,
//! each with an `as_str()` that is the exposed value). Must never: take a label value from input
//! (only configured orgs and these fixed values reach a label, so no series grows with load).

use prometheus_client::encoding::EncodeLabelSet;

/// `{reason="..."}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// `{org="..."}`: an authenticated, configured org (never a claimed one).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OrgLabel {
    pub org: String,
}

/// `{org="...",kind="..."}`: a configured org and a [`LossKind`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OrgKindLabel {
    pub org: String,
    pub kind: &'static str,
}

/// `{task="..."}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabel {
    pub task: &'static str,
}

/// `{state="..."}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// `{request="..."}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub request: &'static str,
}

pub(crate) fn reason(reason: &'static str) -> ReasonLabel {
    ReasonLabel { reason }
}

/// Declares a label-value enum: each variant with its exposed value, and `as_str()`.
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $value:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// The label value, as exposed in `/metrics` and written in logs.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $value,)+
                }
            }

            /// Every value, in declaration order (exported at zero from start).
            pub const VALUES: &'static [$name] = &[$($name::$variant,)+];
        }
    };
}

label_values! {
    /// A connection's place in its life, as counted by `connections{state}`.
    ConnState {
        /// QUIC/TLS handshake in progress.
        Handshaking => "handshaking",
        /// Handshake done; waiting for (or judging) the meter's `Hello`.
        AwaitingHello => "awaiting_hello",
        /// Welcomed: a session.
        Session => "session",
        /// Its `Hello` was rejected; waiting for the peer to read the `Reject` and close.
        Closing => "closing",
    }
}

label_values! {
    /// Why a connection attempt was refused before the handshake: `connections_refused{reason}`.
    RefuseReason {
        /// The collector is shutting down.
        Draining => "draining",
        /// `limits.max_connections` reached.
        MaxConnections => "max_connections",
        /// Too many handshakes in flight.
        MaxHandshakes => "max_handshakes",
        /// The data plane holds its memory budget.
        MaxBufferedBytes => "max_buffered_bytes",
        /// The accept-rate token bucket is empty.
        AcceptRate => "accept_rate",
    }
}

label_values! {
    /// Why a welcomed session ended: `sessions_ended{reason}`.
    SessionEnd {
        /// The meter closed its control stream or the connection.
        MeterClosed => "meter_closed",
        /// The meter went silent past the idle timeout.
        IdleTimeout => "idle_timeout",
        /// Anything else that broke the connection.
        ConnectionLost => "connection_lost",
        /// An unexpected message on the control stream.
        ProtocolViolation => "protocol_violation",
        /// A control frame that could not be read.
        BadControlFrame => "bad_control_frame",
        /// The shutdown grace period ran out.
        Shutdown => "shutdown",
    }
}

label_values! {
    /// Why the collector let batches go: `batches_dropped{reason}`.
    DropReason {
        /// Refused for good (Nack).
        Nacked => "nacked",
        /// Abandoned unacked at shutdown; meters send them again.
        SinkStopped => "sink_stopped",
        /// Stored, then deleted by `sink.file.max_bytes`.
        StoreByteCap => "store_byte_cap",
    }
}

label_values! {
    /// What a meter reported it failed to measure (`FlowBatch.loss`): `meter_loss{org,kind}`.
    LossKind {
        /// Kernel close notifications lost (the meter's netlink buffer overflowed).
        CloseEventsLost => "close_events_lost",
        /// Connections the meter did not track because its flow table was full.
        FlowsUntracked => "flows_untracked",
        /// Records the meter dropped because its pipeline was full.
        RecordsDropped => "records_dropped",
        /// Packets the meter's eBPF programs could not count (their flow map was full).
        PacketsUntracked => "packets_untracked",
    }
}

impl LossKind {
    pub const ALL: [LossKind; 4] = [
        LossKind::CloseEventsLost,
        LossKind::FlowsUntracked,
        LossKind::RecordsDropped,
        LossKind::PacketsUntracked,
    ];

    /// This kind's count in `loss`.
    pub fn of(self, loss: &ringflow_proto::pb::MeasurementLoss) -> u64 {
        match self {
            LossKind::CloseEventsLost => loss.close_events_lost,
            LossKind::FlowsUntracked => loss.flows_untracked,
            LossKind::RecordsDropped => loss.records_dropped,
            LossKind::PacketsUntracked => loss.packets_untracked,
        }
    }
}

label_values! {
    /// Kinds of spawned tasks and threads: `tasks_active{task}`.
    Task {
        AcceptLoop => "accept_loop",
        Connection => "connection",
        Session => "session",
        DataStream => "data_stream",
        FleetPoll => "fleet_poll",
        AdminHttp => "admin_http",
        FileSink => "file_sink",
        NatsSink => "nats_sink",
        KafkaSink => "kafka_sink",
    }
}

label_values! {
    /// Control-plane requests timed by `control_request_seconds{request}`.
    ControlRequest {
        /// `Hello` read to `Welcome`/`Reject` written.
        Hello => "hello",
        /// A heartbeat answered.
        Heartbeat => "heartbeat",
        /// An admin HTTP request.
        Admin => "admin",
    }
}

/// `hello_rejects{reason}` values of the refusals for load and sink health: written by
/// `judge_hello`, and exported at zero from start so a rate or an alert on them works from a
/// collector's first refusal (other reasons, such as auth failures, show when first counted).
pub mod hello_reject {
    /// The sink cannot store (`sink_healthy` is 0).
    pub const SINK_UNAVAILABLE: &str = "sink_unavailable";
    /// `admission.soft_max_sessions` reached.
    pub const OVERLOADED_SESSIONS: &str = "overloaded_sessions";
    /// Over this collector's bounded-load share of the fleet.
    pub const OVERLOADED_BOUNDED_LOAD: &str = "overloaded_bounded_load";
    /// The data plane holds its soft memory budget.
    pub const OVERLOADED_BUFFERED_BYTES: &str = "overloaded_buffered_bytes";
    /// All of the above.
    pub const AT_START: [&str; 4] = [
        SINK_UNAVAILABLE,
        OVERLOADED_SESSIONS,
        OVERLOADED_BOUNDED_LOAD,
        OVERLOADED_BUFFERED_BYTES,
    ];
}

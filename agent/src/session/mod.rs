//! One session with one collector: connect, `Hello` → `Welcome` | `Reject`, then a data stream
//! carrying spooled batches within the granted window, while acks and nacks come back.
//!
//! Owns: the QUIC connection and its streams for the session's lifetime. The rules live in
//! [`window::Window`] (sans-IO); this module only drives them. Three loops run concurrently on
//! one task: the sender (spool → data stream, oldest pending first, while the window has room),
//! the receiver (acks and nacks → window and spool), and the control loop (heartbeats, `Drain`).
//! Must never: settle a batch in the spool that was not acked or nacked, or log the org token.

mod context;
mod control;
mod data;
pub mod liveness;
mod streams;
pub mod window;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ringflow_proto::codes::{ConnectionCode, StreamCode};
use ringflow_proto::frame::{
    self, FrameError, FrameReader, MAX_COLLECTOR_CONTROL_FRAME_BYTES, MAX_CONTROL_FRAME_BYTES,
};
use ringflow_proto::{PROTOCOL_VERSION, pb};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::telemetry::events::{Event, SessionStarted};
pub use context::{Credentials, SessionContext};
use streams::Streams;
use window::WindowError;

/// How long, after `Drain`, the meter waits for acks of what it already sent before leaving.
const DRAIN_ACK_WAIT: Duration = Duration::from_secs(5);

/// The connect loop's word to a running session: leave at `at`, waiting at most `ack_wait` for
/// the acks of what is in flight (a stalled collector gets none: its batches go elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leave {
    pub at: Instant,
    pub ack_wait: Duration,
}

impl Leave {
    /// Leave now for a better collector, after the acks of what is in flight.
    pub fn to_move() -> Self {
        Leave {
            at: Instant::now(),
            ack_wait: DRAIN_ACK_WAIT,
        }
    }

    /// Leave a stalled collector now; what it did not ack is sent to the next.
    pub fn stalled() -> Self {
        Leave {
            at: Instant::now(),
            ack_wait: Duration::ZERO,
        }
    }
}

/// A collector's view of its fleet, as `Welcome` or `Reject` carry it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetView {
    /// Every collector, as meters dial them.
    pub members: Vec<String>,
    /// Those its peer poll finds not answering.
    pub not_answering: Vec<String>,
}

impl FleetView {
    fn of(members: &[pb::FleetMember]) -> Self {
        FleetView {
            members: members.iter().map(|m| m.address.clone()).collect(),
            not_answering: members
                .iter()
                .filter(|m| m.not_answering)
                .map(|m| m.address.clone())
                .collect(),
        }
    }
}

/// What the session tells the connect loop while it runs.
pub struct SessionSignals {
    /// The collector's fleet view, once it welcomed the meter.
    pub welcome: oneshot::Sender<FleetView>,
    /// Counts the stalls seen: the collector is there but has not acked for longer than the ack
    /// bound ([`liveness`]).
    pub stalls: watch::Sender<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot start connecting: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("no Welcome within {0:?}")]
    Timeout(Duration),
    /// Not even the QUIC handshake completed in the connect timeout.
    #[error("no answer to the handshake within {0:?}")]
    NoAnswer(Duration),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("the collector closed the data stream with code {}", code.map_or("unknown", |c| c.as_str()))]
    StreamClosed { code: Option<StreamCode> },
    #[error("the collector broke the protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Window(#[from] WindowError),
    /// The meter's own spool failed (logged by the spool); the next session starts over.
    #[error("the spool failed: {0}")]
    Spool(String),
    /// Not one packet from the collector for this long after the meter wrote to it.
    #[error("the collector went silent: nothing from it for {0:?} after a write")]
    Silent(Duration),
}

impl SessionError {
    /// The collector is gone (silent, no answer to a handshake, or the QUIC idle timeout): not
    /// one to dial again soon. A collector that refused, closed or reset the connection, or was
    /// slow to say `Welcome`, answered: it is there.
    pub fn collector_gone(&self) -> bool {
        matches!(self, SessionError::Silent(_) | SessionError::NoAnswer(_))
            || matches!(self.connection_error(), Some(quinn::ConnectionError::TimedOut))
    }

    /// The connection failure underneath, wherever it surfaced (handshake, a read, a write).
    fn connection_error(&self) -> Option<&quinn::ConnectionError> {
        match self {
            SessionError::Connection(e) | SessionError::Write(quinn::WriteError::ConnectionLost(e)) => {
                Some(e)
            }
            SessionError::Frame(f) => f.connection_lost(),
            _ => None,
        }
    }

    /// Short stable name for metrics and log aggregation, by root cause.
    pub fn label(&self) -> &'static str {
        if let Some(e) = self.connection_error() {
            return match e {
                quinn::ConnectionError::TimedOut => "timeout",
                // A stateless reset: the collector restarted and no longer knows this connection.
                quinn::ConnectionError::Reset => "reset",
                quinn::ConnectionError::ConnectionClosed(_)
                | quinn::ConnectionError::ApplicationClosed(_) => "closed_by_collector",
                quinn::ConnectionError::LocallyClosed => "closed_locally",
                _ => "connection",
            };
        }
        match self {
            SessionError::Connect(_) => "connect",
            SessionError::Timeout(_) | SessionError::NoAnswer(_) => "timeout",
            SessionError::StreamClosed { .. } => "stream_closed",
            SessionError::Protocol(_) | SessionError::Window(_) => "protocol",
            SessionError::Spool(_) => "spool",
            SessionError::Silent(_) => "silent",
            SessionError::Connection(_) | SessionError::Frame(_) | SessionError::Write(_) => "stream",
        }
    }
}

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// Shutdown: the spool is closed and every batch in it was settled.
    Flushed,
    /// Shutdown: the grace period ran out with batches unsettled (they stay in the spool).
    Unflushed,
    /// The collector is leaving: reconnect elsewhere at a random moment within this window.
    Drained {
        reconnect_within: Duration,
    },
    /// The meter left to move to a better collector (the `leave_at` instant came).
    Moved,
    /// The meter left a collector that stopped acking, for one that answered (the connect loop
    /// asked with [`Leave::stalled`]).
    LeftStalled,
    /// The collector refused the session.
    Rejected {
        reason: pb::RejectReason,
        retry_after: Option<Duration>,
        message: String,
        /// The collector's fleet view sent with the refusal (overloaded, sink unavailable).
        fleet: FleetView,
    },
    Failed(SessionError),
}

/// The outcome of one attempt.
#[derive(Debug)]
pub struct SessionOutcome {
    pub end: SessionEnd,
    /// The collector welcomed this session (so the attempt itself succeeded).
    pub welcomed: bool,
}

fn ended(end: SessionEnd, welcomed: bool) -> SessionOutcome {
    SessionOutcome { end, welcomed }
}

fn control_frame(msg: pb::control_frame::Msg) -> bytes::Bytes {
    frame::encode_to_bytes(&pb::ControlFrame { msg: Some(msg) }, MAX_CONTROL_FRAME_BYTES).unwrap_or_default()
}

/// Runs one session with the collector at `addr`. Once shutdown is requested the session ends
/// when the spool is settled, or at the flush deadline. When the collector welcomes the meter,
/// its fleet view goes to `signals.welcome`; stalls go to `signals.stalls`. When `leave` says
/// so, the session ends then, after its in-flight batches are settled or the leave's ack wait
/// ran out ([`SessionEnd::Moved`]).
pub async fn run(
    ctx: &SessionContext,
    addr: SocketAddr,
    server_name: &str,
    leave: watch::Receiver<Option<Leave>>,
    signals: SessionSignals,
) -> SessionOutcome {
    ctx.metrics.sessions.connect_attempts.inc();
    let connecting = match ctx.endpoint.connect(addr, server_name) {
        Ok(c) => c,
        Err(e) => return ended(SessionEnd::Failed(e.into()), false),
    };
    let hello = control_frame(pb::control_frame::Msg::Hello(pb::Hello {
        protocol_version: PROTOCOL_VERSION,
        meter_id: ctx.credentials.meter_id.clone(),
        org_id: ctx.credentials.org_id.clone(),
        org_token: ctx.credentials.org_token.clone(),
        software_version: env!("CARGO_PKG_VERSION").to_owned(),
        last_acked_seq: ctx.last_acked.load(Ordering::Relaxed),
        columns: ctx.local_limits.offers_columns(),
    }));
    // Whether the collector completed the handshake: a timeout before it means no answer at all.
    let handshaken = std::sync::atomic::AtomicBool::new(false);
    let setup = async {
        let conn = connecting.await?;
        handshaken.store(true, Ordering::Relaxed);
        let (mut ctl_send, ctl_recv) = conn.open_bi().await?;
        ctl_send.write_chunk(hello).await?;
        let mut ctl = FrameReader::new(ctl_recv, MAX_COLLECTOR_CONTROL_FRAME_BYTES);
        let first = ctl.next_message::<pb::ControlFrame>().await?;
        Ok::<_, SessionError>((conn, ctl_send, ctl, first))
    };
    let (conn, ctl_send, ctl, first) = tokio::select! {
        r = tokio::time::timeout(ctx.connect_timeout, setup) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return ended(SessionEnd::Failed(e), false),
            Err(_) if !handshaken.load(Ordering::Relaxed) => {
                return ended(SessionEnd::Failed(SessionError::NoAnswer(ctx.connect_timeout)), false);
            }
            Err(_) => return ended(SessionEnd::Failed(SessionError::Timeout(ctx.connect_timeout)), false),
        },
        // Shutting down and the grace period ran out before a collector took the spool.
        _ = ctx.stop.expired() => {
            return ended(SessionEnd::Unflushed, false);
        }
    };
    let welcome = match first.and_then(|f| f.msg) {
        Some(pb::control_frame::Msg::Welcome(w)) => w,
        Some(pb::control_frame::Msg::Reject(r)) => {
            ConnectionCode::Rejected.close(&conn);
            let reason = pb::RejectReason::try_from(r.reason).unwrap_or_default();
            return ended(
                SessionEnd::Rejected {
                    reason,
                    retry_after: (r.retry_after_ms > 0)
                        .then(|| Duration::from_millis(r.retry_after_ms.into())),
                    message: r.message,
                    fleet: FleetView::of(&r.fleet),
                },
                false,
            );
        }
        other => {
            ConnectionCode::ProtocolViolation.close(&conn);
            let what = if other.is_some() {
                "an unexpected message"
            } else {
                "nothing"
            };
            return ended(
                SessionEnd::Failed(SessionError::Protocol(format!(
                    "expected Welcome or Reject, got {what}"
                ))),
                false,
            );
        }
    };
    let limits = welcome.limits.unwrap_or_default();
    let SessionSignals {
        welcome: welcome_tx,
        stalls,
    } = signals;
    let _ = welcome_tx.send(FleetView::of(&welcome.fleet));
    // What this collector accepts: batches spooled under larger limits, or as columns it does
    // not read, are sealed again to fit.
    let allowed = ctx.local_limits.welcomed(&welcome);
    ctx.limits_tx.send_replace(allowed);
    SessionStarted {
        collector_id: &welcome.collector_id,
        session_id: &welcome.session_id,
        window: limits.max_unacked_batches,
    }
    .emit(&ctx.metrics);
    ctx.progress.notify();
    let end = match conn.open_bi().await {
        Ok((data_send, data_recv)) => {
            let streams = Streams {
                conn: &conn,
                ctl_send,
                ctl,
                data_send,
                data: FrameReader::new(data_recv, MAX_CONTROL_FRAME_BYTES),
            };
            streams.run(ctx, &limits, &allowed, leave, &stalls).await
        }
        Err(e) => SessionEnd::Failed(e.into()),
    };
    let code = match end {
        SessionEnd::Drained { .. } | SessionEnd::Moved | SessionEnd::LeftStalled => ConnectionCode::Drained,
        SessionEnd::Flushed | SessionEnd::Unflushed => ConnectionCode::ShuttingDown,
        _ => ConnectionCode::Done,
    };
    code.close(&conn);
    ended(end, true)
}

//! One session with one collector: connect, `Hello` → `Welcome` | `Reject`, then a data stream
//! carrying spooled batches within the granted window, while acks and nacks come back.
//!
//! Owns: the QUIC connection and its streams for the session's lifetime. The rules live in
//! [`window::Window`] (sans-IO); this module only drives them. Three loops run concurrently on
//! one task: the sender (spool → data stream, oldest pending first, while the window has room),
//! the receiver (acks and nacks → window and spool), and the control loop (heartbeats, `Drain`).
//! Must never: settle a batch in the spool that was not acked or nacked, or log the org token.

mod context;
pub mod window;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use prost::Message;
use quinn::{Connection, RecvStream, SendStream};
use ringflow_proto::codes::{ConnectionCode, StreamCode};
use ringflow_proto::frame::{
    self, FrameError, FrameReader, MAX_COLLECTOR_CONTROL_FRAME_BYTES, MAX_CONTROL_FRAME_BYTES,
};
use ringflow_proto::{PROTOCOL_VERSION, pb};
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::batcher::BatchLimits;
use crate::observe::AckedBatch;
use crate::telemetry::events::{
    BatchAcked, BatchNacked, BatchResealed, Event, RecordsDropped, SessionStarted,
};
pub use context::{Credentials, SessionContext};
use window::{Window, WindowError};

/// How long, after `Drain`, the meter waits for acks of what it already sent before leaving.
const DRAIN_ACK_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot start connecting: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("no Welcome within {0:?}")]
    Timeout(Duration),
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
}

impl SessionError {
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
            SessionError::Timeout(_) => "timeout",
            SessionError::StreamClosed { .. } => "stream_closed",
            SessionError::Protocol(_) | SessionError::Window(_) => "protocol",
            SessionError::Spool(_) => "spool",
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
    /// The collector refused the session.
    Rejected {
        reason: pb::RejectReason,
        retry_after: Option<Duration>,
        message: String,
        /// The collector's fleet view sent with the refusal (overloaded, sink unavailable).
        fleet: Vec<String>,
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
/// its fleet view goes to `welcome_tx`; when `leave_at` names an instant, the session ends
/// then, after its in-flight batches are settled ([`SessionEnd::Moved`]).
pub async fn run(
    ctx: &SessionContext,
    addr: SocketAddr,
    server_name: &str,
    leave_at: watch::Receiver<Option<Instant>>,
    welcome_tx: oneshot::Sender<Vec<String>>,
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
    }));
    let setup = async {
        let conn = connecting.await?;
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
                    fleet: r.fleet.into_iter().map(|m| m.address).collect(),
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
    let _ = welcome_tx.send(welcome.fleet.iter().map(|m| m.address.clone()).collect());
    ctx.limits_tx.send_replace(ctx.local_limits.capped_by(&limits));
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
            streams.run(ctx, &limits, leave_at).await
        }
        Err(e) => SessionEnd::Failed(e.into()),
    };
    let code = match end {
        SessionEnd::Drained { .. } | SessionEnd::Moved => ConnectionCode::Drained,
        SessionEnd::Flushed | SessionEnd::Unflushed => ConnectionCode::ShuttingDown,
        _ => ConnectionCode::Done,
    };
    code.close(&conn);
    ended(end, true)
}

struct Streams<'a> {
    conn: &'a Connection,
    ctl_send: SendStream,
    ctl: FrameReader<RecvStream>,
    data_send: SendStream,
    data: FrameReader<RecvStream>,
}

/// What the control loop reports.
enum ControlEvent {
    Drain(Duration),
}

impl Streams<'_> {
    async fn run(
        mut self,
        ctx: &SessionContext,
        limits: &pb::Limits,
        mut leave_at: watch::Receiver<Option<Instant>>,
    ) -> SessionEnd {
        let window = Mutex::new(Window::new(limits.max_unacked_batches as usize));
        let room = Notify::new();
        // Stop taking batches from the spool (after Drain, or when the spool is closed and read).
        let sending_done = AtomicBool::new(false);
        let heartbeat = Duration::from_millis(limits.heartbeat_interval_ms.into());
        // What this collector accepts; batches spooled under larger limits are split to fit.
        let allowed = ctx.local_limits.capped_by(limits);

        let result = {
            let sender = send_batches(&mut self.data_send, ctx, &window, &room, &sending_done, &allowed);
            let receiver = receive_replies(&mut self.data, ctx, &window, &room, &sending_done);
            let control = run_control(&mut self.ctl_send, &mut self.ctl, heartbeat);
            tokio::pin!(sender, receiver, control);
            let mut deadline: Option<Instant> = None;
            let mut drained: Option<Duration> = None;
            let mut moving = false;
            let mut stop_seen = false;
            let mut leave: Option<Instant> = *leave_at.borrow_and_update();
            loop {
                tokio::select! {
                    changed = leave_at.changed() => match changed {
                        Ok(()) => leave = *leave_at.borrow_and_update(),
                        // The connect loop is gone: nothing more will change.
                        Err(_) => leave = None,
                    },
                    _ = crate::sleep_until(leave), if leave.is_some() && !moving && drained.is_none() => {
                        debug!("leaving to move to this meter's first choice; finishing in-flight batches");
                        moving = true;
                        sending_done.store(true, Ordering::Relaxed);
                        let by = Instant::now() + DRAIN_ACK_WAIT;
                        deadline = Some(deadline.map_or(by, |d| d.min(by)));
                        if lock(&window).is_empty() {
                            break Ok(());
                        }
                    }
                    r = &mut sender, if !sending_done.load(Ordering::Relaxed) => match r {
                        Ok(()) => {
                            sending_done.store(true, Ordering::Relaxed);
                            if lock(&window).is_empty() {
                                break Ok(());
                            }
                        }
                        Err(e) => break Err(e),
                    },
                    r = &mut receiver => break r,
                    ev = &mut control, if drained.is_none() => match ev {
                        Ok(ControlEvent::Drain(within)) => {
                            info!(reconnect_within_ms = within.as_millis() as u64, "collector is draining; finishing in-flight batches");
                            drained = Some(within);
                            sending_done.store(true, Ordering::Relaxed);
                            deadline = Some(deadline.map_or(Instant::now() + DRAIN_ACK_WAIT, |d| d.min(Instant::now() + DRAIN_ACK_WAIT)));
                            if lock(&window).is_empty() {
                                break Ok(());
                            }
                        }
                        Err(e) => break Err(e),
                    },
                    _ = ctx.stop.requested(), if !stop_seen => {
                        stop_seen = true;
                        deadline = match (deadline, ctx.stop.deadline()) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                    }
                    _ = crate::sleep_until(deadline), if deadline.is_some() => break Ok(()),
                }
            }
            .map(|()| match drained {
                Some(within) => SessionEnd::Drained {
                    reconnect_within: within,
                },
                None if moving => SessionEnd::Moved,
                None if lock(&window).is_empty() && ctx.spool.status().settled() => SessionEnd::Flushed,
                None => SessionEnd::Unflushed,
            })
        };
        match result {
            Ok(end) => {
                let _ = self.data_send.finish();
                let _ = self.ctl_send.finish();
                end
            }
            Err(e) => {
                debug!(error = %e, conn = ?self.conn.stable_id(), "session failed");
                SessionEnd::Failed(e)
            }
        }
    }
}

/// The window's lock is never held across an await, so it cannot be contended for long; a
/// poisoned lock (a panic elsewhere) still holds a consistent window.
fn lock(window: &Mutex<Window>) -> MutexGuard<'_, Window> {
    window.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes spooled batches, oldest first, while the window has room. Returns when the spool is
/// closed and read to its end (shutdown), or when told to stop sending.
async fn send_batches(
    send: &mut SendStream,
    ctx: &SessionContext,
    window: &Mutex<Window>,
    room: &Notify,
    sending_done: &AtomicBool,
    allowed: &BatchLimits,
) -> Result<(), SessionError> {
    // From the oldest pending batch: everything unacked is sent again, in order.
    let mut spooled = ctx.spool.reader();
    loop {
        loop {
            let notified = room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if lock(window).has_room() {
                break;
            }
            notified.await;
        }
        if sending_done.load(Ordering::Relaxed) {
            return std::future::pending().await;
        }
        let Some(batch) = spooled
            .next()
            .await
            .map_err(|e| SessionError::Spool(e.to_string()))?
        else {
            return Ok(());
        };
        if sending_done.load(Ordering::Relaxed) {
            return std::future::pending().await;
        }
        if batch.frame.len() - frame::LENGTH_PREFIX_BYTES > allowed.max_frame_bytes
            || batch.records as usize > allowed.max_records
        {
            // Built under larger limits than this collector allows (before its Welcome): split it
            // into batches that fit; they get new seqs and are spooled after the others.
            reseal(ctx, batch, allowed).await?;
            continue;
        }
        send.write_chunk(batch.frame).await?;
        lock(window).sent(batch.seq, batch.records, Instant::now());
        ctx.metrics.delivery.batches_sent.inc();
    }
}

/// Spools the records of `batch` again as batches within `allowed`, then settles `batch`. If
/// that fails, `batch` stays spooled whole and the session ends (sending past it would let a
/// cumulative ack settle it unsent).
async fn reseal(
    ctx: &SessionContext,
    batch: crate::spool::Entry,
    allowed: &BatchLimits,
) -> Result<(), SessionError> {
    let seq = batch.seq;
    let (records, loss) = match pb::DataUp::decode(batch.frame.slice(frame::LENGTH_PREFIX_BYTES..)) {
        Ok(pb::DataUp {
            msg: Some(pb::data_up::Msg::Batch(b)),
        }) => (b.records, b.loss),
        _ => {
            // Cannot happen for a frame this meter encoded (the spool checks a CRC per entry);
            // counted rather than assumed.
            RecordsDropped {
                reason: crate::telemetry::DropReason::UndecodableSpooled,
                records: batch.records.into(),
            }
            .emit(&ctx.metrics);
            ctx.spool.remove(seq, batch.records).await;
            return Ok(());
        }
    };
    BatchResealed {
        seq,
        records: batch.records,
    }
    .emit(&ctx.metrics);
    // The batch's loss goes into the first of its parts.
    match ctx.sealer.seal(records, loss, allowed).await {
        Ok(()) => {
            ctx.spool.replaced(seq, batch.records).await;
            Ok(())
        }
        Err(error) => Err(SessionError::Spool(format!(
            "cannot spool the parts of batch {seq}: {error}"
        ))),
    }
}

/// Applies acks and nacks. Returns `Ok` once sending is done and nothing is in flight.
async fn receive_replies(
    data: &mut FrameReader<RecvStream>,
    ctx: &SessionContext,
    window: &Mutex<Window>,
    room: &Notify,
    sending_done: &AtomicBool,
) -> Result<(), SessionError> {
    loop {
        let reply = match data.next_message::<pb::DataDown>().await {
            Ok(Some(reply)) => reply,
            Ok(None) => return Err(SessionError::StreamClosed { code: None }),
            Err(e) => {
                if let Some(code) = e.peer_reset_code() {
                    return Err(SessionError::StreamClosed {
                        code: StreamCode::from_varint(code),
                    });
                }
                return Err(e.into());
            }
        };
        match reply.msg {
            Some(pb::data_down::Msg::Ack(ack)) => {
                // The spool first, the window after: once the window is empty the session may
                // end at any await, and the spool must have the ack by then. (The spool task
                // counts what acks settle.)
                lock(window).check_ack(ack.up_to_seq)?;
                ctx.spool.ack(ack.up_to_seq).await;
                let settled = lock(window).ack(ack.up_to_seq)?;
                let now = Instant::now();
                for batch in settled {
                    let acked = AckedBatch {
                        seq: batch.seq,
                        records: batch.records,
                        latency: now.saturating_duration_since(batch.sent_at),
                    };
                    BatchAcked(acked).emit(&ctx.metrics);
                    if let Some(observer) = &ctx.ack_observer {
                        observer(acked);
                    }
                }
                ctx.last_acked.fetch_max(ack.up_to_seq, Ordering::Relaxed);
            }
            Some(pb::data_down::Msg::Nack(nack)) => {
                let records = lock(window).check_nack(nack.seq)?;
                let reason = pb::NackReason::try_from(nack.reason).unwrap_or_default();
                ctx.spool.remove(nack.seq, records).await;
                lock(window).nack(nack.seq)?;
                BatchNacked {
                    seq: nack.seq,
                    records,
                    reason: ringflow_proto::names::nack_reason(reason),
                    why: &nack.message,
                }
                .emit(&ctx.metrics);
            }
            None => {
                return Err(SessionError::Protocol(
                    "empty or unknown reply on the data stream".into(),
                ));
            }
        }
        ctx.progress.notify();
        room.notify_one();
        if sending_done.load(Ordering::Relaxed) && lock(window).is_empty() {
            return Ok(());
        }
    }
}

/// Sends heartbeats and reads the collector's control messages until `Drain` or an error.
async fn run_control(
    send: &mut SendStream,
    recv: &mut FrameReader<RecvStream>,
    heartbeat: Duration,
) -> Result<ControlEvent, SessionError> {
    let mut tick = (!heartbeat.is_zero()).then(|| {
        let mut t = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    loop {
        tokio::select! {
            _ = async { match tick.as_mut() { Some(t) => { t.tick().await; } None => std::future::pending().await } } => {
                let beat = control_frame(pb::control_frame::Msg::Heartbeat(pb::Heartbeat {
                    sent_unix_nanos: crate::unix_nanos_now(),
                }));
                send.write_chunk(beat).await?;
            }
            msg = recv.next_message::<pb::ControlFrame>() => match msg?.and_then(|f| f.msg) {
                Some(pb::control_frame::Msg::Drain(d)) => {
                    return Ok(ControlEvent::Drain(Duration::from_millis(d.reconnect_within_ms.into())));
                }
                Some(pb::control_frame::Msg::Heartbeat(_)) => {}
                Some(_) => return Err(SessionError::Protocol("unexpected message on the control stream".into())),
                None => return Err(SessionError::StreamClosed { code: None }),
            },
        }
    }
}

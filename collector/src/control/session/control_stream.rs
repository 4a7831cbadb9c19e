//! A welcomed session's control stream: heartbeats answered, `Drain` sent once when the
//! collector starts shutting down, the session closed at the hard stop, and every data stream
//! the meter opens handed to the data plane.
//!
//! Owns: [`run`] (the loop, until the session ends, returning why as a `sessions_ended` label)
//! and the encoding of control messages ([`control`]). Must never: read a data stream, wait on
//! the sink, or let a data stream's work delay a heartbeat or a `Drain`.

use std::sync::Arc;

use quinn::{Connection, RecvStream, SendStream};
use ringflow_proto::codes::ConnectionCode;
use ringflow_proto::frame::{self, FrameReader, MAX_COLLECTOR_CONTROL_FRAME_BYTES};
use ringflow_proto::pb;
use tokio::time::Instant;
use tracing::debug;

use super::Shared;
use super::streams;
use crate::data::ingest::StreamContext;
use crate::telemetry::{ControlRequest, SessionEnd};

/// The collector's end of a session's control stream.
pub(super) struct ControlStream {
    pub send: SendStream,
    pub recv: FrameReader<RecvStream>,
}

/// Runs the control stream and accepts data streams until the session ends. Returns why (a
/// `sessions_ended` label).
pub(super) async fn run(
    conn: &Connection,
    mut ctl: ControlStream,
    shared: &Arc<Shared>,
    streams: &Arc<StreamContext>,
    span: &tracing::Span,
) -> SessionEnd {
    let mut drain_sent = false;
    // Made once: each wake of this loop polls them, never rebuilds them.
    let hard_stop = shared.hard_stop.cancelled();
    let draining = shared.draining.cancelled();
    let accepted = conn.accept_bi();
    tokio::pin!(hard_stop, draining, accepted);
    loop {
        tokio::select! {
            biased;
            _ = &mut hard_stop => {
                ConnectionCode::ShuttingDown.close(conn);
                return SessionEnd::Shutdown;
            }
            _ = &mut draining, if !drain_sent => {
                drain_sent = true;
                if send_drain(&mut ctl.send, shared.drain_window_ms).await.is_err() {
                    return lost(conn.close_reason().as_ref());
                }
            }
            frame = ctl.recv.next_message::<pb::ControlFrame>() => match frame {
                Ok(Some(pb::ControlFrame { msg: Some(pb::control_frame::Msg::Heartbeat(_)) })) => {
                    let read = Instant::now();
                    if send_heartbeat(&mut ctl.send).await.is_err() {
                        return lost(conn.close_reason().as_ref());
                    }
                    shared.metrics.sessions.control_request(ControlRequest::Heartbeat, read.elapsed().as_secs_f64());
                }
                Ok(Some(_)) => {
                    ConnectionCode::ProtocolViolation.close(conn);
                    return SessionEnd::ProtocolViolation;
                }
                Ok(None) => {
                    // The meter finished its control stream: it is leaving.
                    ConnectionCode::Done.close(conn);
                    return SessionEnd::MeterClosed;
                }
                Err(error) if error.stream_code().is_some() => {
                    debug!(parent: span, %error, "bad control frame");
                    ConnectionCode::ProtocolViolation.close(conn);
                    return SessionEnd::BadControlFrame;
                }
                Err(error) => return lost(error.connection_lost()),
            },
            stream = &mut accepted => match stream {
                Ok((send, recv)) => {
                    accepted.set(conn.accept_bi());
                    streams::hand_off(send, recv, shared, streams, span)
                }
                Err(error) => return lost(Some(&error)),
            },
        }
    }
}

/// Asks the meter to reconnect elsewhere within the drain window.
async fn send_drain(send: &mut SendStream, reconnect_within_ms: u32) -> Result<(), quinn::WriteError> {
    let drain = control(pb::control_frame::Msg::Drain(pb::Drain {
        reconnect_within_ms,
        reason: "collector is shutting down".into(),
    }));
    send.write_chunk(drain).await
}

/// Answers a meter's heartbeat with the collector's clock.
async fn send_heartbeat(send: &mut SendStream) -> Result<(), quinn::WriteError> {
    let beat = control(pb::control_frame::Msg::Heartbeat(pb::Heartbeat {
        sent_unix_nanos: crate::data::ingest::unix_nanos_now(),
    }));
    send.write_chunk(beat).await
}

/// Why a lost connection ended a session: the meter went silent past the idle timeout, or
/// anything else that broke the connection.
fn lost(error: Option<&quinn::ConnectionError>) -> SessionEnd {
    match error {
        Some(quinn::ConnectionError::TimedOut) => SessionEnd::IdleTimeout,
        Some(quinn::ConnectionError::ApplicationClosed(_)) => SessionEnd::MeterClosed,
        _ => SessionEnd::ConnectionLost,
    }
}

/// A control message, framed.
pub(super) fn control(msg: pb::control_frame::Msg) -> bytes::Bytes {
    // Control messages are small and built here; they always fit the control frame limit.
    frame::encode_to_bytes(
        &pb::ControlFrame { msg: Some(msg) },
        MAX_COLLECTOR_CONTROL_FRAME_BYTES,
    )
    .unwrap_or_default()
}

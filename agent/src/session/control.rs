//! The meter's end of the control stream: heartbeats (at the interval `Welcome` asked, and as
//! the failure detector's probes), the collector's heartbeats and `Drain`.
//!
//! Owns: what is written on the control stream after `Hello`. Must never: wait on the data
//! stream.

use std::time::Duration;

use quinn::{RecvStream, SendStream};
use ringflow_proto::frame::FrameReader;
use ringflow_proto::pb;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::streams::LivenessWatch;
use super::{SessionError, control_frame};

/// What the control loop reports.
pub(super) enum ControlEvent {
    Drain(Duration),
}

/// A heartbeat with the meter's clock.
fn heartbeat_frame() -> bytes::Bytes {
    control_frame(pb::control_frame::Msg::Heartbeat(pb::Heartbeat {
        sent_unix_nanos: crate::unix_nanos_now(),
    }))
}

/// Sends heartbeats (every `heartbeat`, when the collector asks for them, and when the failure
/// detector asks for a `probe`) and reads the collector's control messages until `Drain` or an
/// error.
pub(super) async fn run_control(
    send: &mut SendStream,
    recv: &mut FrameReader<RecvStream>,
    heartbeat: Duration,
    probe: &Notify,
    watch: &LivenessWatch<'_>,
) -> Result<ControlEvent, SessionError> {
    let mut tick = (!heartbeat.is_zero()).then(|| {
        let mut t = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    loop {
        tokio::select! {
            _ = async { match tick.as_mut() { Some(t) => { t.tick().await; } None => std::future::pending().await } } => {
                send.write_chunk(heartbeat_frame()).await?;
                watch.wrote(Instant::now());
            }
            _ = probe.notified() => {
                send.write_chunk(heartbeat_frame()).await?;
                watch.wrote(Instant::now());
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

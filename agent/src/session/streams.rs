//! A welcomed session's streams, driven together on one task: the sender and the receiver of
//! the data stream ([`super::data`]), the control loop ([`super::control`]), the failure
//! detector's checks ([`super::liveness`]), and the connect loop's word to leave.
//!
//! Owns: the select loop that decides how the session ends, and the locks its loops share.
//! Must never: hold a lock across an await.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream};
use ringflow_proto::frame::FrameReader;
use ringflow_proto::pb;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::control::{ControlEvent, run_control};
use super::data::{receive_replies, send_batches};
use super::liveness::{Liveness, Traffic, Verdict};
use super::window::Window;
use super::{DRAIN_ACK_WAIT, Leave, SessionContext, SessionEnd, SessionError};
use crate::batcher::BatchLimits;

pub(super) struct Streams<'a> {
    pub conn: &'a Connection,
    pub ctl_send: SendStream,
    pub ctl: FrameReader<RecvStream>,
    pub data_send: SendStream,
    pub data: FrameReader<RecvStream>,
}

impl Streams<'_> {
    pub(super) async fn run(
        mut self,
        ctx: &SessionContext,
        limits: &pb::Limits,
        allowed: &BatchLimits,
        mut leave_at: watch::Receiver<Option<Leave>>,
        stalls: &watch::Sender<u32>,
    ) -> SessionEnd {
        let window = Mutex::new(Window::new(limits.max_unacked_batches as usize));
        let room = Notify::new();
        let liveness = Mutex::new(Liveness::new(ctx.liveness));
        let conn = self.conn;
        // A write started a silence watch (the next check may come sooner).
        let watching = Notify::new();
        // Asks the control loop for a probe.
        let probe = Notify::new();
        let watch = LivenessWatch {
            conn,
            liveness: &liveness,
            watching: &watching,
        };
        // Stop taking batches from the spool (after Drain, or when the spool is closed and read).
        let sending_done = AtomicBool::new(false);
        let heartbeat = Duration::from_millis(limits.heartbeat_interval_ms.into());

        let result = {
            let sender = send_batches(
                &mut self.data_send,
                ctx,
                &window,
                &room,
                &sending_done,
                allowed,
                &watch,
            );
            let receiver = receive_replies(&mut self.data, ctx, &window, &room, &sending_done, &liveness);
            let control = run_control(&mut self.ctl_send, &mut self.ctl, heartbeat, &probe, &watch);
            tokio::pin!(sender, receiver, control);
            let mut deadline: Option<Instant> = None;
            let mut drained: Option<Duration> = None;
            let mut moving = false;
            let mut stop_seen = false;
            let mut leave: Option<Leave> = *leave_at.borrow_and_update();
            loop {
                let check_at = lock(&liveness).next_check(lock(&window).oldest_sent(), conn.rtt());
                tokio::select! {
                    changed = leave_at.changed() => match changed {
                        Ok(()) => leave = *leave_at.borrow_and_update(),
                        // The connect loop is gone: nothing more will change.
                        Err(_) => leave = None,
                    },
                    _ = watching.notified() => {}
                    _ = crate::sleep_until(check_at), if check_at.is_some() => {
                        if let Err(e) = watch.check(&window, &probe, stalls) {
                            break Err(e);
                        }
                    }
                    _ = crate::sleep_until(leave.map(|l| l.at)), if leave.is_some() && !moving && drained.is_none() => {
                        debug!("leaving this collector; finishing in-flight batches");
                        moving = true;
                        sending_done.store(true, Ordering::Relaxed);
                        deadline = earliest(deadline, Some(Instant::now() + leave.map_or(DRAIN_ACK_WAIT, |l| l.ack_wait)));
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
                            deadline = earliest(deadline, Some(Instant::now() + DRAIN_ACK_WAIT));
                            if lock(&window).is_empty() {
                                break Ok(());
                            }
                        }
                        Err(e) => break Err(e),
                    },
                    _ = ctx.stop.requested(), if !stop_seen => {
                        stop_seen = true;
                        deadline = earliest(deadline, ctx.stop.deadline());
                    }
                    _ = crate::sleep_until(deadline), if deadline.is_some() => break Ok(()),
                }
            }
            .map(|()| match drained {
                Some(within) => SessionEnd::Drained {
                    reconnect_within: within,
                },
                None if moving && leave.is_some_and(|l| l.ack_wait.is_zero()) => SessionEnd::LeftStalled,
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

/// The earlier of two optional instants.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The session's locks (the window, the failure detector) are never held across an await, so
/// they cannot be contended for long; a poisoned lock (a panic elsewhere) still holds a
/// consistent state.
pub(super) fn lock<T>(state: &Mutex<T>) -> MutexGuard<'_, T> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Datagrams received and sent on `conn` so far.
pub(super) fn traffic(conn: &Connection) -> Traffic {
    let stats = conn.stats();
    Traffic {
        received: stats.udp_rx.datagrams,
        sent: stats.udp_tx.datagrams,
    }
}

/// What the writers of a session tell the failure detector: they wrote at an instant.
pub(super) struct LivenessWatch<'a> {
    conn: &'a Connection,
    liveness: &'a Mutex<Liveness>,
    /// Woken when a write starts a silence watch, so the session's next check is re-timed.
    watching: &'a Notify,
}

impl LivenessWatch<'_> {
    /// A check of the failure detector is due: probe, report a stall, or end the session when
    /// the collector went silent.
    fn check(
        &self,
        window: &Mutex<Window>,
        probe: &Notify,
        stalls: &watch::Sender<u32>,
    ) -> Result<(), SessionError> {
        let oldest = lock(window).oldest_sent();
        let verdict = lock(self.liveness).check(Instant::now(), traffic(self.conn), oldest, self.conn.rtt());
        match verdict {
            Verdict::Fine => {}
            Verdict::Probe => probe.notify_one(),
            Verdict::Silent(quiet) => return Err(SessionError::Silent(quiet)),
            Verdict::Stalled(waited) => {
                warn!(
                    waited_ms = waited.as_millis() as u64,
                    "the collector has not acked a batch within the ack bound; looking for another"
                );
                stalls.send_modify(|n| *n += 1);
            }
        }
        Ok(())
    }

    pub(super) fn wrote(&self, now: Instant) {
        if lock(self.liveness).on_write(now, traffic(self.conn)) {
            self.watching.notify_one();
        }
    }
}

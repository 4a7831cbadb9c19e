//! One ticker that nudges many held sessions in turn: each gets one nudge per period, the nudges
//! spread evenly over the period, so thousands of sessions are driven without a timer each.
//!
//! Owns: [`pace`] and the mailbox a held session is nudged through. Must never: do a session's
//! work (the session's own task does), or wait on a session (a full mailbox misses its turn).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// What a held session is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nudge {
    /// Send a heartbeat on the control stream, as a meter does every `heartbeat_interval_ms`.
    Heartbeat,
    /// Send one small batch (ringflow) or message (raw quinn) and wait for its answer.
    Exchange,
}

/// Nudges a held session can have waiting: a heartbeat and an exchange, and one more of either.
const MAILBOX: usize = 3;

/// A mailbox for one held session: the pacers keep the sender, the session's task the receiver.
pub fn mailbox() -> (mpsc::Sender<Nudge>, mpsc::Receiver<Nudge>) {
    mpsc::channel(MAILBOX)
}

/// The ticker's step: fine enough to spread the nudges (a millisecond at the finest, as tokio's
/// timer is), coarse enough that a few sessions do not wake it for nothing.
fn step(period: Duration, sessions: usize) -> Duration {
    (period / u32::try_from(sessions.max(1)).unwrap_or(u32::MAX))
        .clamp(Duration::from_millis(1), Duration::from_millis(50))
}

/// Sends `nudge` to each of `mailboxes` once every `period`, session `i` at `i / n` of the way
/// through it, until `stop`. Returns the nudges missed because a mailbox was full (its session
/// still busy with earlier ones). A zero period sends nothing.
pub async fn pace(
    mailboxes: &[mpsc::Sender<Nudge>],
    nudge: Nudge,
    period: Duration,
    stop: CancellationToken,
) -> u64 {
    let n = mailboxes.len();
    if n == 0 || period.is_zero() {
        stop.cancelled().await;
        return 0;
    }
    let mut tick = tokio::time::interval(step(period, n));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let started = Instant::now();
    let (mut sent, mut missed) = (0u128, 0u64);
    loop {
        tokio::select! {
            () = stop.cancelled() => return missed,
            _ = tick.tick() => {}
        }
        // Session i's k-th turn comes at (k + i / n) periods.
        let due = started.elapsed().as_nanos() * n as u128 / period.as_nanos() + 1;
        while sent < due {
            let to = &mailboxes[(sent % n as u128) as usize];
            if let Err(mpsc::error::TrySendError::Full(_)) = to.try_send(nudge) {
                missed += 1;
            }
            sent += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_spreads_nudges_within_tokio_timer_bounds() {
        let s = Duration::from_secs;
        assert_eq!(step(s(1), 5_000), Duration::from_millis(1));
        assert_eq!(step(s(1), 100), Duration::from_millis(10));
        assert_eq!(step(s(10), 2), Duration::from_millis(50));
        assert_eq!(step(s(1), 0), Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn every_session_is_nudged_once_a_period_in_turn() {
        let (senders, mut receivers): (Vec<_>, Vec<_>) = (0..10).map(|_| mailbox()).unzip();
        let stop = CancellationToken::new();
        let pacer = tokio::spawn({
            let stop = stop.clone();
            async move { pace(&senders, Nudge::Exchange, Duration::from_secs(1), stop).await }
        });
        // Just under half a period: sessions 0 to 4 have had their turn, the others not yet.
        tokio::time::sleep(Duration::from_millis(450)).await;
        let nudged: Vec<bool> = receivers.iter_mut().map(|r| r.try_recv().is_ok()).collect();
        assert_eq!(
            nudged,
            [true, true, true, true, true, false, false, false, false, false]
        );
        // Two periods later each has had two more, and nothing was missed (each took its nudges).
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        for r in &mut receivers {
            assert_eq!(
                (r.try_recv(), r.try_recv()),
                (Ok(Nudge::Exchange), Ok(Nudge::Exchange))
            );
            assert!(r.try_recv().is_err());
        }
        stop.cancel();
        assert_eq!(pacer.await.expect("pacer"), 0);
    }
}

//! The loop every remote sink runs (NATS JetStream, Kafka): batches pipelined to the remote
//! system, each job completed only when the remote side confirmed it, failures sent again.
//!
//! Owns: taking jobs while the remote side is ready, at most `max_in_flight` sends awaiting
//! their confirmation, sending failed batches again (before any new one) after a growing delay,
//! readiness and write-error accounting, the throttled logs. Must never: connect, or wait on a
//! connection: the sink's own link tasks do that and publish readiness on a `watch`. While the
//! remote side is down it holds at most `max_in_flight` jobs and sends none, so the bounded sink
//! queue fills, data streams stop reading and meters keep their batches in their spools.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{SinkContext, SinkJob, SinkOutcome};
use crate::telemetry::{BatchStored, LogThrottle, SinkSendFailed};

/// Delay before re-sending after the first failure; doubles up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
pub const RETRY_MAX: Duration = Duration::from_secs(2);

/// A send in progress: resolves with its job, how it went, and when it started.
pub type Sending<D, F> = Pin<Box<dyn Future<Output = (SinkJob, Result<D, F>, Instant)> + Send>>;

/// What to do about a failed send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failed {
    /// Transient (unreachable, timed out, no leader): send the batch again later.
    Retry,
    /// The remote side refused in a way that may need the sink to look again (a stream that
    /// went away): send again later, and ask the sink's link to re-check.
    RetryAndRecheck,
    /// The batch can never be stored there (larger than the remote side takes): nack it.
    Reject(String),
}

/// One remote sink, as the loop sees it.
pub trait Remote: Send + Sync + 'static {
    /// What a successful send returns.
    type Delivered: Send + 'static;
    /// Why a send failed.
    type Failure: std::fmt::Display + Send + 'static;

    /// Name for logs ("NATS", "Kafka").
    fn name(&self) -> &'static str;

    /// Starts sending `job`'s batch.
    fn send(&self, job: SinkJob) -> Sending<Self::Delivered, Self::Failure>;

    /// How to treat `failure` of `job`.
    fn judge(&self, failure: &Self::Failure, job: &SinkJob) -> Failed;

    /// Asks the sink's link to look at the remote side again (after `Failed::RetryAndRecheck`).
    fn recheck(&self) {}

    /// Counts a confirmed send (metrics beyond the common ones).
    fn delivered(&self, _delivered: &Self::Delivered, _ctx: &SinkContext) {}
}

/// The growing delay between re-sends, reset by a success.
#[derive(Debug)]
pub struct RetryDelay {
    next: Duration,
}

impl Default for RetryDelay {
    fn default() -> Self {
        Self { next: RETRY_FIRST }
    }
}

impl RetryDelay {
    pub fn take(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(RETRY_MAX);
        d
    }

    pub fn reset(&mut self) {
        self.next = RETRY_FIRST;
    }
}

/// Runs until the job queue is closed and every job held is settled, or `ctx.abandon` fires
/// (what is left is then dropped unacked: meters send it again). `ready` is the link's view.
pub async fn run<R: Remote>(
    remote: &R,
    mut jobs: mpsc::Receiver<SinkJob>,
    ctx: &SinkContext,
    mut ready: watch::Receiver<bool>,
    max_in_flight: usize,
) {
    let name = remote.name();
    let throttle = LogThrottle::new(Duration::from_secs(10), 8);
    let mut in_flight = FuturesUnordered::new();
    let mut resend: VecDeque<SinkJob> = VecDeque::new();
    let mut resend_at: Option<Instant> = None;
    let mut delay = RetryDelay::default();
    let mut queue_open = true;
    let mut was_up = ctx.health.is_healthy();
    loop {
        let up = *ready.borrow_and_update();
        if up != was_up {
            // Ready: connected and checked (a failing send says otherwise below). Down: not
            // ready until the link is back.
            if up {
                info!("{name} sink ready");
            } else {
                warn!("{name} sink not ready: holding acks (meters keep their data) until it is");
            }
            ctx.health.set(up);
            was_up = up;
        }
        let may_send = up && resend_at.is_none_or(|t| t <= Instant::now());
        if may_send {
            resend_at = None;
            while in_flight.len() < max_in_flight
                && let Some(job) = resend.pop_front()
            {
                in_flight.push(remote.send(job));
            }
        }
        ctx.metrics.sink.sink_in_flight.set(in_flight.len() as i64);
        if !queue_open && resend.is_empty() && in_flight.is_empty() {
            break;
        }
        // Jobs are taken while fewer than max_in_flight are held here, even when they cannot be
        // sent yet (they wait behind the re-sends): so a closed, empty queue is noticed at
        // shutdown whatever the link is doing, and what is held stays bounded.
        let take_new = queue_open && in_flight.len() + resend.len() < max_in_flight;
        tokio::select! {
            biased;
            _ = ctx.abandon.cancelled() => break,
            Some((job, result, started)) = in_flight.next(), if !in_flight.is_empty() => {
                match result {
                    Ok(delivered) => {
                        delay.reset();
                        if up && !ctx.health.is_healthy() {
                            info!("{name} sink: sends are confirmed again");
                            ctx.health.set(true);
                        }
                        let m = &ctx.metrics;
                        m.sink.sink_ack_seconds.observe(started.elapsed().as_secs_f64());
                        remote.delivered(&delivered, ctx);
                        BatchStored {
                            org: &job.batch.org,
                            records: job.batch.records,
                            bytes: job.batch.payload.len(),
                        }
                        .emit(m);
                        job.complete(SinkOutcome::Stored);
                    }
                    Err(failure) => match remote.judge(&failure, &job) {
                        Failed::Reject(why) => {
                            warn!(org = %job.batch.org, "{why}; refusing the batch");
                            job.complete(SinkOutcome::Rejected(why));
                        }
                        judged => {
                            if judged == Failed::RetryAndRecheck {
                                remote.recheck();
                            }
                            SinkSendFailed {
                                sink: name,
                                error: &failure,
                                log: &throttle,
                            }
                            .emit(&ctx.metrics);
                            ctx.health.set(false);
                            resend.push_back(job);
                            if resend_at.is_none() {
                                resend_at = Some(Instant::now() + delay.take());
                            }
                        }
                    },
                }
            }
            changed = ready.changed() => if changed.is_err() { break },
            _ = sleep_until(resend_at), if up && resend_at.is_some() => {}
            job = jobs.recv(), if take_new => match job {
                Some(job) if may_send && resend.is_empty() => in_flight.push(remote.send(job)),
                Some(job) => resend.push_back(job),
                None => queue_open = false,
            },
        }
    }
    ctx.metrics.sink.sink_in_flight.set(0);
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resend_delays_grow_to_a_cap_and_reset() {
        let mut d = RetryDelay::default();
        let seen: Vec<_> = (0..8).map(|_| d.take()).collect();
        assert_eq!(seen[0], RETRY_FIRST);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(seen.last().copied(), Some(RETRY_MAX));
        d.reset();
        assert_eq!(d.take(), RETRY_FIRST);
    }
}

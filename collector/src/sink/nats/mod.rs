//! The NATS JetStream sink: for a fleet of collectors feeding one replicated stream.
//!
//! Each batch becomes one message on `PREFIX.ORG` with `Nats-Msg-Id = ORG:METER_ID:SEQ` and identity
//! headers ([`stream`]); the job completes (and the meter gets its ack) only when JetStream has
//! acknowledged that publish. Up to `max_in_flight` publishes are pipelined. A publish that fails
//! or is not acked in time is sent again with the same id, after a growing delay, before any new
//! batch: JetStream drops the copy if the first one did land.
//!
//! The loop here only takes jobs, starts publishes and settles acks; it never connects or waits
//! on a connection ([`link`] owns that, on tasks of its own). While the link is down it holds at
//! most `max_in_flight` jobs and sends none, so the bounded sink queue fills, data streams stop
//! reading and meters keep their batches in their spools: memory held is the queue's bound (its
//! byte budget covers every job until it settles), nothing more.

pub mod consume;
pub mod link;
pub mod stream;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::link::{EnsureError, Link, LinkError};
use super::{Sink, SinkContext, SinkJob, SinkOutcome};
use crate::config::NatsSinkConfig;
use crate::telemetry::LogThrottle;

/// Delay before re-sending after the first failure; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What the sink found at start.
#[derive(Debug)]
pub struct NatsStart {
    /// The servers' `max_payload`, if a server answered at start.
    pub max_payload: Option<usize>,
    /// The largest data frame whose batch fits one message: `limits.max_frame_bytes`, lowered to
    /// fit `max_payload` (NATS' default 1 MiB when no server answered).
    pub max_frame_bytes: usize,
}

pub struct NatsSink {
    link: Link,
    config: NatsSinkConfig,
    collector_id: Arc<str>,
    max_message_bytes: usize,
    /// Connected with the stream checked when `open` returned.
    ready_at_start: bool,
}

impl NatsSink {
    /// Starts the client and, if a server answers within `connect_timeout_ms`, makes sure the
    /// stream exists and fits. A stream that does not fit is an error; an unreachable NATS is
    /// not (the collector starts not-ready and keeps trying). `limit_frame_bytes` is
    /// `limits.max_frame_bytes`.
    pub async fn open(
        config: &NatsSinkConfig,
        collector_id: &str,
        limit_frame_bytes: usize,
    ) -> Result<(Self, NatsStart), LinkError> {
        let link = link::start(config, collector_id).await?;
        let wait = Duration::from_millis(config.connect_timeout_ms);
        let reachable = link.wait_connected(wait).await;
        let max_payload = link
            .client
            .try_server_info()
            .map(|info| info.max_payload)
            .filter(|m| *m > 0 && reachable);
        let fits = stream::max_frame_for_payload(max_payload.unwrap_or(stream::NATS_DEFAULT_MAX_PAYLOAD));
        let start = NatsStart {
            max_payload,
            max_frame_bytes: limit_frame_bytes.min(fits),
        };
        let max_message_bytes = start.max_frame_bytes + stream::MESSAGE_OVERHEAD_BYTES;
        let mut ready_at_start = false;
        if reachable {
            match tokio::time::timeout(wait, link::ensure_stream(&link.js, config, max_message_bytes)).await {
                Ok(Err(EnsureError::Mismatch(mismatch))) => return Err(mismatch.into()),
                Ok(Ok(notes)) => {
                    for note in notes {
                        warn!(stream = %config.stream, "JetStream stream {note}");
                    }
                    ready_at_start = true;
                }
                Ok(Err(EnsureError::Unavailable(why))) => {
                    warn!(%why, "JetStream did not answer at start; starting not ready and retrying");
                }
                Err(_) => warn!("JetStream did not answer at start; starting not ready and retrying"),
            }
        } else if link.auth_refused.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(LinkError::AuthRefused);
        } else {
            warn!(
                servers = ?link::loggable_servers(&config.servers),
                "NATS is not reachable; starting not ready (new meters are told to retry) and connecting in the background"
            );
        }
        Ok((
            NatsSink {
                link,
                config: config.clone(),
                collector_id: Arc::from(collector_id),
                max_message_bytes,
                ready_at_start,
            },
            start,
        ))
    }
}

/// One publish awaiting its ack: the job comes back with the outcome.
type Settled = (SinkJob, Result<PublishAck, PublishError>, Instant);

fn publish(
    js: &async_nats::jetstream::Context,
    prefix: &str,
    collector_id: &str,
    job: SinkJob,
) -> impl std::future::Future<Output = Settled> + Send + 'static {
    let js = js.clone();
    let subject = stream::subject(prefix, &job.batch.org);
    let message = PublishMessage::build()
        .payload(job.batch.payload.clone())
        .headers(stream::headers(&job.batch, collector_id));
    async move {
        let started = Instant::now();
        let result = match js.send_publish(subject, message).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        (job, result, started)
    }
}

/// The growing delay between re-sends, reset by a success.
struct RetryDelay {
    next: Duration,
}

impl RetryDelay {
    fn new() -> Self {
        Self { next: RETRY_FIRST }
    }

    fn take(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(RETRY_MAX);
        d
    }

    fn reset(&mut self) {
        self.next = RETRY_FIRST;
    }
}

impl NatsSink {
    /// Whether the sink can store the moment it runs (NATS answered and the stream fits).
    pub fn ready_at_start(&self) -> bool {
        self.ready_at_start
    }

    async fn publish_loop(self, mut jobs: mpsc::Receiver<SinkJob>, ctx: SinkContext) {
        let _task = ctx.metrics.task("nats_sink");
        let (ready_tx, mut ready) = watch::channel(self.ready_at_start);
        let recheck = Arc::new(Notify::new());
        let stop_link = CancellationToken::new();
        let supervisor = tokio::spawn(link::supervise(
            self.link.clone(),
            self.config.clone(),
            self.max_message_bytes,
            ready_tx,
            self.ready_at_start,
            Arc::clone(&recheck),
            stop_link.clone(),
        ));
        let throttle = LogThrottle::new(Duration::from_secs(10), 8);
        let max_in_flight = self.config.max_in_flight;
        let mut in_flight = FuturesUnordered::new();
        let mut resend: VecDeque<SinkJob> = VecDeque::new();
        let mut resend_at: Option<Instant> = None;
        let mut delay = RetryDelay::new();
        let mut queue_open = true;
        let mut was_up = self.ready_at_start;
        loop {
            let up = *ready.borrow_and_update();
            if up != was_up {
                // Connected with the stream checked: ready for meters (a failing publish says
                // otherwise below). Down: not ready until the link is back.
                if up {
                    info!("NATS sink ready");
                } else {
                    warn!("NATS sink not ready: holding acks (meters keep their data) until it is");
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
                    in_flight.push(self.start(job));
                }
            }
            ctx.metrics.sink_in_flight.set(in_flight.len() as i64);
            if !queue_open && resend.is_empty() && in_flight.is_empty() {
                break;
            }
            // Jobs are taken while fewer than max_in_flight are held here, even when they cannot
            // be sent yet (they wait behind the re-sends): so a closed, empty queue is noticed
            // at shutdown whatever the link is doing, and what is held stays bounded.
            let take_new = queue_open && in_flight.len() + resend.len() < max_in_flight;
            tokio::select! {
                biased;
                _ = ctx.abandon.cancelled() => break,
                Some((job, result, started)) = in_flight.next(), if !in_flight.is_empty() => {
                    match result {
                        Ok(ack) => {
                            delay.reset();
                            if up && !ctx.health.is_healthy() {
                                info!("NATS sink: publishes are acknowledged again");
                                ctx.health.set(true);
                            }
                            self.stored(job, &ack, started, &ctx);
                        }
                        Err(error) => {
                            if error.kind() == PublishErrorKind::MaxPayloadExceeded {
                                let why = format!(
                                    "batch of {} bytes is larger than the NATS servers' max_payload",
                                    job.batch.payload.len()
                                );
                                warn!(org = %job.batch.org, "{why}; refusing it (raise max_payload on the servers or lower limits.max_frame_bytes)");
                                job.complete(SinkOutcome::Rejected(why));
                                continue;
                            }
                            // JetStream answered no (stream gone, sealed, message too large for
                            // it): look at the stream again, so the reason is logged and the
                            // stream re-created if it went away.
                            if !matches!(error.kind(), PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe) {
                                recheck.notify_one();
                            }
                            ctx.metrics.sink_write_errors.inc();
                            ctx.health.set(false);
                            if let Some(suppressed) = throttle.check("publish", Instant::now()) {
                                warn!(%error, suppressed, "NATS publish failed; holding the batch (not acked) and sending it again");
                            }
                            resend.push_back(job);
                            if resend_at.is_none() {
                                resend_at = Some(Instant::now() + delay.take());
                            }
                        }
                    }
                }
                changed = ready.changed() => if changed.is_err() { break },
                _ = sleep_until(resend_at), if up && resend_at.is_some() => {}
                job = jobs.recv(), if take_new => match job {
                    Some(job) if may_send && resend.is_empty() => in_flight.push(self.start(job)),
                    Some(job) => resend.push_back(job),
                    None => queue_open = false,
                },
            }
        }
        // Whatever is left is dropped unacked (meters send it again); make sure what was
        // published leaves the client before it goes.
        ctx.metrics.sink_in_flight.set(0);
        stop_link.cancel();
        let _ = supervisor.await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.link.client.flush()).await;
    }

    fn start(&self, job: SinkJob) -> impl std::future::Future<Output = Settled> + Send + 'static {
        publish(
            &self.link.js,
            &self.config.subject_prefix,
            &self.collector_id,
            job,
        )
    }

    fn stored(&self, job: SinkJob, ack: &PublishAck, started: Instant, ctx: &SinkContext) {
        let m = &ctx.metrics;
        m.sink_ack_seconds.observe(started.elapsed().as_secs_f64());
        if ack.duplicate {
            m.sink_duplicates.inc();
        }
        m.stored(&job.batch.org, job.batch.records, job.batch.payload.len());
        job.complete(SinkOutcome::Stored);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Sink for NatsSink {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn run(self, jobs: mpsc::Receiver<SinkJob>, ctx: SinkContext) {
        self.publish_loop(jobs, ctx).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resend_delays_grow_to_a_cap_and_reset() {
        let mut d = RetryDelay::new();
        let seen: Vec<_> = (0..8).map(|_| d.take()).collect();
        assert_eq!(seen[0], RETRY_FIRST);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*seen.last().unwrap(), RETRY_MAX);
        d.reset();
        assert_eq!(d.take(), RETRY_FIRST);
    }
}

//! The NATS JetStream sink: for a fleet of collectors feeding one replicated stream.
//!
//! Each batch becomes one message on `PREFIX.ORG` with `Nats-Msg-Id = ORG:METER_ID:SEQ` and identity
//! headers ([`stream`]); the job completes (and the meter gets its ack) only when JetStream has
//! acknowledged that publish. Up to `max_in_flight` publishes are pipelined. A publish that fails
//! or is not acked in time is sent again with the same id, after a growing delay, before any new
//! batch: JetStream drops the copy if the first one did land.
//!
//! The loop is the remote sinks' shared [`pipeline`](super::pipeline): it only takes jobs,
//! starts publishes and settles acks; it never connects or waits on a connection ([`link`] owns
//! that, on tasks of its own). This module says how a publish is made and how its failures are
//! judged.

pub mod config;
pub mod consume;
pub mod link;
pub mod stream;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use ringflow_ops::ConfigError;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::link::{EnsureError, Link, LinkError};
use super::entry::{Found, OpenError, Opened, ReadError, SinkEntry, SinkSite};
use super::file::store::RecoveryReport;
use super::pipeline::{self, Failed, Remote, Sending};
use super::{ConfiguredSink, Sink, SinkContext, SinkJob};
pub use config::{NatsSinkConfig, Secret};

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

impl NatsSink {
    async fn publish_loop(self, jobs: mpsc::Receiver<SinkJob>, ctx: SinkContext) {
        let _task = ctx.metrics.task(crate::telemetry::Task::NatsSink);
        let (ready_tx, ready) = watch::channel(self.ready_at_start);
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
        let remote = Publisher {
            js: self.link.js.clone(),
            prefix: self.config.subject_prefix.clone(),
            collector_id: Arc::clone(&self.collector_id),
            recheck,
        };
        pipeline::run(&remote, jobs, &ctx, ready, self.config.max_in_flight).await;
        // Whatever is left is dropped unacked (meters send it again); make sure what was
        // published leaves the client before it goes.
        stop_link.cancel();
        let _ = supervisor.await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.link.client.flush()).await;
    }
}

/// Publishes batches to JetStream for the pipeline.
struct Publisher {
    js: async_nats::jetstream::Context,
    prefix: String,
    collector_id: Arc<str>,
    recheck: Arc<Notify>,
}

impl Remote for Publisher {
    type Delivered = PublishAck;
    type Failure = PublishError;

    fn name(&self) -> &'static str {
        "NATS"
    }

    fn send(&self, job: SinkJob) -> Sending<PublishAck, PublishError> {
        let js = self.js.clone();
        let subject = stream::subject(&self.prefix, &job.batch.org);
        let message = PublishMessage::build()
            .payload(job.batch.payload.clone())
            .headers(stream::headers(&job.batch, &self.collector_id));
        Box::pin(async move {
            let started = Instant::now();
            let result = match js.send_publish(subject, message).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            (job, result, started)
        })
    }

    fn judge(&self, failure: &PublishError, job: &SinkJob) -> Failed {
        match failure.kind() {
            PublishErrorKind::MaxPayloadExceeded => Failed::Reject(format!(
                "batch of {} bytes is larger than the NATS servers' max_payload (raise max_payload on the servers or lower limits.max_frame_bytes)",
                job.batch.payload.len()
            )),
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => Failed::Retry,
            // JetStream answered no (stream gone, sealed, message too large for it): look at the
            // stream again, so the reason is logged and the stream re-created if it went away.
            _ => Failed::RetryAndRecheck,
        }
    }

    fn recheck(&self) {
        self.recheck.notify_one();
    }

    fn delivered(&self, ack: &PublishAck, ctx: &SinkContext) {
        if ack.duplicate {
            ctx.metrics.sink.sink_duplicates.inc();
        }
    }
}

impl Sink for NatsSink {
    fn kind(&self) -> &'static str {
        "nats"
    }

    /// Whether the sink can store the moment it runs (NATS answered and the stream fits).
    fn ready_at_start(&self) -> bool {
        self.ready_at_start
    }

    async fn run(self, jobs: mpsc::Receiver<SinkJob>, ctx: SinkContext) {
        self.publish_loop(jobs, ctx).await;
    }
}

/// The NATS sink's entry in the registry.
pub struct NatsEntry;

impl SinkEntry for NatsEntry {
    type Config = NatsSinkConfig;

    fn validate(config: &NatsSinkConfig) -> Result<(), ConfigError> {
        config.validate()
    }

    fn paths_mut(config: &mut NatsSinkConfig) -> Vec<&mut std::path::PathBuf> {
        config.paths_mut().collect()
    }

    async fn open(config: &NatsSinkConfig, site: &SinkSite) -> Result<Opened, OpenError> {
        let limit = site.max_frame_bytes;
        // No store here, but the endpoint keys live in data_dir.
        site.create_data_dir()?;
        let (sink, start) = NatsSink::open(config, &site.collector_id, limit as usize)
            .await
            .map_err(|e| OpenError::Sink {
                what: "cannot use the NATS sink",
                error: Box::new(e),
                config_fault: true,
            })?;
        let fits = u32::try_from(start.max_frame_bytes).unwrap_or(limit);
        if fits < limit {
            info!(
                max_frame_bytes = fits,
                nats_max_payload = start.max_payload,
                "limits.max_frame_bytes lowered so that every batch fits one NATS message"
            );
        }
        Ok((ConfiguredSink::new(sink), RecoveryReport::default(), fits))
    }

    /// Reads the stream with an ordered consumer, on a runtime of its own.
    fn read_back(
        config: &NatsSinkConfig,
        _: &SinkSite,
        org: Option<&str>,
        follow: bool,
        found: &mut dyn FnMut(Found<'_>) -> ControlFlow<()>,
    ) -> Result<(), ReadError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ReadError::new(format!("cannot start the async runtime: {e}")))?;
        runtime
            .block_on(consume::read_stream(config, org, follow, |message| {
                let place = || format!("stream message {} on {}", message.stream_seq, message.subject);
                match &message.batch {
                    Ok(batch) => found(Found::Batch(batch)),
                    Err(why) => found(Found::Problem(format!("{}: {why}; skipped", place()))),
                }
            }))
            .map_err(ReadError::new)
    }
}

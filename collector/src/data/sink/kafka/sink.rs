//! The Kafka producer sink (built with the `kafka` feature): the producer's configuration, its
//! opening, and how a record is sent and its failures judged.
//!
//! Must never: block the pipeline's loop; librdkafka's own threads connect and reconnect.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::future_producer::Delivery;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::config::KafkaSinkConfig;
use super::health::{self, KafkaContext};
use crate::data::sink::pipeline::{self, Failed, Remote, Sending};
use crate::data::sink::{Sink, SinkContext, SinkJob, identity};

#[derive(Debug, thiserror::Error)]
pub enum KafkaOpenError {
    #[error("sink.kafka: librdkafka refused the producer configuration: {0} (check sink.kafka.properties)")]
    Config(String),
}

/// What the sink found at start.
#[derive(Debug)]
pub struct KafkaStart {
    /// The largest data frame whose batch fits one record: `limits.max_frame_bytes`, lowered to
    /// fit `sink.kafka.max_message_bytes`.
    pub max_frame_bytes: usize,
}

pub struct KafkaSink {
    producer: FutureProducer<KafkaContext>,
    config: KafkaSinkConfig,
    collector_id: Arc<str>,
    ready: watch::Receiver<bool>,
    ready_at_start: bool,
}

/// The producer's librdkafka properties: the operator's pass-through `properties` first, then
/// what the sink insists on (validation refuses an operator value for any of these).
pub fn producer_config(config: &KafkaSinkConfig, collector_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (key, value) in &config.properties {
        c.set(key, value);
    }
    c.set("bootstrap.servers", config.brokers.join(","))
        .set("client.id", format!("ringflow-collector-{collector_id}"))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", config.compression.as_str())
        .set("linger.ms", config.linger_ms.to_string())
        .set("message.timeout.ms", config.message_timeout_ms.to_string())
        .set("message.max.bytes", config.max_message_bytes.to_string())
        .set("statistics.interval.ms", config.health_interval_ms.to_string());
    c
}

impl KafkaSink {
    /// Creates the producer and, within `connect_timeout_ms`, asks the cluster for its metadata.
    /// A configuration librdkafka refuses is an error; an unreachable cluster is not (the
    /// collector starts not-ready and the producer keeps trying). `limit_frame_bytes` is
    /// `limits.max_frame_bytes`.
    pub async fn open(
        config: &KafkaSinkConfig,
        collector_id: &str,
        limit_frame_bytes: usize,
    ) -> Result<(Self, KafkaStart), KafkaOpenError> {
        let (ready_tx, ready) = watch::channel(false);
        let ready_tx = Arc::new(ready_tx);
        let producer: FutureProducer<KafkaContext> = producer_config(config, collector_id)
            .create_with_context(KafkaContext::new(Arc::clone(&ready_tx)))
            .map_err(|e| KafkaOpenError::Config(refused_property(&e)))?;
        let start = KafkaStart {
            max_frame_bytes: limit_frame_bytes.min(identity::max_frame_for_message(config.max_message_bytes)),
        };
        let probe = producer.clone();
        let ours = config.clone();
        let topic = (!config.per_org_topics()).then(|| config.topic.clone());
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        let answered = tokio::task::spawn_blocking(move || {
            probe.client().fetch_metadata(topic.as_deref(), timeout).map(|m| {
                let leaderless = m
                    .topics()
                    .iter()
                    .filter(|t| ours.is_topic(t.name()))
                    .flat_map(|t| {
                        t.partitions()
                            .iter()
                            .map(move |p| (t.name().to_owned(), p.leader()))
                    })
                    .filter(|(_, leader)| *leader < 0)
                    .count();
                let missing = m
                    .topics()
                    .iter()
                    .any(|t| ours.is_topic(t.name()) && t.error().is_some());
                (m.brokers().len(), leaderless, missing)
            })
        })
        .await;
        let ready_at_start = match answered {
            Ok(Ok((brokers, 0, false))) => {
                info!(brokers, topic = %config.topic, "Kafka cluster answered");
                true
            }
            Ok(Ok((brokers, leaderless, missing))) => {
                warn!(
                    brokers,
                    leaderless,
                    topic = %config.topic,
                    topic_missing = missing,
                    "Kafka answered, but the topic is missing (it must be created, or the cluster must create topics on first use) or has partitions without a leader"
                );
                leaderless == 0
            }
            _ => {
                warn!(
                    brokers = ?config.brokers,
                    "Kafka did not answer at start; starting not ready (new meters are told to retry) and connecting in the background"
                );
                false
            }
        };
        health::set_ready(&ready_tx, ready_at_start);
        Ok((
            KafkaSink {
                producer,
                config: config.clone(),
                collector_id: Arc::from(collector_id),
                ready,
                ready_at_start,
            },
            start,
        ))
    }
}

/// Produces batches for the pipeline.
struct Producing {
    producer: FutureProducer<KafkaContext>,
    config: KafkaSinkConfig,
    collector_id: Arc<str>,
}

impl Remote for Producing {
    type Delivered = Delivery;
    type Failure = KafkaError;

    fn name(&self) -> &'static str {
        "Kafka"
    }

    fn send(&self, job: SinkJob) -> Sending<Delivery, KafkaError> {
        let started = Instant::now();
        let topic = self.config.topic_for(&job.batch.org);
        let headers = identity::headers(&job.batch, &self.collector_id).iter().fold(
            OwnedHeaders::new_with_capacity(6),
            |h, (key, value)| {
                h.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                })
            },
        );
        let record = FutureRecord::to(&topic)
            .key(job.batch.org.as_bytes())
            .payload(&job.batch.payload[..])
            .headers(headers);
        // Copies the record into librdkafka's queue at once (never blocks); the report comes later.
        let delivery = self.producer.send_result(record).map_err(|(error, _)| error);
        Box::pin(async move {
            let result = match delivery {
                Ok(report) => match report.await {
                    Ok(Ok(delivered)) => Ok(delivered),
                    Ok(Err((error, _))) => Err(error),
                    Err(_) => Err(KafkaError::Canceled),
                },
                Err(error) => Err(error),
            };
            (job, result, started)
        })
    }

    fn judge(&self, failure: &KafkaError, job: &SinkJob) -> Failed {
        let too_large = matches!(
            failure.rdkafka_error_code(),
            Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
        );
        // Only a batch larger than the sink's own limit can never be stored. The broker refuses
        // a whole message set when it is over the topic's limit, so a smaller batch in it is
        // sent again (the sink not ready meanwhile): a topic limit below
        // sink.kafka.max_message_bytes holds acks rather than losing batches.
        if too_large
            && job.batch.payload.len() + identity::MESSAGE_OVERHEAD_BYTES > self.config.max_message_bytes
        {
            Failed::Reject(format!(
                "batch of {} bytes is larger than sink.kafka.max_message_bytes allows (raise it with the topic's max.message.bytes, or lower limits.max_frame_bytes)",
                job.batch.payload.len()
            ))
        } else {
            Failed::Retry
        }
    }
}

impl Sink for KafkaSink {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    /// Whether the sink can store the moment it runs (the cluster answered at start).
    fn ready_at_start(&self) -> bool {
        self.ready_at_start
    }

    async fn run(self, jobs: mpsc::Receiver<SinkJob>, ctx: SinkContext) {
        let _task = ctx.metrics.task(crate::telemetry::Task::KafkaSink);
        let remote = Producing {
            producer: self.producer,
            config: self.config,
            collector_id: self.collector_id,
        };
        pipeline::run(&remote, jobs, &ctx, self.ready, remote.config.max_in_flight).await;
        // What was handed to librdkafka and not yet reported is given a moment to leave; it is
        // unacked either way, so meters send it again if it did not. Dropping the producer
        // joins librdkafka's threads: on the blocking pool too.
        let _ = tokio::task::spawn_blocking(move || {
            let _ = remote.producer.flush(Duration::from_secs(2));
            drop(remote);
        })
        .await;
    }
}

/// What librdkafka refused in a configuration, without the value (it may be a password): the
/// property it names, if any.
pub fn refused_property(error: &KafkaError) -> String {
    match error {
        KafkaError::ClientConfig(_, _, key, _) => {
            format!(
                "property {key:?} has an unknown name or a value it does not take (the value is not shown)"
            )
        }
        _ => "librdkafka could not create its client with these properties (values are not shown)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_producer_keeps_its_guarantees_and_passes_the_rest_through() {
        let mut config = KafkaSinkConfig::default();
        config
            .properties
            .insert("security.protocol".into(), "sasl_ssl".into());
        config.brokers = vec!["k1:9092".into(), "k2:9092".into()];
        let c = producer_config(&config, "c1");
        assert_eq!(c.get("bootstrap.servers"), Some("k1:9092,k2:9092"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("compression.type"), Some("lz4"));
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
    }

    #[test]
    fn a_refused_property_is_named_and_its_value_never_shown() {
        let error = KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value \"hunter2\" for configuration property \"sasl.password\"".into(),
            "sasl.password".into(),
            "hunter2".into(),
        );
        let said = refused_property(&error);
        assert!(
            said.contains("sasl.password") && !said.contains("hunter2"),
            "{said}"
        );
        assert!(!refused_property(&KafkaError::ClientCreation("hunter2".into())).contains("hunter2"));
    }
}

//! The Kafka sink: for a fleet of collectors feeding the Kafka cluster a flow pipeline already
//! runs.
//!
//! Each batch becomes one record on the configured topic (or the org's, `{org}` in the
//! template) with key = org, so one org's batches stay in order in one partition, and the
//! identity headers ([`super::identity`]); the payload is the `StoredBatch`. The producer is
//! idempotent with `acks=all`; a job completes (and the meter gets its ack) only on Kafka's
//! delivery report for that record. The loop is the remote sinks' shared
//! [`pipeline`](super::pipeline): at most `max_in_flight` records awaiting their report, a
//! failed delivery sent again after a growing delay, never dropped. librdkafka connects,
//! reconnects and refreshes metadata on its own threads, so none of that blocks the loop;
//! readiness comes from its statistics ([`health`]).

pub mod config;
#[cfg(feature = "kafka")]
pub mod consume;
#[cfg(feature = "kafka")]
pub mod health;
#[cfg(feature = "kafka")]
mod sink;

use std::ops::ControlFlow;

use ringflow_ops::ConfigError;

pub use self::config::{KafkaCompression, KafkaSinkConfig};
use super::entry::{Found, OpenError, Opened, ReadError, SinkEntry, SinkSite};
#[cfg(feature = "kafka")]
pub use sink::{KafkaOpenError, KafkaSink, KafkaStart, producer_config, refused_property};

/// The Kafka sink's entry in the registry. Its table is read and checked in every build; a
/// collector built without the `kafka` feature refuses to open or read it, saying why.
pub struct KafkaEntry;

impl SinkEntry for KafkaEntry {
    type Config = KafkaSinkConfig;

    fn validate(config: &KafkaSinkConfig) -> Result<(), ConfigError> {
        config.validate()
    }

    async fn open(config: &KafkaSinkConfig, site: &SinkSite) -> Result<Opened, OpenError> {
        open(config, site).await
    }

    fn read_back(
        config: &KafkaSinkConfig,
        _: &SinkSite,
        org: Option<&str>,
        follow: bool,
        found: &mut dyn FnMut(Found<'_>) -> ControlFlow<()>,
    ) -> Result<(), ReadError> {
        read_back(config, org, follow, found)
    }
}

/// Opens the producer; the largest data frame is lowered so that every batch fits one record.
#[cfg(feature = "kafka")]
async fn open(config: &KafkaSinkConfig, site: &SinkSite) -> Result<Opened, OpenError> {
    let limit = site.max_frame_bytes;
    // No store here, but the endpoint keys live in data_dir.
    site.create_data_dir()?;
    let (sink, start) = KafkaSink::open(config, &site.collector_id, limit as usize)
        .await
        .map_err(|e| OpenError::Sink {
            what: "cannot use the Kafka sink",
            error: Box::new(e),
            config_fault: true,
        })?;
    let fits = u32::try_from(start.max_frame_bytes).unwrap_or(limit);
    if fits < limit {
        tracing::info!(
            max_frame_bytes = fits,
            kafka_max_message_bytes = config.max_message_bytes,
            "limits.max_frame_bytes lowered so that every batch fits one Kafka record"
        );
    }
    Ok((
        super::ConfiguredSink::new(sink),
        super::file::store::RecoveryReport::default(),
        fits,
    ))
}

/// A collector built without the `kafka` feature cannot use the Kafka sink.
#[cfg(not(feature = "kafka"))]
async fn open(_: &KafkaSinkConfig, _: &SinkSite) -> Result<Opened, OpenError> {
    Err(OpenError::Config(ConfigError::invalid(
        "sink.kind",
        "\"kafka\" needs a collector built with the `kafka` feature (the default); this one was built without it",
    )))
}

/// Every record of the topic(s), oldest first per partition.
#[cfg(feature = "kafka")]
fn read_back(
    config: &KafkaSinkConfig,
    org: Option<&str>,
    follow: bool,
    found: &mut dyn FnMut(Found<'_>) -> ControlFlow<()>,
) -> Result<(), ReadError> {
    consume::read_topic(config, org, follow, |message| match &message.batch {
        Ok(batch) => found(Found::Batch(batch)),
        Err(why) => found(Found::Problem(format!(
            "record {}/{}@{}: {why}; skipped",
            message.topic, message.partition, message.offset
        ))),
    })
    .map_err(ReadError::new)
}

/// A collector built without the `kafka` feature cannot read a Kafka sink.
#[cfg(not(feature = "kafka"))]
fn read_back(
    _: &KafkaSinkConfig,
    _: Option<&str>,
    _: bool,
    _: &mut dyn FnMut(Found<'_>) -> ControlFlow<()>,
) -> Result<(), ReadError> {
    Err(ReadError::new(
        "sink.kind = \"kafka\" needs a collector built with the `kafka` feature (the default)",
    ))
}

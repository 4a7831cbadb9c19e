//! Reading the topic back: what `collector read --config` prints for a Kafka sink, and what the
//! tests check delivery with. A consumer with no group: it assigns itself every partition of the
//! topic (or of each org's topic) from the beginning and commits nothing, so reading changes
//! nothing in the cluster and does not wait for a group to form.

use std::ops::ControlFlow;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use ringflow_proto::pb;

use super::config::KafkaSinkConfig;
use crate::data::sink::identity::{HEADER_METER_ID, HEADER_SCHEMA, HEADER_SEQ};

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("sink.kafka: librdkafka refused the consumer configuration: {0}")]
    Config(String),
    #[error("no broker of sink.kafka.brokers {brokers:?} answered within {timeout:?}: {error}")]
    Unreachable {
        brokers: Vec<String>,
        timeout: Duration,
        error: String,
    },
    #[error("reading topic {topic:?} failed: {error}")]
    Read { topic: String, error: String },
}

/// One record of the topic.
#[derive(Debug)]
pub struct TopicBatch {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// `Ringflow-Meter-Id` and `Ringflow-Seq`: the de-duplication key.
    pub meter_id: Option<String>,
    pub seq: Option<u64>,
    pub batch: Result<pb::StoredBatch, String>,
}

/// Calls `each` for every record (of `org`, or of all orgs) in the topic(s), in order per
/// partition. Stops at the end of every partition as it was when reading started (unless
/// `follow`) or when `each` says so. Blocking: run it on a thread of its own.
pub fn read_topic(
    config: &KafkaSinkConfig,
    org: Option<&str>,
    follow: bool,
    mut each: impl FnMut(TopicBatch) -> ControlFlow<()>,
) -> Result<(), ConsumeError> {
    let consumer = reader(config)?;
    let mut ends = assign_partitions(&consumer, config, org, follow)?;
    if ends.is_empty() {
        return Ok(());
    }
    // Passing errors (a broker dropping a connection) are reported and read through; a run of
    // them with nothing read ends a bounded read.
    let mut errors_in_a_row = 0u32;
    while follow || !ends.all_read() {
        let Some(polled) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = match polled {
            Ok(message) => {
                errors_in_a_row = 0;
                message
            }
            Err(error) if follow || errors_in_a_row < 20 => {
                errors_in_a_row += 1;
                eprintln!("collector read: {error}; reading on");
                continue;
            }
            Err(error) => {
                return Err(ConsumeError::Read {
                    topic: config.topic.clone(),
                    error: error.to_string(),
                });
            }
        };
        ends.passed(&message);
        if org.is_some_and(|org| message.key() != Some(org.as_bytes())) {
            continue;
        }
        if each(topic_batch(&message)).is_break() {
            break;
        }
    }
    Ok(())
}

/// A consumer with the operator's properties (TLS, SASL) that joins no group and commits
/// nothing.
fn reader(config: &KafkaSinkConfig) -> Result<BaseConsumer, ConsumeError> {
    let mut c = ClientConfig::new();
    for (key, value) in &config.properties {
        c.set(key, value);
    }
    c.set("bootstrap.servers", config.brokers.join(","))
        .set("group.id", "ringflow-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| ConsumeError::Config(super::refused_property(&e)))
}

/// Where each assigned partition ends, as of the start: reading is done once every partition
/// has been read to there.
struct PartitionEnds {
    /// (topic, partition, high watermark at the start).
    ends: Vec<(String, i32, i64)>,
    /// The next offset to read in each.
    next: Vec<i64>,
}

impl PartitionEnds {
    fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn all_read(&self) -> bool {
        self.ends
            .iter()
            .zip(&self.next)
            .all(|((_, _, high), n)| n >= high)
    }

    /// Notes that `message` has been read.
    fn passed(&mut self, message: &BorrowedMessage<'_>) {
        if let Some(i) = self
            .ends
            .iter()
            .position(|(t, p, _)| t == message.topic() && *p == message.partition())
        {
            self.next[i] = message.offset() + 1;
        }
    }
}

/// Assigns the consumer every partition of the wanted topic(s) from the beginning: those that
/// hold records, or all of them when following.
fn assign_partitions(
    consumer: &BaseConsumer,
    config: &KafkaSinkConfig,
    org: Option<&str>,
    follow: bool,
) -> Result<PartitionEnds, ConsumeError> {
    let timeout = Duration::from_millis(config.connect_timeout_ms);
    let metadata = consumer
        .fetch_metadata(None, timeout)
        .map_err(|e| ConsumeError::Unreachable {
            brokers: config.brokers.clone(),
            timeout,
            error: e.to_string(),
        })?;
    let wanted = |topic: &str| match org {
        Some(org) => topic == config.topic_for(org),
        None => config.is_topic(topic),
    };
    let read_err = |topic: &str, e: rdkafka::error::KafkaError| ConsumeError::Read {
        topic: topic.to_owned(),
        error: e.to_string(),
    };
    let mut assignment = TopicPartitionList::new();
    let mut ends = Vec::new();
    for topic in metadata.topics().iter().filter(|t| wanted(t.name())) {
        for partition in topic.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic.name(), partition.id(), timeout)
                .map_err(|e| read_err(topic.name(), e))?;
            if high > low || follow {
                assignment
                    .add_partition_offset(topic.name(), partition.id(), Offset::Beginning)
                    .map_err(|e| read_err(topic.name(), e))?;
                ends.push((topic.name().to_owned(), partition.id(), high));
            }
        }
    }
    if !ends.is_empty() {
        consumer
            .assign(&assignment)
            .map_err(|e| read_err(&config.topic, e))?;
    }
    let next = vec![0; ends.len()];
    Ok(PartitionEnds { ends, next })
}

/// A record as the sink wrote it: its place, its de-duplication key, and its batch (or why it
/// is not one this reader can decode).
fn topic_batch(message: &BorrowedMessage<'_>) -> TopicBatch {
    let header = |name: &str| -> Option<String> {
        let headers = message.headers()?;
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let batch = match header(HEADER_SCHEMA).as_deref() {
        Some(v) if !ringflow_proto::reads_stored_schema(v) => Err(format!(
            "schema version {v}, this reader knows {} and {}",
            ringflow_proto::STORED_BATCH_SCHEMA_VERSION,
            ringflow_proto::STORED_COLUMNS_SCHEMA_VERSION
        )),
        _ => ringflow_proto::columns::read_stored(message.payload().unwrap_or_default()),
    };
    TopicBatch {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        meter_id: header(HEADER_METER_ID),
        seq: header(HEADER_SEQ).and_then(|s| s.parse().ok()),
        batch,
    }
}

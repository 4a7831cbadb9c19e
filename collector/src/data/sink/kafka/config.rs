//! `[sink.kafka]`: the Kafka sink's keys, defaults and checks (see docs/sinks.md, "A collector fleet
//! on Kafka"). Read and checked in every build, with the `kafka` feature or without.
//!
//! Owns: what an operator may set and what the sink insists on. The producer's delivery
//! guarantees (`enable.idempotence`, `acks`) and the keys set from named fields cannot be
//! overridden through `properties`. Must never: talk to a broker.

use std::collections::BTreeMap;

use serde::Deserialize;

use ringflow_ops::{ConfigError, check_range};

use crate::data::sink::identity::valid_org_id;

/// librdkafka properties the sink sets itself: from the named keys, or because delivery depends
/// on them (the idempotent producer, acks from every in-sync replica, the statistics the
/// readiness check reads).
pub const OWNED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "compression.type",
    "compression.codec",
    "linger.ms",
    "queue.buffering.max.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "message.max.bytes",
    "statistics.interval.ms",
    "client.id",
    // Acks depend on a success report for every record, on no transactions, and on timeouts
    // not being fatal.
    "delivery.report.only.error",
    "transactional.id",
    "enable.gapless.guarantee",
];

/// Substrings of property names whose values are secrets (never printed).
const SECRET_PROPERTY_PARTS: &[&str] = &["password", "secret", "key", "token", "oauthbearer.config"];

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::invalid(key, message)
}

/// The placeholder a per-org topic template puts the org id in.
pub const ORG_PLACEHOLDER: &str = "{org}";

/// Compression of the producer's message sets (`compression.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KafkaCompression {
    None,
    Gzip,
    Snappy,
    Lz4,
}

impl KafkaCompression {
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaCompression::None => "none",
            KafkaCompression::Gzip => "gzip",
            KafkaCompression::Snappy => "snappy",
            KafkaCompression::Lz4 => "lz4",
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, "host:port"; the client learns the rest of the cluster from them.
    /// Default `127.0.0.1:9092`.
    pub brokers: Vec<String>,
    /// Topic batches are produced to; `{org}` in it is replaced by the batch's org (a topic per
    /// org). The topic must exist, or the cluster must create topics on first use. Default
    /// `ringflow.flows`.
    pub topic: String,
    /// Default `lz4`.
    pub compression: KafkaCompression,
    /// How long the producer waits to fill a message set (`linger.ms`). Default 5.
    pub linger_ms: u64,
    /// Batches sent and not yet confirmed by a delivery report. Default 1,024.
    pub max_in_flight: usize,
    /// How long librdkafka keeps trying one message (through reconnects and leader changes)
    /// before it reports a failure; the sink then sends the batch again. Default 30 s.
    pub message_timeout_ms: u64,
    /// Largest message the brokers take (the topic's `max.message.bytes`); data frames are
    /// limited so that a batch fits. Default 1,000,000 (Kafka's default).
    pub max_message_bytes: usize,
    /// How often the producer's statistics (broker states, partition leaders) are read to decide
    /// readiness. Default 1 s.
    pub health_interval_ms: u64,
    /// How long the start waits for the cluster's metadata. Default 5 s.
    pub connect_timeout_ms: u64,
    /// Other librdkafka producer properties, passed through as they are: TLS
    /// (`security.protocol = "ssl"`, `ssl.ca.location`, ...) and SASL (`sasl.mechanism`,
    /// `sasl.username`, `sasl.password`, ...). Values of keys that name a password, secret, key
    /// or token are never printed.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSinkConfig {
    fn default() -> Self {
        Self {
            brokers: vec!["127.0.0.1:9092".to_owned()],
            topic: "ringflow.flows".to_owned(),
            compression: KafkaCompression::Lz4,
            linger_ms: 5,
            max_in_flight: 1_024,
            message_timeout_ms: 30_000,
            max_message_bytes: 1_000_000,
            health_interval_ms: 1_000,
            connect_timeout_ms: 5_000,
            properties: BTreeMap::new(),
        }
    }
}

/// Written out by hand so that no secret property is printed.
impl std::fmt::Debug for KafkaSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let lower = k.to_ascii_lowercase();
                let secret = SECRET_PROPERTY_PARTS.iter().any(|p| lower.contains(p));
                (k.as_str(), if secret { "<redacted>" } else { v.as_str() })
            })
            .collect();
        f.debug_struct("KafkaSinkConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("compression", &self.compression)
            .field("linger_ms", &self.linger_ms)
            .field("max_in_flight", &self.max_in_flight)
            .field("message_timeout_ms", &self.message_timeout_ms)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("health_interval_ms", &self.health_interval_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("properties", &properties)
            .finish()
    }
}

impl KafkaSinkConfig {
    /// Checks every key of `[sink.kafka]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.brokers.is_empty() {
            return Err(invalid("sink.kafka.brokers", "lists no broker"));
        }
        for (i, broker) in self.brokers.iter().enumerate() {
            let ok = broker
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok || broker.contains(',') {
                return Err(invalid(
                    format!("sink.kafka.brokers[{i}]"),
                    format!("{broker:?} is not \"host:port\" (e.g. \"kafka-1.example.net:9092\")"),
                ));
            }
        }
        if let Err(why) = check_topic_template(&self.topic) {
            return Err(invalid("sink.kafka.topic", why));
        }
        check_range("sink.kafka.linger_ms", self.linger_ms, 0, 900_000)?;
        check_range("sink.kafka.max_in_flight", self.max_in_flight as u64, 1, 100_000)?;
        check_range(
            "sink.kafka.message_timeout_ms",
            self.message_timeout_ms,
            1_000,
            3_600_000,
        )?;
        check_range(
            "sink.kafka.max_message_bytes",
            self.max_message_bytes as u64,
            64 << 10,
            1_000_000_000,
        )?;
        check_range(
            "sink.kafka.health_interval_ms",
            self.health_interval_ms,
            100,
            60_000,
        )?;
        check_range(
            "sink.kafka.connect_timeout_ms",
            self.connect_timeout_ms,
            100,
            600_000,
        )?;
        for key in self.properties.keys() {
            if OWNED_PROPERTIES.contains(&key.as_str()) {
                return Err(invalid(
                    format!("sink.kafka.properties.{key}"),
                    "is set by the sink itself (from the named keys of [sink.kafka], or because acks depend on it); remove it",
                ));
            }
        }
        Ok(())
    }

    /// The topic of `org`'s batches.
    pub fn topic_for(&self, org: &str) -> String {
        self.topic.replace(ORG_PLACEHOLDER, org)
    }

    /// Whether `topic` is one this sink writes to: the topic, or one org's under the template.
    pub fn is_topic(&self, topic: &str) -> bool {
        match self.topic.split_once(ORG_PLACEHOLDER) {
            None => topic == self.topic,
            Some((before, after)) => topic
                .strip_prefix(before)
                .and_then(|rest| rest.strip_suffix(after))
                .is_some_and(valid_org_id),
        }
    }

    /// Whether every org has a topic of its own.
    pub fn per_org_topics(&self) -> bool {
        self.topic.contains(ORG_PLACEHOLDER)
    }
}

/// A Kafka topic name (1-249 of `a-z A-Z 0-9 . _ -`, not `.` or `..`), where `{org}` stands for
/// an org id (1-64 of `a-z 0-9 - _`).
fn check_topic_template(template: &str) -> Result<(), String> {
    let longest = template.replace(ORG_PLACEHOLDER, &"o".repeat(64));
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let bare = template.replace(ORG_PLACEHOLDER, "");
    if template.is_empty()
        || longest.len() > 249
        || !bare.chars().all(legal)
        || matches!(template, "." | "..")
    {
        return Err(format!(
            "{template:?} is not a Kafka topic name: use 1-249 of a-z, A-Z, 0-9, '.', '_' and '-', with {ORG_PLACEHOLDER} for a topic per org (the name, with a 64-character org in it, must stay within 249)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_templates() {
        assert!(check_topic_template("ringflow.flows").is_ok());
        assert!(check_topic_template("flows-{org}").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "flows/{org}",
            "a b",
            "{org}{bad}",
            &"x".repeat(250),
        ] {
            assert!(check_topic_template(bad).is_err(), "{bad:?}");
        }
        let c = KafkaSinkConfig {
            topic: "flows.{org}".into(),
            ..Default::default()
        };
        assert_eq!(c.topic_for("acme"), "flows.acme");
        assert!(c.is_topic("flows.acme") && !c.is_topic("flows.") && !c.is_topic("other.acme"));
        assert!(KafkaSinkConfig::default().is_topic("ringflow.flows"));
        assert!(c.per_org_topics());
        assert!(!KafkaSinkConfig::default().per_org_topics());
    }

    #[test]
    fn owned_properties_and_bad_brokers_are_refused_by_key() {
        let mut c = KafkaSinkConfig::default();
        c.properties.insert("acks".into(), "1".into());
        let e = c.validate().expect_err("acks is the sink's").to_string();
        assert!(e.contains("sink.kafka.properties.acks"), "{e}");
        let c = KafkaSinkConfig {
            brokers: vec!["k1:9092".into(), "nohost".into()],
            ..Default::default()
        };
        let e = c.validate().expect_err("a broker without a port").to_string();
        assert!(e.contains("sink.kafka.brokers[1]"), "{e}");
    }

    #[test]
    fn secret_properties_are_not_printed() {
        let mut c = KafkaSinkConfig::default();
        c.properties.insert("sasl.password".into(), "hunter2".into());
        c.properties.insert("sasl.username".into(), "ringflow".into());
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("ringflow"),
            "{shown}"
        );
    }
}

//! What the JetStream sink asks of NATS, decided without touching the network (sans-IO): the
//! stream it creates, whether an existing stream will do, and the subject and headers of each
//! batch's message.
//!
//! Owns: the subject layout (`PREFIX.ORG`), the header names downstream consumers read, and the
//! rules for an existing stream. Must never: do I/O.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy, RetentionPolicy, StorageType};

use super::config::NatsSinkConfig;
use crate::data::sink::SinkBatch;

/// Header names on every message (besides `Nats-Msg-Id`), shared with the other remote sinks.
pub use crate::data::sink::identity::{
    HEADER_COLLECTOR, HEADER_METER_ID, HEADER_ORG, HEADER_RECORDS, HEADER_SCHEMA, HEADER_SEQ,
    MESSAGE_OVERHEAD_BYTES,
};

/// `max_payload` of a NATS server left at its default (1 MiB), assumed until the server says.
pub const NATS_DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

/// The largest data frame a collector can accept and still publish as one message to servers
/// whose `max_payload` is `max_payload`.
pub fn max_frame_for_payload(max_payload: usize) -> usize {
    crate::data::sink::identity::max_frame_for_message(max_payload)
}

/// The subject filter the stream must take: every org under the prefix.
pub fn stream_subjects(config: &NatsSinkConfig) -> String {
    format!("{}.>", config.subject_prefix)
}

/// Subject of `org`'s batches.
pub fn subject(prefix: &str, org: &str) -> String {
    format!("{prefix}.{org}")
}

/// `Nats-Msg-Id` of a batch: `ORG:METER_ID:SEQ`, unique per batch for the life of a meter, so
/// JetStream drops a copy re-sent after a failover. The org is part of it because meter ids are
/// chosen by meters and one stream holds every org: without it, a batch of one org could be
/// dropped as a "duplicate" of another org's batch with the same meter id and seq (org ids have
/// no `:`, so the id splits unambiguously).
pub fn message_id(batch: &SinkBatch) -> String {
    format!("{}:{}:{}", batch.org, batch.meter_id, batch.seq)
}

/// The headers of a batch's message (`Nats-Msg-Id` included).
pub fn headers(batch: &SinkBatch, collector_id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(async_nats::header::NATS_MESSAGE_ID, message_id(batch).as_str());
    for (name, value) in crate::data::sink::identity::headers(batch, collector_id) {
        h.insert(name, value.as_str());
    }
    h
}

/// The stream the collector creates when it is missing.
pub fn wanted_stream(config: &NatsSinkConfig) -> StreamConfig {
    StreamConfig {
        name: config.stream.clone(),
        description: Some("ringflow flow batches (protobuf ringflow.v1.StoredBatch)".to_owned()),
        subjects: vec![stream_subjects(config)],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        max_age: Duration::from_millis(config.max_age_ms),
        max_bytes: limit(config.max_bytes),
        max_messages: -1,
        max_message_size: -1,
        num_replicas: config.replicas as usize,
        duplicate_window: Duration::from_millis(config.duplicate_window_ms),
        ..Default::default()
    }
}

/// JetStream spells "no limit" -1.
fn limit(value: u64) -> i64 {
    if value == 0 {
        -1
    } else {
        i64::try_from(value).unwrap_or(i64::MAX)
    }
}

/// Why an existing stream cannot be used; each names the setting and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("JetStream stream {stream:?} cannot take ringflow's batches: {problem}")]
pub struct StreamMismatch {
    pub stream: String,
    pub problem: String,
}

/// Checks that an existing stream will store our batches and de-duplicate them. Differences that
/// only change retention (age, size, replicas, retention policy) are the operator's choice and
/// come back as notes to log.
pub fn check_existing(
    existing: &StreamConfig,
    config: &NatsSinkConfig,
    max_message_bytes: usize,
) -> Result<Vec<String>, StreamMismatch> {
    let fail = |problem: String| {
        Err(StreamMismatch {
            stream: existing.name.clone(),
            problem,
        })
    };
    let wanted = stream_subjects(config);
    if !existing.subjects.iter().any(|s| subject_covers(s, &wanted)) {
        return fail(format!(
            "its subjects {:?} do not include {wanted:?}; add it (nats stream edit) or set sink.nats.stream or sink.nats.subject_prefix",
            existing.subjects
        ));
    }
    if existing.no_ack {
        return fail(
            "it does not acknowledge publishes (no_ack), so nothing could be acked to meters; use a stream with acks".into(),
        );
    }
    if existing.sealed {
        return fail("it is sealed and takes no new messages".into());
    }
    if existing.mirror.is_some() {
        return fail("it is a mirror, which takes no publishes".into());
    }
    let window = Duration::from_millis(config.duplicate_window_ms);
    if existing.duplicate_window < window {
        return fail(format!(
            "its duplicate window is {:?}, shorter than sink.nats.duplicate_window_ms ({window:?}), so batches re-sent after a failover could be stored twice; raise the stream's duplicate window or lower the key",
            existing.duplicate_window
        ));
    }
    if existing.max_message_size > 0 && (existing.max_message_size as usize) < max_message_bytes {
        return fail(format!(
            "its max_msg_size ({} bytes) is below the largest batch message ({max_message_bytes} bytes); raise it or lower limits.max_frame_bytes",
            existing.max_message_size
        ));
    }
    let mut notes = Vec::new();
    let want = wanted_stream(config);
    if existing.max_age != want.max_age {
        notes.push(format!(
            "max_age is {:?} (sink.nats.max_age_ms asks {:?}); keeping the stream's",
            existing.max_age, want.max_age
        ));
    }
    if existing.max_bytes != want.max_bytes {
        notes.push(format!(
            "max_bytes is {} (sink.nats.max_bytes asks {}); keeping the stream's",
            existing.max_bytes, want.max_bytes
        ));
    }
    if existing.num_replicas != want.num_replicas {
        notes.push(format!(
            "replicas is {} (sink.nats.replicas asks {}); keeping the stream's",
            existing.num_replicas, want.num_replicas
        ));
    }
    if existing.storage == StorageType::Memory {
        notes.push(
            "keeps messages in memory: acked batches are lost if every replica restarts at once".into(),
        );
    }
    if existing.max_messages_per_subject > 0 {
        notes.push(format!(
            "keeps only {} messages per subject, i.e. per org: older batches are removed as new ones arrive",
            existing.max_messages_per_subject
        ));
    }
    if existing.discard == DiscardPolicy::New {
        notes.push(
            "discards new messages when full: once at its limits, publishes fail and the collector stops acking".into(),
        );
    }
    if existing.retention != RetentionPolicy::Limits {
        notes.push(format!(
            "retention is {:?}: messages may be removed once consumed, not only by age or size",
            existing.retention
        ));
    }
    Ok(notes)
}

/// Whether subject filter `filter` matches every subject that `wanted` matches (NATS wildcard
/// rules: `*` one token, `>` one or more trailing tokens).
pub fn subject_covers(filter: &str, wanted: &str) -> bool {
    let mut f = filter.split('.');
    let mut w = wanted.split('.');
    loop {
        match (f.next(), w.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn config() -> NatsSinkConfig {
        NatsSinkConfig::default()
    }

    #[test]
    fn subject_coverage_follows_nats_wildcards() {
        assert!(subject_covers("ringflow.flows.>", "ringflow.flows.>"));
        assert!(subject_covers(">", "ringflow.flows.>"));
        assert!(subject_covers("ringflow.>", "ringflow.flows.>"));
        assert!(!subject_covers("ringflow.*", "ringflow.flows.>"));
        assert!(!subject_covers("ringflow.flows.*", "ringflow.flows.>"));
        assert!(!subject_covers("ringflow.flows.acme", "ringflow.flows.>"));
        assert!(!subject_covers("other.>", "ringflow.flows.>"));
        assert!(subject_covers("*.flows.>", "ringflow.flows.>"));
    }

    #[test]
    fn the_created_stream_passes_its_own_check() {
        let c = config();
        let notes = check_existing(&wanted_stream(&c), &c, 1 << 20).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn a_stream_that_cannot_serve_is_refused_with_the_reason() {
        let c = config();
        let base = wanted_stream(&c);
        let cases: Vec<(StreamConfig, &str)> = vec![
            (
                StreamConfig {
                    subjects: vec!["other.>".into()],
                    ..base.clone()
                },
                "do not include",
            ),
            (
                StreamConfig {
                    no_ack: true,
                    ..base.clone()
                },
                "no_ack",
            ),
            (
                StreamConfig {
                    duplicate_window: Duration::from_secs(10),
                    ..base.clone()
                },
                "duplicate window",
            ),
            (
                StreamConfig {
                    max_message_size: 1000,
                    ..base.clone()
                },
                "max_msg_size",
            ),
            (
                StreamConfig {
                    sealed: true,
                    ..base.clone()
                },
                "sealed",
            ),
        ];
        for (stream, expected) in cases {
            let err = check_existing(&stream, &c, 1 << 20).unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    #[test]
    fn retention_differences_are_notes_not_errors() {
        let c = config();
        let stream = StreamConfig {
            max_age: Duration::from_secs(3600),
            num_replicas: 3,
            ..wanted_stream(&c)
        };
        let notes = check_existing(&stream, &c, 1 << 20).unwrap();
        assert_eq!(notes.len(), 2, "{notes:?}");
    }

    #[test]
    fn messages_carry_the_dedup_id_and_identity_headers() {
        let batch = SinkBatch {
            org: Arc::from("acme"),
            meter_id: Arc::from("m-1"),
            seq: 42,
            records: 7,
            payload: bytes::Bytes::new(),
            columns: false,
        };
        let h = headers(&batch, "c1");
        let get = |k: &str| h.get(k).map(|v| v.as_str().to_owned());
        assert_eq!(get("Nats-Msg-Id").as_deref(), Some("acme:m-1:42"));
        assert_eq!(get(HEADER_ORG).as_deref(), Some("acme"));
        assert_eq!(get(HEADER_SEQ).as_deref(), Some("42"));
        assert_eq!(get(HEADER_RECORDS).as_deref(), Some("7"));
        assert_eq!(get(HEADER_SCHEMA).as_deref(), Some("1"));
        // A batch stored as columns says so: a reader of schema 1 alone would find no records.
        let columns = SinkBatch {
            columns: true,
            ..batch
        };
        let h = headers(&columns, "c1");
        assert_eq!(h.get(HEADER_SCHEMA).map(|v| v.as_str()), Some("2"));
        assert_eq!(subject("ringflow.flows", "acme"), "ringflow.flows.acme");
        assert_eq!(max_frame_for_payload(NATS_DEFAULT_MAX_PAYLOAD), (1 << 20) - 4096);
    }
}

//! What every message a remote sink writes says about its batch, whatever the system (NATS
//! JetStream headers, Kafka record headers): the header names downstream consumers read, and
//! the room a batch's envelope takes in a message. Sans-IO.
//!
//! Owns: the header names and values, and the org-id alphabet ([`valid_org_id`]: an org id names
//! a store directory, a subject and a topic). Must never: do I/O.

use super::SinkBatch;

/// Header names on every message.
pub const HEADER_ORG: &str = "Ringflow-Org";
pub const HEADER_METER_ID: &str = "Ringflow-Meter-Id";
pub const HEADER_SEQ: &str = "Ringflow-Seq";
pub const HEADER_RECORDS: &str = "Ringflow-Records";
pub const HEADER_SCHEMA: &str = "Ringflow-Schema";
pub const HEADER_COLLECTOR: &str = "Ringflow-Collector";

/// Room kept in a message for the headers and the `StoredBatch` envelope around a batch's
/// records (org, meter id, collector id, timestamps): generous, they take a few hundred bytes.
pub const MESSAGE_OVERHEAD_BYTES: usize = 4096;

/// The largest data frame a collector can accept and still write as one message of at most
/// `max_message` bytes.
pub fn max_frame_for_message(max_message: usize) -> usize {
    max_message.saturating_sub(MESSAGE_OVERHEAD_BYTES)
}

/// The identity headers of `batch`'s message, written by collector `collector_id`.
pub fn headers(batch: &SinkBatch, collector_id: &str) -> [(&'static str, String); 6] {
    [
        (HEADER_ORG, batch.org.to_string()),
        (HEADER_METER_ID, batch.meter_id.to_string()),
        (HEADER_SEQ, batch.seq.to_string()),
        (HEADER_RECORDS, batch.records.to_string()),
        (
            HEADER_SCHEMA,
            match batch.columns {
                true => ringflow_proto::STORED_COLUMNS_SCHEMA_VERSION,
                false => ringflow_proto::STORED_BATCH_SCHEMA_VERSION,
            }
            .to_string(),
        ),
        (HEADER_COLLECTOR, collector_id.to_owned()),
    ]
}

/// Org ids name directories, message subjects and topics, so they are kept to a safe alphabet:
/// 1-64 characters of `a-z 0-9 - _`.
pub fn valid_org_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

//! The stored form of a batch (`StoredBatch`), built from the data frame the meter sent without
//! encoding its records a second time where the frame already holds them as prost writes them.
//!
//! Owns: finding each record's bytes in a `DataUp` frame body, and the rule for reusing them. A
//! record's bytes are reused only when its enum fields are not negative and their length equals
//! the length of its canonical encoding. With no negative enum (prost writes a negative `int32`
//! as ten bytes, but reads a shorter varint as one), no field's bytes can be shorter than its
//! canonical form, so any unknown field, repeated field, explicitly written default or padded
//! varint makes the bytes longer: equal length means the bytes hold exactly the decoded fields,
//! each written once, and decode to the same record (they are what prost writes, up to field
//! order and to high bits a decoder drops from an over-long `uint32`). Otherwise that record is
//! encoded again, as before. Must never: judge a batch (the collector has decoded and checked it
//! before this is called).
//!
//! Re-encoding was a fifth of a collector's CPU time at full speed (docs/benchmarks.md).

use prost::Message;
use prost::encoding::{WireType, decode_varint, encode_key, encode_varint};

use crate::pb;

/// `StoredBatch.records`.
const STORED_RECORDS_TAG: u32 = 7;
/// `StoredBatch.loss`, written after the records (as prost orders fields by tag).
const STORED_LOSS_TAG: u32 = 8;
/// `DataUp.batch`.
pub(crate) const DATA_UP_BATCH_TAG: u32 = 1;
/// `FlowBatch.records`.
const BATCH_RECORDS_TAG: u32 = 2;

/// Encodes `header` (a `StoredBatch` whose `records` is empty) followed by `records`, the
/// decoded records of the `DataUp` frame `frame_body`, reusing each record's bytes from the frame
/// where they are canonical. Decodes equal to `header` with `records` in it, always (its `loss`
/// included).
pub fn encode_stored_batch(
    header: &pb::StoredBatch,
    records: &[pb::FlowRecord],
    frame_body: &[u8],
) -> Vec<u8> {
    debug_assert!(header.records.is_empty(), "the header carries no records");
    let mut out = Vec::with_capacity(header.encoded_len() + frame_body.len() + 8);
    match &header.loss {
        // Fields 1-6 now, `loss` (8) after the records (7): the order prost writes.
        Some(_) => pb::StoredBatch {
            loss: None,
            ..header.clone()
        }
        .encode_raw(&mut out),
        None => header.encode_raw(&mut out),
    }
    let raw = record_bytes(frame_body).filter(|raw| raw.len() == records.len());
    for (i, record) in records.iter().enumerate() {
        match raw.as_ref().map(|r| r[i]) {
            Some(bytes) if reusable(record, bytes) => {
                encode_key(STORED_RECORDS_TAG, WireType::LengthDelimited, &mut out);
                encode_varint(bytes.len() as u64, &mut out);
                out.extend_from_slice(bytes);
            }
            _ => prost::encoding::message::encode(STORED_RECORDS_TAG, record, &mut out),
        }
    }
    if let Some(loss) = &header.loss {
        prost::encoding::message::encode(STORED_LOSS_TAG, loss, &mut out);
    }
    out
}

/// Whether `bytes`, which decoded to `record`, hold nothing else (see the module's rule).
fn reusable(record: &pb::FlowRecord, bytes: &[u8]) -> bool {
    record.source >= 0 && record.server >= 0 && bytes.len() == record.encoded_len()
}

/// The bytes of each record in a `DataUp` frame body, in order; `None` when the body is not the
/// plain shape (one `batch` field, no groups, nothing malformed) so that the caller encodes every
/// record again.
fn record_bytes(frame_body: &[u8]) -> Option<Vec<&[u8]>> {
    let mut batch = None;
    for field in Fields(frame_body) {
        let (tag, value) = field?;
        // Two occurrences are merged by a decoder: leave that to re-encoding.
        if tag == DATA_UP_BATCH_TAG && batch.replace(value?).is_some() {
            return None;
        }
    }
    let mut records = Vec::new();
    for field in Fields(batch?) {
        let (tag, value) = field?;
        if tag == BATCH_RECORDS_TAG {
            records.push(value?);
        }
    }
    Some(records)
}

/// The value of the last length-delimited field `tag` in the message `buf` (as a decoder keeps
/// the last); None if absent, or if the message is malformed.
pub(crate) fn last_field(buf: &[u8], tag: u32) -> Option<&[u8]> {
    let mut found = None;
    for field in Fields(buf) {
        if let (t, Some(value)) = field?
            && t == tag
        {
            found = Some(value);
        }
    }
    found
}

/// The fields of a protobuf message: each field's tag and, for a length-delimited field, its
/// bytes (`None` for other wire types). A malformed field is yielded as `None`, and ends it.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = Option<(u32, Option<&'a [u8]>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let field = take_field(&mut self.0);
        if field.is_none() {
            self.0 = &[];
        }
        Some(field)
    }
}

/// Takes one field off the front of `buf`.
fn take_field<'a>(buf: &mut &'a [u8]) -> Option<(u32, Option<&'a [u8]>)> {
    let key = decode_varint(buf).ok()?;
    let tag = u32::try_from(key >> 3).ok().filter(|t| *t > 0)?;
    fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (value, rest) = (buf.get(..n)?, buf.get(n..)?);
        *buf = rest;
        Some(value)
    }
    match key & 7 {
        0 => decode_varint(buf).ok().map(|_| (tag, None)),
        1 => take(buf, 8).map(|_| (tag, None)),
        2 => {
            let len = usize::try_from(decode_varint(buf).ok()?).ok()?;
            take(buf, len).map(|v| (tag, Some(v)))
        }
        5 => take(buf, 4).map(|_| (tag, None)),
        // Groups (3, 4) are not in this schema; anything else is malformed.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn header() -> pb::StoredBatch {
        pb::StoredBatch {
            columns: Default::default(),
            org_id: "acme".into(),
            meter_id: "web-01".into(),
            seq: 42,
            received_unix_nanos: 7,
            collector_id: "c1".into(),
            session_id: "s".into(),
            records: Vec::new(),
            loss: None,
        }
    }

    fn re_encoded(records: &[pb::FlowRecord]) -> Vec<u8> {
        pb::StoredBatch {
            records: records.to_vec(),
            ..header()
        }
        .encode_to_vec()
    }

    fn body_of(records: &[pb::FlowRecord]) -> Vec<u8> {
        pb::DataUp {
            msg: Some(pb::data_up::Msg::Batch(pb::FlowBatch {
                columns: Default::default(),
                loss: None,
                seq: 42,
                records: records.to_vec(),
                created_unix_nanos: 9,
            })),
        }
        .encode_to_vec()
    }

    /// A `DataUp` frame body of a batch (seq 42) whose records are `raw`, byte for byte.
    fn body_of_raw(raw: &[Vec<u8>]) -> Vec<u8> {
        let mut batch = Vec::new();
        encode_key(1, WireType::Varint, &mut batch);
        encode_varint(42, &mut batch);
        for record in raw {
            encode_key(BATCH_RECORDS_TAG, WireType::LengthDelimited, &mut batch);
            encode_varint(record.len() as u64, &mut batch);
            batch.extend_from_slice(record);
        }
        let mut body = Vec::new();
        encode_key(DATA_UP_BATCH_TAG, WireType::LengthDelimited, &mut body);
        encode_varint(batch.len() as u64, &mut body);
        body.extend_from_slice(&batch);
        body
    }

    fn record() -> impl Strategy<Value = pb::FlowRecord> {
        (
            any::<u64>(),
            any::<[u8; 4]>(),
            any::<u32>(),
            any::<u64>(),
            "[a-z0-9]{0,8}",
        )
            .prop_map(|(t, a, port, bytes, interface)| pb::FlowRecord {
                start_unix_nanos: t,
                src_addr: Bytes::copy_from_slice(&a),
                dst_addr: Bytes::copy_from_slice(&a),
                src_port: port % 65_536,
                bytes_from_src: bytes,
                ip_protocol: 6,
                interface,
                ..Default::default()
            })
    }

    proptest! {
        #[test]
        fn a_meters_frame_is_stored_byte_for_byte_as_re_encoding_would(
            records in proptest::collection::vec(record(), 0..40)
        ) {
            let body = body_of(&records);
            prop_assert_eq!(encode_stored_batch(&header(), &records, &body), re_encoded(&records));
        }
    }

    /// A field of a later schema inside a record is not stored (as re-encoding drops it), and
    /// the records around it are still reused.
    #[test]
    fn the_meters_loss_is_stored_with_the_batch_as_re_encoding_would() {
        let records = vec![
            pb::FlowRecord {
                src_port: 1,
                ..Default::default()
            };
            3
        ];
        let loss = pb::MeasurementLoss {
            close_events_lost: 3,
            flows_untracked: 0,
            records_dropped: u64::MAX,
            packets_untracked: 9,
        };
        let header = pb::StoredBatch {
            loss: Some(loss),
            ..header()
        };
        let stored = encode_stored_batch(&header, &records, &body_of(&records));
        let whole = pb::StoredBatch {
            records: records.clone(),
            ..header.clone()
        };
        assert_eq!(stored, whole.encode_to_vec(), "byte for byte");
        let back = pb::StoredBatch::decode(&stored[..]).unwrap();
        assert_eq!(back.loss, Some(loss));
        assert_eq!(back.records, records);
    }

    #[test]
    fn a_record_with_an_unknown_field_is_encoded_again() {
        let records = vec![
            pb::FlowRecord {
                src_port: 1,
                ..Default::default()
            },
            pb::FlowRecord {
                src_port: 2,
                ..Default::default()
            },
        ];
        let raw: Vec<Vec<u8>> = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut raw = r.encode_to_vec();
                if i == 1 {
                    encode_key(999, WireType::LengthDelimited, &mut raw);
                    encode_varint(3, &mut raw);
                    raw.extend_from_slice(b"new");
                }
                raw
            })
            .collect();
        let body = body_of_raw(&raw);
        let decoded = pb::DataUp::decode(&body[..]).expect("decodes");
        let Some(pb::data_up::Msg::Batch(b)) = decoded.msg else {
            panic!("a batch")
        };
        assert_eq!(b.records, records);
        let stored = encode_stored_batch(&header(), &b.records, &body);
        assert_eq!(stored, re_encoded(&records));
        assert!(!stored.windows(3).any(|w| w == b"new"));
    }

    /// A negative enum written as a 5-byte varint is 5 bytes shorter than prost's 10-byte form;
    /// an unknown field of 5 bytes makes up the length. The record must still be encoded again.
    #[test]
    fn a_short_negative_enum_cannot_hide_an_unknown_field() {
        let mut raw = Vec::new();
        encode_key(12, WireType::Varint, &mut raw);
        raw.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        // A tag the schema will not reach soon (two key bytes, like any tag from 16 to 2047).
        encode_key(999, WireType::Varint, &mut raw);
        raw.extend_from_slice(&[0x80, 0x80, 0x01]);
        let record = pb::FlowRecord::decode(&raw[..]).expect("decodes");
        assert_eq!(record.source, -1);
        assert_eq!(
            raw.len(),
            record.encoded_len(),
            "the lengths match, as an attacker would make them"
        );
        let body = body_of_raw(&[raw]);
        let stored = encode_stored_batch(&header(), std::slice::from_ref(&record), &body);
        assert_eq!(stored, re_encoded(&[record]));
    }

    #[test]
    fn odd_shapes_fall_back_to_encoding_every_record() {
        let records = vec![pb::FlowRecord {
            dst_port: 443,
            ..Default::default()
        }];
        let body = body_of(&records);
        // The batch field twice (a decoder merges them), a truncated body, garbage, nothing.
        let twice = [body.clone(), body.clone()].concat();
        let trailing = [&body[..], &[0xff][..]].concat();
        for odd in [
            &twice[..],
            &body[..body.len() - 1],
            &trailing[..],
            &[0xff, 0xff][..],
            &[][..],
        ] {
            assert_eq!(record_bytes(odd), None, "{odd:?}");
            assert_eq!(
                encode_stored_batch(&header(), &records, odd),
                re_encoded(&records)
            );
        }
        assert_eq!(record_bytes(&body).map(|r| r.len()), Some(1));
    }
}

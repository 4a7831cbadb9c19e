//! The collector's judgement of one data-stream frame body (`ingest::judge_frame`): accept the
//! batch, nack it, or close the stream.
//!
//! Input layout:
//!   byte 0     the limits: bits 0-2 pick max_records_per_batch, bits 3-5 max_field_bytes
//!   byte 1     the highest seq already seen on the stream (0-239 as is; 240-255: near u64::MAX)
//!   the rest   the frame body
//!
//! Checks the verdict against the rules the protocol states (ringflow.proto, `Nack` reasons
//! and `FlowRecord` comments), computed here from the decoded message: a batch whose seq does
//! not follow the stream's is a protocol violation; more records than the limit is
//! TOO_MANY_RECORDS; the first bad record decides between INVALID_RECORD and FIELD_TOO_LONG;
//! an accepted batch is exactly the decoded one; a body that does not decode is either nacked
//! as UNDECODABLE under a seq that follows the stream's, or closes the stream as malformed. The
//! stored form built from an accepted frame (`stored::encode_stored_batch`, which reuses the
//! frame's record bytes) decodes to exactly the accepted records.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use ringflow_collector::data::ingest::{DataLimits, FIELD_LIMITS as TEXT_LIMITS, Verdict, judge_frame};
use ringflow_proto::codes::StreamCode;
use ringflow_proto::pb;

const RECORD_LIMITS: [usize; 8] = [0, 1, 2, 3, 8, 100, 10_000, usize::MAX];
const FIELD_LIMITS: [usize; 8] = [0, 1, 4, 15, 16, 64, 4096, usize::MAX];

fuzz_target!(|data: &[u8]| {
    let Some((&[limits, seq], body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let limits = DataLimits {
        max_frame_bytes: 1 << 20,
        max_records_per_batch: RECORD_LIMITS[usize::from(limits & 7)],
        max_unacked_batches: 32,
        max_field_bytes: FIELD_LIMITS[usize::from((limits >> 3) & 7)],
    };
    let last_seq = match seq {
        0..240 => u64::from(seq),
        _ => u64::MAX - u64::from(255 - seq),
    };
    let body = Bytes::copy_from_slice(body);
    let verdict = judge_frame(body.clone(), last_seq, &limits);
    if let Verdict::Accept { batch, .. } = &verdict
        && batch.columns.is_empty()
    {
        let header = pb::StoredBatch {
            seq: batch.seq,
            ..Default::default()
        };
        let stored = ringflow_proto::stored::encode_stored_batch(&header, &batch.records, &body);
        let back = pb::StoredBatch::decode(&stored[..]).expect("a stored batch decodes");
        assert_eq!(
            back.records, batch.records,
            "stored records differ from the accepted ones"
        );
    }

    match pb::DataUp::decode(body) {
        Err(_) => match verdict {
            Verdict::Nack { seq, reason, .. } => {
                assert_eq!(reason, pb::NackReason::Undecodable);
                assert!(seq > last_seq, "nack of seq {seq} after {last_seq}");
            }
            Verdict::Close(code, _) => assert_eq!(code, StreamCode::MalformedFrame),
            Verdict::Accept { batch, .. } => panic!("undecodable frame accepted as {batch:?}"),
        },
        Ok(pb::DataUp { msg: None }) => {
            assert!(
                matches!(verdict, Verdict::Close(StreamCode::ProtocolViolation, _)),
                "{verdict:?}"
            );
        }
        Ok(pb::DataUp {
            msg: Some(pb::data_up::Msg::Batch(batch)),
        }) => {
            let expected = expected_verdict(&batch, last_seq, &limits);
            match (&verdict, expected) {
                (Verdict::Accept { batch: got, .. }, None) => assert_eq!(got, &batch),
                (Verdict::Nack { seq, .. }, Some(Expected::Refused)) => assert_eq!(*seq, batch.seq),
                (Verdict::Nack { seq, reason, .. }, Some(Expected::Nack(want))) => {
                    assert_eq!((*seq, *reason), (batch.seq, want));
                }
                (Verdict::Close(code, _), Some(Expected::Close(want))) => assert_eq!(*code, want),
                (got, want) => panic!("verdict {got:?}, the rules say {want:?}"),
            }
        }
    }
});

#[derive(Debug)]
enum Expected {
    Nack(pb::NackReason),
    /// Nacked, for whichever reason the first fault found gives.
    Refused,
    Close(StreamCode),
}

/// What the protocol's rules say about a decoded batch (`None`: accept it).
fn expected_verdict(batch: &pb::FlowBatch, last_seq: u64, limits: &DataLimits) -> Option<Expected> {
    if batch.seq <= last_seq {
        return Some(Expected::Close(StreamCode::ProtocolViolation));
    }
    if !batch.columns.is_empty() {
        // Columns: one form per batch; then the records they decode to, held to the rules below
        // (a block that does not decode is refused; the reason is the columns target's concern).
        if !batch.records.is_empty() {
            return Some(Expected::Nack(pb::NackReason::InvalidRecord));
        }
        let max_body = limits.max_frame_bytes.saturating_mul(2);
        return match ringflow_proto::columns::decode(&batch.columns, limits.max_records_per_batch, max_body) {
            Err(_) => Some(Expected::Refused),
            Ok(records) => records
                .iter()
                .find_map(|r| record_problem(r, limits.max_field_bytes))
                .map(|_| Expected::Refused),
        };
    }
    if batch.records.len() > limits.max_records_per_batch {
        return Some(Expected::Nack(pb::NackReason::TooManyRecords));
    }
    batch
        .records
        .iter()
        .find_map(|r| record_problem(r, limits.max_field_bytes))
        .map(Expected::Nack)
}

fn record_problem(r: &pb::FlowRecord, max_field_bytes: usize) -> Option<pb::NackReason> {
    let address = |a: &Bytes| a.is_empty() || a.len() == 4 || a.len() == 16;
    let valid = address(&r.src_addr)
        && address(&r.dst_addr)
        && address(&r.exporter_addr)
        && u16::try_from(r.src_port).is_ok()
        && u16::try_from(r.dst_port).is_ok()
        && u8::try_from(r.ip_protocol).is_ok()
        && (r.end_unix_nanos == 0 || r.start_unix_nanos <= r.end_unix_nanos);
    let texts = [
        &r.process_name,
        &r.cgroup,
        &r.container_id,
        &r.pod_uid,
        &r.systemd_unit,
        &r.community_id,
    ];
    let text_too_long = TEXT_LIMITS
        .iter()
        .zip(texts)
        .any(|((_, limit), text)| text.len() > *limit);
    if !valid {
        Some(pb::NackReason::InvalidRecord)
    } else if r.interface.len() > max_field_bytes || text_too_long {
        Some(pb::NackReason::FieldTooLong)
    } else {
        None
    }
}

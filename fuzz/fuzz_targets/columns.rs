//! The columnar form of a batch (`ringflow_proto::columns`): the collector's check, which judges a
//! block without building records, against the decoder and the row judgement.
//!
//! Input layout:
//!   byte 0     the record limit: bits 0-2 pick max_records_per_batch
//!   the rest   the block
//!
//! Neither `check` nor `decode` panics. A block `check` passes decodes, to as many records as it
//! said; those records, sent as rows, are accepted by `judge_frame`; and encoding them again
//! (compressed or not) gives a block that checks and decodes to the same records. A block that
//! decodes but fails `check` holds records the row judgement refuses too: the two forms are held
//! to the same rules.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use ringflow_collector::data::ingest::{DataLimits, Verdict, judge_frame};
use ringflow_proto::{columns, pb};

const RECORD_LIMITS: [usize; 8] = [0, 1, 2, 3, 8, 100, 1_000, 10_000];

fn rows_verdict(records: Vec<pb::FlowRecord>, limits: &DataLimits) -> Verdict {
    let up = pb::DataUp {
        msg: Some(pb::data_up::Msg::Batch(pb::FlowBatch {
            seq: 1,
            records,
            ..Default::default()
        })),
    };
    judge_frame(up.encode_to_vec().into(), 0, limits)
}

fuzz_target!(|data: &[u8]| {
    let Some((&[pick], block)) = data.split_first_chunk::<1>() else {
        return;
    };
    let limits = DataLimits {
        max_frame_bytes: 1 << 16,
        max_records_per_batch: RECORD_LIMITS[usize::from(pick & 7)],
        max_unacked_batches: 32,
        max_field_bytes: 64,
    };
    let checked = columns::check(block, &limits.columns());
    let decoded = columns::decode(block, limits.max_records_per_batch, limits.max_frame_bytes * 2);
    match (checked, decoded) {
        (Ok(n), Ok(records)) => {
            assert_eq!(records.len(), n, "check and decode count differently");
            for level in [None, Some(1)] {
                let again = columns::encode(&records, level);
                assert_eq!(columns::check(&again, &limits.columns()), Ok(n));
                let back = columns::decode(&again, limits.max_records_per_batch, limits.max_frame_bytes * 2);
                assert_eq!(back.as_ref(), Ok(&records));
            }
            match rows_verdict(records, &limits) {
                Verdict::Accept { records, .. } => assert_eq!(records as usize, n),
                other => panic!("checked columns whose rows are judged {other:?}"),
            }
        }
        (Ok(n), Err(e)) => panic!("check passed {n} records that do not decode: {e}"),
        (Err(e), Ok(records)) => {
            // Only the record limit is checked before anything else: the rows meet it too.
            if let Verdict::Accept { .. } = rows_verdict(records, &limits) {
                panic!("columns refused ({e:?}) whose rows are accepted");
            }
        }
        (Err(_), Err(_)) => {}
    }
});

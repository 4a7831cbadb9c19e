//! Criterion benches of the hot pieces, with the inputs `herd bench` uses (1,000-record batches
//! of the synthetic source's records): the frame codec, the collector's frame judge, the stored
//! batch the collector builds from it (records encoded again, or reused from the frame), and the
//! segment store's append.
//!
//! `cargo bench -p ringflow-herd --bench pieces` (results in docs/benchmarks.md).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use ringflow_collector::data::ingest::{Verdict, judge_frame};
use ringflow_collector::data::sink::file::store::{SegmentStore, StoreLimits};
use ringflow_herd::bench::bulk::RECORDS_PER_BATCH;
use ringflow_herd::bench::e2e::stored_payload;
use ringflow_herd::bench::pieces::{batch_message, default_data_limits};
use ringflow_proto::stored::encode_stored_batch;
use ringflow_proto::{frame, pb};

fn codec(c: &mut Criterion) {
    let message = batch_message();
    let limits = default_data_limits();
    let framed = frame::encode_to_bytes(&message, limits.max_frame_bytes).expect("a batch frames");
    let body = framed.slice(4..);
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(RECORDS_PER_BATCH as u64));
    group.bench_function("encode_batch_frame", |b| {
        b.iter(|| frame::encode_to_bytes(black_box(&message), limits.max_frame_bytes).expect("encodes"))
    });
    group.bench_function("decode_batch_frame", |b| {
        b.iter(|| frame::decode_body::<pb::DataUp>(black_box(body.clone())).expect("decodes"))
    });
    group.bench_function("judge_frame", |b| {
        b.iter(|| match judge_frame(black_box(body.clone()), 0, &limits) {
            Verdict::Accept { batch, .. } => batch,
            other => panic!("the judge refused a synthetic batch: {other:?}"),
        })
    });
    let Some(pb::data_up::Msg::Batch(batch)) = message.msg.clone() else {
        panic!("the message holds a batch")
    };
    // The collector's stored form: every record encoded again, against the records' bytes
    // reused from the frame (what the collector does).
    let header = pb::StoredBatch {
        org_id: "testorg".into(),
        meter_id: "bench".into(),
        seq: batch.seq,
        ..Default::default()
    };
    let whole = pb::StoredBatch {
        records: batch.records.clone(),
        ..header.clone()
    };
    group.bench_function("stored_batch_encoded_again", |b| {
        b.iter(|| black_box(&whole).encode_to_vec())
    });
    group.bench_function("stored_batch_from_frame", |b| {
        b.iter(|| encode_stored_batch(black_box(&header), &batch.records, &body))
    });
    group.finish();
}

fn store(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let limits = StoreLimits {
        segment_bytes: 64 << 20,
        max_bytes: 256 << 20,
    };
    let (mut store, _) = SegmentStore::open(dir.path(), limits).expect("the store opens");
    let Some(pb::data_up::Msg::Batch(batch)) = batch_message().msg else {
        panic!("the message holds a batch")
    };
    let payload = stored_payload("bench", batch);
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Bytes(payload.len() as u64));
    // write(2) only: the fsync that "always" adds is the disk's figure (herd bench has both).
    group.bench_function("append_batch", |b| {
        b.iter(|| {
            store
                .append("testorg", black_box(&payload), RECORDS_PER_BATCH as u32)
                .expect("appends");
            store.take_evicted();
        })
    });
    group.finish();
    black_box(pb::StoredBatch::decode(payload).expect("a stored batch decodes"));
}

criterion_group!(benches, codec, store);
criterion_main!(benches);

//! The segment store writer's tests: retention, the lock, recovery of torn tails and missing
//! sidecars, evictions, and a segment removed under the writer.

use super::*;

const LIMITS: StoreLimits = StoreLimits {
    segment_bytes: 1024,
    max_bytes: 4096,
};

/// An encoded StoredBatch of about 100 bytes.
fn body(seq: u64) -> Vec<u8> {
    use prost::Message;
    ringflow_proto::pb::StoredBatch {
        org_id: "x".repeat(80),
        seq,
        ..Default::default()
    }
    .encode_to_vec()
}

fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for org in list_orgs(&dir.join("segments")).unwrap() {
        let org_dir = dir.join("segments").join(org);
        for id in list_segments(&org_dir).unwrap() {
            total += std::fs::metadata(org_dir.join(segment_file_name(id)))
                .unwrap()
                .len();
        }
    }
    total
}

#[test]
fn retention_keeps_the_cap_and_counts_exactly_what_it_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = SegmentStore::open(dir.path(), LIMITS).unwrap();
    let (mut dropped_entries, mut dropped_records) = (0, 0);
    for i in 0..500u32 {
        let org = if i % 3 == 0 { "a" } else { "b" };
        store.append(org, &body(i.into()), 5).unwrap();
        for e in store.take_evicted() {
            dropped_entries += e.meta.entries;
            dropped_records += e.meta.records;
        }
        assert!(store.total_bytes() <= LIMITS.max_bytes);
        assert_eq!(store.total_bytes(), disk_bytes(dir.path()));
    }
    store.sync().unwrap();
    let kept: u64 = 500 - dropped_entries;
    assert!(dropped_entries > 0);
    assert_eq!(dropped_records, dropped_entries * 5);
    // What remains on disk is exactly what was not dropped.
    drop(store);
    let mut remaining = 0;
    for org in ["a", "b"] {
        let mut reader = crate::data::sink::file::store::reader::OrgReader::new(dir.path(), org);
        let mut out = Vec::new();
        let progress = reader.read_available(&mut out).unwrap();
        assert!(progress.corruption.is_empty(), "{:?}", progress.corruption);
        remaining += out.len() as u64;
    }
    assert_eq!(remaining, kept);
}

#[test]
fn a_second_store_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = SegmentStore::open(dir.path(), LIMITS).unwrap();
    let err = SegmentStore::open(dir.path(), LIMITS).err().unwrap();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
}

#[test]
fn recovery_truncates_a_torn_tail_and_reads_only_tails() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut store, _) = SegmentStore::open(dir.path(), LIMITS).unwrap();
        for i in 0..30 {
            store.append("a", &body(i), 1).unwrap();
        }
        store.sync().unwrap();
    }
    let org_dir = dir.path().join("segments/a");
    let ids = list_segments(&org_dir).unwrap();
    assert!(ids.len() >= 3, "several segments: {ids:?}");
    let tail = org_dir.join(segment_file_name(*ids.last().unwrap()));
    let whole_len = std::fs::metadata(&tail).unwrap().len();
    // A torn write: half an entry at the end.
    let mut f = OpenOptions::new().append(true).open(&tail).unwrap();
    f.write_all(&[0, 0, 0, 100, 0, 0, 0, 1, 9, 9]).unwrap();
    drop(f);

    let (mut store, report) = SegmentStore::open(dir.path(), LIMITS).unwrap();
    assert_eq!(report.segments_scanned, 1, "only the tail is read");
    assert_eq!(report.truncated_bytes, 10);
    assert_eq!(std::fs::metadata(&tail).unwrap().len(), whole_len);
    // Appending continues in the repaired tail, and everything reads back.
    store.append("a", &body(30), 1).unwrap();
    store.sync().unwrap();
    drop(store);
    let mut out = Vec::new();
    let progress = crate::data::sink::file::store::reader::OrgReader::new(dir.path(), "a")
        .read_available(&mut out)
        .unwrap();
    assert_eq!(progress.corruption, Vec::<String>::new());
    assert_eq!(
        out.iter().map(|b| b.seq).collect::<Vec<_>>(),
        (0..31).collect::<Vec<_>>()
    );
}

#[test]
fn a_segment_sealed_without_sidecar_is_rescanned_once() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut store, _) = SegmentStore::open(dir.path(), LIMITS).unwrap();
        for i in 0..20 {
            store.append("a", &body(i), 2).unwrap();
        }
    }
    let org_dir = dir.path().join("segments/a");
    let first = list_segments(&org_dir).unwrap()[0];
    std::fs::remove_file(org_dir.join(meta_file_name(first))).unwrap();
    let (_, report) = SegmentStore::open(dir.path(), LIMITS).unwrap();
    assert_eq!(report.segments_scanned, 2, "the tail and the one without sidecar");
    let (_, report) = SegmentStore::open(dir.path(), LIMITS).unwrap();
    assert_eq!(report.segments_scanned, 1, "the sidecar was rewritten");
}

#[test]
fn evictions_are_reported_even_when_the_append_then_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = SegmentStore::open(dir.path(), LIMITS).unwrap();
    // Fill until the next append must delete something to fit.
    let need = SEGMENT_HEADER_BYTES + (segment::ENTRY_HEADER_BYTES + body(99).len()) as u64;
    let mut i = 0;
    while store.total_bytes() + need <= LIMITS.max_bytes {
        store.append("a", &body(i), 1).unwrap();
        i += 1;
    }
    let _ = store.take_evicted();
    // Org b's directory cannot be created: a file is in the way.
    std::fs::write(dir.path().join("segments/b"), b"x").unwrap();
    assert!(store.append("b", &body(99), 1).is_err());
    let evicted = store.take_evicted();
    assert!(
        !evicted.is_empty(),
        "room was made (and data dropped) before the append failed"
    );
    assert!(evicted.iter().all(|e| e.org == "a" && e.meta.entries > 0));
}

#[test]
fn a_segment_removed_under_the_writer_is_caught_before_acking() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = SegmentStore::open(dir.path(), LIMITS).unwrap();
    store.append("a", &body(1), 1).unwrap();
    store.verify_active().unwrap();
    let org_dir = dir.path().join("segments/a");
    let first = list_segments(&org_dir).unwrap()[0];
    std::fs::remove_file(org_dir.join(segment_file_name(first))).unwrap();
    store.append("a", &body(2), 1).unwrap();
    let err = store.verify_active().unwrap_err();
    assert!(
        matches!(err, StoreError::Vanished { .. }) && err.lost_durability(),
        "{err}"
    );
    // Written again, it lands in a new segment and reads back.
    store.append("a", &body(2), 1).unwrap();
    store.verify_active().unwrap();
    store.sync().unwrap();
    assert_eq!(store.total_bytes(), disk_bytes(dir.path()));
    drop(store);
    let mut out = Vec::new();
    crate::data::sink::file::store::reader::OrgReader::new(dir.path(), "a")
        .read_available(&mut out)
        .unwrap();
    assert_eq!(out.iter().map(|b| b.seq).collect::<Vec<_>>(), vec![2]);
}

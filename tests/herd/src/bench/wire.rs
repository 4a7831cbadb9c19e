//! Wire bytes per record of batches a meter really sent, in each form: what a fleet pays for on
//! the network and in its sinks.
//!
//! Owns: reading one meter's stored batches back from a file sink and framing each again as rows,
//! as columns, and as columns compressed at the collectors' default zstd level. Must never:
//! decide what the figures mean (the report does).

use std::path::Path;

use ringflow_collector::data::sink::file::store::read_all;
use ringflow_proto::{columns, pb};
use ringflow_tests::raw::batch_frame;

use super::bulk::columns_of;

/// Frame bytes per record of the same batches in each form.
#[derive(Debug, Clone, Copy)]
pub struct WireBytes {
    pub records: u64,
    pub batches: u64,
    pub rows: f64,
    pub columns: f64,
    pub columns_zstd: f64,
}

/// The batches meter `meter_id` stored under `data_dir` (a file sink's, read as rows whichever
/// form they were stored in), framed in each form.
pub fn of_stored(data_dir: &Path, meter_id: &str) -> anyhow::Result<WireBytes> {
    let (mut records, mut batches) = (0u64, 0u64);
    let mut bytes = [0u64; 3];
    for stored in read_all(data_dir, None)? {
        if stored.meter_id != meter_id {
            continue;
        }
        let rows = pb::FlowBatch {
            seq: stored.seq,
            records: stored.records,
            loss: stored.loss,
            created_unix_nanos: stored.received_unix_nanos,
            columns: Default::default(),
        };
        records += rows.records.len() as u64;
        batches += 1;
        bytes[1] += batch_frame(columns_of(&rows, None)).len() as u64;
        bytes[2] += batch_frame(columns_of(&rows, Some(columns::DEFAULT_ZSTD_LEVEL))).len() as u64;
        bytes[0] += batch_frame(rows).len() as u64;
    }
    anyhow::ensure!(
        records > 0,
        "{meter_id} stored no records under {}",
        data_dir.display()
    );
    let per_record = |b: u64| b as f64 / records as f64;
    Ok(WireBytes {
        records,
        batches,
        rows: per_record(bytes[0]),
        columns: per_record(bytes[1]),
        columns_zstd: per_record(bytes[2]),
    })
}

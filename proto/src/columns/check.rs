//! The collector's judgement of a columnar block ([`check`]): the row batch's limits and `Nack`
//! reasons, without building a record.
//!
//! Owns: [`Limits`] and the per-column rules. Must never: allocate per record.

use super::{COLUMNS, DERIVED_FLOW_ID, Invalid, Kind, body, parts, undecodable, unzigzag, varint};
use crate::pb;

/// What [`check`] holds a block to: the collector's limits for a row batch.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most records in a batch (`TooManyRecords` above it).
    pub max_records: usize,
    /// Most bytes the body may take once decompressed (`Undecodable` above it).
    pub max_body_bytes: usize,
    /// Longest value of each text column, by field name; a text column not named here may be
    /// as long as `max_text_bytes` (`FieldTooLong` above it).
    pub text_limits: &'static [(&'static str, usize)],
    pub max_text_bytes: usize,
}

/// Judges `block` as the collector judges a row batch, without building a record: the body
/// decompresses within the limit; the counts, lengths and dictionary indices hold; every
/// address has 0, 4 or 16 bytes; ports, protocols and `uint32` fields are in range; no flow
/// ends before it starts; every text is UTF-8 within its field's limit; nothing is left over.
/// Returns the number of records.
pub fn check(block: &[u8], limits: &Limits) -> Result<usize, Invalid> {
    let body = body(block, limits.max_body_bytes)?;
    let p = parts(&body, limits.max_records)?;
    // What each dictionary entry is fit for, found once per entry: an address, and UTF-8.
    let addr_ok: Vec<bool> = p
        .dictionary
        .iter()
        .map(|e| matches!(e.len(), 0 | 4 | 16))
        .collect();
    let mut utf8: Vec<Option<bool>> = vec![None; p.dictionary.len()];
    let mut buf = p.columns;
    let mut starts: Vec<u64> = Vec::new();
    for (k, column) in COLUMNS.iter().enumerate() {
        if p.present & (1 << k) == 0 {
            if column.kind == Kind::Start {
                starts = vec![0; p.records];
            }
            continue;
        }
        let text_limit = limits
            .text_limits
            .iter()
            .find(|(name, _)| *name == column.name)
            .map_or(limits.max_text_bytes, |&(_, limit)| limit);
        let mut previous = 0u64;
        for i in 0..p.records {
            let v = varint(&mut buf, column.name)?;
            let invalid = |reason, message: String| Invalid {
                reason,
                message: format!("record {i}: {message}"),
            };
            match column.kind {
                Kind::Start => {
                    previous = previous.wrapping_add(unzigzag(v) as u64);
                    starts.push(previous);
                }
                Kind::End => {
                    let start = starts[i];
                    let end = start.wrapping_add(unzigzag(v) as u64);
                    if end != 0 && end < start {
                        return Err(invalid(
                            pb::NackReason::InvalidRecord,
                            "flow ends before it starts".into(),
                        ));
                    }
                }
                // Derived by the reader from the record's tuple: a 30-byte id, or none.
                Kind::FlowId if v == DERIVED_FLOW_ID => {}
                Kind::Addr | Kind::Text | Kind::FlowId => {
                    let v = if column.kind == Kind::FlowId { v - 1 } else { v };
                    let Some(entry) = p.dictionary.get(v as usize) else {
                        return Err(invalid(
                            pb::NackReason::Undecodable,
                            format!(
                                "{} names dictionary entry {v} of {}",
                                column.name,
                                p.dictionary.len()
                            ),
                        ));
                    };
                    let e = v as usize;
                    if column.kind == Kind::Addr && !addr_ok[e] {
                        return Err(invalid(
                            pb::NackReason::InvalidRecord,
                            format!(
                                "{} has {} bytes; an address has 4 or 16",
                                column.name,
                                entry.len()
                            ),
                        ));
                    }
                    if column.kind != Kind::Addr {
                        if entry.len() > text_limit {
                            return Err(invalid(
                                pb::NackReason::FieldTooLong,
                                format!(
                                    "{} of {} bytes, the limit is {text_limit}",
                                    column.name,
                                    entry.len()
                                ),
                            ));
                        }
                        if !*utf8[e].get_or_insert_with(|| std::str::from_utf8(entry).is_ok()) {
                            return Err(invalid(
                                pb::NackReason::Undecodable,
                                format!("{} is not UTF-8", column.name),
                            ));
                        }
                    }
                }
                Kind::Enum => {
                    if i32::try_from(unzigzag(v)).is_err() {
                        return Err(invalid(
                            pb::NackReason::Undecodable,
                            format!("{} {} does not fit an enum", column.name, unzigzag(v)),
                        ));
                    }
                }
                Kind::U32 { max } => {
                    if v > u64::from(max) {
                        return Err(invalid(
                            pb::NackReason::InvalidRecord,
                            format!("{} {v} above {max}", column.name),
                        ));
                    }
                }
                Kind::U64 => {}
            }
        }
    }
    if !buf.is_empty() {
        return Err(undecodable(format!("{} bytes after the last column", buf.len())));
    }
    Ok(p.records)
}

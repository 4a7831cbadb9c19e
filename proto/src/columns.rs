//! The columnar form of a batch's records (`FlowBatch.columns`, `StoredBatch.columns`): the
//! records laid out field by field, so that a batch of host flows (the same local addresses, a
//! few remote ones, small counters, close times) takes a few bytes per record, and a collector
//! can check it without building a struct per record.
//!
//! A block (format 1) is two bytes and a body:
//! - byte 0: the format, [`FORMAT`];
//! - byte 1: how the body is compressed: 0 not, 1 zstd (one frame);
//! - the body:
//!   - `records`: varint, the number of records N;
//!   - `present`: varint, a bit per column of [`COLUMNS`] (bit k: column k follows); a column
//!     left out is its field's default (0, empty) in every record;
//!   - the dictionary: varint D, then D entries, each a varint length and that many bytes:
//!     every distinct address and text of the batch, once;
//!   - each present column in [`COLUMNS`] order, N varints each:
//!     - `start_unix_nanos`: the zigzag of the difference from the record before (the first
//!       from 0);
//!     - `end_unix_nanos`: the zigzag of `end - start` of the same record (wrapping, 64 bits);
//!     - an address or text column: the index of its value in the dictionary;
//!     - an enum column: the zigzag of its `i32`;
//!     - any other: the value.
//!
//! Nothing follows the last column. Decoding is exact: `decode(encode(records)) == records`.
//!
//! Owns: the block's layout, its encoder, its decoder and [`check`], which judges a block as the
//! collector judges a row batch (the same limits, the same `Nack` reasons) without decoding
//! records. Must never: allocate per record while checking, or trust a length before
//! comparing it with what is left.

use prost::encoding::{decode_varint, encode_varint};

use crate::pb;

/// The block format this module writes and reads.
pub const FORMAT: u8 = 1;
/// Byte 1 of a block: the body as is.
pub const UNCOMPRESSED: u8 = 0;
/// Byte 1 of a block: the body is one zstd frame.
pub const ZSTD: u8 = 1;
/// The zstd level a collector asks for unless configured otherwise (`limits.columns_zstd_level`),
/// and the level a meter seals at before any collector has said: level 1 compresses flow records
/// about as well as zstd's default 3 for less of the meter's CPU (docs/benchmarks.md).
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// How a column's values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `start_unix_nanos`: zigzag delta from the previous record's.
    Start,
    /// `end_unix_nanos`: zigzag of `end - start`.
    End,
    /// An address: a dictionary index; the value has 0, 4 or 16 bytes.
    Addr,
    /// A text: a dictionary index; the value is UTF-8 of at most the field's limit.
    Text,
    /// `community_id`: 0 when it is the id derived from the record's tuple
    /// ([`crate::community_id::derived`]), else 1 + the dictionary index of its text (as `Text`).
    FlowId,
    /// An enum (`i32`): zigzag.
    Enum,
    /// A `uint32` at most `max`.
    U32 { max: u32 },
    /// A `uint64`.
    U64,
}

/// One column: the field it holds and how.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// The `FlowRecord` field.
    pub name: &'static str,
    kind: Kind,
}

const fn col(name: &'static str, kind: Kind) -> Column {
    Column { name, kind }
}

const U32: Kind = Kind::U32 { max: u32::MAX };

/// The columns of format 1, in block order (never reordered: `present` bits index it).
pub const COLUMNS: [Column; 30] = [
    col("start_unix_nanos", Kind::Start),
    col("end_unix_nanos", Kind::End),
    col("src_addr", Kind::Addr),
    col("dst_addr", Kind::Addr),
    col("src_port", Kind::U32 { max: 65_535 }),
    col("dst_port", Kind::U32 { max: 65_535 }),
    col("ip_protocol", Kind::U32 { max: 255 }),
    col("bytes_from_src", Kind::U64),
    col("packets_from_src", Kind::U64),
    col("bytes_from_dst", Kind::U64),
    col("packets_from_dst", Kind::U64),
    col("source", Kind::Enum),
    col("rtt_micros", U32),
    col("interface", Kind::Text),
    col("exporter_addr", Kind::Addr),
    col("sampling_rate", U32),
    col("server", Kind::Enum),
    col("tx_errors", Kind::U64),
    col("rx_errors", Kind::U64),
    col("tx_drops", Kind::U64),
    col("rx_drops", Kind::U64),
    col("pid", U32),
    col("process_name", Kind::Text),
    col("cgroup", Kind::Text),
    col("container_id", Kind::Text),
    col("pod_uid", Kind::Text),
    col("systemd_unit", Kind::Text),
    col("community_id", Kind::FlowId),
    col("ip_bytes_from_src", Kind::U64),
    col("ip_bytes_from_dst", Kind::U64),
];

/// A record's value in column `k`: a number, or a dictionary value.
enum Value<'a> {
    Num(u64),
    Bytes(&'a [u8]),
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Record `r`'s value in column `k` (for `Start`/`End`, the raw field).
fn value(r: &pb::FlowRecord, k: usize) -> Value<'_> {
    use Value::{Bytes, Num};
    match k {
        0 => Num(r.start_unix_nanos),
        1 => Num(r.end_unix_nanos),
        2 => Bytes(&r.src_addr),
        3 => Bytes(&r.dst_addr),
        4 => Num(r.src_port.into()),
        5 => Num(r.dst_port.into()),
        6 => Num(r.ip_protocol.into()),
        7 => Num(r.bytes_from_src),
        8 => Num(r.packets_from_src),
        9 => Num(r.bytes_from_dst),
        10 => Num(r.packets_from_dst),
        11 => Num(zigzag(r.source.into())),
        12 => Num(r.rtt_micros.into()),
        13 => Bytes(r.interface.as_bytes()),
        14 => Bytes(&r.exporter_addr),
        15 => Num(r.sampling_rate.into()),
        16 => Num(zigzag(r.server.into())),
        17 => Num(r.tx_errors),
        18 => Num(r.rx_errors),
        19 => Num(r.tx_drops),
        20 => Num(r.rx_drops),
        21 => Num(r.pid.into()),
        22 => Bytes(r.process_name.as_bytes()),
        23 => Bytes(r.cgroup.as_bytes()),
        24 => Bytes(r.container_id.as_bytes()),
        25 => Bytes(r.pod_uid.as_bytes()),
        26 => Bytes(r.systemd_unit.as_bytes()),
        27 => Bytes(r.community_id.as_bytes()),
        28 => Num(r.ip_bytes_from_src),
        29 => Num(r.ip_bytes_from_dst),
        _ => unreachable!("format 1 has {} columns", COLUMNS.len()),
    }
}

/// Sets record `r`'s field of column `k` from its stored number (enums still zigzagged; `End`
/// already resolved to the end time) or dictionary value (texts already checked as UTF-8).
fn set(r: &mut pb::FlowRecord, k: usize, num: u64, bytes: &[u8]) {
    let text = || String::from_utf8_lossy(bytes).into_owned();
    match k {
        0 => r.start_unix_nanos = num,
        1 => r.end_unix_nanos = num,
        2 => r.src_addr = prost::bytes::Bytes::copy_from_slice(bytes),
        3 => r.dst_addr = prost::bytes::Bytes::copy_from_slice(bytes),
        4 => r.src_port = num as u32,
        5 => r.dst_port = num as u32,
        6 => r.ip_protocol = num as u32,
        7 => r.bytes_from_src = num,
        8 => r.packets_from_src = num,
        9 => r.bytes_from_dst = num,
        10 => r.packets_from_dst = num,
        11 => r.source = unzigzag(num) as i32,
        12 => r.rtt_micros = num as u32,
        13 => r.interface = text(),
        14 => r.exporter_addr = prost::bytes::Bytes::copy_from_slice(bytes),
        15 => r.sampling_rate = num as u32,
        16 => r.server = unzigzag(num) as i32,
        17 => r.tx_errors = num,
        18 => r.rx_errors = num,
        19 => r.tx_drops = num,
        20 => r.rx_drops = num,
        21 => r.pid = num as u32,
        22 => r.process_name = text(),
        23 => r.cgroup = text(),
        24 => r.container_id = text(),
        25 => r.pod_uid = text(),
        26 => r.systemd_unit = text(),
        27 => r.community_id = text(),
        28 => r.ip_bytes_from_src = num,
        29 => r.ip_bytes_from_dst = num,
        _ => unreachable!("format 1 has {} columns", COLUMNS.len()),
    }
}

/// FNV-1a: the dictionary's keys are a few bytes each (addresses, short names), where SipHash's
/// set-up costs more than the hashing.
#[derive(Default)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// The dictionary being built: each distinct value once, in first-seen order.
#[derive(Default)]
struct Dictionary<'a> {
    index: std::collections::HashMap<&'a [u8], u64, std::hash::BuildHasherDefault<Fnv>>,
    entries: Vec<&'a [u8]>,
}

impl<'a> Dictionary<'a> {
    fn of(&mut self, value: &'a [u8]) -> u64 {
        let next = self.entries.len() as u64;
        *self.index.entry(value).or_insert_with(|| {
            self.entries.push(value);
            next
        })
    }
}

/// The block of `records`, its body compressed with zstd at `zstd_level` when given.
pub fn encode(records: &[pb::FlowRecord], zstd_level: Option<i32>) -> Vec<u8> {
    let body = encode_body(records);
    match zstd_level {
        Some(level) => {
            let mut block = vec![FORMAT, ZSTD];
            // Compressing a buffer in memory fails only on an invalid level, which zstd clamps.
            match zstd::bulk::compress(&body, level) {
                Ok(compressed) => block.extend_from_slice(&compressed),
                Err(_) => block = [vec![FORMAT, UNCOMPRESSED], body].concat(),
            }
            block
        }
        None => [vec![FORMAT, UNCOMPRESSED], body].concat(),
    }
}

fn encode_body(records: &[pb::FlowRecord]) -> Vec<u8> {
    // Column by column: a present column is usually found at its first record.
    let present = (0..COLUMNS.len())
        .filter(|&k| records.iter().any(|r| !is_default(&value(r, k))))
        .fold(0u64, |bits, k| bits | 1 << k);
    let mut dict = Dictionary::default();
    let mut columns = Vec::with_capacity(records.len() * 8);
    for (k, column) in COLUMNS.iter().enumerate() {
        if present & (1 << k) == 0 {
            continue;
        }
        let mut previous = 0u64;
        // A column's value often repeats the record before's (the host's own address, its
        // interface): its index then needs no lookup.
        let mut last: Option<(&[u8], u64)> = None;
        for r in records {
            let v = match (column.kind, value(r, k)) {
                (Kind::Start, Value::Num(start)) => {
                    let delta = zigzag(start.wrapping_sub(previous) as i64);
                    previous = start;
                    delta
                }
                (Kind::End, Value::Num(end)) => zigzag(end.wrapping_sub(r.start_unix_nanos) as i64),
                // A flow id its readers can derive costs a byte (zstd makes a run of them
                // nothing); the hash is taken only for a record that has an id.
                (Kind::FlowId, Value::Bytes(b))
                    if !b.is_empty()
                        && crate::community_id::derived(r).is_some_and(|id| id.as_bytes() == b) =>
                {
                    DERIVED_FLOW_ID
                }
                (Kind::FlowId, Value::Bytes(b)) => 1 + dict.of(b),
                (_, Value::Num(n)) => n,
                (_, Value::Bytes(b)) => match last {
                    Some((same, i)) if same == b => i,
                    _ => {
                        let i = dict.of(b);
                        last = Some((b, i));
                        i
                    }
                },
            };
            put_varint(v, &mut columns);
        }
    }
    let mut body = Vec::with_capacity(columns.len() + 16 * dict.entries.len() + 16);
    encode_varint(records.len() as u64, &mut body);
    encode_varint(present, &mut body);
    encode_varint(dict.entries.len() as u64, &mut body);
    for entry in &dict.entries {
        encode_varint(entry.len() as u64, &mut body);
        body.extend_from_slice(entry);
    }
    body.extend_from_slice(&columns);
    body
}

/// `community_id`'s value for an id derived from the record's tuple.
const DERIVED_FLOW_ID: u64 = 0;

/// Appends `v` as a varint (as `prost::encoding::encode_varint`, without its per-byte capacity
/// checks: the room for a whole varint is reserved once).
fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    out.reserve(10);
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn is_default(v: &Value<'_>) -> bool {
    match v {
        Value::Num(n) => *n == 0,
        Value::Bytes(b) => b.is_empty(),
    }
}

/// Why a block was turned away: the `Nack` reason a row batch gets for the same fault, and what
/// was wrong (naming the record and field where there is one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub reason: pb::NackReason,
    pub message: String,
}

fn undecodable(message: impl Into<String>) -> Invalid {
    Invalid {
        reason: pb::NackReason::Undecodable,
        message: message.into(),
    }
}

/// The body of `block`, decompressed when it is compressed (at most `max_body_bytes`).
pub fn body(block: &[u8], max_body_bytes: usize) -> Result<std::borrow::Cow<'_, [u8]>, Invalid> {
    match block {
        [FORMAT, UNCOMPRESSED, body @ ..] => Ok(std::borrow::Cow::Borrowed(body)),
        [FORMAT, ZSTD, compressed @ ..] => zstd::bulk::decompress(compressed, max_body_bytes)
            .map(std::borrow::Cow::Owned)
            .map_err(|e| {
                undecodable(format!(
                    "the columns' zstd body does not decompress within {max_body_bytes} bytes: {e}"
                ))
            }),
        [FORMAT, other, ..] => Err(undecodable(format!(
            "unknown compression {other} (0: none, 1: zstd)"
        ))),
        [format, ..] => Err(undecodable(format!(
            "columns of format {format}; this collector reads format {FORMAT}"
        ))),
        [] => Err(undecodable("empty columns block")),
    }
}

/// A body's parts: its record count, present columns, dictionary and where the columns start.
struct Parts<'a> {
    records: usize,
    present: u64,
    dictionary: Vec<&'a [u8]>,
    columns: &'a [u8],
}

fn varint(buf: &mut &[u8], what: &str) -> Result<u64, Invalid> {
    decode_varint(buf).map_err(|_| undecodable(format!("{what}: not a varint")))
}

fn parts<'a>(body: &'a [u8], max_records: usize) -> Result<Parts<'a>, Invalid> {
    let mut buf = body;
    let records = varint(&mut buf, "record count")?;
    if records > max_records as u64 {
        return Err(Invalid {
            reason: pb::NackReason::TooManyRecords,
            message: format!("{records} records, the limit is {max_records}"),
        });
    }
    let present = varint(&mut buf, "present columns")?;
    if present >> COLUMNS.len() != 0 {
        return Err(undecodable(format!(
            "present columns {present:#x} name columns format {FORMAT} does not have"
        )));
    }
    let entries = varint(&mut buf, "dictionary size")?;
    let columns = present.count_ones() as u64;
    // Each entry takes at least its length byte: no more of them than bytes left.
    if entries > buf.len() as u64 {
        return Err(undecodable(format!(
            "dictionary of {entries} entries in {} bytes",
            buf.len()
        )));
    }
    let mut dictionary = Vec::with_capacity(entries as usize);
    for i in 0..entries {
        let len = varint(&mut buf, "dictionary entry length")?;
        if len > buf.len() as u64 {
            return Err(undecodable(format!(
                "dictionary entry {i} of {len} bytes, {} left",
                buf.len()
            )));
        }
        let (entry, rest) = buf.split_at(len as usize);
        dictionary.push(entry);
        buf = rest;
    }
    // Each present column takes at least a byte per record.
    if columns > 0 && records.saturating_mul(columns) > buf.len() as u64 {
        return Err(undecodable(format!(
            "{records} records of {columns} columns in {} bytes",
            buf.len()
        )));
    }
    Ok(Parts {
        records: records as usize,
        present,
        dictionary,
        columns: buf,
    })
}

/// The records of `block`, at most `max_records` of them and a body of at most
/// `max_body_bytes` (a reader's view: [`check`] it first where it came from a peer; a block that
/// does not decode is an error, never a panic).
pub fn decode(
    block: &[u8],
    max_records: usize,
    max_body_bytes: usize,
) -> Result<Vec<pb::FlowRecord>, Invalid> {
    let body = body(block, max_body_bytes)?;
    let p = parts(&body, max_records)?;
    let mut records = vec![pb::FlowRecord::default(); p.records];
    let mut buf = p.columns;
    for (k, column) in COLUMNS.iter().enumerate() {
        if p.present & (1 << k) == 0 {
            continue;
        }
        let mut previous = 0u64;
        for (i, r) in records.iter_mut().enumerate() {
            let v = varint(&mut buf, column.name)?;
            match column.kind {
                Kind::Start => {
                    previous = previous.wrapping_add(unzigzag(v) as u64);
                    set(r, k, previous, &[]);
                }
                Kind::End => {
                    let end = r.start_unix_nanos.wrapping_add(unzigzag(v) as u64);
                    set(r, k, end, &[]);
                }
                Kind::FlowId if v == DERIVED_FLOW_ID => {
                    r.community_id = crate::community_id::derived(r).unwrap_or_default();
                }
                Kind::Addr | Kind::Text | Kind::FlowId => {
                    let index = if column.kind == Kind::FlowId { v - 1 } else { v };
                    let entry = p.dictionary.get(index as usize).ok_or_else(|| {
                        undecodable(format!(
                            "record {i}: {} names dictionary entry {index} of {}",
                            column.name,
                            p.dictionary.len()
                        ))
                    })?;
                    if column.kind != Kind::Addr && std::str::from_utf8(entry).is_err() {
                        return Err(undecodable(format!("record {i}: {} is not UTF-8", column.name)));
                    }
                    set(r, k, 0, entry);
                }
                Kind::U32 { .. } if v > u64::from(u32::MAX) => {
                    return Err(undecodable(format!(
                        "record {i}: {} {v} does not fit 32 bits",
                        column.name
                    )));
                }
                Kind::Enum if i32::try_from(unzigzag(v)).is_err() => {
                    return Err(undecodable(format!(
                        "record {i}: {} {} does not fit an enum",
                        column.name,
                        unzigzag(v)
                    )));
                }
                _ => set(r, k, v, &[]),
            }
        }
    }
    if !buf.is_empty() {
        return Err(undecodable(format!("{} bytes after the last column", buf.len())));
    }
    Ok(records)
}

/// `FlowBatch.columns`.
const BATCH_COLUMNS_TAG: u32 = 5;

/// Whether the `DataUp` frame body `body` carries its batch's records as columns (a non-empty
/// `FlowBatch.columns`), found by walking the fields without decoding the records. False for
/// anything that does not parse (the decoder says why, where it matters).
pub fn in_data_up(body: &[u8]) -> bool {
    use crate::stored::{DATA_UP_BATCH_TAG, last_field};
    last_field(body, DATA_UP_BATCH_TAG)
        .and_then(|batch| last_field(batch, BATCH_COLUMNS_TAG))
        .is_some_and(|columns| !columns.is_empty())
}

/// Most records a stored block may hold for a reader (a collector accepts far fewer per batch).
pub const STORED_MAX_RECORDS: usize = 1 << 20;
/// Most bytes a stored block's body may take once decompressed, for a reader.
pub const STORED_MAX_BODY_BYTES: usize = 256 << 20;

/// `batch` with the records of its `columns`, if any, in `records` (and `columns` emptied): a
/// sink reader's view of either stored form.
pub fn into_rows(mut batch: pb::StoredBatch) -> Result<pb::StoredBatch, Invalid> {
    if !batch.columns.is_empty() {
        batch.records = decode(&batch.columns, STORED_MAX_RECORDS, STORED_MAX_BODY_BYTES)?;
        batch.columns = Default::default();
    }
    Ok(batch)
}

/// A sink's stored batch read as rows, whichever form it was stored in (decoded, then
/// [`into_rows`]): what every sink reader does with a payload; the error says what did not
/// decode.
pub fn read_stored(payload: impl prost::bytes::Buf) -> Result<pb::StoredBatch, String> {
    let batch = <pb::StoredBatch as prost::Message>::decode(payload).map_err(|e| e.to_string())?;
    into_rows(batch).map_err(|e| e.to_string())
}

mod check;

pub use check::{Limits, check};

#[cfg(test)]
mod tests;

//! The segment file format, as pure functions over bytes (no I/O).
//!
//! ```text
//! segment file  NNNNNNNNNNNNNNNNNNNN.seg   (20-digit id, unique across all orgs, increasing)
//!   header      8 bytes: "RFSEG" 0x00 0x00 0x01   (format version 1)
//!   entry*      u32 BE body_len | u32 BE records | u32 BE crc32c(records BE ++ body) | body
//!               body = one encoded StoredBatch
//! sidecar       NNNNNNNNNNNNNNNNNNNN.meta  (JSON SegmentMeta, written when the segment is sealed)
//! ```
//!
//! The record count sits in the entry header so that recovery and retention can count what a
//! segment holds from a CRC scan, without decoding a single batch. Owns: encoding and parsing
//! entries, naming files. Must never: open files.

use serde::{Deserialize, Serialize};

pub const SEGMENT_MAGIC: [u8; 8] = *b"RFSEG\x00\x00\x01";
pub const SEGMENT_HEADER_BYTES: u64 = SEGMENT_MAGIC.len() as u64;
pub const ENTRY_HEADER_BYTES: usize = 12;
/// No valid entry is larger; a length above it can only be corruption.
pub const MAX_ENTRY_BODY_BYTES: u32 = 64 << 20;

/// What a sealed segment holds, written beside it so start-up never has to scan it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    /// Bytes of the file that hold valid data (header included); readers stop there.
    pub bytes: u64,
    pub entries: u64,
    pub records: u64,
}

pub fn segment_file_name(id: u64) -> String {
    format!("{id:020}.seg")
}

pub fn meta_file_name(id: u64) -> String {
    format!("{id:020}.meta")
}

/// The id of a segment file name, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn entry_crc(records: u32, body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&records.to_be_bytes()), body)
}

/// Appends one entry to `out`.
pub fn encode_entry(body: &[u8], records: u32, out: &mut Vec<u8>) {
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    out.reserve(ENTRY_HEADER_BYTES + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&records.to_be_bytes());
    out.extend_from_slice(&entry_crc(records, body).to_be_bytes());
    out.extend_from_slice(body);
}

/// One step of scanning a segment from an entry boundary.
#[derive(Debug, PartialEq, Eq)]
pub enum EntryScan<'a> {
    /// A whole, checksummed entry; `size` is header plus body.
    Entry {
        body: &'a [u8],
        records: u32,
        size: usize,
    },
    /// The bytes end inside an entry: a torn write, or one still being written.
    Incomplete,
    /// The entry's checksum or length is wrong.
    Corrupt(&'static str),
}

pub fn scan_entry(buf: &[u8]) -> EntryScan<'_> {
    let Some(header) = buf.get(..ENTRY_HEADER_BYTES) else {
        return EntryScan::Incomplete;
    };
    let word = |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let (len, records, crc) = (word(0), word(4), word(8));
    if len > MAX_ENTRY_BODY_BYTES {
        return EntryScan::Corrupt("entry length beyond the format's maximum");
    }
    let size = ENTRY_HEADER_BYTES + len as usize;
    let Some(body) = buf.get(ENTRY_HEADER_BYTES..size) else {
        return EntryScan::Incomplete;
    };
    if entry_crc(records, body) != crc {
        return EntryScan::Corrupt("entry checksum mismatch");
    }
    EntryScan::Entry { body, records, size }
}

/// Result of checking a whole segment's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentScan {
    /// Valid prefix of the file, header included: everything after it is to be truncated.
    pub meta: SegmentMeta,
    /// Bytes after the valid prefix (a torn or corrupt tail).
    pub invalid_tail_bytes: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a ringflow segment (bad header)")]
pub struct BadHeader;

/// Checks a segment file's full contents: header, then entries up to the first that is
/// incomplete or corrupt.
pub fn scan_segment(file: &[u8]) -> Result<SegmentScan, BadHeader> {
    if file.len() < SEGMENT_MAGIC.len() {
        // A crash right after creation can leave a short header; such a file holds nothing.
        if SEGMENT_MAGIC.starts_with(file) {
            return Ok(SegmentScan {
                meta: SegmentMeta {
                    bytes: 0,
                    entries: 0,
                    records: 0,
                },
                invalid_tail_bytes: file.len() as u64,
            });
        }
        return Err(BadHeader);
    }
    if file[..SEGMENT_MAGIC.len()] != SEGMENT_MAGIC {
        return Err(BadHeader);
    }
    let mut pos = SEGMENT_MAGIC.len();
    let (mut entries, mut records) = (0u64, 0u64);
    while let EntryScan::Entry { records: r, size, .. } = scan_entry(&file[pos..]) {
        pos += size;
        entries += 1;
        records += u64::from(r);
    }
    Ok(SegmentScan {
        meta: SegmentMeta {
            bytes: pos as u64,
            entries,
            records,
        },
        invalid_tail_bytes: (file.len() - pos) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn segment(bodies: &[(Vec<u8>, u32)]) -> Vec<u8> {
        let mut out = SEGMENT_MAGIC.to_vec();
        for (b, r) in bodies {
            encode_entry(b, *r, &mut out);
        }
        out
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(parse_segment_file_name(&meta_file_name(42)), None);
    }

    proptest! {
        #[test]
        fn every_truncation_keeps_exactly_the_whole_entries(
            bodies in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..64), 0u32..100), 0..6),
            cut_frac in 0.0f64..=1.0,
        ) {
            let file = segment(&bodies);
            let cut = ((file.len() as f64) * cut_frac) as usize;
            let scan = scan_segment(&file[..cut]).unwrap();
            // The valid prefix is exactly the entries that fit entirely before the cut.
            let mut pos = SEGMENT_MAGIC.len();
            let mut whole = 0;
            for (b, _) in &bodies {
                if pos + ENTRY_HEADER_BYTES + b.len() <= cut {
                    pos += ENTRY_HEADER_BYTES + b.len();
                    whole += 1;
                } else {
                    break;
                }
            }
            if cut >= SEGMENT_MAGIC.len() {
                prop_assert_eq!(scan.meta.bytes as usize, pos);
                prop_assert_eq!(scan.meta.entries, whole as u64);
                let records: u64 = bodies[..whole].iter().map(|(_, r)| u64::from(*r)).sum();
                prop_assert_eq!(scan.meta.records, records);
                prop_assert_eq!(scan.invalid_tail_bytes as usize, cut - pos);
            } else {
                prop_assert_eq!(scan.meta.entries, 0);
            }
        }

        #[test]
        fn a_flipped_bit_is_caught(
            body in proptest::collection::vec(any::<u8>(), 1..64),
            bit in 0usize..1000,
        ) {
            let file = segment(&[(body.clone(), 3)]);
            let mut bad = file.clone();
            let idx = SEGMENT_MAGIC.len() + (bit / 8) % (bad.len() - SEGMENT_MAGIC.len());
            bad[idx] ^= 1 << (bit % 8);
            let scan = scan_segment(&bad).unwrap();
            prop_assert_eq!(scan.meta.entries, 0, "corruption at byte {} went unnoticed", idx);
        }
    }

    #[test]
    fn foreign_files_are_refused() {
        assert_eq!(scan_segment(b"PK\x03\x04 not ours"), Err(BadHeader));
        assert_eq!(scan_segment(b"RFS").unwrap().meta.bytes, 0);
    }
}

//! The spool's file format, as pure functions over bytes.
//!
//! ```text
//! segment   NNNNNNNNNNNNNNNNNNNN.seg   (20-digit id, increasing)
//!   header  "RFSPOOL1" | u64 BE accepted_before   (records accepted by the meter before this segment)
//!   entry*  u32 BE frame_len | u64 BE seq | u32 BE records | u64 BE created_unix_ms
//!           | u32 BE crc32c(seq ++ records ++ created ++ frame) | frame
//!           frame = the batch exactly as it goes on the wire (length prefix and DataUp)
//! sidecar   NNNNNNNNNNNNNNNNNNNN.meta  (JSON SegmentMeta, written when the segment is sealed)
//! state     state.json                 (ack watermark, persistent drop counters)
//! ```
//!
//! `accepted_before` in each header makes the meter's lifetime count of accepted records exact
//! after any crash from the tail segment alone: header plus whole entries. Must never: open files.

use serde::{Deserialize, Serialize};

pub const MAGIC: [u8; 8] = *b"RFSPOOL1";
pub const HEADER_BYTES: u64 = 16;
pub const ENTRY_HEADER_BYTES: usize = 28;
/// No valid entry is larger; a length above it can only be corruption.
pub const MAX_FRAME_BYTES: u32 = 64 << 20;

/// One spooled batch, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub records: u32,
    pub created_unix_ms: u64,
    pub frame: bytes::Bytes,
}

impl Entry {
    /// Bytes it takes in a segment.
    pub fn size(&self) -> u64 {
        entry_bytes(self.frame.len())
    }
}

/// Bytes an entry with a frame of `frame_len` bytes takes in a segment.
pub fn entry_bytes(frame_len: usize) -> u64 {
    (ENTRY_HEADER_BYTES + frame_len) as u64
}

/// What a sealed segment holds, so start-up never has to scan it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    /// Valid bytes of the file, header included.
    pub bytes: u64,
    pub entries: u64,
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub accepted_before: u64,
    /// Creation time of its oldest entry.
    pub first_created_unix_ms: u64,
}

pub fn segment_name(id: u64) -> String {
    format!("{id:020}.seg")
}

pub fn meta_name(id: u64) -> String {
    format!("{id:020}.meta")
}

pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

pub fn header(accepted_before: u64) -> [u8; HEADER_BYTES as usize] {
    let mut h = [0u8; HEADER_BYTES as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..].copy_from_slice(&accepted_before.to_be_bytes());
    h
}

/// `accepted_before` of a segment's header, if the header is whole and ours.
pub fn parse_header(bytes: &[u8]) -> Option<u64> {
    let h = bytes.get(..HEADER_BYTES as usize)?;
    (h[..8] == MAGIC).then(|| u64::from_be_bytes(h[8..16].try_into().unwrap_or_default()))
}

fn crc(seq: u64, records: u32, created: u64, frame: &[u8]) -> u32 {
    let mut c = crc32c::crc32c(&seq.to_be_bytes());
    c = crc32c::crc32c_append(c, &records.to_be_bytes());
    c = crc32c::crc32c_append(c, &created.to_be_bytes());
    crc32c::crc32c_append(c, frame)
}

/// Appends one entry to `out`.
pub fn encode_entry(seq: u64, records: u32, created_unix_ms: u64, frame: &[u8], out: &mut Vec<u8>) {
    out.reserve(ENTRY_HEADER_BYTES + frame.len());
    out.extend_from_slice(&u32::try_from(frame.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&records.to_be_bytes());
    out.extend_from_slice(&created_unix_ms.to_be_bytes());
    out.extend_from_slice(&crc(seq, records, created_unix_ms, frame).to_be_bytes());
    out.extend_from_slice(frame);
}

/// One step of scanning entries from an entry boundary.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// A whole, checksummed entry of `size` bytes.
    Entry(Entry, usize),
    /// The bytes end inside an entry (a torn append).
    Incomplete,
    /// Length or checksum wrong.
    Corrupt,
}

pub fn scan_entry(buf: &bytes::Bytes) -> Scan {
    let Some(h) = buf.get(..ENTRY_HEADER_BYTES) else {
        return Scan::Incomplete;
    };
    let u32_at = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[i..i + 8]);
        u64::from_be_bytes(b)
    };
    let (len, seq, records, created, sum) = (u32_at(0), u64_at(4), u32_at(12), u64_at(16), u32_at(24));
    if len > MAX_FRAME_BYTES {
        return Scan::Corrupt;
    }
    let size = ENTRY_HEADER_BYTES + len as usize;
    if buf.len() < size {
        return Scan::Incomplete;
    }
    let frame = buf.slice(ENTRY_HEADER_BYTES..size);
    if crc(seq, records, created, &frame) != sum {
        return Scan::Corrupt;
    }
    Scan::Entry(
        Entry {
            seq,
            records,
            created_unix_ms: created,
            frame,
        },
        size,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn entries_round_trip_and_any_truncation_is_incomplete() {
        let mut buf = Vec::new();
        encode_entry(42, 7, 1_700_000_000_000, b"frame bytes", &mut buf);
        let whole = Bytes::from(buf);
        match scan_entry(&whole) {
            Scan::Entry(e, size) => {
                assert_eq!(
                    (e.seq, e.records, e.created_unix_ms, size),
                    (42, 7, 1_700_000_000_000, whole.len())
                );
                assert_eq!(&e.frame[..], b"frame bytes");
            }
            other => panic!("{other:?}"),
        }
        for cut in 0..whole.len() {
            assert_eq!(scan_entry(&whole.slice(..cut)), Scan::Incomplete, "cut at {cut}");
        }
        let mut bad = whole.to_vec();
        bad[30] ^= 1;
        assert_eq!(scan_entry(&Bytes::from(bad)), Scan::Corrupt);
    }

    #[test]
    fn headers_and_names_round_trip() {
        assert_eq!(parse_header(&header(99)), Some(99));
        assert_eq!(parse_header(b"RFSEG\0\0\x01 something"), None);
        assert_eq!(parse_segment_name(&segment_name(5)), Some(5));
        assert_eq!(parse_segment_name("5.seg"), None);
    }
}

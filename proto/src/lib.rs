//! The ringflow/1 wire protocol, shared by the meter and the collector: the wire and nothing else
//! (operational conventions live in `ringflow-ops`).
//!
//! Owns: the protobuf schema ([`pb`]), the frame codec ([`frame`]), the columnar form of a
//! batch's records ([`columns`]), the QUIC application error
//! codes ([`codes`]), the stored form of a batch built from its frame ([`stored`]), stable names of the protocol's enums ([`names`]), the transport setup both
//! ends must agree on ([`quic`]: ALPN, TLS 1.3, socket sizing). Must never: hold session state, touch the data path's
//! disk, or know about sinks, rings or spools. Generated types stay here and at the edges of the
//! other crates.

pub mod codes;
pub mod columns;
pub mod community_id;
pub mod frame;
pub mod names;
pub mod quic;
pub mod stored;

/// Types generated from `proto/ringflow/v1/ringflow.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/ringflow.v1.rs"));
}

/// Protocol version a ringflow/1 peer puts in `Hello.protocol_version`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Version of the `StoredBatch` schema written to sinks (the `schema` header downstream): a batch
/// whose records are in `records`.
pub const STORED_BATCH_SCHEMA_VERSION: u32 = 1;

/// The `schema` header of a `StoredBatch` whose records are in `columns` ([`columns`], format 1):
/// a reader of version 1 alone would find no records in it, so it says so.
pub const STORED_COLUMNS_SCHEMA_VERSION: u32 = 2;

/// Whether `header` (a sink's `schema` header) names a `StoredBatch` schema this crate reads
/// ([`columns::read_stored`] reads both).
pub fn reads_stored_schema(header: &str) -> bool {
    [STORED_BATCH_SCHEMA_VERSION, STORED_COLUMNS_SCHEMA_VERSION]
        .iter()
        .any(|v| header == v.to_string())
}

//! The file sink's storage: per-org segment files with a CRC per batch, a byte cap with
//! drop-oldest-segment retention, and tail-only recovery.
//!
//! `segment` is the format (pure functions), `writer` the blocking writer owned by the file sink's
//! thread, `reader` the forward cursor used by `collector read` and the tests.

pub mod reader;
pub mod segment;
pub mod writer;

pub use reader::{OrgReader, ReadProgress, read_all, stored_orgs};
pub use writer::{Evicted, RecoveryReport, SegmentStore, StoreError, StoreLimits};

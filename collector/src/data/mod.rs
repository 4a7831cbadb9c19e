//! The data plane: data streams in, batches judged ([`ingest`]), handed to a sink through the
//! seam in [`sink`], acks out once the sink holds them. Runs on its own runtime ([`runtime`]).
//!
//! Must never: import [`crate::control`] (a test reads every file under `data/` to hold this,
//! `tests/planes.rs`), accept or refuse connections, or block on connecting to anything: sinks
//! connect off the path that consumes batches.

pub mod ingest;
pub mod runtime;
pub mod sink;

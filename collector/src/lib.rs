//! ringflow collector: a stateless ingestion server. Meters connect over QUIC (ringflow/1),
//! authenticate with an org token, and send flow batches; the collector stores each batch in its
//! sink and acks it only once the sink holds it.
//!
//! Module map (see ARCHITECTURE.md): [`control`] (the control plane: the QUIC listener, accept
//! and admission, auth, sessions and drain, the fleet view, admin HTTP), [`data`] (the data
//! plane: its runtime, data streams, the judge, the sink seam and every sink), and beside them
//! [`server`] (the lifecycle: bind, recover, serve, drain, stop) and what both planes share:
//! [`config`], [`telemetry`], [`tls`] and [`cli`] (the binary). `data` never imports
//! `control` (`tests/planes.rs` holds this).
//!
//! Must never: let the control plane wait on the data plane, or ack a batch its sink does not
//! hold.

pub mod cli;
pub mod config;
pub mod control;
pub mod data;
pub mod server;
pub mod telemetry;
pub mod tls;

pub use config::Config;
pub use server::{Collector, StartError};
pub use telemetry::CollectorMetrics;

//! ringflow collector: a stateless ingestion server. Meters connect over QUIC (ringflow/1),
//! authenticate with an org token, and send flow batches; the collector stores each batch in its
//! sink and acks it only once the sink holds it.
//!
//! Module map (see ARCHITECTURE.md): `config` (keys, defaults, validation), `auth` (tokens),
//! `tls` (certificates), `admission` (budgets: refuse before handshake, overload at Hello),
//! `fleet_load` (the fleet's load for the bounded-load cap), `fleet_poll` (polling the peers for
//! it), `server` (lifecycle, the two runtimes, accept loop),
//! `session` (control plane per connection), `ingest` (data plane per stream), `sink` (the seam and
//! the file sink), `store` (segment files), `admin` (HTTP), `telemetry` (metrics, log throttle),
//! `udp_stats` (the kernel's view of the QUIC socket), `cli` (the binary).

pub mod admin;
pub mod admission;
pub mod auth;
pub mod auth_throttle;
pub mod cli;
pub mod config;
pub mod fleet_load;
pub mod fleet_poll;
pub mod ingest;
pub mod server;
pub mod session;
pub mod sink;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod udp_stats;

pub use config::Config;
pub use server::{Collector, StartError};
pub use telemetry::CollectorMetrics;

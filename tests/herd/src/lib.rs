//! `herd`, the thundering-herd harness: real collectors, DNS, NATS and thousands of real meters on
//! loopback, a scenario carried out against them, and a verdict with a report and charts.
//!
//! Modules: `scenario` (plans, sans-IO), `fleet` (collector processes, DNS, NATS), `meters` (the
//! virtual meters), `placement` (which CPUs each side runs on), `acks` (ack latency and acked batches), `capacity` (the session-rate probe), `bench` (`herd bench`: ringflow beside its ceilings),
//! `live` (the runner and sampler), `sim` (`herd sim`: the same scenarios in virtual time, at
//! internet scale), `timeline`, `report`, `charts`, `cli`.

pub mod acks;
pub mod bench;
pub mod capacity;
pub mod charts;
pub mod cli;
pub mod fleet;
pub mod growth;
pub mod live;
pub mod meters;
pub mod placement;
pub mod report;
pub mod scenario;
pub mod sim;
pub mod timeline;

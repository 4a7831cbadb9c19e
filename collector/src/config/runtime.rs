//! `[runtime]`: the threads of the two planes.
//!
//! Owns: the section's keys, defaults and checks, and resolving 0 to the number of CPUs. Must
//! never: start a runtime (the binary and `server` do).

use ringflow_ops::{ConfigError, check_range};
use serde::Deserialize;

/// Threads of the two planes. The control plane (accepting, handshakes, QUIC packet I/O, Hello,
/// control streams, drain, admin HTTP) and the data plane (data streams, the sink) run on
/// separate tokio runtimes, so a saturated data plane cannot queue the control plane's work.
/// Defaults 0 and 0: one thread per CPU each, so neither plane is capped below the machine.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Worker threads of the control plane (used by `collector run`); 0 means one per CPU.
    /// Default 0: QUIC packet I/O (for data too) runs on the control plane.
    pub control_threads: u32,
    /// Worker threads of the data plane; 0 means one per CPU. Default 0.
    pub data_threads: u32,
}

impl RuntimeConfig {
    /// Checks `[runtime]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("runtime.control_threads", self.control_threads.into(), 0, 256)?;
        check_range("runtime.data_threads", self.data_threads.into(), 0, 256)?;
        Ok(())
    }

    /// Data-plane worker threads, with 0 resolved to the number of CPUs.
    pub fn data_threads(&self) -> usize {
        threads_or_cpus(self.data_threads)
    }

    /// Control-plane worker threads, with 0 resolved to the number of CPUs.
    pub fn control_threads(&self) -> usize {
        threads_or_cpus(self.control_threads)
    }
}

fn threads_or_cpus(n: u32) -> usize {
    match n {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n as usize,
    }
}

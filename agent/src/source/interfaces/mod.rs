//! `interfaces` source: per-interface byte, packet, error and drop counters from
//! `/proc/net/dev`, read every interval and reported as deltas (see [`counters`]).
//!
//! Owns: the read schedule. A read or parse failure is counted and logged at most once a
//! minute; the next interval tries again. Must never: wait for the pipeline (records are
//! offered, dropped and counted when it is behind).

pub mod counters;

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{HeldBackWarning, ReadSchedule, RecordsTx, offer_all};
use crate::config::InterfacesConfig;
use crate::observe::Progress;
use crate::telemetry::MeterMetrics;
use crate::telemetry::events::{Event, InterfacesReadFailed, SourceRead};
use counters::InterfaceTable;

pub const NAME: &str = crate::telemetry::source::INTERFACES;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: counters::ParseError,
    },
}

impl ReadError {
    fn reason(&self) -> &'static str {
        match self {
            ReadError::Read { .. } => "read",
            ReadError::Parse { .. } => "parse",
        }
    }
}

/// Reads and parses the counters file once.
pub async fn read(path: &Path) -> Result<Vec<(String, counters::InterfaceCounters)>, ReadError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| ReadError::Read {
            path: path.display().to_string(),
            source,
        })?;
    counters::parse(&text).map_err(|source| ReadError::Parse {
        path: path.display().to_string(),
        source,
    })
}

pub async fn run(
    config: InterfacesConfig,
    out: RecordsTx,
    metrics: Arc<MeterMetrics>,
    progress: Progress,
    stop: CancellationToken,
) {
    let mut table = InterfaceTable::new(config.max_interfaces);
    let mut warning = HeldBackWarning::default();
    let mut schedule = ReadSchedule::every(config.interval_ms);
    while schedule.next(&stop).await {
        let counters = match read(&config.path).await {
            Ok(c) => c,
            Err(error) => {
                InterfacesReadFailed {
                    reason: error.reason(),
                    error: &error,
                    log: warning.due(),
                }
                .emit(&metrics);
                continue;
            }
        };
        let outcome = table.on_read(counters, crate::unix_nanos_now());
        SourceRead {
            source: NAME,
            tracked: table.len(),
            untracked: outcome.untracked,
        }
        .emit(&metrics);
        if offer_all(&out, outcome.records).is_err() {
            return;
        }
        progress.notify();
    }
}

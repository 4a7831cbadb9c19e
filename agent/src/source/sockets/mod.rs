//! `sockets` source: this host's TCP connections, read from the kernel every interval through
//! netlink sock_diag, reported as per-interval deltas (see [`table`]).
//!
//! Owns: the read schedule and the netlink socket's life (a failed read is counted, logged at
//! most once a minute, and the socket reopened for the next). Must never: block the runtime (a
//! read runs on the blocking pool) or wait for the pipeline (records are offered, and dropped
//! and counted when it is behind).
//!
//! What can be missed: a connection that opens and closes entirely between two reads, and the
//! bytes a connection moves after the last read that saw it (sockets in FIN_WAIT, CLOSE_WAIT or
//! LAST_ACK are still read; TIME_WAIT keeps no counters). Nothing here needs root.

pub mod diag;
pub mod table;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{HeldBackWarning, ReadSchedule, RecordsTx, offer_all};
use crate::config::SocketsConfig;
use crate::observe::Progress;
use crate::telemetry::MeterMetrics;
use crate::telemetry::events::{Event, SocketsReadFailed, SourceRead};
use diag::SockDiag;
use table::FlowTable;

pub const NAME: &str = crate::telemetry::source::SOCKETS;

/// Opens a sock_diag socket and reads the table once: whether this source can run here.
pub fn probe() -> std::io::Result<usize> {
    Ok(SockDiag::open()?.read_tcp()?.len())
}

pub async fn run(
    config: SocketsConfig,
    out: RecordsTx,
    metrics: Arc<MeterMetrics>,
    progress: Progress,
    stop: CancellationToken,
) {
    let mut table = FlowTable::new(config.max_flows, config.include_loopback);
    let mut diag: Option<SockDiag> = None;
    let mut warning = HeldBackWarning::default();
    let mut schedule = ReadSchedule::every(config.interval_ms);
    while schedule.next(&stop).await {
        let taken = diag.take();
        let read = tokio::task::spawn_blocking(move || {
            let mut d = match taken {
                Some(d) => d,
                None => SockDiag::open()?,
            };
            let samples = d.read_tcp()?;
            Ok::<_, std::io::Error>((d, samples))
        })
        .await;
        let now = crate::unix_nanos_now();
        let samples = match read {
            Ok(Ok((d, samples))) => {
                diag = Some(d);
                samples
            }
            Ok(Err(error)) => {
                SocketsReadFailed {
                    error: &error,
                    log: warning.due(),
                }
                .emit(&metrics);
                continue;
            }
            Err(_) => return,
        };
        let outcome = table.on_read(&samples, now);
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

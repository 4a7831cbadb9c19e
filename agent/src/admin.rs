//! The meter's local admin endpoint: `/healthz` (the process is alive) and `/metrics`
//! (Prometheus text).
//!
//! Owns: the admin listener, and refreshing the gauges that are ages (computed at scrape time
//! from the spool's status). Must never: listen beyond loopback (config refuses it), expose
//! flow data or the org token, or accept writes.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::spool::handle::SpoolStatus;
use crate::telemetry::MeterMetrics;

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on admin.listen {addr}: {source} (choose a free port, 0 for any, or set admin.enabled = false)"
)]
pub struct AdminBindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, AdminBindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminBindError { addr, source })
}

/// Shared by the admin endpoint's request handlers.
struct AdminState {
    /// Encoded on every scrape; the scrape also sets `spool_oldest_age_seconds` from `spool`.
    metrics: Arc<MeterMetrics>,
    /// The spool task's status, for the oldest pending batch's age.
    spool: watch::Receiver<SpoolStatus>,
}

/// Serves until `stop`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<MeterMetrics>,
    spool: watch::Receiver<SpoolStatus>,
    stop: CancellationToken,
) {
    let _task = metrics.task(crate::telemetry::task::ADMIN_HTTP);
    let state = Arc::new(AdminState { metrics, spool });
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(scrape))
        .with_state(state);
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(%error, "admin HTTP server failed");
    }
}

async fn scrape(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let status = *state.spool.borrow();
    state
        .metrics
        .spool
        .spool_oldest_age_seconds
        .set(oldest_age_seconds(&status, crate::unix_nanos_now() / 1_000_000));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// Whole seconds since the oldest pending batch was created (0 when none, or its clock is ahead).
fn oldest_age_seconds(status: &SpoolStatus, now_unix_ms: u64) -> i64 {
    status
        .oldest_pending_unix_ms
        .map_or(0, |t| (now_unix_ms.saturating_sub(t) / 1_000) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_age_is_zero_without_pending_batches_and_never_negative() {
        let mut status = SpoolStatus::default();
        assert_eq!(oldest_age_seconds(&status, 10_000), 0);
        status.oldest_pending_unix_ms = Some(4_000);
        assert_eq!(oldest_age_seconds(&status, 10_500), 6);
        assert_eq!(oldest_age_seconds(&status, 3_000), 0);
    }
}

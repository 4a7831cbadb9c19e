//! Admin HTTP server: `/healthz` (the process is alive), `/readyz` (it can take data: listener
//! bound, sink healthy, not draining), `/metrics` (Prometheus text), `/load` (this collector's
//! sessions as a [`LoadReport`], asked by its peers for bounded load: [`crate::control::fleet_poll`]).
//!
//! Owns: the admin listener and the readiness rule. Runs on the control plane. Must never: expose
//! data, tokens or anything writable; it is meant for a local or management address.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::control::load::LoadCounters;
use crate::control::udp_stats::UdpSocketProbe;
use crate::data::sink::SinkHealth;
use crate::telemetry::{CollectorMetrics, ControlRequest, Task};

/// The readiness rule: ready only when the listener is bound, the sink is healthy and the
/// collector is not draining.
#[derive(Clone)]
pub struct Readiness {
    /// Fired by the lifecycle when shutdown begins; read by `/readyz` and `/load`.
    pub draining: CancellationToken,
    /// Written by the sink task; read by `/readyz`.
    pub sink: SinkHealth,
}

impl Readiness {
    /// `Ok` when ready, else why not. (The listener is bound before the admin server starts.)
    pub fn check(&self) -> Result<(), &'static str> {
        if self.draining.is_cancelled() {
            Err("draining")
        } else if !self.sink.is_healthy() {
            Err("sink unavailable")
        } else {
            Ok(())
        }
    }

    /// Returns true once [`check`](Self::check) passes (at once if it does now), or false if
    /// the collector starts to drain first: the moment `/readyz` first turns 200.
    pub async fn became_ready(&self) -> bool {
        loop {
            match self.check() {
                Ok(()) => return true,
                Err(_) if self.draining.is_cancelled() => return false,
                Err(_) => {}
            }
            tokio::select! {
                _ = self.draining.cancelled() => return false,
                _ = self.sink.became_healthy() => {}
            }
        }
    }
}

/// The body of `GET /load`: what a peer needs for the bounded-load estimate. JSON, a few dozen
/// bytes; fields are only ever added.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoadReport {
    /// The answering collector's id, so a collector that reaches itself through an address it
    /// did not know as its own (or one peer through two addresses) counts it once.
    #[serde(default)]
    pub collector: String,
    /// Sessions it holds now ([`LoadCounters::sessions`]).
    pub sessions: u64,
    /// `Hello`s it judged against the bounded-load cap since it started (its share of the
    /// fleet's demand, see `fleet_load`).
    #[serde(default)]
    pub hellos: u64,
    /// Whether it is draining (leaving the fleet): its sessions are moving to the others.
    #[serde(default)]
    pub draining: bool,
}

/// What the admin server's handlers share (one per collector, built by the lifecycle; every
/// request task reads it, none writes it except through the metrics).
pub struct AdminState {
    /// Named in `/load`.
    pub collector_id: Arc<str>,
    /// The bounded-load view, whose `Hello` count `/load` reports (None: bounded load off).
    /// Written by the poll loop and every `Hello`; locked here for one read.
    pub fleet_load: Option<Arc<std::sync::Mutex<crate::control::fleet_load::FleetLoadView>>>,
    /// Encoded by `/metrics`; each request's latency is observed into it.
    pub metrics: Arc<CollectorMetrics>,
    /// The collector's load counters: `/load` reports the sessions from them (never from the
    /// `sessions_active` gauge), and `/metrics` mirrors them into their gauges before encoding.
    pub load: Arc<LoadCounters>,
    /// The readiness rule `/readyz` answers with; `/load` reports its draining flag.
    pub readiness: Readiness,
    /// Read at each scrape for the kernel's UDP counters.
    pub udp: UdpSocketProbe,
}

pub async fn serve(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    let _task = state.metrics.task(Task::AdminHttp);
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/load", get(load))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), timed))
        .with_state(state);
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(%error, "admin HTTP server failed");
    }
}

/// Times every admin request (`control_request_seconds{request="admin"}`).
async fn timed(
    State(state): State<Arc<AdminState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = tokio::time::Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .sessions
        .control_request(ControlRequest::Admin, started.elapsed().as_secs_f64());
    response
}

async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    state.udp.refresh(&state.metrics);
    state.load.mirror();
    let ready = state.readiness.check().is_ok();
    state.metrics.runtime.ready.set(i64::from(ready));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// Two atomic reads and a few dozen bytes of JSON: cheap enough for every peer, every round.
async fn load(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let report = LoadReport {
        collector: state.collector_id.to_string(),
        sessions: state.load.sessions() as u64,
        hellos: state
            .fleet_load
            .as_ref()
            .map_or(0, |view| view.lock().unwrap_or_else(|p| p.into_inner()).hellos()),
        draining: state.readiness.draining.is_cancelled(),
    };
    // Serializing plain fields cannot fail.
    let body = serde_json::to_string(&report).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

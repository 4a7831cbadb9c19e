//! Control plane: one task per connection, from the QUIC handshake to close.
//!
//! A session's life is a short script ([`serve_connection`]): finish the handshake within
//! `limits.handshake_timeout_ms`; read the `Hello` and answer `Welcome` or `Reject`
//! ([`hello`]); then run the control stream, heartbeats and `Drain`, until the session ends
//! ([`control_stream`]), handing every data stream the meter opens to the data plane
//! ([`streams`]).
//!
//! Owns: [`Shared`], what every connection task shares, and the session's lifetime (its slot in
//! the load counters, its `sessions_ended` reason). Must never: read a data stream itself, wait
//! on the sink, or log a token; failed attempts are logged through a throttle.

pub mod control_stream;
pub mod hello;
pub mod streams;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, Incoming};
use ringflow_proto::pb;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};

pub use hello::{
    AUTH_RATE_LIMITED, Credentials, MAX_METER_ID_BYTES, RETRY_AFTER_UNAVAILABLE_MS, Rejection, judge_hello,
};
pub use streams::DataPlane;

use self::control_stream::ControlStream;
use crate::control::admission::Budgets;
use crate::control::auth::OrgDirectory;
use crate::control::auth_throttle::AuthThrottle;
use crate::control::fleet_poll::SharedFleetLoad;
use crate::control::load::{LoadCounters, SessionCount, TrackedConnection};
use crate::data::ingest::{DataLimits, SessionIdentity};
use crate::data::sink::{SinkHandle, SinkHealth};
use crate::telemetry::{
    CollectorMetrics, ConnState, HandshakeFailed, LogThrottle, SessionEnded, Task, TaskGuard,
};

/// What every connection task shares. Built once by the lifecycle ([`crate::server`]) before the
/// accept loop starts; read by the accept loop and by every connection task. Apart from the
/// locked, atomic or watched fields noted below, nothing in it changes after start.
pub struct Shared {
    /// This collector's id (`collector_id`). Sent in every `Welcome` and stamped on each
    /// session's identity, so the sink records which collector stored a batch.
    pub collector_id: Arc<str>,
    /// The orgs and their hashed tokens (and client-certificate names), from the config. Every
    /// `Hello` is authenticated against it; it is never written after start.
    pub orgs: OrgDirectory,
    /// Failed authentications per source address. Written and read at every `Hello` (checked
    /// before the credentials, charged on a failure); locked for one call, never across an await.
    pub auth_throttle: std::sync::Mutex<AuthThrottle>,
    /// The limits every `Welcome` tells the meter (frame size lowered to what the sink can take,
    /// unacked window, batch hints, heartbeat interval), so meters and data streams agree.
    pub welcome_limits: pb::Limits,
    /// Whether meters may send columns, and the zstd level they are asked for (0: none):
    /// `limits.columns`, `limits.columns_zstd_level`. None: rows only.
    pub columns_zstd_level: Option<i32>,
    /// The fleet view every `Welcome` carries, and every `Reject` that sends an authenticated
    /// meter elsewhere (overloaded, sink unavailable), so a meter learns the other collectors.
    /// Sent as [`Shared::fleet_view_now`] says (with the members not answering marked).
    pub fleet_view: Vec<pb::FleetMember>,
    /// The frame limits the data plane enforces; copied into each session's stream context.
    pub data_limits: DataLimits,
    /// How long a connection's QUIC/TLS handshake may take (`limits.handshake_timeout_ms`).
    /// Read by each connection task; past it the connection is dropped and counted.
    pub handshake_timeout: Duration,
    /// How long a meter has to open its control stream and send `Hello`
    /// (`limits.hello_timeout_ms`), so a silent client cannot hold a handshake slot.
    pub hello_timeout: Duration,
    /// Sent in `Drain`: the window over which a meter picks its moment to reconnect elsewhere,
    /// so a draining collector's meters do not all arrive at the others at once.
    pub drain_window_ms: u32,
    /// Soft budgets and the bounded-load rule, checked at every authenticated `Hello`.
    pub budgets: Budgets,
    /// The fleet's load as the poll loop last learned it (None: no peers polled, no cap). The
    /// poll loop writes it every round; every `Hello` reads it and counts itself in it.
    pub fleet_load: Option<SharedFleetLoad>,
    /// The collector's own load: connections, handshakes, sessions, buffered bytes. Raised and
    /// lowered by the accept loop, the connection tasks and the sessions' slots; read by every
    /// admission decision (accept loop, `Hello`). Never read back from a metric.
    pub load: Arc<LoadCounters>,
    /// The sink queue's front door. The control plane only clones it into each session's
    /// stream context; data streams submit to it. The last clone dropped (with this struct, at
    /// stop) closes the queue, and the sink flushes and stops.
    pub sink: SinkHandle,
    /// Whether the sink can store data. Written by the sink task; read at every `Hello`
    /// (refused while unhealthy, so meters go elsewhere instead of queueing here).
    pub sink_health: SinkHealth,
    /// The collector's metrics: written by every task here (counters, histograms, gauges that
    /// mirror the load counters), never read back for a decision.
    pub metrics: Arc<CollectorMetrics>,
    /// Throttles the log line of a rejected `Hello`, by reason, so a herd of bad clients
    /// produces one line per interval with a count.
    pub reject_log: LogThrottle,
    /// Fired by the lifecycle when shutdown begins. Read by the accept loop (refuse), every
    /// `Hello` (reject as draining) and every control stream (send `Drain` once).
    pub draining: CancellationToken,
    /// Fired by the lifecycle when the grace period is over: control streams close their
    /// sessions and data streams (child tokens) stop.
    pub hard_stop: CancellationToken,
    /// Where the sessions spawn their data streams; the lifecycle waits on its tracker at stop.
    pub data_plane: DataPlane,
}

impl Shared {
    /// The fleet view to send now: members whose host the peer poll finds not answering are
    /// marked, so a meter does not dial them.
    pub fn fleet_view_now(&self) -> Vec<pb::FleetMember> {
        let mut view = self.fleet_view.clone();
        if let Some(load) = &self.fleet_load {
            let load = load.lock().unwrap_or_else(|p| p.into_inner());
            let silent = load.silent_hosts();
            for member in view.iter_mut().filter(|_| !silent.is_empty()) {
                member.not_answering = crate::control::fleet_poll::host_of(&member.address)
                    .is_some_and(|host| silent.iter().any(|s| s == host));
            }
        }
        view
    }
}

/// A welcomed session's place in the load counters (and its `tasks_active{task="session"}`),
/// held for as long as the session lives.
pub(crate) struct SessionSlot {
    _count: SessionCount,
    _task: TaskGuard,
}

impl SessionSlot {
    fn take(shared: &Shared) -> Self {
        SessionSlot {
            _count: shared.load.session(),
            _task: shared.metrics.task(Task::Session),
        }
    }
}

/// Serves one connection from handshake to close.
pub async fn serve_connection(incoming: Incoming, shared: Arc<Shared>, mut tracked: TrackedConnection) {
    let _task = shared.metrics.task(Task::Connection);
    let span = info_span!("conn", remote = %incoming.remote_address());
    async move {
        let Some(conn) = handshake(incoming, &shared).await else {
            return;
        };
        tracked.set(ConnState::AwaitingHello);
        run_session(conn, &shared, &mut tracked).await;
    }
    .instrument(span)
    .await
}

/// Completes the QUIC/TLS handshake within `handshake_timeout`; a failure is counted.
async fn handshake(incoming: Incoming, shared: &Shared) -> Option<Connection> {
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(error) => {
            HandshakeFailed::NotAccepted(&error).emit(&shared.metrics);
            return None;
        }
    };
    match tokio::time::timeout(shared.handshake_timeout, connecting).await {
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(error)) => {
            HandshakeFailed::Failed(&error).emit(&shared.metrics);
            None
        }
        Err(_) => {
            HandshakeFailed::TimedOut.emit(&shared.metrics);
            None
        }
    }
}

/// A handshaken connection's session: `Hello`, the verdict, `Welcome`, the control stream.
async fn run_session(conn: Connection, shared: &Arc<Shared>, tracked: &mut TrackedConnection) {
    let Some(mut opened) = hello::read_hello(&conn, shared).await else {
        return;
    };
    let slot = match hello::judge(&conn, shared, &opened) {
        Ok(slot) => slot,
        Err(rejection) => {
            tracked.set(ConnState::Closing);
            hello::refuse(&conn, shared, opened, rejection, tracked.accepted).await;
            return;
        }
    };
    let identity = SessionIdentity {
        org: Arc::from(opened.hello.org_id.as_str()),
        meter_id: Arc::from(opened.hello.meter_id.as_str()),
        session_id: new_session_id(),
        collector_id: Arc::clone(&shared.collector_id),
    };
    let columns = opened.hello.columns;
    if !hello::welcome(shared, &mut opened.ctl_send, &identity.session_id, columns).await {
        return;
    }
    hello::answered(shared, tracked.accepted, opened.read_at);
    tracked.set(ConnState::Session);
    shared.metrics.sessions.sessions_welcomed.inc();
    let _slot = slot;
    let span = info_span!("session", org = %identity.org, meter_id = %identity.meter_id, session = %identity.session_id);
    debug!(parent: &span, "session started");
    let streams = streams::context(shared, identity);
    let ctl = ControlStream {
        send: opened.ctl_send,
        recv: opened.ctl,
    };
    let end = control_stream::run(&conn, ctl, shared, &streams, &span).await;
    SessionEnded { end, span: &span }.emit(&shared.metrics);
}

fn new_session_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

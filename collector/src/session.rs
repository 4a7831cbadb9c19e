//! Control plane: one task per connection. Handshake, `Hello` → `Welcome` | `Reject`, then the
//! control stream (heartbeats, `Drain`) while data streams are handed to the data plane.
//!
//! Owns: [`judge_hello`], the pure admission decision for a `Hello` (version, identity, auth,
//! draining, sink health), and the session's lifetime. Must never: read a data stream itself,
//! wait on the sink, or log a token; failed attempts are logged through a throttle.

use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, Incoming};
use ringflow_proto::codes::ConnectionCode;
use ringflow_proto::frame::{self, FrameReader, MAX_COLLECTOR_CONTROL_FRAME_BYTES, MAX_CONTROL_FRAME_BYTES};
use ringflow_proto::{PROTOCOL_VERSION, pb};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

use crate::admission::{Budgets, Load, Overloaded};
use crate::auth::OrgDirectory;
use crate::auth_throttle::AuthThrottle;
use crate::fleet_poll::SharedFleetLoad;
use crate::ingest::{DataLimits, SessionIdentity, StreamContext, serve_data_stream};
use crate::sink::{SinkHandle, SinkHealth};
use crate::telemetry::{CollectorMetrics, ConnState, LogThrottle, TaskGuard};

/// How long a rejected meter gets to read its `Reject` before the connection is closed.
const REJECT_LINGER: Duration = Duration::from_secs(2);

/// Retry hint sent with a `Reject` when the sink is unavailable or the collector is draining.
pub const RETRY_AFTER_UNAVAILABLE_MS: u32 = 5_000;

/// Where data-stream tasks run. The control plane spawns them here and never awaits them, so a
/// saturated data plane cannot hold up accepting, authenticating or draining.
#[derive(Clone)]
pub struct DataPlane {
    pub runtime: tokio::runtime::Handle,
    pub tasks: TaskTracker,
}

/// What every connection task shares.
pub struct Shared {
    pub collector_id: Arc<str>,
    pub orgs: OrgDirectory,
    /// Failed authentications per source address.
    pub auth_throttle: std::sync::Mutex<AuthThrottle>,
    pub welcome_limits: pb::Limits,
    /// The fleet view every `Welcome` carries.
    pub fleet_view: Vec<pb::FleetMember>,
    pub data_limits: DataLimits,
    pub handshake_timeout: Duration,
    pub hello_timeout: Duration,
    pub drain_window_ms: u32,
    /// Soft budgets checked at `Hello`.
    pub budgets: Budgets,
    /// The fleet's load as the poll loop last learned it (None: no peers polled, no cap).
    pub fleet_load: Option<SharedFleetLoad>,
    pub sink: SinkHandle,
    pub sink_health: SinkHealth,
    pub metrics: Arc<CollectorMetrics>,
    pub reject_log: LogThrottle,
    /// Fired when shutdown begins: new Hellos are refused, sessions are sent `Drain`.
    pub draining: CancellationToken,
    /// Fired when the grace period is over: remaining sessions and streams are closed.
    pub hard_stop: CancellationToken,
    pub data_plane: DataPlane,
}

/// A refused `Hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: pb::RejectReason,
    /// Metric label and log key.
    pub label: &'static str,
    /// Sent to the meter: says what is wrong without revealing which credential was.
    pub message: String,
    pub retry_after_ms: u32,
}

/// Longest meter id accepted.
pub const MAX_METER_ID_BYTES: usize = 128;

/// Metric label of a `Hello` refused because its address failed authentication too often.
pub const AUTH_RATE_LIMITED: &str = "auth_rate_limited";

/// What a `Hello` is authenticated against.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    pub orgs: &'a OrgDirectory,
    /// DNS names of the client certificate the TLS handshake verified (empty without one).
    pub cert_names: &'a [String],
    /// The auth throttle's answer for the meter's address: `Err(wait)` when it has no failed
    /// attempt left, and its credentials are not even looked at.
    pub throttled: Result<(), Duration>,
}

impl Rejection {
    /// A failed authentication, which costs the address one attempt of its budget.
    pub fn is_auth_failure(&self) -> bool {
        self.reason == pb::RejectReason::Auth && self.label != AUTH_RATE_LIMITED
    }
}

/// Decides whether a `Hello` gets a session. Pure: every input is an argument; `overload` is the
/// admission policy's answer for the collector's load ([`Budgets::on_hello`]).
pub fn judge_hello(
    hello: &pb::Hello,
    credentials: &Credentials<'_>,
    draining: bool,
    sink_healthy: bool,
    overload: Result<(), Overloaded>,
) -> Result<(), Rejection> {
    let reject = |reason, label, message: String, retry_after_ms| {
        Err(Rejection {
            reason,
            label,
            message,
            retry_after_ms,
        })
    };
    if draining {
        return reject(
            pb::RejectReason::Draining,
            "draining",
            "collector is shutting down; connect to another".into(),
            RETRY_AFTER_UNAVAILABLE_MS,
        );
    }
    if hello.protocol_version != PROTOCOL_VERSION {
        return reject(
            pb::RejectReason::UnsupportedVersion,
            "unsupported_version",
            format!(
                "protocol version {} is not served here; this collector speaks {PROTOCOL_VERSION}",
                hello.protocol_version
            ),
            0,
        );
    }
    if !valid_meter_id(&hello.meter_id) {
        return reject(
            pb::RejectReason::BadHello,
            "bad_hello",
            format!("meter_id must be 1-{MAX_METER_ID_BYTES} characters of A-Z a-z 0-9 . _ : -"),
            0,
        );
    }
    if let Err(wait) = credentials.throttled {
        return reject(
            pb::RejectReason::Auth,
            AUTH_RATE_LIMITED,
            "too many failed authentications from this address; retry later with the right org_id and org_token".into(),
            u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1_000),
        );
    }
    if let Err(failure) =
        credentials
            .orgs
            .authenticate(&hello.org_id, &hello.org_token, credentials.cert_names)
    {
        // Counted separately for the operator; the meter is told only "auth".
        return reject(
            pb::RejectReason::Auth,
            failure.label(),
            "authentication failed: check org_id and org_token (or the client certificate)".into(),
            0,
        );
    }
    if !sink_healthy {
        return reject(
            pb::RejectReason::SinkUnavailable,
            "sink_unavailable",
            "collector cannot store data right now; retry later or elsewhere".into(),
            RETRY_AFTER_UNAVAILABLE_MS,
        );
    }
    if let Err(over) = overload {
        return reject(
            pb::RejectReason::Overloaded,
            match over.budget {
                "sessions" => "overloaded_sessions",
                "bounded_load" => "overloaded_bounded_load",
                _ => "overloaded_buffered_bytes",
            },
            "collector is over its load budget; retry later or elsewhere".into(),
            over.retry_after_ms,
        );
    }
    Ok(())
}

fn valid_meter_id(id: &str) -> bool {
    (1..=MAX_METER_ID_BYTES).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A claimed (unauthenticated) value made safe for a log line: bounded and escaped.
fn loggable(claimed: &str) -> String {
    let mut s: String = claimed.chars().take(64).collect();
    if claimed.len() > s.len() {
        s.push('…');
    }
    format!("{s:?}")
}

/// Keeps `connections_open` and `connections{state}` true however the task ends. Created in the
/// accept loop, so the handshake budget counts a connection from the moment it is accepted.
pub struct TrackedConnection {
    metrics: Arc<CollectorMetrics>,
    state: prometheus_client::metrics::gauge::Gauge,
    /// When the accept loop admitted it: handshake latency includes any wait for the runtime.
    accepted: Instant,
}

impl TrackedConnection {
    pub fn new(metrics: &Arc<CollectorMetrics>) -> Self {
        metrics.connections_open.inc();
        let state = metrics.connection_state(ConnState::Handshaking);
        state.inc();
        Self {
            metrics: Arc::clone(metrics),
            state,
            accepted: Instant::now(),
        }
    }

    fn set(&mut self, state: ConnState) {
        self.state.dec();
        self.state = self.metrics.connection_state(state);
        self.state.inc();
    }
}

impl Drop for TrackedConnection {
    fn drop(&mut self) {
        self.state.dec();
        self.metrics.connections_open.dec();
    }
}

/// Serves one connection from handshake to close.
pub async fn serve_connection(incoming: Incoming, shared: Arc<Shared>, mut tracked: TrackedConnection) {
    let _task = shared.metrics.task("connection");
    let remote = incoming.remote_address();
    let started = tracked.accepted;
    let span = info_span!("conn", %remote);
    async move {
        let conn = match incoming.accept() {
            Ok(connecting) => match tokio::time::timeout(shared.handshake_timeout, connecting).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(error)) => {
                    shared.metrics.handshake_failures.inc();
                    debug!(%error, "handshake failed");
                    return;
                }
                Err(_) => {
                    shared.metrics.handshake_failures.inc();
                    debug!("handshake timed out");
                    return;
                }
            },
            Err(error) => {
                shared.metrics.handshake_failures.inc();
                debug!(%error, "connection could not be accepted");
                return;
            }
        };
        tracked.set(ConnState::AwaitingHello);
        run_session(conn, &shared, started, &mut tracked).await;
    }
    .instrument(span)
    .await
}

async fn run_session(
    conn: Connection,
    shared: &Arc<Shared>,
    started: Instant,
    tracked: &mut TrackedConnection,
) {
    // One deadline for the whole of "open the control stream and say Hello".
    let first = tokio::time::timeout(shared.hello_timeout, async {
        let (send, recv) = conn.accept_bi().await.ok()?;
        let mut ctl = FrameReader::new(recv, MAX_CONTROL_FRAME_BYTES);
        let hello = ctl.next_message::<pb::ControlFrame>().await;
        Some((send, ctl, hello))
    })
    .await;
    let (mut ctl_send, ctl, hello) = match first {
        Err(_) => {
            shared.metrics.rejected("hello_timeout");
            ConnectionCode::HelloTimeout.close(&conn);
            return;
        }
        // The connection went away before opening a stream.
        Ok(None) => return,
        Ok(Some((
            send,
            ctl,
            Ok(Some(pb::ControlFrame {
                msg: Some(pb::control_frame::Msg::Hello(hello)),
            })),
        ))) => (send, ctl, hello),
        Ok(Some((_, _, other))) => {
            shared.metrics.rejected("bad_hello");
            if let Err(error) = other {
                debug!(%error, "control stream did not start with a Hello");
            }
            ConnectionCode::ProtocolViolation.close(&conn);
            return;
        }
    };

    let hello_read = Instant::now();
    let sessions = shared.metrics.sessions_active.get().max(0) as usize;
    // Counts this Hello as demand the fleet sees, and gives the fleet's load to judge it against.
    let fleet = shared.fleet_load.as_ref().and_then(|view| {
        view.lock()
            .unwrap_or_else(|p| p.into_inner())
            .on_hello(sessions as u64)
    });
    let load = Load {
        sessions,
        buffered_bytes: shared.metrics.buffered_bytes(),
        fleet,
        ..Load::default()
    };
    let peer = conn.remote_address().ip();
    let throttled = shared
        .auth_throttle
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .check(peer, hello_read);
    let credentials = Credentials {
        orgs: &shared.orgs,
        cert_names: &crate::tls::client_certificate_names(&conn),
        throttled,
    };
    let verdict = judge_hello(
        &hello,
        &credentials,
        shared.draining.is_cancelled(),
        shared.sink_health.is_healthy(),
        shared.budgets.on_hello(&load, rand::random()),
    );
    // The session's slot is taken with the decision, before any await, so Hellos judged at the
    // same moment see each other and the soft session budget holds.
    let active = verdict.is_ok().then(|| SessionGauge::new(&shared.metrics));
    if let Err(rejection) = verdict {
        tracked.set(ConnState::Closing);
        if rejection.is_auth_failure() {
            shared
                .auth_throttle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .on_failure(peer, hello_read);
        }
        shared.metrics.rejected(rejection.label);
        if let Some(suppressed) = shared.reject_log.check(rejection.label, Instant::now()) {
            warn!(
                reason = rejection.label,
                claimed_org = %loggable(&hello.org_id),
                meter_id = %loggable(&hello.meter_id),
                suppressed,
                "rejected hello: {}",
                rejection.message
            );
        }
        // A meter sent elsewhere (authenticated: these reasons come after auth) learns the
        // fleet, or with a DNS naming only this collector it would only ever come back here.
        let fleet = match rejection.reason {
            pb::RejectReason::Overloaded | pb::RejectReason::SinkUnavailable => shared.fleet_view.clone(),
            _ => Vec::new(),
        };
        let reject = control(pb::control_frame::Msg::Reject(pb::Reject {
            reason: rejection.reason as i32,
            retry_after_ms: rejection.retry_after_ms,
            message: rejection.message,
            fleet,
        }));
        let sent = ctl_send.write_chunk(reject).await.is_ok() && ctl_send.finish().is_ok();
        answered(shared, started, hello_read);
        if sent {
            // Give the meter time to read the Reject; it closes the connection itself.
            let _ = tokio::time::timeout(REJECT_LINGER, conn.closed()).await;
        }
        ConnectionCode::Rejected.close(&conn);
        return;
    }

    let identity = Arc::new(SessionIdentity {
        org: Arc::from(hello.org_id.as_str()),
        meter_id: Arc::from(hello.meter_id.as_str()),
        session_id: new_session_id(),
        collector_id: Arc::clone(&shared.collector_id),
    });
    let welcome = control(pb::control_frame::Msg::Welcome(pb::Welcome {
        session_id: identity.session_id.clone(),
        collector_id: shared.collector_id.to_string(),
        limits: Some(shared.welcome_limits),
        fleet: shared.fleet_view.clone(),
    }));
    if ctl_send.write_chunk(welcome).await.is_err() {
        return;
    }
    answered(shared, started, hello_read);
    tracked.set(ConnState::Session);
    shared.metrics.sessions_welcomed.inc();
    let _active = active;
    let span = info_span!("session", org = %identity.org, meter_id = %identity.meter_id, session = %identity.session_id);
    debug!(parent: &span, "session started");
    let streams = Arc::new(StreamContext {
        org_counters: shared.metrics.org_counters(&identity.org),
        session: identity,
        sink: shared.sink.clone(),
        limits: shared.data_limits,
        metrics: Arc::clone(&shared.metrics),
    });
    let end = control_loop(&conn, ctl_send, ctl, shared, &streams, &span).await;
    shared
        .metrics
        .sessions_ended
        .get_or_create(&crate::telemetry::reason(end))
        .inc();
    debug!(parent: &span, end, "session ended");
}

/// Times the answer to a `Hello`: from accepting the connection (`handshake_seconds`) and from
/// reading the `Hello` (`control_request_seconds{request="hello"}`).
fn answered(shared: &Shared, accepted: Instant, hello_read: Instant) {
    let m = &shared.metrics;
    m.handshake_seconds.observe(accepted.elapsed().as_secs_f64());
    m.control_request("hello", hello_read.elapsed().as_secs_f64());
}

/// Why a lost connection ended a session: the meter went silent past the idle timeout, or
/// anything else that broke the connection.
fn lost(error: Option<&quinn::ConnectionError>) -> &'static str {
    match error {
        Some(quinn::ConnectionError::TimedOut) => "idle_timeout",
        Some(quinn::ConnectionError::ApplicationClosed(_)) => "meter_closed",
        _ => "connection_lost",
    }
}

/// Runs the control stream and accepts data streams until the session ends. Returns why (a
/// `sessions_ended` label).
async fn control_loop(
    conn: &Connection,
    mut ctl_send: quinn::SendStream,
    mut ctl: FrameReader<quinn::RecvStream>,
    shared: &Arc<Shared>,
    streams: &Arc<StreamContext>,
    span: &tracing::Span,
) -> &'static str {
    let mut drain_sent = false;
    loop {
        tokio::select! {
            biased;
            _ = shared.hard_stop.cancelled() => {
                ConnectionCode::ShuttingDown.close(conn);
                return "shutdown";
            }
            _ = shared.draining.cancelled(), if !drain_sent => {
                drain_sent = true;
                let drain = control(pb::control_frame::Msg::Drain(pb::Drain {
                    reconnect_within_ms: shared.drain_window_ms,
                    reason: "collector is shutting down".into(),
                }));
                if ctl_send.write_chunk(drain).await.is_err() {
                    return lost(conn.close_reason().as_ref());
                }
            }
            frame = ctl.next_message::<pb::ControlFrame>() => match frame {
                Ok(Some(pb::ControlFrame { msg: Some(pb::control_frame::Msg::Heartbeat(_)) })) => {
                    let read = Instant::now();
                    let beat = control(pb::control_frame::Msg::Heartbeat(pb::Heartbeat {
                        sent_unix_nanos: crate::ingest::unix_nanos_now(),
                    }));
                    if ctl_send.write_chunk(beat).await.is_err() {
                        return lost(conn.close_reason().as_ref());
                    }
                    shared.metrics.control_request("heartbeat", read.elapsed().as_secs_f64());
                }
                Ok(Some(_)) => {
                    ConnectionCode::ProtocolViolation.close(conn);
                    return "protocol_violation";
                }
                Ok(None) => {
                    // The meter finished its control stream: it is leaving.
                    ConnectionCode::Done.close(conn);
                    return "meter_closed";
                }
                Err(error) if error.stream_code().is_some() => {
                    debug!(parent: span, %error, "bad control frame");
                    ConnectionCode::ProtocolViolation.close(conn);
                    return "bad_control_frame";
                }
                Err(error) => return lost(error.connection_lost()),
            },
            stream = conn.accept_bi() => match stream {
                Ok((send, recv)) => {
                    let ctx = Arc::clone(streams);
                    let stop = shared.hard_stop.child_token();
                    let plane = &shared.data_plane;
                    plane.tasks.spawn_on(
                        serve_data_stream(send, recv, ctx, stop).instrument(span.clone()),
                        &plane.runtime,
                    );
                }
                Err(error) => return lost(Some(&error)),
            },
        }
    }
}

fn control(msg: pb::control_frame::Msg) -> bytes::Bytes {
    // Control messages are small and built here; they always fit the control frame limit.
    frame::encode_to_bytes(
        &pb::ControlFrame { msg: Some(msg) },
        MAX_COLLECTOR_CONTROL_FRAME_BYTES,
    )
    .unwrap_or_default()
}

fn new_session_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// Counts a welcomed session (gauge and task) for as long as it lives.
struct SessionGauge {
    metrics: Arc<CollectorMetrics>,
    _task: TaskGuard,
}

impl SessionGauge {
    fn new(metrics: &Arc<CollectorMetrics>) -> Self {
        metrics.sessions_active.inc();
        SessionGauge {
            metrics: Arc::clone(metrics),
            _task: metrics.task("session"),
        }
    }
}

impl Drop for SessionGauge {
    fn drop(&mut self) {
        self.metrics.sessions_active.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::hash_token;

    fn orgs() -> OrgDirectory {
        let mut d = OrgDirectory::default();
        d.insert(
            "acme",
            crate::auth::OrgCredentials {
                token_hashes: vec![hash_token("rft_good")],
                client_names: Vec::new(),
            },
        );
        d
    }

    fn judge(
        hello: &pb::Hello,
        draining: bool,
        sink_healthy: bool,
        overload: Result<(), Overloaded>,
    ) -> Result<(), Rejection> {
        let orgs = orgs();
        let credentials = Credentials {
            orgs: &orgs,
            cert_names: &[],
            throttled: Ok(()),
        };
        judge_hello(hello, &credentials, draining, sink_healthy, overload)
    }

    fn hello() -> pb::Hello {
        pb::Hello {
            protocol_version: PROTOCOL_VERSION,
            meter_id: "host-1".into(),
            org_id: "acme".into(),
            org_token: "rft_good".into(),
            software_version: "test".into(),
            last_acked_seq: 0,
        }
    }

    #[test]
    fn a_good_hello_is_welcomed() {
        assert_eq!(judge(&hello(), false, true, Ok(())), Ok(()));
    }

    #[test]
    fn auth_failures_say_auth_and_not_which_part() {
        let mut wrong_token = hello();
        wrong_token.org_token = "rft_bad".into();
        let mut wrong_org = hello();
        wrong_org.org_id = "other".into();
        let a = judge(&wrong_token, false, true, Ok(())).unwrap_err();
        let b = judge(&wrong_org, false, true, Ok(())).unwrap_err();
        assert_eq!(a.reason, pb::RejectReason::Auth);
        assert_eq!(b.reason, pb::RejectReason::Auth);
        assert_eq!(a.message, b.message, "the meter cannot tell which part was wrong");
        assert!(!a.message.contains("rft_"), "no token in the message");
        assert_ne!(a.label, b.label, "the operator can");
    }

    #[test]
    fn version_identity_draining_and_sink_are_checked() {
        let mut v2 = hello();
        v2.protocol_version = 2;
        assert_eq!(
            judge(&v2, false, true, Ok(())).unwrap_err().reason,
            pb::RejectReason::UnsupportedVersion
        );
        let mut bad_id = hello();
        bad_id.meter_id = "a b".into();
        assert_eq!(
            judge(&bad_id, false, true, Ok(())).unwrap_err().reason,
            pb::RejectReason::BadHello
        );
        let draining = judge(&hello(), true, true, Ok(())).unwrap_err();
        assert_eq!(draining.reason, pb::RejectReason::Draining);
        assert!(draining.retry_after_ms > 0);
        assert_eq!(
            judge(&hello(), false, false, Ok(())).unwrap_err().reason,
            pb::RejectReason::SinkUnavailable
        );
    }

    #[test]
    fn over_a_soft_budget_an_authenticated_meter_is_told_when_to_retry() {
        let over = Err(Overloaded {
            budget: "sessions",
            retry_after_ms: 4_321,
        });
        let r = judge(&hello(), false, true, over).unwrap_err();
        assert_eq!(r.reason, pb::RejectReason::Overloaded);
        assert_eq!((r.label, r.retry_after_ms), ("overloaded_sessions", 4_321));
        // Auth comes first: an unauthenticated client learns nothing about the load.
        let mut wrong = hello();
        wrong.org_token = "rft_bad".into();
        let r = judge(&wrong, false, true, over).unwrap_err();
        assert_eq!(r.reason, pb::RejectReason::Auth);
    }

    #[test]
    fn a_throttled_address_is_refused_before_its_credentials_are_checked() {
        let orgs = orgs();
        let credentials = Credentials {
            orgs: &orgs,
            cert_names: &[],
            throttled: Err(Duration::from_millis(8_500)),
        };
        // Even a valid token is refused: a limited address learns nothing from its attempts.
        let r = judge_hello(&hello(), &credentials, false, true, Ok(())).unwrap_err();
        assert_eq!(r.reason, pb::RejectReason::Auth);
        assert_eq!((r.label, r.retry_after_ms), (AUTH_RATE_LIMITED, 8_500));
        assert!(
            !r.is_auth_failure(),
            "being refused does not cost another attempt"
        );
        let mut wrong = hello();
        wrong.org_token = "rft_bad".into();
        assert!(judge(&wrong, false, true, Ok(())).unwrap_err().is_auth_failure());
    }

    #[test]
    fn claimed_values_are_bounded_and_escaped_in_logs() {
        let s = loggable(&format!("evil\n{}", "x".repeat(500)));
        assert!(s.len() < 80 && !s.contains('\n'), "{s}");
    }
}

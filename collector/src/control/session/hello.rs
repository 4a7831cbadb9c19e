//! The first exchange of a session: the meter opens its control stream and says `Hello`; the
//! collector judges it and answers `Welcome` or `Reject`.
//!
//! Owns: [`judge_hello`], the pure decision for a `Hello` (draining, version, identity, the auth
//! throttle, credentials, sink health, soft budgets and bounded load, in that order), the reading
//! of the `Hello` within `limits.hello_timeout_ms`, the [`Rejection`] a meter is told, and the
//! auth throttle's bookkeeping. Must never: log a token or an unbounded claimed value, tell an
//! unauthenticated client anything about the load, or await between taking a session slot and
//! deciding (Hellos judged at once must see each other).

use std::net::IpAddr;
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream};
use ringflow_proto::codes::ConnectionCode;
use ringflow_proto::frame::{FrameReader, MAX_CONTROL_FRAME_BYTES};
use ringflow_proto::{PROTOCOL_VERSION, pb};
use tokio::time::Instant;
use tracing::debug;

use super::control_stream::control;
use super::{SessionSlot, Shared};
use crate::control::admission::{Load, Overloaded};
use crate::control::auth::OrgDirectory;
use crate::telemetry::labels::hello_reject;
use crate::telemetry::{ControlRequest, HelloRejected};

/// How long a rejected meter gets to read its `Reject` before the connection is closed.
const REJECT_LINGER: Duration = Duration::from_secs(2);

/// Retry hint sent with a `Reject` when the sink is unavailable or the collector is draining.
pub const RETRY_AFTER_UNAVAILABLE_MS: u32 = 5_000;

/// Longest meter id accepted.
pub const MAX_METER_ID_BYTES: usize = 128;

/// Metric label of a `Hello` refused because its address failed authentication too often.
pub const AUTH_RATE_LIMITED: &str = "auth_rate_limited";

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

impl Rejection {
    /// A failed authentication, which costs the address one attempt of its budget.
    pub fn is_auth_failure(&self) -> bool {
        self.reason == pb::RejectReason::Auth && self.label != AUTH_RATE_LIMITED
    }
}

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

/// Decides whether a `Hello` gets a session. Pure: every input is an argument; `overload` is the
/// admission policy's answer for the collector's load ([`crate::control::admission::Budgets::on_hello`]).
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
            hello_reject::SINK_UNAVAILABLE,
            "collector cannot store data right now; retry later or elsewhere".into(),
            RETRY_AFTER_UNAVAILABLE_MS,
        );
    }
    if let Err(over) = overload {
        return reject(
            pb::RejectReason::Overloaded,
            match over.budget {
                "sessions" => hello_reject::OVERLOADED_SESSIONS,
                "bounded_load" => hello_reject::OVERLOADED_BOUNDED_LOAD,
                _ => hello_reject::OVERLOADED_BUFFERED_BYTES,
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

/// A claimed (unauthenticated) value made safe for a log line (the rejected `Hello`'s event
/// applies it).
#[cfg(test)]
pub(super) use crate::telemetry::events::loggable;

/// A control stream whose first message was a `Hello`.
pub(super) struct Opened {
    pub ctl_send: SendStream,
    pub ctl: FrameReader<RecvStream>,
    pub hello: pb::Hello,
    /// When the `Hello` was read: the answer is timed from here.
    pub read_at: Instant,
    /// The meter's address, as the auth throttle counts it.
    pub peer: IpAddr,
}

/// Waits for the meter to open its control stream and send `Hello`, all within
/// `hello_timeout`. On anything else the connection is closed with its code (and counted), and
/// there is no session.
pub(super) async fn read_hello(conn: &Connection, shared: &Shared) -> Option<Opened> {
    // One deadline for the whole of "open the control stream and say Hello".
    let first = tokio::time::timeout(shared.hello_timeout, async {
        let (send, recv) = conn.accept_bi().await.ok()?;
        let mut ctl = FrameReader::new(recv, MAX_CONTROL_FRAME_BYTES);
        let hello = ctl.next_message::<pb::ControlFrame>().await;
        Some((send, ctl, hello))
    })
    .await;
    match first {
        Err(_) => {
            shared.metrics.sessions.rejected("hello_timeout");
            ConnectionCode::HelloTimeout.close(conn);
            None
        }
        // The connection went away before opening a stream.
        Ok(None) => None,
        Ok(Some((
            ctl_send,
            ctl,
            Ok(Some(pb::ControlFrame {
                msg: Some(pb::control_frame::Msg::Hello(hello)),
            })),
        ))) => Some(Opened {
            ctl_send,
            ctl,
            hello,
            read_at: Instant::now(),
            peer: conn.remote_address().ip(),
        }),
        Ok(Some((_, _, other))) => {
            shared.metrics.sessions.rejected("bad_hello");
            if let Err(error) = other {
                debug!(%error, "control stream did not start with a Hello");
            }
            ConnectionCode::ProtocolViolation.close(conn);
            None
        }
    }
}

/// Judges `opened.hello` against the collector's state now. A welcome takes its session slot
/// with the decision, before any await, so Hellos judged at the same moment see each other and
/// the soft session budget holds.
pub(super) fn judge(conn: &Connection, shared: &Shared, opened: &Opened) -> Result<SessionSlot, Rejection> {
    let sessions = shared.load.sessions();
    // Counts this Hello as demand the fleet sees, and gives the fleet's load to judge it against.
    let fleet = shared.fleet_load.as_ref().and_then(|view| {
        view.lock()
            .unwrap_or_else(|p| p.into_inner())
            .on_hello(sessions as u64)
    });
    let load = Load {
        sessions,
        buffered_bytes: shared.load.buffered_bytes(),
        fleet,
        ..Load::default()
    };
    let throttled = shared
        .auth_throttle
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .check(opened.peer, opened.read_at);
    let credentials = Credentials {
        orgs: &shared.orgs,
        cert_names: &crate::tls::client_certificate_names(conn),
        throttled,
    };
    judge_hello(
        &opened.hello,
        &credentials,
        shared.draining.is_cancelled(),
        shared.sink_health.is_healthy(),
        shared.budgets.on_hello(&load, rand::random()),
    )
    .map(|()| SessionSlot::take(shared))
}

/// Tells the meter why it is refused, counts and logs it (throttled), then gives it
/// [`REJECT_LINGER`] to read the `Reject` before closing the connection.
pub(super) async fn refuse(
    conn: &Connection,
    shared: &Shared,
    opened: Opened,
    rejection: Rejection,
    accepted: Instant,
) {
    let Opened {
        mut ctl_send,
        hello,
        read_at,
        peer,
        ..
    } = opened;
    if rejection.is_auth_failure() {
        shared
            .auth_throttle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .on_failure(peer, read_at);
    }
    HelloRejected {
        reason: rejection.label,
        claimed_org: &hello.org_id,
        meter_id: &hello.meter_id,
        message: &rejection.message,
        log: &shared.reject_log,
    }
    .emit(&shared.metrics);
    // A meter sent elsewhere (authenticated: these reasons come after auth) learns the
    // fleet, or with a DNS naming only this collector it would only ever come back here.
    let fleet = match rejection.reason {
        pb::RejectReason::Overloaded | pb::RejectReason::SinkUnavailable => shared.fleet_view_now(),
        _ => Vec::new(),
    };
    let reject = control(pb::control_frame::Msg::Reject(pb::Reject {
        reason: rejection.reason as i32,
        retry_after_ms: rejection.retry_after_ms,
        message: rejection.message,
        fleet,
    }));
    let sent = ctl_send.write_chunk(reject).await.is_ok() && ctl_send.finish().is_ok();
    answered(shared, accepted, read_at);
    if sent {
        // Give the meter time to read the Reject; it closes the connection itself.
        let _ = tokio::time::timeout(REJECT_LINGER, conn.closed()).await;
    }
    ConnectionCode::Rejected.close(conn);
}

/// Sends `Welcome` for the session `session_id`, letting the meter send columns when it can
/// (`meter_columns`) and this collector allows them. False when the connection is gone.
pub(super) async fn welcome(
    shared: &Shared,
    ctl_send: &mut SendStream,
    session_id: &str,
    meter_columns: bool,
) -> bool {
    let columns_zstd_level = shared.columns_zstd_level.filter(|_| meter_columns);
    let welcome = control(pb::control_frame::Msg::Welcome(pb::Welcome {
        session_id: session_id.to_owned(),
        collector_id: shared.collector_id.to_string(),
        limits: Some(shared.welcome_limits),
        fleet: shared.fleet_view_now(),
        columns: columns_zstd_level.is_some(),
        columns_zstd_level: columns_zstd_level.unwrap_or(0),
    }));
    ctl_send.write_chunk(welcome).await.is_ok()
}

/// Times the answer to a `Hello`: from accepting the connection (`handshake_seconds`) and from
/// reading the `Hello` (`control_request_seconds{request="hello"}`).
pub(super) fn answered(shared: &Shared, accepted: Instant, hello_read: Instant) {
    let m = &shared.metrics;
    m.connections
        .handshake_seconds
        .observe(accepted.elapsed().as_secs_f64());
    m.sessions
        .control_request(ControlRequest::Hello, hello_read.elapsed().as_secs_f64());
}

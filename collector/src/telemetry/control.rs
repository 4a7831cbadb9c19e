//! The control plane's metric groups: connections and admission, sessions, the fleet poll.
//!
//! Owns: each group's fields, names and help texts, and the short function that registers them.
//! Must never: be read back by an admission decision (the control plane keeps its own counters,
//! `control::load`; these gauges only mirror them).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::labels::{ConnState, ControlRequest, ReasonLabel, RefuseReason, RequestLabel, StateLabel, reason};
use super::{F64Gauge, HistogramFamily, add};

/// Connections and admission: the accept loop's decisions and each connection's handshake.
pub struct ConnectionMetrics {
    /// `connections_accepted`: attempts admitted to the TLS handshake. Written by the accept loop.
    pub connections_accepted: Counter,
    /// `connections_refused{reason}`: attempts refused before the handshake ([`RefuseReason`]).
    /// Written by the accept loop through `ConnectionRefused`.
    pub connections_refused: Family<ReasonLabel, Counter>,
    /// `connections_retried`: attempts answered with a stateless Retry. Written by the accept loop.
    pub connections_retried: Counter,
    /// `connections_open`: connections admitted and not yet closed. Mirrors the control plane's
    /// own count (`control::load`), which moves it; never read by admission.
    pub connections_open: Gauge,
    /// `connections{state}`: connections by [`ConnState`]. Moved by the control plane's tracked
    /// connection as its state changes.
    pub connections: Family<StateLabel, Gauge>,
    /// `handshake_failures`: handshakes that failed or timed out. Written by the connection task
    /// through `HandshakeFailed`.
    pub handshake_failures: Counter,
    /// `handshake_seconds`: accept to `Welcome`/`Reject` sent. Written by the connection task.
    pub handshake_seconds: Histogram,
    /// `admission_accept_rate`: new connections per second admission allows now (the adaptive
    /// rate, or `admission.accept_rate`). Written by the accept loop.
    pub admission_accept_rate: F64Gauge,
    /// `control_lag_seconds`: the control plane's mean scheduling lag over the last window, as
    /// the adaptive accept rate sees it (0 with it off). Written by the accept loop.
    pub control_lag_seconds: F64Gauge,
}

impl ConnectionMetrics {
    pub(super) fn register(r: &mut Registry) -> Self {
        Self {
            connections_accepted: add(
                r,
                "connections_accepted",
                "Connections admitted to the TLS handshake",
                Counter::default(),
            ),
            connections_refused: add(
                r,
                "connections_refused",
                "Connections refused before the handshake, by reason",
                Family::default(),
            ),
            connections_retried: add(
                r,
                "connections_retried",
                "Connection attempts answered with a stateless QUIC Retry (address validation under load)",
                Counter::default(),
            ),
            connections_open: add(
                r,
                "connections_open",
                "Connections currently open",
                Gauge::default(),
            ),
            connections: add(
                r,
                "connections",
                "Connections by state: handshaking, awaiting_hello, session, closing (rejected, waiting for the peer to close)",
                Family::default(),
            ),
            handshake_failures: add(
                r,
                "handshake_failures",
                "QUIC/TLS handshakes that failed or timed out",
                Counter::default(),
            ),
            handshake_seconds: add(
                r,
                "handshake_seconds",
                "Time from accepting a connection to sending Welcome or Reject",
                Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            ),
            admission_accept_rate: add(
                r,
                "admission_accept_rate",
                "New connections per second admission allows now (adaptive, or admission.accept_rate)",
                F64Gauge::default(),
            ),
            control_lag_seconds: add(
                r,
                "control_lag_seconds",
                "Mean scheduling lag of the control plane over the last 100 ms (with admission.adaptive_lag_ms)",
                F64Gauge::default(),
            ),
        }
    }

    /// Counts a refused attempt (no log line: see `ConnectionRefused` for the logged one).
    pub fn refused(&self, why: RefuseReason) {
        self.connections_refused
            .get_or_create(&reason(why.as_str()))
            .inc();
    }

    /// The `connections{state}` gauge of `state`.
    pub fn state(&self, state: ConnState) -> Gauge {
        self.connections
            .get_or_create(&StateLabel {
                state: state.as_str(),
            })
            .clone()
    }
}

fn control_latency_histogram() -> Histogram {
    // 50 µs to ~1.6 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

/// Sessions: `Hello` answered, sessions open and ended, control-plane latency.
pub struct SessionMetrics {
    /// `sessions_active`: welcomed sessions still connected. Mirrors the control plane's own
    /// count (`control::load`), which moves it; never read by admission.
    pub sessions_active: Gauge,
    /// `sessions_welcomed`: `Hello`s answered with `Welcome`. Written by the connection task.
    pub sessions_welcomed: Counter,
    /// `hello_rejects{reason}`: `Hello`s answered with `Reject` (or never sent: `hello_timeout`,
    /// `bad_hello`). Written by the connection task, through `HelloRejected` when it logs.
    pub hello_rejects: Family<ReasonLabel, Counter>,
    /// `sessions_ended{reason}`: welcomed sessions that ended, by [`super::SessionEnd`]. Written
    /// by the connection task through `SessionEnded`.
    pub sessions_ended: Family<ReasonLabel, Counter>,
    /// `control_request_seconds{request}`: control-plane latency by [`ControlRequest`]. Written
    /// by the connection task (hello, heartbeat) and the admin server (admin).
    pub control_request_seconds: HistogramFamily<RequestLabel>,
}

impl SessionMetrics {
    pub(super) fn register(r: &mut Registry) -> Self {
        Self {
            sessions_active: add(
                r,
                "sessions_active",
                "Sessions that got Welcome and are still connected",
                Gauge::default(),
            ),
            sessions_welcomed: add(
                r,
                "sessions_welcomed",
                "Hellos answered with Welcome",
                Counter::default(),
            ),
            hello_rejects: add(
                r,
                "hello_rejects",
                "Hellos answered with Reject, by reason",
                Family::default(),
            ),
            sessions_ended: add(
                r,
                "sessions_ended",
                "Welcomed sessions that ended, by why: meter_closed, idle_timeout, connection_lost, protocol_violation, bad_control_frame, shutdown",
                Family::default(),
            ),
            control_request_seconds: add(
                r,
                "control_request_seconds",
                "Control-plane request latency, by request: hello (Hello read to Welcome/Reject written), heartbeat, admin (an HTTP request)",
                Family::new_with_constructor(control_latency_histogram as fn() -> Histogram),
            ),
        }
    }

    /// Counts a `Hello` rejected for `why` (a `hello_rejects` label value).
    pub fn rejected(&self, why: &'static str) {
        self.hello_rejects.get_or_create(&reason(why)).inc();
    }

    /// Times one control-plane request.
    pub fn control_request(&self, request: ControlRequest, seconds: f64) {
        self.control_request_seconds
            .get_or_create(&RequestLabel {
                request: request.as_str(),
            })
            .observe(seconds);
    }
}

/// The fleet's bounded load: the peer poll's rounds and what they learned.
pub struct FleetMetrics {
    /// `fleet_peers`: peers that answered the last poll round. Written by the poll loop.
    pub fleet_peers: Gauge,
    /// `fleet_poll_rounds`: poll rounds completed. Written by the poll loop.
    pub fleet_poll_rounds: Counter,
    /// `fleet_poll_failures`: polls of a peer that failed. Written by the poll loop through
    /// `PeerPollFailed`.
    pub fleet_poll_failures: Counter,
    /// `fleet_mean_sessions`: the fleet's mean sessions per collector after the last round.
    /// Written by the poll loop.
    pub fleet_mean_sessions: F64Gauge,
}

impl FleetMetrics {
    pub(super) fn register(r: &mut Registry) -> Self {
        Self {
            fleet_peers: add(
                r,
                "fleet_peers",
                "Peers that answered the last load poll (bounded load), this collector not included",
                Gauge::default(),
            ),
            fleet_poll_rounds: add(
                r,
                "fleet_poll_rounds",
                "Load poll rounds completed (every fleet.load_poll_ms while bounded load is on and peers are configured)",
                Counter::default(),
            ),
            fleet_poll_failures: add(
                r,
                "fleet_poll_failures",
                "Load polls of a peer that failed: no connection, no answer in time, or not a load report",
                Counter::default(),
            ),
            fleet_mean_sessions: add(
                r,
                "fleet_mean_sessions",
                "The fleet's mean sessions per collector as estimated after the last load poll (this collector alone while no peer is known)",
                Gauge::default(),
            ),
        }
    }

    /// Records a finished poll round: `answered` peers, the fleet's `mean` sessions.
    pub fn round(&self, answered: usize, mean: f64) {
        self.fleet_peers.set(answered as i64);
        self.fleet_mean_sessions.set(mean);
        self.fleet_poll_rounds.inc();
    }
}

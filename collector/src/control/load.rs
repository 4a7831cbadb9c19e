//! The collector's own load as the control plane counts it: the inputs of every admission
//! decision (the accept loop's budgets, the soft budgets at `Hello`, the bounded-load share) and
//! of the `/load` answer peers poll.
//!
//! Owns: [`LoadCounters`] (connections open, handshakes in flight, sessions) and the guards that
//! keep them true however a task ends ([`TrackedConnection`], [`SessionCount`]). The bytes the
//! data plane buffers for the sink are counted on the data side of the seam
//! ([`BufferedBytes`]); this module only reads them. The Prometheus gauges
//! (`connections_open`, `connections{state}`, `sessions_active`, `buffered_bytes`) mirror these
//! counters: moved with them, or set from them at scrape time.
//!
//! Must never: read a decision input back from a metric. Renaming or dropping a metric must not
//! change who is admitted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use crate::data::sink::BufferedBytes;
use crate::telemetry::{CollectorMetrics, ConnState};

/// Plain counters of what the collector holds now. One per collector, shared (`Arc`) by the
/// accept loop, every connection task, the poll loop and the admin server.
pub struct LoadCounters {
    /// Connections the accept loop admitted that have not closed yet. Written by
    /// [`TrackedConnection`] (raised by the accept loop when it admits one, lowered when the
    /// connection task ends); read by the accept loop against `limits.max_connections`. Counted
    /// from the decision on, so a burst cannot overtake it (quinn counts a connection only once
    /// its task has accepted it).
    connections: AtomicUsize,
    /// Connections admitted but not yet answered with `Welcome` or `Reject` (TLS handshake or
    /// waiting for the `Hello`). Written by [`TrackedConnection`] as its state moves; read by the
    /// accept loop against the handshake budget.
    handshakes: AtomicUsize,
    /// Welcomed sessions still open. Written by [`SessionCount`] (taken with a `Welcome`
    /// decision, released when the session ends); read by every `Hello` (soft session budget,
    /// bounded load), the accept loop, the poll round (this collector's own share) and `/load`.
    sessions: AtomicUsize,
    /// Bytes waiting for or in the sink queue: written by the data plane's sink handle, read
    /// here by admission (the memory budget) and mirrored into `buffered_bytes` at scrape time.
    buffered: BufferedBytes,
    /// The gauges that mirror the counters. Written only, never read back.
    metrics: Arc<CollectorMetrics>,
}

impl LoadCounters {
    /// Counters starting at zero, reading the data plane's buffered bytes from `buffered`.
    pub fn new(metrics: Arc<CollectorMetrics>, buffered: BufferedBytes) -> Arc<Self> {
        Arc::new(LoadCounters {
            connections: AtomicUsize::new(0),
            handshakes: AtomicUsize::new(0),
            sessions: AtomicUsize::new(0),
            buffered,
            metrics,
        })
    }

    /// Connections admitted and not yet closed.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Connections not yet answered with `Welcome` or `Reject`.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::Relaxed)
    }

    /// Welcomed sessions still open.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Bytes the data plane holds for the sink (waiting for room in its queue, or in it).
    pub fn buffered_bytes(&self) -> u64 {
        self.buffered.get()
    }

    /// Sets the gauges mirrored at scrape time (`buffered_bytes`). Called by `/metrics`.
    pub fn mirror(&self) {
        let bytes = i64::try_from(self.buffered_bytes()).unwrap_or(i64::MAX);
        self.metrics.queue.buffered_bytes.set(bytes);
    }

    /// Counts a connection the accept loop admitted, from now until the guard is dropped.
    pub fn connection(self: &Arc<Self>) -> TrackedConnection {
        TrackedConnection::new(Arc::clone(self))
    }

    /// Counts a welcomed session until the guard is dropped.
    pub fn session(self: &Arc<Self>) -> SessionCount {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        self.metrics.sessions.sessions_active.inc();
        SessionCount {
            load: Arc::clone(self),
        }
    }
}

/// A connection counted in [`LoadCounters`] (and mirrored in `connections_open` and
/// `connections{state}`) for as long as it lives. Created in the accept loop, so the handshake
/// budget counts a connection from the moment it is admitted; moved into its connection task,
/// which moves its state along.
pub struct TrackedConnection {
    load: Arc<LoadCounters>,
    /// Where the connection is in its life.
    state: ConnState,
    /// The `connections{state}` gauge of `state`.
    state_gauge: Gauge,
    /// When the accept loop admitted it: handshake latency includes any wait for the runtime.
    pub accepted: Instant,
}

fn handshaking(state: ConnState) -> bool {
    matches!(state, ConnState::Handshaking | ConnState::AwaitingHello)
}

impl TrackedConnection {
    fn new(load: Arc<LoadCounters>) -> Self {
        load.connections.fetch_add(1, Ordering::Relaxed);
        load.handshakes.fetch_add(1, Ordering::Relaxed);
        load.metrics.connections.connections_open.inc();
        let state_gauge = load.metrics.connection_state(ConnState::Handshaking);
        state_gauge.inc();
        Self {
            load,
            state: ConnState::Handshaking,
            state_gauge,
            accepted: Instant::now(),
        }
    }

    /// Moves the connection to `state`.
    pub fn set(&mut self, state: ConnState) {
        if handshaking(self.state) && !handshaking(state) {
            self.load.handshakes.fetch_sub(1, Ordering::Relaxed);
        } else if !handshaking(self.state) && handshaking(state) {
            self.load.handshakes.fetch_add(1, Ordering::Relaxed);
        }
        self.state = state;
        self.state_gauge.dec();
        self.state_gauge = self.load.metrics.connection_state(state);
        self.state_gauge.inc();
    }
}

impl Drop for TrackedConnection {
    fn drop(&mut self) {
        if handshaking(self.state) {
            self.load.handshakes.fetch_sub(1, Ordering::Relaxed);
        }
        self.load.connections.fetch_sub(1, Ordering::Relaxed);
        self.state_gauge.dec();
        self.load.metrics.connections.connections_open.dec();
    }
}

/// A welcomed session, counted in [`LoadCounters`] (and `sessions_active`) until dropped.
pub struct SessionCount {
    load: Arc<LoadCounters>,
}

impl Drop for SessionCount {
    fn drop(&mut self) {
        self.load.sessions.fetch_sub(1, Ordering::Relaxed);
        self.load.metrics.sessions.sessions_active.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters() -> (Arc<LoadCounters>, Arc<CollectorMetrics>) {
        let metrics = Arc::new(CollectorMetrics::new());
        (
            LoadCounters::new(Arc::clone(&metrics), BufferedBytes::default()),
            metrics,
        )
    }

    #[test]
    fn a_connection_counts_as_a_handshake_until_it_is_answered() {
        let (load, metrics) = counters();
        let mut conn = load.connection();
        assert_eq!((load.connections(), load.handshakes()), (1, 1));
        conn.set(ConnState::AwaitingHello);
        assert_eq!(load.handshakes(), 1);
        conn.set(ConnState::Session);
        assert_eq!((load.connections(), load.handshakes()), (1, 0));
        let other = load.connection();
        assert_eq!((load.connections(), load.handshakes()), (2, 1));
        drop(other);
        drop(conn);
        assert_eq!((load.connections(), load.handshakes()), (0, 0));
        // The gauges mirror the counters.
        assert_eq!(metrics.connections.connections_open.get(), 0);
        assert_eq!(metrics.connection_state(ConnState::Session).get(), 0);
        assert_eq!(metrics.connection_state(ConnState::Handshaking).get(), 0);
    }

    #[test]
    fn sessions_are_counted_while_their_guard_lives_and_the_gauge_follows() {
        let (load, metrics) = counters();
        let a = load.session();
        let b = load.session();
        assert_eq!((load.sessions(), metrics.sessions.sessions_active.get()), (2, 2));
        drop(a);
        assert_eq!((load.sessions(), metrics.sessions.sessions_active.get()), (1, 1));
        drop(b);
        assert_eq!(load.sessions(), 0);
    }

    #[test]
    fn a_gauge_set_by_hand_does_not_change_the_decision_inputs() {
        let (load, metrics) = counters();
        let _s = load.session();
        metrics.sessions.sessions_active.set(1_000);
        metrics.connections.connections_open.set(1_000);
        assert_eq!(
            (load.sessions(), load.connections(), load.handshakes()),
            (1, 0, 0)
        );
    }
}

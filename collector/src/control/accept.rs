//! The accept loop: every `Incoming` the QUIC endpoint hands over is admitted, asked to prove
//! its address (Retry), or refused, before any handshake work is spent on it.
//!
//! Owns: [`accept_loop`] and [`admit`], the decision on one `Incoming` from the collector's
//! [`Load`] (read from [`LoadCounters`] and the endpoint, never from a metric) by the
//! [`Admission`] policy, and the connection tasks it spawns (tracked so shutdown can wait for
//! them). Must never: await anything between reading the load and acting on the decision (a
//! burst would overtake the counts), or do a handshake inline.

use std::sync::Arc;
use std::time::Duration;

use quinn::{Endpoint, Incoming};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::task::TaskTracker;

use crate::control::accept_rate;
use crate::control::admission::{Admission, Admit, Load};
use crate::control::session::{self, Shared};
use crate::telemetry::{ConnectionRefused, LogThrottle, RefuseReason, Task};

/// Accepts connections until the endpoint closes, deciding on each before any handshake work.
/// The decision runs inline, so the counts it reads cannot be overtaken by connections it let in.
/// With an adaptive accept rate, the loop also samples the control plane's lag: how late its
/// own timer fires (it runs on the control runtime, like every session's packet I/O).
pub async fn accept_loop(
    endpoint: Endpoint,
    shared: Arc<Shared>,
    connections: TaskTracker,
    mut admission: Admission,
) {
    let _task = shared.metrics.task(Task::AcceptLoop);
    let refusal_log = LogThrottle::new(Duration::from_secs(10), 16);
    let m = &shared.metrics.connections;
    m.admission_accept_rate.set(admission.accept_rate());
    let mut lag_timer = tokio::time::interval(accept_rate::SAMPLE_EVERY);
    lag_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut lag_sum, mut lag_samples) = (Duration::ZERO, 0u32);
    loop {
        let incoming = tokio::select! {
            // Cancel-safe: quinn's `Accept` takes an `Incoming` off its queue only when it
            // returns it.
            incoming = endpoint.accept() => incoming,
            due = lag_timer.tick(), if admission.is_adaptive() => {
                let now = Instant::now();
                let lag = now.saturating_duration_since(due);
                (lag_sum, lag_samples) = (lag_sum + lag, lag_samples + 1);
                if admission.on_lag(lag, now).is_some() {
                    m.admission_accept_rate.set(admission.accept_rate());
                    m.control_lag_seconds.set((lag_sum / lag_samples).as_secs_f64());
                    (lag_sum, lag_samples) = (Duration::ZERO, 0);
                }
                continue;
            }
        };
        let Some(incoming) = incoming else { break };
        let load = current_load(&endpoint, &shared);
        let now = Instant::now();
        let decision = admission.on_incoming(&load, incoming.remote_address_validated(), now);
        if let Admit::Refuse(reason) = decision {
            ConnectionRefused {
                reason,
                connections: load.connections,
                handshakes: load.handshakes,
                buffered_bytes: load.buffered_bytes,
                log: &refusal_log,
                now,
            }
            .emit(&shared.metrics);
        }
        admit(incoming, decision, &shared, &connections);
    }
}

/// The collector's load as the accept loop judges it.
fn current_load(endpoint: &Endpoint, shared: &Shared) -> Load {
    let counts = &shared.load;
    Load {
        // quinn counts a connection only once its task has called `accept`; our counter counts
        // it from this loop's decision. The larger of the two cannot be overtaken.
        connections: endpoint.open_connections().max(counts.connections()),
        handshakes: counts.handshakes(),
        sessions: counts.sessions(),
        buffered_bytes: counts.buffered_bytes(),
        draining: shared.draining.is_cancelled(),
        fleet: None,
    }
}

/// Acts on the decision for `incoming`: refuse it, ask it to retry from a proven address, or
/// spawn its connection task (counted from this moment).
fn admit(incoming: Incoming, decision: Admit, shared: &Arc<Shared>, connections: &TaskTracker) {
    let m = &shared.metrics;
    match decision {
        // Counted and logged by the loop, which knows the load it was refused for.
        Admit::Refuse(_) => incoming.refuse(),
        Admit::Retry if incoming.may_retry() => {
            m.connections.connections_retried.inc();
            if let Err(error) = incoming.retry() {
                error.into_incoming().refuse();
            }
        }
        Admit::Retry => {
            // Not expected: quinn lets every unvalidated address retry (it answers a bad
            // Retry token itself). Refuse rather than start a handshake over budget.
            m.connections.refused(RefuseReason::MaxHandshakes);
            incoming.refuse();
        }
        Admit::Accept => {
            m.connections.connections_accepted.inc();
            let tracked = shared.load.connection();
            connections.spawn(session::serve_connection(incoming, Arc::clone(shared), tracked));
        }
    }
}

//! The process's own metric group: readiness, running tasks and the QUIC socket's kernel
//! counters.
//!
//! Owns: [`RuntimeMetrics`] and [`TaskGuard`]. Must never: read `/proc` itself (the control
//! plane's UDP probe does, and sets these gauges).

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::add;
use super::labels::{Task, TaskLabel};

/// Tasks and the UDP socket.
pub struct RuntimeMetrics {
    /// `ready`: 1 when `/readyz` would answer 200 (listener bound, sink healthy, not draining).
    /// Set by the admin server from the same rule each time `/metrics` is read.
    pub ready: Gauge,
    /// `tasks_active{task}`: spawned tasks and threads running, by [`Task`]. Moved by the
    /// [`TaskGuard`] each task holds.
    pub tasks_active: Family<TaskLabel, Gauge>,
    /// `udp_receive_buffer_bytes`: the QUIC socket's receive buffer as granted. Set at start.
    pub udp_receive_buffer_bytes: Gauge,
    /// `udp_socket_drops`: datagrams the kernel dropped on the QUIC socket. Set by the UDP probe
    /// when `/metrics` is read.
    pub udp_socket_drops: Gauge,
    /// `udp_receive_buffer_errors`: the host's UDP receive-buffer errors. Set by the UDP probe
    /// when `/metrics` is read.
    pub udp_receive_buffer_errors: Gauge,
}

impl RuntimeMetrics {
    pub(super) fn register(r: &mut Registry) -> Self {
        Self {
            ready: add(
                r,
                "ready",
                "1 when the collector is ready (what /readyz answers: listener bound, sink healthy, not draining), as of this scrape",
                Gauge::default(),
            ),
            tasks_active: add(
                r,
                "tasks_active",
                "Spawned tasks and threads currently running, by kind",
                Family::default(),
            ),
            udp_receive_buffer_bytes: add(
                r,
                "udp_receive_buffer_bytes",
                "Receive buffer the kernel granted the QUIC socket (Linux reports twice the usable size)",
                Gauge::default(),
            ),
            udp_socket_drops: add(
                r,
                "udp_socket_drops",
                "Datagrams the kernel dropped on the QUIC socket (its receive buffer was full), from /proc/net/udp",
                Gauge::default(),
            ),
            udp_receive_buffer_errors: add(
                r,
                "udp_receive_buffer_errors",
                "UDP receive-buffer errors of the whole host (RcvbufErrors of Udp and Udp6 in /proc/net/snmp*)",
                Gauge::default(),
            ),
        }
    }

    /// Counts a running task of kind `task` until the guard is dropped.
    pub fn task(&self, task: Task) -> TaskGuard {
        let gauge = self
            .tasks_active
            .get_or_create(&TaskLabel { task: task.as_str() })
            .clone();
        gauge.inc();
        TaskGuard(gauge)
    }
}

/// Decrements its task gauge when dropped.
pub struct TaskGuard(Gauge);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

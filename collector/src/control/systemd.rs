//! What the collector tells systemd (`Type=notify`, through [`ringflow_ops::sd_notify`]):
//! `READY=1` the moment the collector first becomes ready as `/readyz` decides it (listener
//! bound, sink healthy, not draining), never before and never again; `STOPPING=1` when the
//! drain starts; `WATCHDOG=1` every half `WATCHDOG_USEC` from a task on the control plane's
//! runtime, so a wedged control plane stops pinging and systemd restarts the process; and a
//! `STATUS=` line with each (`ready: 12 sessions`, `not ready: sink unavailable`).
//!
//! Owns: the two tasks that notify. Runs on the control plane. Must never: decide readiness
//! itself (that is [`Readiness`]), or wait on the data plane.

use std::sync::Arc;

use ringflow_ops::sd_notify::Notifier;
use tokio::task::JoinHandle;

use crate::control::admin::Readiness;
use crate::control::load::LoadCounters;

/// The notifying tasks of a serving collector; stopped with it.
pub struct Notifying {
    notifier: Notifier,
    /// Waits for readiness, then sends `READY=1` once.
    ready_task: Option<JoinHandle<()>>,
    /// Pings the watchdog (None: no watchdog).
    watchdog_task: Option<JoinHandle<()>>,
    readiness: Readiness,
    load: Arc<LoadCounters>,
}

/// The `STATUS=` line: what `/readyz` says, and the sessions held.
fn status(readiness: &Readiness, load: &LoadCounters) -> String {
    let sessions = load.sessions();
    match readiness.check() {
        Ok(()) => format!("ready: {sessions} sessions"),
        Err(why) => format!("not ready: {why}; {sessions} sessions"),
    }
}

impl Notifying {
    /// Starts the tasks on the current runtime (the control plane's); nothing when `notifier`
    /// is disabled.
    pub fn start(notifier: Notifier, readiness: Readiness, load: Arc<LoadCounters>) -> Self {
        let mut notifying = Notifying {
            notifier,
            ready_task: None,
            watchdog_task: None,
            readiness,
            load,
        };
        if !notifying.notifier.is_enabled() {
            return notifying;
        }
        let (notifier, readiness, load) = (
            notifying.notifier.clone(),
            notifying.readiness.clone(),
            Arc::clone(&notifying.load),
        );
        notifying.ready_task = Some(tokio::spawn(async move {
            if readiness.became_ready().await && notifier.ready(Some(&status(&readiness, &load))) {
                tracing::info!("told systemd: ready");
            }
        }));
        let (readiness, load) = (notifying.readiness.clone(), Arc::clone(&notifying.load));
        notifying.watchdog_task = notifying
            .notifier
            .spawn_watchdog(move || Some(status(&readiness, &load)));
        notifying
    }

    /// `STOPPING=1`, as the drain starts (a collector draining before it was ever ready never
    /// says `READY=1`).
    pub fn stopping(&mut self) {
        if let Some(task) = self.ready_task.take() {
            task.abort();
        }
        let sessions = self.load.sessions();
        self.notifier
            .stopping(Some(&format!("draining: {sessions} sessions")));
    }

    /// Stops the watchdog pings, when the collector has stopped.
    pub fn stop(self) {
        for task in [self.ready_task, self.watchdog_task].into_iter().flatten() {
            task.abort();
        }
    }
}

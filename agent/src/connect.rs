//! The connect loop: drives the [`Selector`] with the real clock, real sessions and the fleet.
//!
//! Owns: waiting until the next attempt, running a session, and telling the selector what
//! happened; passing fleet changes (DNS answers, a collector's `Welcome` view) to the selector
//! while a session runs; and, at the selector's "move now" instant, making sure the first choice
//! answers (a QUIC handshake) before telling the session to leave for it, so a meter never drops
//! a working session for a collector that is down but still named by DNS. Must never: decide
//! where or when to connect itself (that is the selector's), or block on DNS (answers arrive from
//! their own task through [`FleetWatch`]).
//!
//! [`run`] is a script of named steps over a `Driver` (the loop's state); while a session runs,
//! each event it waits for (the session's end, its Welcome, a fleet change, the moment to check
//! the first choice, that check's answer) is handled by a method of its own.

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::warn;

use crate::config::Config;
use crate::fleet::FleetWatch;
use crate::selector::backoff::{self, JitterParams};
use crate::selector::{Ended, Failure, Selector, SelectorConfig};
use crate::session::{self, FleetView, Leave, SessionContext, SessionEnd, SessionOutcome, SessionSignals};
use crate::telemetry::events::{CollectorChanged, Event};
use crate::telemetry::{MeterMetrics, session_end, task};

/// Connects, runs sessions and waits between attempts until the spool is settled (after
/// shutdown, or once every source has finished) or the flush deadline has passed. What is still
/// pending then stays in the spool for the next start.
pub async fn run(ctx: &SessionContext, config: &Config, fleet: FleetWatch) {
    let _task = ctx.metrics.task(task::CONNECT_LOOP);
    let mut driver = Driver::new(ctx, config, fleet);
    while let Some(target) = driver.next_target().await {
        let addr = match driver.resolve(&target).await {
            ControlFlow::Continue(Some(addr)) => addr,
            ControlFlow::Continue(None) => continue,
            ControlFlow::Break(()) => return,
        };
        let outcome = driver.run_session(&target, addr).await;
        if driver.session_ended(&target, outcome).is_break() {
            return;
        }
    }
}

/// The connect loop's state: the selector it drives, the fleet it feeds it, and the failure log.
struct Driver<'a> {
    ctx: &'a SessionContext,
    config: &'a Config,
    fleet: FleetWatch,
    selector: Selector<::backoff::ExponentialBackoff, StdRng>,
    failures: FailureLog,
}

/// What waiting for an attempt's instant came to.
enum Wait {
    /// Dial now.
    Go,
    /// The fleet changed: the attempt may be another now.
    FleetChanged,
    /// The flush deadline passed: stop.
    Expired,
}

/// One session as the connect loop watches it while it runs.
struct Watching<'a> {
    /// The collector of this session.
    target: Arc<str>,
    /// The session's Welcome, with the collector's fleet view.
    welcome_rx: oneshot::Receiver<FleetView>,
    /// The Welcome was seen (and told to the selector).
    welcomed: bool,
    /// Stalls the session saw (the collector there, its acks not).
    stalls_rx: watch::Receiver<u32>,
    /// Tells the session to leave (to move to the first choice, or off a stalled collector).
    leave_tx: watch::Sender<Option<Leave>>,
    /// When to check the first choice.
    move_at: Option<Instant>,
    /// The check under way (of which collector, and why).
    probe: Option<(Arc<str>, CheckFor, Probe<'a>)>,
}

/// Why the connect loop checks that a collector answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckFor {
    /// To move to the first choice.
    Home,
    /// To leave a stalled collector for its fallback.
    Fallback,
}

impl<'a> Driver<'a> {
    fn new(ctx: &'a SessionContext, config: &'a Config, fleet: FleetWatch) -> Self {
        let selector = Selector::new(
            &ctx.credentials.meter_id,
            fleet.view.ring(),
            SelectorConfig::from(&config.reconnect),
            backoff::live(JitterParams::from(&config.reconnect)),
            StdRng::from_os_rng(),
            Instant::now(),
        );
        ctx.metrics
            .fleet
            .fleet_collectors
            .set(fleet.view.ring().members().len() as i64);
        Driver {
            ctx,
            config,
            fleet,
            selector,
            failures: FailureLog::default(),
        }
    }

    /// Done: the flush deadline has passed, or nothing more will come and all is delivered.
    fn done(&self) -> bool {
        self.ctx.stop.deadline().is_some_and(|d| Instant::now() >= d) || self.ctx.spool.status().settled()
    }

    /// Waits for the selector's next attempt and returns its target; `None` when it is time to
    /// stop.
    async fn next_target(&mut self) -> Option<Arc<str>> {
        loop {
            if self.done() {
                return None;
            }
            let wait = match self.selector.next_attempt().cloned() {
                Some(attempt) => self.wait_until(attempt.at).await.map(|()| attempt.target),
                // No collector known yet: wait for DNS (or give up at the flush deadline).
                None => match self.wait_for_fleet().await {
                    Wait::Expired => return None,
                    _ => continue,
                },
            };
            match wait {
                Ok(target) => return Some(target),
                Err(Wait::Expired) => return None,
                Err(_) => continue,
            }
        }
    }

    /// Waits for a fleet change (handled) or the flush deadline.
    async fn wait_for_fleet(&mut self) -> Wait {
        tokio::select! {
            _ = self.fleet.changed() => {
                self.fleet_changed();
                Wait::FleetChanged
            }
            _ = self.ctx.stop.expired() => Wait::Expired,
        }
    }

    /// Waits until `at` (or, on shutdown, not at all: what is spooled goes out at once).
    async fn wait_until(&mut self, at: Instant) -> Result<(), Wait> {
        let stop = &self.ctx.stop;
        let wait = tokio::select! {
            _ = tokio::time::sleep_until(at) => Wait::Go,
            _ = self.fleet.changed() => Wait::FleetChanged,
            // Shutdown: stop waiting, and try at once to deliver what is spooled.
            _ = stop.requested(), if !stop.is_stopping() => Wait::Go,
            _ = stop.expired() => Wait::Expired,
        };
        match wait {
            Wait::Go => Ok(()),
            Wait::FleetChanged => {
                self.fleet_changed();
                Err(Wait::FleetChanged)
            }
            Wait::Expired => Err(Wait::Expired),
        }
    }

    /// The address of `target`; `None` (counted, logged, told to the selector) if it does not
    /// resolve; `Break` at the flush deadline.
    async fn resolve(&mut self, target: &Arc<str>) -> ControlFlow<(), Option<SocketAddr>> {
        let lookup = tokio::time::timeout(self.config.fleet.resolve_timeout(), resolve(target));
        let resolved = tokio::select! {
            r = lookup => r.unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "lookup timed out"))),
            _ = self.ctx.stop.expired() => return ControlFlow::Break(()),
        };
        match resolved {
            Ok(addr) => ControlFlow::Continue(Some(addr)),
            Err(error) => {
                MeterMetrics::inc(&self.ctx.metrics.sessions.session_ends, session_end::RESOLVE);
                self.failures.record(session_end::RESOLVE, target, &error);
                self.selector
                    .on_failure(target, Failure::Unreachable, Instant::now());
                ControlFlow::Continue(None)
            }
        }
    }

    /// Runs a session with `target` at `addr` until it ends, handling what happens meanwhile.
    async fn run_session(&mut self, target: &Arc<str>, addr: SocketAddr) -> SessionOutcome {
        let ctx = self.ctx;
        let server_name = self.config.server_name_for(target);
        let (leave_tx, leave_rx) = watch::channel(None);
        let (welcome_tx, welcome_rx) = oneshot::channel();
        let (stalls_tx, stalls_rx) = watch::channel(0);
        let signals = SessionSignals {
            welcome: welcome_tx,
            stalls: stalls_tx,
        };
        let session = session::run(ctx, addr, &server_name, leave_rx, signals);
        tokio::pin!(session);
        let mut w = Watching {
            target: Arc::clone(target),
            welcome_rx,
            welcomed: false,
            stalls_rx,
            leave_tx,
            move_at: None,
            probe: None,
        };
        let outcome = loop {
            tokio::select! {
                outcome = &mut session => break outcome,
                view = &mut w.welcome_rx, if !w.welcomed => self.on_welcome(&mut w, view.ok()),
                _ = self.fleet.changed() => self.on_fleet_change(&mut w),
                Ok(()) = w.stalls_rx.changed() => self.on_stalled(&mut w),
                _ = crate::sleep_until(w.move_at), if w.move_at.is_some() && w.probe.is_none() => {
                    self.on_move_due(&mut w);
                }
                reachable = until_done(&mut w.probe), if w.probe.is_some() => {
                    self.on_checked(&mut w, reachable);
                }
            }
        };
        if outcome.welcomed && !w.welcomed {
            // The session ended before its Welcome was seen here: account for it first.
            let view = w.welcome_rx.try_recv().ok();
            self.on_welcome(&mut w, view);
        }
        outcome
    }

    /// The collector welcomed the session (with its fleet view, if it sent one).
    fn on_welcome(&mut self, w: &mut Watching<'a>, view: Option<FleetView>) {
        w.welcomed = true;
        self.selector.on_welcome(&w.target, Instant::now());
        self.set_connected(Some(Arc::clone(&w.target)));
        self.failures.reset();
        if let Some(view) = view {
            self.take_fleet_view(view);
        }
        w.move_at = self.selector.move_at();
    }

    /// A collector's fleet view: its members join the ring, and those it finds not answering
    /// are held.
    fn take_fleet_view(&mut self, view: FleetView) {
        if self.fleet.view.set_welcome(view.members) {
            self.fleet_changed();
        }
        if !view.not_answering.is_empty() {
            self.selector
                .on_not_answering(&view.not_answering, Instant::now());
        }
    }

    /// The session's collector has not acked within the ack bound: check that the next
    /// collector answers, then leave for it (make-before-break). With none to go to, stay.
    fn on_stalled(&mut self, w: &mut Watching<'a>) {
        if w.probe.is_some() {
            return;
        }
        let (ctx, config) = (self.ctx, self.config);
        w.probe = self.selector.fallback(Instant::now()).map(|next| {
            let check: Probe<'a> = Box::pin(answers(ctx, config, Arc::clone(&next)));
            (next, CheckFor::Fallback, check)
        });
        if w.probe.is_none() {
            warn!(collector = %w.target, "the collector stopped acking and no other collector is free; staying");
        }
    }

    /// DNS changed the fleet while the session runs.
    fn on_fleet_change(&mut self, w: &mut Watching<'a>) {
        self.fleet_changed();
        w.move_at = self.selector.move_at();
        // The first choice changed while it was being checked: the check is moot.
        if w.probe.as_ref().is_some_and(|(home, why, _)| {
            *why == CheckFor::Home && self.selector.first().as_ref() != Some(home)
        }) {
            w.probe = None;
        }
    }

    /// Time to move to the first choice: check first that it answers.
    fn on_move_due(&mut self, w: &mut Watching<'a>) {
        w.move_at = None;
        self.selector.on_checking_home();
        let (ctx, config) = (self.ctx, self.config);
        w.probe = self.selector.first().map(|home| {
            let check: Probe<'a> = Box::pin(answers(ctx, config, Arc::clone(&home)));
            (home, CheckFor::Home, check)
        });
    }

    /// The checked collector answered (leave for it) or did not (stay: the selector says when
    /// to check the first choice next; a fallback is held, and the next stall tries another).
    fn on_checked(&mut self, w: &mut Watching<'a>, reachable: bool) {
        let Some((checked, why, _)) = w.probe.take() else {
            return;
        };
        match (why, reachable) {
            (CheckFor::Home, true) => {
                w.leave_tx.send_replace(Some(Leave::to_move()));
            }
            (CheckFor::Fallback, true) => {
                self.selector.on_fallback_answered(&checked);
                w.leave_tx.send_replace(Some(Leave::stalled()));
            }
            (CheckFor::Home, false) => {
                self.selector.on_home_unreachable(&checked, Instant::now());
                w.move_at = self.selector.move_at();
            }
            (CheckFor::Fallback, false) => {
                self.selector.on_failure_while_connected(&checked, Instant::now());
            }
        }
    }

    /// Tells the selector, the metrics and the log how the session with `target` ended.
    /// `Break` when the meter is stopping.
    fn session_ended(&mut self, target: &Arc<str>, outcome: SessionOutcome) -> ControlFlow<()> {
        self.set_connected(None);
        let now = Instant::now();
        let label = match outcome.end {
            SessionEnd::Flushed | SessionEnd::Unflushed => {
                MeterMetrics::inc(&self.ctx.metrics.sessions.session_ends, session_end::SHUTDOWN);
                return ControlFlow::Break(());
            }
            SessionEnd::Drained { reconnect_within } => {
                self.selector.on_ended(
                    Ended::Drained {
                        within: reconnect_within,
                    },
                    now,
                );
                session_end::DRAINED
            }
            SessionEnd::Moved => {
                self.selector.on_ended(Ended::Moved, now);
                session_end::MOVED
            }
            SessionEnd::LeftStalled => {
                self.selector.on_ended(Ended::Stalled, now);
                session_end::STALLED
            }
            SessionEnd::Rejected {
                reason,
                retry_after,
                message,
                fleet: view,
            } => {
                // Sent elsewhere: walk a ring over the fleet the collector named, not only
                // over what DNS said (which may be this collector alone).
                self.take_fleet_view(view);
                let label = ringflow_proto::names::reject_reason(reason);
                MeterMetrics::inc(&self.ctx.metrics.sessions.rejects, label);
                self.failures
                    .record(label, target, &format!("rejected: {message}"));
                self.selector
                    .on_failure(target, Failure::Refused { retry_after }, now);
                session_end::REJECTED
            }
            SessionEnd::Failed(error) => {
                self.failures.record(error.label(), target, &error);
                if outcome.welcomed {
                    let ended = if error.collector_gone() {
                        Ended::Gone
                    } else {
                        Ended::Lost
                    };
                    self.selector.on_ended(ended, now);
                } else if error.collector_gone() {
                    self.selector.on_failure(target, Failure::NoAnswer, now);
                } else {
                    self.selector.on_failure(target, Failure::Unreachable, now);
                }
                error.label()
            }
        };
        MeterMetrics::inc(&self.ctx.metrics.sessions.session_ends, label);
        self.ctx.progress.notify();
        ControlFlow::Continue(())
    }

    /// The ring changed: tell the selector (and the gauge).
    fn fleet_changed(&mut self) {
        let ring = self.fleet.view.ring();
        self.ctx
            .metrics
            .fleet
            .fleet_collectors
            .set(ring.members().len() as i64);
        self.selector.on_fleet(ring, Instant::now());
    }

    /// Records the collector of the current session (`None`: not connected) and signals it.
    fn set_connected(&self, collector: Option<Arc<str>>) {
        let old = self.ctx.current.replace(collector.clone());
        CollectorChanged {
            old: old.as_ref(),
            new: collector.as_ref(),
        }
        .emit(&self.ctx.metrics);
        self.ctx.progress.notify();
    }
}

/// Whether `collector` completes a QUIC handshake within the connect timeout (the connection is
/// closed at once; it says nothing to the collector beyond that).
async fn answers(ctx: &SessionContext, config: &Config, collector: Arc<str>) -> bool {
    ctx.metrics.sessions.connect_attempts.inc();
    let addr = match tokio::time::timeout(config.fleet.resolve_timeout(), resolve(&collector)).await {
        Ok(Ok(addr)) => addr,
        _ => return false,
    };
    let Ok(connecting) = ctx.endpoint.connect(addr, &config.server_name_for(&collector)) else {
        return false;
    };
    match tokio::time::timeout(ctx.connect_timeout, connecting).await {
        Ok(Ok(conn)) => {
            ringflow_proto::codes::ConnectionCode::Done.close(&conn);
            true
        }
        _ => false,
    }
}

/// A check that a collector answers.
type Probe<'a> = std::pin::Pin<Box<dyn Future<Output = bool> + Send + 'a>>;

/// The check under way, or never (for an optional branch of a `select!`).
async fn until_done(probe: &mut Option<(Arc<str>, CheckFor, Probe<'_>)>) -> bool {
    match probe {
        Some((_, _, p)) => p.await,
        None => std::future::pending().await,
    }
}

/// A collector address to dial: `ip:port` as is, `host:port` through the system resolver.
async fn resolve(address: &str) -> std::io::Result<SocketAddr> {
    if let Ok(addr) = address.parse() {
        return Ok(addr);
    }
    tokio::net::lookup_host(address)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "name has no addresses"))
}

/// Aggregates connection failures in the log: a line when the kind of failure changes, else at
/// most one per [`FailureLog::REPEAT_INTERVAL`] saying how many happened since.
#[derive(Default)]
struct FailureLog {
    last_kind: Option<&'static str>,
    last_logged: Option<Instant>,
    repeats: u64,
}

impl FailureLog {
    const REPEAT_INTERVAL: Duration = Duration::from_secs(60);

    fn record(&mut self, kind: &'static str, target: &str, error: &dyn std::fmt::Display) {
        let now = Instant::now();
        let same = self.last_kind == Some(kind);
        if same
            && self
                .last_logged
                .is_some_and(|t| now.duration_since(t) < Self::REPEAT_INTERVAL)
        {
            self.repeats += 1;
            return;
        }
        let hint = match kind {
            "auth" => " (check org_id and the org token)",
            "unsupported_version" => " (upgrade the meter)",
            _ => "",
        };
        warn!(
            kind,
            collector = target,
            repeats = self.repeats,
            "no session with a collector: {error}{hint}"
        );
        self.last_kind = Some(kind);
        self.last_logged = Some(now);
        self.repeats = 0;
    }

    fn reset(&mut self) {
        *self = FailureLog::default();
    }
}

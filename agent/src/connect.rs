//! The connect loop: drives the [`Selector`] with the real clock, real sessions and the fleet.
//!
//! Owns: waiting until the next attempt, running a session, and telling the selector what
//! happened; passing fleet changes (DNS answers, a collector's `Welcome` view) to the selector
//! while a session runs; and, at the selector's "move now" instant, making sure the first choice
//! answers (a QUIC handshake) before telling the session to leave for it, so a meter never drops
//! a working session for a collector that is down but still named by DNS. Must never: decide
//! where or when to connect itself (that is the selector's), or block on DNS (answers arrive from
//! their own task through [`FleetWatch`]).

use std::net::SocketAddr;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::warn;

use crate::config::Config;
use crate::fleet::FleetWatch;
use crate::selector::{Ended, Failure, Selector, backoff};
use crate::session::{self, SessionContext, SessionEnd};
use crate::telemetry::MeterMetrics;

/// Connects, runs sessions and waits between attempts until the spool is settled (after
/// shutdown, or once every source has finished) or the flush deadline has passed. What is still
/// pending then stays in the spool for the next start.
pub async fn run(ctx: &SessionContext, config: &Config, mut fleet: FleetWatch) {
    let _task = ctx.metrics.task("connect_loop");
    let mut selector = Selector::new(
        &ctx.credentials.meter_id,
        fleet.view.ring(),
        config.selection(),
        backoff::live(config.jitter()),
        StdRng::from_os_rng(),
        Instant::now(),
    );
    ctx.metrics
        .fleet_collectors
        .set(fleet.view.ring().members().len() as i64);
    let mut failures = FailureLog::default();
    loop {
        if ctx.stop.deadline().is_some_and(|d| Instant::now() >= d) || ctx.spool.status().settled() {
            return;
        }
        let Some(attempt) = selector.next_attempt().cloned() else {
            // No collector known yet: wait for DNS (or give up at the flush deadline).
            tokio::select! {
                _ = fleet.changed() => fleet_changed(&mut selector, &fleet, ctx),
                _ = ctx.stop.expired() => return,
            }
            continue;
        };
        let go = tokio::select! {
            _ = tokio::time::sleep_until(attempt.at) => true,
            _ = fleet.changed() => {
                fleet_changed(&mut selector, &fleet, ctx);
                false
            }
            // Shutdown: stop waiting, and try at once to deliver what is spooled.
            _ = ctx.stop.requested(), if !ctx.stop.is_stopping() => true,
            _ = ctx.stop.expired() => return,
        };
        if !go {
            continue;
        }
        let target = attempt.target;
        let lookup = tokio::time::timeout(config.fleet.resolve_timeout(), resolve(&target));
        let resolved = tokio::select! {
            r = lookup => r.unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "lookup timed out"))),
            _ = ctx.stop.expired() => return,
        };
        let addr = match resolved {
            Ok(addr) => addr,
            Err(error) => {
                MeterMetrics::inc(&ctx.metrics.session_ends, "resolve");
                failures.record("resolve", &target, &error);
                selector.on_failure(&target, Failure::Unreachable, Instant::now());
                continue;
            }
        };
        let server_name = config.server_name_for(&target);
        let (leave_tx, leave_rx) = watch::channel(None);
        let (welcome_tx, mut welcome_rx) = oneshot::channel();
        let session = session::run(ctx, addr, &server_name, leave_rx, welcome_tx);
        tokio::pin!(session);
        let mut welcomed = false;
        let mut on_welcome =
            |view: Option<Vec<String>>, selector: &mut Selector<_, _>, fleet: &mut FleetWatch| {
                selector.on_welcome(&target, Instant::now());
                ctx.metrics.set_connected(Some(target.clone()));
                failures.reset();
                if let Some(view) = view
                    && fleet.view.set_welcome(view)
                {
                    fleet_changed(selector, fleet, ctx);
                }
            };
        // When to check the first choice, and the check under way (of which collector).
        let mut move_at: Option<Instant> = None;
        let mut probe: Option<(std::sync::Arc<str>, Probe<'_>)> = None;
        let outcome = loop {
            tokio::select! {
                outcome = &mut session => break outcome,
                view = &mut welcome_rx, if !welcomed => {
                    welcomed = true;
                    on_welcome(view.ok(), &mut selector, &mut fleet);
                    move_at = selector.move_at();
                }
                _ = fleet.changed() => {
                    fleet_changed(&mut selector, &fleet, ctx);
                    move_at = selector.move_at();
                    // The first choice changed while it was being checked: the check is moot.
                    if probe.as_ref().is_some_and(|(home, _)| selector.first().as_ref() != Some(home)) {
                        probe = None;
                    }
                }
                _ = crate::sleep_until(move_at), if move_at.is_some() && probe.is_none() => {
                    move_at = None;
                    selector.on_checking_home();
                    probe = selector.first().map(|home| {
                        let check: Probe<'_> = Box::pin(answers(ctx, config, std::sync::Arc::clone(&home)));
                        (home, check)
                    });
                }
                reachable = until_done(&mut probe), if probe.is_some() => {
                    if let Some((home, _)) = probe.take() {
                        if reachable {
                            leave_tx.send_replace(Some(Instant::now()));
                        } else {
                            selector.on_home_unreachable(&home, Instant::now());
                            move_at = selector.move_at();
                        }
                    }
                }
            }
        };
        if outcome.welcomed && !welcomed {
            // The session ended before its Welcome was seen here: account for it first.
            on_welcome(welcome_rx.try_recv().ok(), &mut selector, &mut fleet);
        }
        ctx.metrics.set_connected(None);
        let now = Instant::now();
        let label = match outcome.end {
            SessionEnd::Flushed | SessionEnd::Unflushed => {
                MeterMetrics::inc(&ctx.metrics.session_ends, "shutdown");
                return;
            }
            SessionEnd::Drained { reconnect_within } => {
                selector.on_ended(
                    Ended::Drained {
                        within: reconnect_within,
                    },
                    now,
                );
                "drained"
            }
            SessionEnd::Moved => {
                selector.on_ended(Ended::Moved, now);
                "moved"
            }
            SessionEnd::Rejected {
                reason,
                retry_after,
                message,
                fleet: view,
            } => {
                // Sent elsewhere: walk a ring over the fleet the collector named, not only
                // over what DNS said (which may be this collector alone).
                if fleet.view.set_welcome(view) {
                    fleet_changed(&mut selector, &fleet, ctx);
                }
                let label = ringflow_proto::names::reject_reason(reason);
                MeterMetrics::inc(&ctx.metrics.rejects, label);
                failures.record(label, &target, &format!("rejected: {message}"));
                selector.on_failure(&target, Failure::Refused { retry_after }, now);
                "rejected"
            }
            SessionEnd::Failed(error) => {
                failures.record(error.label(), &target, &error);
                if outcome.welcomed {
                    selector.on_ended(Ended::Lost, now);
                } else {
                    selector.on_failure(&target, Failure::Unreachable, now);
                }
                error.label()
            }
        };
        MeterMetrics::inc(&ctx.metrics.session_ends, label);
        ctx.metrics.notify();
    }
}

/// Whether `collector` completes a QUIC handshake within the connect timeout (the connection is
/// closed at once; it says nothing to the collector beyond that).
async fn answers(ctx: &SessionContext, config: &Config, collector: std::sync::Arc<str>) -> bool {
    ctx.metrics.connect_attempts.inc();
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
async fn until_done(probe: &mut Option<(std::sync::Arc<str>, Probe<'_>)>) -> bool {
    match probe {
        Some((_, p)) => p.await,
        None => std::future::pending().await,
    }
}

fn fleet_changed<B: ::backoff::backoff::Backoff, R: rand::Rng>(
    selector: &mut Selector<B, R>,
    fleet: &FleetWatch,
    ctx: &SessionContext,
) {
    let ring = fleet.view.ring();
    ctx.metrics.fleet_collectors.set(ring.members().len() as i64);
    selector.on_fleet(ring, Instant::now());
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

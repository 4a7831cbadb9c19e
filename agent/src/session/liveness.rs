//! The session's failure detector: is the collector still there, and does it still ack?
//!
//! Owns: two verdicts and their bounds, from what the session tells it (what it wrote, how many
//! packets the connection has received, the ack latencies it has seen). Sans-IO: time, packet
//! counts and the transport's RTT are passed in.
//!
//! - **Silent** (the collector is gone: crashed, partitioned). Every write of the meter (a batch,
//!   a probe) is ack-eliciting, and a live collector's QUIC stack acknowledges it within about an
//!   RTT plus its ACK delay, even when its data plane is wedged (QUIC runs on the control
//!   runtime). So after a write, not one packet from the collector for the *silence bound* means
//!   it is gone. The bound is `max(silence_timeout, 3 x (2 x srtt + 25 ms))`: the configured
//!   floor, or three probe timeouts of this path. The verdict is then confirmed by a fresh probe:
//!   the meter writes a heartbeat and waits an eighth of the bound, and only once that probe has
//!   left (the connection's sent-datagram count moved past it) and still nothing came back is
//!   the collector gone. So a meter whose own process was starved (its timer late, its packets
//!   unsent, the answer unread in the socket) does not mistake its own stall for the collector's.
//! - **Stalled** (the collector is there but does not ack: its sink is throttled, its data plane
//!   wedged). The oldest batch in flight waited longer than the *ack bound*: four times the
//!   usual worst ack latency seen on this session (`srtt + 4 x rttvar`, RFC 6298's estimator over
//!   ack latencies), kept within `[ack_timeout_min, ack_timeout_max]`. A collector whose acks
//!   were always slow gets a longer bound; one that stops acking is left make-before-break.
//!   While a batch waits past a quarter of the ack bound, the session probes the control plane
//!   (a heartbeat) each silence bound, so silence stays measurable when the meter writes
//!   nothing else.
//!
//! Must never: do I/O or read a clock.

use std::time::Duration;

use tokio::time::Instant;

/// What a live collector's QUIC stack may wait before acknowledging (quinn's default ACK delay).
const PEER_ACK_DELAY: Duration = Duration::from_millis(25);
/// The silence bound counts this many probe timeouts of the path.
const PROBE_TIMEOUTS: u32 = 3;
/// The ack bound is this many times the usual worst ack latency.
const ACK_BOUND_FACTOR: u32 = 4;

/// The detector's settings (`[reconnect]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessConfig {
    /// The silence bound's floor (`reconnect.silence_timeout_ms`).
    pub silence_timeout: Duration,
    /// The ack bound's floor and ceiling (`reconnect.ack_timeout_min_ms`, `_max_ms`).
    pub ack_timeout_min: Duration,
    pub ack_timeout_max: Duration,
}

impl From<&crate::config::ReconnectConfig> for LivenessConfig {
    fn from(r: &crate::config::ReconnectConfig) -> Self {
        LivenessConfig {
            silence_timeout: Duration::from_millis(r.silence_timeout_ms),
            ack_timeout_min: Duration::from_millis(r.ack_timeout_min_ms),
            ack_timeout_max: Duration::from_millis(r.ack_timeout_max_ms),
        }
    }
}

/// A connection's datagram counts at an instant (quinn's `udp_rx` and `udp_tx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Traffic {
    pub received: u64,
    pub sent: u64,
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do until [`Liveness::next_check`].
    Fine,
    /// Write a probe (a heartbeat on the control stream), then tell [`Liveness::on_write`].
    Probe,
    /// Not one packet from the collector for this long after a write, nor after the probe that
    /// confirmed it: it is gone.
    Silent(Duration),
    /// The oldest batch in flight has waited this long for its ack, past the ack bound.
    Stalled(Duration),
}

#[derive(Debug)]
pub struct Liveness {
    config: LivenessConfig,
    /// The earliest write not yet followed by a packet from the collector, and the count of
    /// packets received when it was made.
    unanswered: Option<(Instant, u64)>,
    /// The latest write, and the traffic when it was made: watched next when the earlier one
    /// turns out answered; the confirming probe must have left before silence counts.
    latest: Option<(Instant, Traffic)>,
    /// Silence was seen once; it is confirmed at this instant.
    confirm_at: Option<Instant>,
    /// RFC 6298's estimator over this session's ack latencies.
    ack_srtt: Option<Duration>,
    ack_rttvar: Duration,
    /// A probe was asked for and not yet written.
    probe_asked: bool,
    /// The batch (by when it was sent) whose stall was reported, and how many times: the next
    /// report for the same batch comes one ack bound after the last; a new oldest batch starts
    /// again from one bound.
    stalled: Option<(Instant, u32)>,
}

impl Liveness {
    pub fn new(config: LivenessConfig) -> Self {
        Liveness {
            config,
            unanswered: None,
            latest: None,
            confirm_at: None,
            ack_srtt: None,
            ack_rttvar: Duration::ZERO,
            probe_asked: false,
            stalled: None,
        }
    }

    /// The silence bound for a path whose smoothed RTT is `rtt`.
    pub fn silence_bound(&self, rtt: Duration) -> Duration {
        self.config
            .silence_timeout
            .max((rtt * 2 + PEER_ACK_DELAY) * PROBE_TIMEOUTS)
    }

    /// The ack bound from the acks seen so far (the floor before any).
    pub fn ack_bound(&self) -> Duration {
        let usual_worst = self.ack_srtt.map_or(Duration::ZERO, |s| s + self.ack_rttvar * 4);
        (usual_worst * ACK_BOUND_FACTOR).clamp(self.config.ack_timeout_min, self.config.ack_timeout_max)
    }

    /// The meter wrote something ack-eliciting at `now`, with the connection's `traffic` then.
    /// True when this write starts a silence watch (none was running).
    pub fn on_write(&mut self, now: Instant, traffic: Traffic) -> bool {
        self.probe_asked = false;
        self.latest = Some((now, traffic));
        let starts = self.unanswered.is_none();
        if starts {
            self.unanswered = Some((now, traffic.received));
        }
        starts
    }

    /// A batch was acked after waiting `latency`.
    pub fn on_ack(&mut self, latency: Duration) {
        match self.ack_srtt {
            None => {
                self.ack_srtt = Some(latency);
                self.ack_rttvar = latency / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(latency);
                self.ack_rttvar = (self.ack_rttvar * 3 + diff) / 4;
                self.ack_srtt = Some((srtt * 7 + latency) / 8);
            }
        }
    }

    /// When [`Liveness::check`] must run next, given the oldest batch in flight (when it was
    /// sent) and the path's RTT; `None`: only after the next write.
    pub fn next_check(&self, oldest_sent: Option<Instant>, rtt: Duration) -> Option<Instant> {
        if let Some(at) = self.confirm_at {
            return Some(at);
        }
        let silence = self.unanswered.map(|(at, _)| at + self.silence_bound(rtt));
        let late = oldest_sent.map(|sent| sent + self.probe_after());
        let stall = oldest_sent.map(|sent| sent + self.stall_after(sent));
        // A probe is due only while no write waits for an answer.
        let probe = late.filter(|_| self.unanswered.is_none() && !self.probe_asked);
        [silence, probe, stall].into_iter().flatten().min()
    }

    /// A batch waiting this long is late: the session probes the collector's control plane.
    fn probe_after(&self) -> Duration {
        self.ack_bound() / 4
    }

    /// The oldest batch waiting this long is (again) a stall to report: one ack bound, and one
    /// more after each report (while the meter finds no other collector, it stays and waits).
    fn stall_after(&self, sent: Instant) -> Duration {
        let reported = match self.stalled {
            Some((batch, times)) if batch == sent => times,
            _ => 0,
        };
        self.ack_bound() * (reported + 1)
    }

    /// Checks at `now`, with `received` packets received so far, the oldest batch in flight sent
    /// at `oldest_sent`, and the path's RTT.
    pub fn check(
        &mut self,
        now: Instant,
        traffic: Traffic,
        oldest_sent: Option<Instant>,
        rtt: Duration,
    ) -> Verdict {
        let bound = self.silence_bound(rtt);
        let received = traffic.received;
        if let Some((since, seen)) = self.unanswered
            && received != seen
        {
            // Something came back after that write: the collector was there. A later write
            // after which nothing came back is watched from its own instant.
            self.unanswered = self
                .latest
                .filter(|&(at, t)| t.received == received && at > since)
                .map(|(at, t)| (at, t.received));
            self.confirm_at = None;
        }
        if let Some((since, _)) = self.unanswered {
            if let Some(at) = self.confirm_at
                && now >= at
            {
                // The probe (the latest write) has left and nothing came back: gone. Not left
                // yet (this meter's own sending is late): wait for it.
                if self.latest.is_some_and(|(_, t)| traffic.sent > t.sent) {
                    return Verdict::Silent(now - since);
                }
                self.confirm_at = Some(now + bound / 8);
                return Verdict::Fine;
            }
            if now >= since + bound && self.confirm_at.is_none() {
                self.confirm_at = Some(now + bound / 8);
                self.probe_asked = true;
                return Verdict::Probe;
            }
            if self.confirm_at.is_some() {
                return Verdict::Fine;
            }
        }
        let Some(sent) = oldest_sent else {
            return Verdict::Fine;
        };
        let waited = now.saturating_duration_since(sent);
        if waited >= self.stall_after(sent) {
            let times = match self.stalled {
                Some((batch, times)) if batch == sent => times + 1,
                _ => 1,
            };
            self.stalled = Some((sent, times));
            return Verdict::Stalled(waited);
        }
        if self.unanswered.is_none() && !self.probe_asked && waited >= self.probe_after() {
            self.probe_asked = true;
            return Verdict::Probe;
        }
        Verdict::Fine
    }
}

#[cfg(test)]
mod tests;

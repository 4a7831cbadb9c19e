//! What every session shares and what outlives each one: [`SessionContext`], and the meter's
//! [`Credentials`].
//!
//! Owns: the documentation of who writes and who reads each shared field. Must never: hold
//! per-session state (that lives in the session's own task), or print the org token.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use quinn::Endpoint;
use tokio::sync::watch;

use crate::batcher::{BatchLimits, Sealer};
use crate::observe::{AckObserver, CurrentCollector, Progress};
use crate::spool::handle::SpoolHandle;
use crate::stop::StopClock;
use crate::telemetry::MeterMetrics;

/// Who this meter is, as told in `Hello`.
#[derive(Clone)]
pub struct Credentials {
    pub meter_id: String,
    pub org_id: String,
    pub org_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("meter_id", &self.meter_id)
            .field("org_id", &self.org_id)
            .field("org_token", &"<redacted>")
            .finish()
    }
}

/// Everything a session needs that outlives it. Built once by the pipeline (`lib.rs`) and shared
/// (in an `Arc`) by the connect loop, each session it runs, and the stop watch.
pub struct SessionContext {
    /// The QUIC client endpoint every session and home check dials from (the meter's own, or
    /// one shared with other meters in `herd`). Read by sessions and the connect loop's checks.
    pub endpoint: Endpoint,
    /// Who this meter is, sent in every `Hello`. Fixed at start.
    pub credentials: Credentials,
    /// Time allowed to connect and be welcomed (`reconnect.connect_timeout_ms`), for sessions
    /// and for the connect loop's check that a first choice answers.
    pub connect_timeout: Duration,
    /// The failure detector's bounds (`[reconnect]`), for every session.
    pub liveness: super::liveness::LivenessConfig,
    /// Numbers and spools batches; the session re-seals through it what a collector's limits
    /// do not allow. Shared with the batcher, so seqs are handed out in one order.
    pub sealer: Arc<Sealer>,
    /// Where batches wait until a collector acks them. The session reads, acks and removes
    /// through it; the connect loop reads its status to know when everything is settled.
    pub spool: SpoolHandle,
    /// Counters of sessions, deliveries and the fleet; written by sessions and the connect loop.
    pub metrics: Arc<MeterMetrics>,
    /// Woken by sessions (Welcome, acks, nacks) and the connect loop (a session ended), so
    /// whoever watches the meter sees progress without polling.
    pub progress: Progress,
    /// The collector of the current session: written only by the connect loop (on Welcome and
    /// when a session ends), read by tools and tests through [`crate::observe::MeterWatch`].
    pub current: Arc<CurrentCollector>,
    /// Told of every acked batch, when an embedding asked (`herd`). Called by the session that
    /// received the ack, on its task.
    pub ack_observer: Option<AckObserver>,
    /// Shutdown and the flush deadline: the connect loop stops waiting on it, sessions finish
    /// what is in flight by it, the stop watch stops the sources on it.
    pub stop: StopClock,
    /// The meter's own batch limits (`[batch]`), which each collector's `Welcome` may lower.
    pub local_limits: BatchLimits,
    /// Tells the batcher the limits of the current session (the local ones capped by the
    /// collector's). Written by sessions on Welcome; the batcher holds the receiver.
    pub limits_tx: watch::Sender<BatchLimits>,
    /// Highest seq acked so far, reported in `Hello` so a collector knows where the meter is.
    /// Starts at the spool's watermark; raised by sessions as acks arrive.
    pub last_acked: AtomicU64,
}

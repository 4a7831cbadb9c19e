//! The sockets source's `bpf` tier: every TCP and UDP socket of the host measured by the meter's
//! eBPF programs (`agent/bpf/flows.bpf.c`): bytes and packets each way per flow, the owner taken
//! at `socket()`, the final counters at each socket's end.
//!
//! Owns: choosing the tier at start ([`choose`]: `sources.sockets.bpf.mode`), and the tier's
//! loop on its own blocking thread: the ring buffer of ends (waited on with `poll`, handed on
//! within `close_flush_ms`), a read of the flow map every `interval_ms` (deltas, and the flows
//! that ended, deleted from the map), owners, and what the programs counted as lost into the
//! batch's loss. Must never: block the async runtime, wait for the pipeline (records are
//! offered), or outlive the meter's programs (they are dropped, so detached, when it stops).
//!
//! What it cannot see: sockets of other network namespaces whose cgroup is outside the one the
//! programs attach to (the cgroup v2 root: in practice, none); packets of a flow while its map
//! is full (counted); the owner of a socket accepted by a listener that was listening before
//! the meter started (accepted sockets take their listener's owner, kept at `listen(2)`); the
//! last ACK from TIME_WAIT.

pub mod load;
pub mod owners;
pub mod table;
pub mod wire;

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use ringflow_proto::pb;
use tokio_util::sync::CancellationToken;

use super::{HeldBackWarning, RecordsTx, offer_all};
use crate::config::{BpfMode, SocketsConfig};
use crate::observe::Progress;
use crate::telemetry::MeterMetrics;
use crate::telemetry::events::{Event, SocketsBpfRead, SourceRead};
use load::{Programs, Unavailable};
use table::{Clock, FlowTable};
use wire::{BpfOwner, EndEvent, FlowKey, FlowValue, Stats};

pub const TIER: &str = "bpf";

/// The tier chosen at start.
pub enum Choice {
    /// The programs are loaded and attached.
    Bpf(Box<Programs>),
    /// The sock_diag tier, and why not the bpf tier.
    SockDiag(Unavailable),
}

/// Loads the programs when `config` wants them: `on` fails (the meter does not start) when they
/// cannot be loaded; `auto` falls back to sock_diag with the reason; `off` does not try.
pub fn choose(config: &SocketsConfig) -> Result<Choice, Unavailable> {
    match config.bpf.mode {
        BpfMode::Off => Ok(Choice::SockDiag(Unavailable::Off)),
        BpfMode::On => load::load(&config.bpf).map(|p| Choice::Bpf(Box::new(p))),
        BpfMode::Auto => Ok(match load::load(&config.bpf) {
            Ok(p) => Choice::Bpf(Box::new(p)),
            Err(reason) => Choice::SockDiag(reason),
        }),
    }
}

/// The tier's loop; returns when `stop` fires (within [`STOP_CHECK`]) or the pipeline closes.
/// Blocking: run it on a thread of its own.
pub fn run(
    programs: Programs,
    config: SocketsConfig,
    out: RecordsTx,
    metrics: Arc<MeterMetrics>,
    progress: Progress,
    stop: CancellationToken,
) {
    let mut tier = Tier::new(programs, &config, out, metrics, progress);
    let interval = Duration::from_millis(config.interval_ms);
    let flush_after = Duration::from_millis(config.close_flush_ms);
    // Ends are read in batches: a busy host's thousands a second cost a few wake-ups, not one
    // each (the ring buffer holds far more than arrive in one pause).
    let pause = (flush_after / 4).min(MAX_PAUSE);
    let mut next_sweep = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_sweep {
            if tier.sweep().is_err() {
                return;
            }
            next_sweep = now + interval;
        }
        let flush_at = tier.pending_since.map(|at| at + flush_after);
        if flush_at.is_some_and(|at| now >= at) && tier.flush().is_err() {
            return;
        }
        if stop.is_cancelled() {
            // The ends already told first: their flows are gone from the map.
            let _ = tier.read_ends();
            let _ = tier.sweep();
            let _ = tier.flush();
            return;
        }
        let wake = [Some(next_sweep), flush_at, Some(now + STOP_CHECK)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_sweep);
        tier.wait_for_ends(wake.saturating_duration_since(Instant::now()));
        match tier.read_ends() {
            Err(_) => return,
            Ok(0) => {}
            Ok(_) => std::thread::sleep(pause.min(wake.saturating_duration_since(Instant::now()))),
        }
    }
}

/// The longest the loop waits after reading ends before it reads the next ones.
const MAX_PAUSE: Duration = Duration::from_millis(25);

/// How often the loop looks whether the meter is stopping.
const STOP_CHECK: Duration = Duration::from_millis(100);

struct Tier {
    programs: Programs,
    table: FlowTable,
    owners: owners::OwnerResolver,
    out: RecordsTx,
    metrics: Arc<MeterMetrics>,
    progress: Progress,
    /// Records of ended flows not handed on yet, and since when the oldest waits.
    pending: Vec<pb::FlowRecord>,
    pending_since: Option<Instant>,
    /// The programs' counters at the last read.
    stats: Stats,
    /// Ends read since the last sweep.
    ends: u64,
    max_flows: usize,
    loss_warning: HeldBackWarning,
}

impl Tier {
    fn new(
        programs: Programs,
        config: &SocketsConfig,
        out: RecordsTx,
        metrics: Arc<MeterMetrics>,
        progress: Progress,
    ) -> Self {
        let max_flows = config.bpf.max_flows as usize;
        Self {
            owners: owners::OwnerResolver::new(Some(programs.cgroup_root.clone())),
            programs,
            table: FlowTable::new(
                config.include_loopback,
                config.bpf.idle_timeout_secs.saturating_mul(1_000_000_000),
                config.bpf.release_quiet_ms.saturating_mul(1_000_000),
                max_flows,
            ),
            out,
            metrics,
            progress,
            pending: Vec::new(),
            pending_since: None,
            stats: Stats::default(),
            ends: 0,
            max_flows,
            loss_warning: HeldBackWarning::default(),
        }
    }

    /// Waits up to `timeout` for the ring buffer to have ends.
    fn wait_for_ends(&self, timeout: Duration) {
        let timeout = rustix::time::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let ring = self.programs.events.as_fd();
        let mut fds = [rustix::event::PollFd::new(&ring, rustix::event::PollFlags::IN)];
        // EINTR and the like: the loop comes round again.
        let _ = rustix::event::poll(&mut fds, Some(&timeout));
    }

    /// Takes every end in the ring buffer; returns how many.
    fn read_ends(&mut self) -> Result<usize, super::PipelineClosed> {
        let clock = clock_now();
        let mut ended = Vec::new();
        while let Some(item) = self.programs.events.next() {
            if let Some(event) = EndEvent::parse(&item) {
                ended.push(event);
            }
        }
        if ended.is_empty() {
            return Ok(0);
        }
        self.ends += ended.len() as u64;
        for event in &ended {
            if let Some(o) = &event.owner
                && !self.table.has_owner(event.cookie)
            {
                let owner = self.owners.resolve(o);
                self.table.set_owner(event.cookie, Some(owner));
            }
            if let Some(r) = self.table.on_end(event, clock) {
                self.pending.push(r);
            }
        }
        if !self.pending.is_empty() && self.pending_since.is_none() {
            self.pending_since = Some(Instant::now());
        }
        if self.pending.len() >= super::synthetic::MAX_CHUNK_RECORDS {
            self.flush()?;
        }
        Ok(ended.len())
    }

    fn flush(&mut self) -> Result<(), super::PipelineClosed> {
        self.pending_since = None;
        if self.pending.is_empty() {
            return Ok(());
        }
        offer_all(&self.out, std::mem::take(&mut self.pending))?;
        self.progress.notify();
        Ok(())
    }

    /// Reads the flow map: deltas of the live flows, the ended ones deleted; then what the
    /// programs counted as lost.
    fn sweep(&mut self) -> Result<(), super::PipelineClosed> {
        let clock = clock_now();
        let (entries, complete) = self.entries();
        let new_cookies: HashSet<u64> = entries
            .iter()
            .map(|(k, _)| k.cookie)
            .filter(|c| !self.table.asked_owner(*c))
            .collect();
        for cookie in new_cookies {
            let owner = self
                .programs
                .owners
                .get(&cookie.to_le_bytes(), 0)
                .ok()
                .and_then(|b| BpfOwner::parse(&b))
                .map(|o| self.owners.resolve(&o));
            self.table.set_owner(cookie, owner);
        }
        let outcome = self.table.on_sweep(&entries, clock, complete);
        for key in &outcome.ended {
            // Gone already (a socket's end raced the sweep) is fine.
            let _ = self.programs.flows.remove(&key.to_bytes());
        }
        self.account_stats();
        SourceRead {
            source: super::sockets::NAME,
            tracked: self.table.len(),
            untracked: 0,
        }
        .emit(&self.metrics);
        self.pending.extend(outcome.records);
        self.flush()
    }

    /// The flow map's entries, and whether the walk read it all. Deletions during the walk can
    /// make the kernel start it again, so each key is taken once and the walk is bounded; an
    /// entry that could not be read, or a walk cut short, makes it incomplete.
    fn entries(&self) -> (Vec<(FlowKey, FlowValue)>, bool) {
        let mut seen = HashSet::new();
        let mut entries = Vec::new();
        let (mut steps, mut complete) = (0usize, true);
        for item in self.programs.flows.iter() {
            steps += 1;
            if steps > self.max_flows.saturating_mul(2) {
                complete = false;
                break;
            }
            let Ok((key, value)) = item else {
                complete = false;
                continue;
            };
            let key = FlowKey::parse(&key);
            if seen.insert(key) {
                entries.push((key, FlowValue::parse(&value)));
            }
        }
        (entries, complete)
    }

    fn account_stats(&mut self) {
        let Ok(per_cpu) = self.programs.stats.get(&0, 0) else {
            return;
        };
        let now = Stats::sum(per_cpu.iter());
        let new = now.since(&self.stats);
        self.stats = now;
        if new.flows_full > 0 {
            self.out.loss().add_packets_untracked(new.flows_full);
        }
        if new.events_lost > 0 {
            self.out.loss().add_close_events_lost(new.events_lost);
        }
        let lost = new.events_lost > 0 || new.flows_full > 0;
        SocketsBpfRead {
            ends: std::mem::take(&mut self.ends),
            ends_lost: new.events_lost,
            packets_untracked: new.flows_full,
            owners_untracked: new.owners_full,
            unparsed: new.unparsed,
            log: lost && self.loss_warning.due(),
        }
        .emit(&self.metrics);
    }
}

/// The programs' clock (CLOCK_MONOTONIC) and the wall clock, read together.
fn clock_now() -> Clock {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    Clock {
        mono_ns: (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64,
        wall_ns: crate::unix_nanos_now(),
    }
}

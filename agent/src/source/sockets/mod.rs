//! `sockets` source: this host's TCP connections, every one exactly once. Every interval the
//! kernel's socket table is dumped through netlink sock_diag (per-interval deltas of live
//! connections); between dumps the kernel's destroy notifications tell each closing socket's
//! final counters, joined to the table by cookie (see [`table`]).
//!
//! Owns: the schedule (a dump every interval, and at once after the kernel dropped
//! notifications, so the table recovers), the notification socket's life, handing records of
//! closed connections on within `close_flush_ms`, the loss counts (`out.loss()`) and the
//! completeness measure (segments accounted for against `/proc/net/snmp`). Must never: block
//! the runtime (dumps and owner lookups run on the blocking pool, notifications are read
//! through `AsyncFd`) or wait for the pipeline (records are offered, and dropped and counted
//! when it is behind).
//!
//! What can still be missed: UDP; notifications the kernel drops (counted) or cannot allocate
//! (silent; the completeness ratio shows it); the owner of a connection that opened and closed
//! between two dumps (destroy notifications carry no inode); sockets of other network
//! namespaces. Nothing here needs root.

pub mod destroy;
pub mod diag;
pub mod ends;
pub mod reader;
pub mod table;

use std::sync::Arc;
use std::time::Duration;

use ringflow_proto::pb;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{HeldBackWarning, RecordsTx, offer_all};
use crate::config::SocketsConfig;
use crate::observe::Progress;
use crate::telemetry::MeterMetrics;
use crate::telemetry::events::{
    Event, SocketsClosesRead, SocketsClosesUnavailable, SocketsCompleteness, SocketsReadFailed, SourceRead,
};
use destroy::CloseEvents;
use diag::SockDiag;
use reader::{Completeness, Dump, Reader};
use table::{FlowTable, ReadOutcome, SocketSample};

pub const NAME: &str = crate::telemetry::source::SOCKETS;

/// This tier's name in `sockets_tier{tier}` and `meter check`.
pub const TIER: &str = "sock_diag";

/// What `meter check` found: the sockets visible, and the completeness over a short window.
pub struct Probe {
    pub sockets: usize,
    /// Segments accounted for and the host's segments over the window.
    pub segments: (u64, u64),
    /// Whether the close notifications could be subscribed to.
    pub close_events: bool,
}

/// How long `meter check` watches the host's TCP traffic to measure completeness.
pub const PROBE_WINDOW: Duration = Duration::from_secs(2);

impl Probe {
    /// One line for `meter check`.
    pub fn describe(&self) -> String {
        let closes = if self.close_events {
            "close notifications subscribed"
        } else {
            "CLOSE NOTIFICATIONS UNAVAILABLE (short connections will be missed)"
        };
        let (accounted, host) = self.segments;
        let completeness = if host == 0 {
            format!(
                "completeness: no TCP segments on this host in {} s",
                PROBE_WINDOW.as_secs()
            )
        } else {
            format!(
                "completeness {:.3} ({accounted} of the host's {host} TCP segments in {} s accounted for)",
                accounted as f64 / host as f64,
                PROBE_WINDOW.as_secs()
            )
        };
        format!(
            "{} TCP sockets visible through netlink sock_diag, {closes}, {completeness}",
            self.sockets
        )
    }
}

/// Opens a sock_diag socket and reads the table, then runs the source for `window` with its
/// records thrown away: whether this source can run here, and how complete it is.
pub async fn probe(config: &SocketsConfig, window: Duration) -> std::io::Result<Probe> {
    let sockets = tokio::task::spawn_blocking(|| SockDiag::open()?.read_tcp())
        .await
        .map_err(std::io::Error::other)??
        .len();
    let close_events = !config.close_events || CloseEvents::open(config.close_buffer_bytes).is_ok();
    let metrics = Arc::new(MeterMetrics::new());
    let (out, mut records) = super::channel(Arc::clone(&metrics));
    let stop = CancellationToken::new();
    let config = SocketsConfig {
        interval_ms: (window.as_millis() as u64 / 4).max(10),
        ..config.clone()
    };
    let source = tokio::spawn(run(
        config,
        out,
        Arc::clone(&metrics),
        Progress::new(),
        stop.clone(),
    ));
    let _ = tokio::time::timeout(window, async { while records.recv().await.is_some() {} }).await;
    stop.cancel();
    let _ = source.await;
    let m = &metrics.sockets;
    Ok(Probe {
        sockets,
        segments: (m.sockets_segments_accounted.get(), m.sockets_host_segments.get()),
        close_events,
    })
}

/// A dump on the blocking pool, with the number the table gave it.
struct InFlight {
    number: u64,
    task: JoinHandle<(Reader, std::io::Result<Dump>)>,
}

pub async fn run(
    config: SocketsConfig,
    out: RecordsTx,
    metrics: Arc<MeterMetrics>,
    progress: Progress,
    stop: CancellationToken,
) {
    let mut closes = if config.close_events {
        match CloseEvents::open(config.close_buffer_bytes) {
            Ok(c) => Some(c),
            Err(error) => {
                SocketsClosesUnavailable { error: &error }.emit(&metrics);
                None
            }
        }
    } else {
        None
    };
    let mut tick = tokio::time::interval(Duration::from_millis(config.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut s = State::new(&config, out, metrics, progress);
    let mut in_flight: Option<InFlight> = None;
    let mut told: Vec<SocketSample> = Vec::new();
    loop {
        if s.dump_due && in_flight.is_none() {
            in_flight = s.start_dump();
        }
        let flush_at = s.flush_at;
        tokio::select! {
            _ = stop.cancelled() => break,
            joined = async { in_flight.as_mut().map(|f| &mut f.task).expect("guarded").await },
                if in_flight.is_some() => {
                let number = in_flight.take().map_or(0, |f| f.number);
                let Ok((reader, dump)) = joined else { return };
                s.reader = Some(reader);
                if s.on_dump(number, dump).is_err() {
                    return;
                }
            }
            read = async { closes.as_mut().expect("guarded").read(&mut told).await },
                if closes.is_some() => match read {
                Ok(read) => s.on_closes(read, std::mem::take(&mut told)),
                Err(error) => {
                    SocketsClosesUnavailable { error: &error }.emit(&s.metrics);
                    closes = None;
                }
            },
            _ = tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                if s.flush().is_err() {
                    return;
                }
            }
            _ = tick.tick() => s.dump_due = true,
        }
    }
    let _ = s.flush();
}

/// Everything the source's loop keeps between wake-ups.
struct State {
    out: RecordsTx,
    metrics: Arc<MeterMetrics>,
    progress: Progress,
    table: FlowTable,
    /// `None` while a dump has it.
    reader: Option<Reader>,
    /// A dump should start as soon as none is running.
    dump_due: bool,
    /// Records of closed connections not handed on yet, and when they will be.
    pending: Vec<pb::FlowRecord>,
    flush_at: Option<Instant>,
    flush_after: Duration,
    completeness: Completeness,
    read_warning: HeldBackWarning,
    loss_warning: HeldBackWarning,
}

impl State {
    fn new(config: &SocketsConfig, out: RecordsTx, metrics: Arc<MeterMetrics>, progress: Progress) -> Self {
        Self {
            out,
            metrics,
            progress,
            table: FlowTable::new(config.max_flows, config.include_loopback),
            reader: Some(Reader::new(
                config.owners,
                config.max_flows,
                config.owner_scan_budget,
            )),
            dump_due: true,
            pending: Vec::new(),
            flush_at: None,
            flush_after: Duration::from_millis(config.close_flush_ms),
            completeness: Completeness::default(),
            read_warning: HeldBackWarning::default(),
            loss_warning: HeldBackWarning::default(),
        }
    }

    fn start_dump(&mut self) -> Option<InFlight> {
        let mut reader = self.reader.take()?;
        self.dump_due = false;
        let number = self.table.start_dump();
        let task = tokio::task::spawn_blocking(move || {
            let dump = reader.read();
            (reader, dump)
        });
        Some(InFlight { number, task })
    }

    fn on_dump(&mut self, number: u64, dump: std::io::Result<Dump>) -> Result<(), super::PipelineClosed> {
        let dump = match dump {
            Ok(dump) => dump,
            Err(error) => {
                SocketsReadFailed {
                    error: &error,
                    log: self.read_warning.due(),
                }
                .emit(&self.metrics);
                return Ok(());
            }
        };
        let outcome = self.table.on_dump(number, &dump.samples, crate::unix_nanos_now());
        SourceRead {
            source: NAME,
            tracked: self.table.len(),
            untracked: outcome.untracked,
        }
        .emit(&self.metrics);
        let host = self.completeness.host_delta(dump.host_segments);
        if host.is_some() || dump.host_segments.is_none() {
            SocketsCompleteness {
                accounted: self.table.take_segments(),
                host,
            }
            .emit(&self.metrics);
        } else {
            self.table.take_segments();
        }
        self.hand_on(outcome)?;
        self.flush()?;
        self.progress.notify();
        Ok(())
    }

    fn on_closes(&mut self, read: destroy::CloseRead, told: Vec<SocketSample>) {
        SocketsClosesRead {
            events: read.events as u64,
            overflows: read.overflows,
            log: read.overflows > 0 && self.loss_warning.due(),
        }
        .emit(&self.metrics);
        if read.overflows > 0 {
            self.out.loss().add_close_events_lost(read.overflows);
            // What the lost notifications would have told, the next dump tells of the
            // connections still open; the closed ones' last bytes are lost.
            self.dump_due = true;
        }
        if told.is_empty() {
            return;
        }
        let outcome = self.table.on_closed(told, crate::unix_nanos_now());
        if outcome.untracked > 0 {
            self.out.loss().add_flows_untracked(outcome.untracked);
        }
        if !outcome.records.is_empty() {
            self.pending.extend(outcome.records);
            if self.pending.len() >= super::synthetic::MAX_CHUNK_RECORDS {
                let _ = self.flush();
            } else if self.flush_at.is_none() {
                self.flush_at = Some(Instant::now() + self.flush_after);
            }
        }
        if self.table.held() > 0 && self.flush_at.is_none() {
            self.flush_at = Some(Instant::now() + self.flush_after);
        }
    }

    /// Hands on the records of closed connections; closes still held for a listener get the
    /// next dump started now.
    fn flush(&mut self) -> Result<(), super::PipelineClosed> {
        self.flush_at = None;
        if self.table.held() > 0 {
            self.dump_due = true;
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        offer_all(&self.out, std::mem::take(&mut self.pending))?;
        self.progress.notify();
        Ok(())
    }

    fn hand_on(&mut self, outcome: ReadOutcome) -> Result<(), super::PipelineClosed> {
        if outcome.untracked > 0 {
            self.out.loss().add_flows_untracked(outcome.untracked);
        }
        offer_all(&self.out, outcome.records)
    }
}

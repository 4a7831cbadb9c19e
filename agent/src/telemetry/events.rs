//! Named telemetry events: each is one thing that happened, and its [`Event::emit`] updates the
//! metric and writes the log line that go with it, so the two never drift apart.
//!
//! Owns: each event's metric update, log level, message and fields. When a line is rate-limited
//! or logged only on a change, the caller decides that (it holds the state) and says so in the
//! event (`log`). Must never: log payloads or tokens; block (events are emitted on hot paths).

use std::fmt::Display;
use std::sync::Arc;

use tracing::{debug, error, info, warn};

use super::{CollectorLabel, DropReason, MeterMetrics, SourceLabel, SourceReasonLabel};
use crate::observe::AckedBatch;
use crate::spool::Counted;

/// Something that happened, told to the meter's metrics and log.
pub trait Event {
    fn emit(self, metrics: &MeterMetrics);
}

/// Records that will never reach the spool (`records_dropped{reason}`); the caller logs, if the
/// drop deserves a line of its own.
pub struct RecordsDropped {
    pub reason: DropReason,
    pub records: u64,
}

impl Event for RecordsDropped {
    fn emit(self, m: &MeterMetrics) {
        MeterMetrics::inc_by(&m.records.records_dropped, self.reason.label(), self.records);
    }
}

/// A single record larger than a whole frame: dropped.
pub struct RecordTooLarge<'a> {
    pub records: u32,
    pub error: &'a dyn Display,
}

impl Event for RecordTooLarge<'_> {
    fn emit(self, m: &MeterMetrics) {
        RecordsDropped {
            reason: DropReason::RecordTooLarge,
            records: u64::from(self.records),
        }
        .emit(m);
        warn!(error = %self.error, "dropping a record larger than a whole frame");
    }
}

/// Shutdown while spool writes fail: the batches still in memory are lost.
pub struct SpoolWritesAbandoned {
    pub lost: Counted,
}

impl Event for SpoolWritesAbandoned {
    fn emit(self, m: &MeterMetrics) {
        RecordsDropped {
            reason: DropReason::SpoolWriteFailed,
            records: self.lost.records,
        }
        .emit(m);
        error!(
            batches = self.lost.batches,
            records = self.lost.records,
            "spool: shutting down while writes fail; the batches still in memory are lost (records_dropped{{reason=\"spool_write_failed\"}})"
        );
    }
}

/// The spool dropped batches (at its caps, or damaged segments) since this was last told.
pub struct SpoolDropped {
    /// Dropped since the last event.
    pub new: Counted,
    /// Of those, the ones dropped at the caps, to log (`None`: not logged this time: damaged
    /// segments are logged as they are found, and the cap line is rate-limited by the caller).
    pub log_full: Option<Counted>,
    /// Dropped over the meter's whole life.
    pub total: Counted,
}

impl Event for SpoolDropped {
    fn emit(self, m: &MeterMetrics) {
        m.spool.spool_dropped_batches.inc_by(self.new.batches);
        m.spool.spool_dropped_records.inc_by(self.new.records);
        if let Some(full) = self.log_full {
            warn!(
                batches = full.batches,
                records = full.records,
                total_batches = self.total.batches,
                total_records = self.total.records,
                "spool full (spool.max_bytes / spool.max_entries): dropped its oldest batches"
            );
        }
    }
}

/// A batch written to the spool.
pub struct BatchSpooled {
    pub records: u32,
    pub bytes: u64,
}

impl Event for BatchSpooled {
    fn emit(self, m: &MeterMetrics) {
        m.spool.spool_accepted_records.inc_by(u64::from(self.records));
        m.spool.spool_written_bytes.inc_by(self.bytes);
    }
}

/// Acks settled spooled batches.
pub struct BatchesSettled {
    pub settled: Counted,
}

impl Event for BatchesSettled {
    fn emit(self, m: &MeterMetrics) {
        m.delivery.batches_acked.inc_by(self.settled.batches);
        m.delivery.records_acked.inc_by(self.settled.records);
    }
}

/// A collector acked a batch this session sent.
pub struct BatchAcked(pub AckedBatch);

impl Event for BatchAcked {
    fn emit(self, m: &MeterMetrics) {
        m.delivery
            .ack_latency_seconds
            .observe(self.0.latency.as_secs_f64());
    }
}

/// A collector refused a batch for good; it was removed from the spool.
pub struct BatchNacked<'a> {
    pub seq: u64,
    pub records: u32,
    pub reason: &'static str,
    pub why: &'a str,
}

impl Event for BatchNacked<'_> {
    fn emit(self, m: &MeterMetrics) {
        MeterMetrics::inc(&m.delivery.batches_nacked, self.reason);
        m.delivery.records_nacked.inc_by(u64::from(self.records));
        warn!(seq = self.seq, records = self.records, reason = self.reason, why = %self.why, "collector refused a batch for good; removed it from the spool (it is never sent again)");
    }
}

/// A spooled batch split to fit a collector's lower limits.
pub struct BatchResealed {
    pub seq: u64,
    pub records: u32,
}

impl Event for BatchResealed {
    fn emit(self, m: &MeterMetrics) {
        m.delivery.batches_resealed.inc();
        debug!(
            seq = self.seq,
            records = self.records,
            "splitting a spooled batch to fit the collector's limits"
        );
    }
}

/// A collector welcomed this meter.
pub struct SessionStarted<'a> {
    pub collector_id: &'a str,
    pub session_id: &'a str,
    pub window: u32,
}

impl Event for SessionStarted<'_> {
    fn emit(self, m: &MeterMetrics) {
        m.sessions.sessions_started.inc();
        info!(
            collector = %self.collector_id,
            session = %self.session_id,
            window = self.window,
            "session established"
        );
    }
}

/// The collector of the current session changed (`None`: not connected).
pub struct CollectorChanged<'a> {
    pub old: Option<&'a Arc<str>>,
    pub new: Option<&'a Arc<str>>,
}

impl Event for CollectorChanged<'_> {
    fn emit(self, m: &MeterMetrics) {
        let gauge = |c: &Arc<str>| {
            m.sessions.collector_info.get_or_create(&CollectorLabel {
                collector: c.to_string(),
            })
        };
        if let Some(old) = self.old {
            gauge(old).set(0);
        }
        if let Some(new) = self.new {
            gauge(new).set(1);
        }
        m.sessions.connected.set(i64::from(self.new.is_some()));
    }
}

/// The first fleet lookup after start answered.
pub struct FleetResolved<'a> {
    pub fleet: &'a str,
    pub collectors: usize,
    pub ttl_s: u64,
}

impl Event for FleetResolved<'_> {
    fn emit(self, m: &MeterMetrics) {
        MeterMetrics::inc(&m.fleet.fleet_lookups, super::lookup::OK);
        info!(
            fleet = self.fleet,
            collectors = self.collectors,
            ttl_s = self.ttl_s,
            "fleet resolved"
        );
    }
}

/// A later fleet lookup answered; `recovered`: after failing, which is logged.
pub struct FleetRefreshed<'a> {
    pub fleet: &'a str,
    pub collectors: usize,
    pub recovered: bool,
}

impl Event for FleetRefreshed<'_> {
    fn emit(self, m: &MeterMetrics) {
        MeterMetrics::inc(&m.fleet.fleet_lookups, super::lookup::OK);
        if self.recovered {
            info!(
                fleet = self.fleet,
                collectors = self.collectors,
                "DNS answers again"
            );
        }
    }
}

/// A fleet lookup failed (`result`: why, a `fleet_lookups` label). `log`: whether this is the
/// first failure of a run of them (the line says the known collectors are kept); the lookup at
/// start logs what it falls back to itself.
pub struct FleetLookupFailed<'a> {
    pub fleet: &'a str,
    pub result: &'static str,
    pub error: &'a dyn Display,
    pub log: bool,
}

impl Event for FleetLookupFailed<'_> {
    fn emit(self, m: &MeterMetrics) {
        MeterMetrics::inc(&m.fleet.fleet_lookups, self.result);
        if self.log {
            warn!(fleet = self.fleet, error = %self.error, "cannot look up the fleet; keeping the collectors known so far");
        }
    }
}

/// DNS failed at start: the meter starts with the last-known-good fleet.
pub struct LastKnownGoodUsed<'a> {
    pub fleet: &'a str,
    pub error: &'a dyn Display,
    pub collectors: usize,
    pub saved_unix_ms: u64,
}

impl Event for LastKnownGoodUsed<'_> {
    fn emit(self, m: &MeterMetrics) {
        m.fleet.fleet_last_known_good.inc();
        warn!(
            fleet = self.fleet,
            error = %self.error,
            collectors = self.collectors,
            saved_unix_ms = self.saved_unix_ms,
            "DNS fails: using the last-known-good fleet from state_dir/fleet.json"
        );
    }
}

/// Counts one error of `source` for `reason` (`source_errors`).
fn source_error(m: &MeterMetrics, source: &'static str, reason: &'static str) {
    m.sources
        .source_errors
        .get_or_create(&SourceReasonLabel { source, reason })
        .inc();
}

/// The sockets source could not read the kernel's socket table. The warning (`log`) is held
/// back by the caller to one a minute.
pub struct SocketsReadFailed<'a> {
    pub error: &'a dyn Display,
    pub log: bool,
}

impl Event for SocketsReadFailed<'_> {
    fn emit(self, m: &MeterMetrics) {
        source_error(m, super::source::SOCKETS, "netlink");
        if self.log {
            warn!(error = %self.error, "sockets source: cannot read the kernel's socket table through netlink sock_diag; retrying every interval (repeats of this warning are held back for a minute)");
        }
    }
}

/// The interfaces source could not read or parse the counters (`reason`). The warning (`log`)
/// is held back by the caller to one a minute.
pub struct InterfacesReadFailed<'a> {
    pub reason: &'static str,
    pub error: &'a dyn Display,
    pub log: bool,
}

impl Event for InterfacesReadFailed<'_> {
    fn emit(self, m: &MeterMetrics) {
        source_error(m, super::source::INTERFACES, self.reason);
        if self.log {
            warn!(error = %self.error, "interfaces source: cannot read the interface counters; retrying every interval (repeats of this warning are held back for a minute)");
        }
    }
}

/// The netflow source could not receive a datagram (ICMP errors and the like).
pub struct NetflowReceiveFailed<'a> {
    pub error: &'a dyn Display,
}

impl Event for NetflowReceiveFailed<'_> {
    fn emit(self, m: &MeterMetrics) {
        source_error(m, super::source::NETFLOW, "receive");
        debug!(error = %self.error, "netflow source: receive failed");
    }
}

/// The netflow source dropped a datagram it could not decode (`reason`); counted only.
pub struct NetflowDropped {
    pub reason: &'static str,
}

impl Event for NetflowDropped {
    fn emit(self, m: &MeterMetrics) {
        source_error(m, super::source::NETFLOW, self.reason);
    }
}

/// IPFIX records whose uptime times (IEs 22/21) took the export time instead, because their
/// exporter's init time (IE 160, options data) did not come in time; counted per record as
/// `source_errors{source="netflow", reason="no_init_time"}`, not logged (a datagram's worth each).
pub struct NetflowExportTimed {
    pub records: u64,
}

impl Event for NetflowExportTimed {
    fn emit(self, m: &MeterMetrics) {
        m.sources
            .source_errors
            .get_or_create(&SourceReasonLabel {
                source: super::source::NETFLOW,
                reason: "no_init_time",
            })
            .inc_by(self.records);
    }
}

/// A polling source finished a read of its kernel table: what it tracks now and what did not fit.
pub struct SourceRead {
    pub source: &'static str,
    pub tracked: usize,
    pub untracked: u64,
}

impl Event for SourceRead {
    fn emit(self, m: &MeterMetrics) {
        let label = SourceLabel { source: self.source };
        m.sources.source_reads.get_or_create(&label).inc();
        m.sources
            .source_flows_tracked
            .get_or_create(&label)
            .set(self.tracked as i64);
        if self.untracked > 0 {
            m.sources
                .source_flows_dropped
                .get_or_create(&label)
                .inc_by(self.untracked);
        }
    }
}

/// The sockets source read destroy notifications: `events` sockets closed, and `overflows`
/// times the kernel said it dropped some because the receive buffer was full (how many is not
/// told: each overflow is at least one). The warning (`log`) is held back by the caller.
pub struct SocketsClosesRead {
    pub events: u64,
    pub overflows: u64,
    pub log: bool,
}

impl Event for SocketsClosesRead {
    fn emit(self, m: &MeterMetrics) {
        m.sockets.sockets_close_events.inc_by(self.events);
        if self.overflows > 0 {
            m.sockets.sockets_close_overflows.inc_by(self.overflows);
            if self.log {
                warn!(
                    overflows = self.overflows,
                    "sockets source: the kernel dropped TCP close notifications (receive buffer full: raise sources.sockets.close_buffer_bytes, and net.core.rmem_max if the meter runs without CAP_NET_ADMIN); reading the socket table again at once (repeats of this warning are held back for a minute)"
                );
            }
        }
    }
}

/// The sockets source cannot subscribe to, or read, the kernel's TCP destroy notifications: it
/// goes on with dumps alone, which miss short connections and the last bytes of others.
pub struct SocketsClosesUnavailable<'a> {
    pub error: &'a dyn Display,
}

impl Event for SocketsClosesUnavailable<'_> {
    fn emit(self, m: &MeterMetrics) {
        source_error(m, super::source::SOCKETS, "close_events");
        warn!(error = %self.error, "sockets source: cannot receive the kernel's TCP close notifications through netlink sock_diag; reading the socket table every interval only, which misses connections that open and close between two reads and the last bytes of the others");
    }
}

/// The sockets source chose its capture tier at start: `bpf`, or `sock_diag` because of
/// `reason` (the bpf tier cannot run, or is off).
pub struct SocketsTier<'a> {
    pub tier: &'static str,
    pub reason: Option<&'a dyn Display>,
}

impl Event for SocketsTier<'_> {
    fn emit(self, m: &MeterMetrics) {
        let label = super::groups::TierLabel { tier: self.tier };
        m.sockets.sockets_tier.get_or_create(&label).set(1);
        match self.reason {
            None => info!(
                tier = self.tier,
                "sockets source: TCP and UDP through the meter's eBPF programs"
            ),
            Some(reason) => {
                info!(tier = self.tier, %reason, "sockets source: TCP through netlink sock_diag (no UDP, no owners of connections that close between two reads)")
            }
        }
    }
}

/// One read of the BPF tier: what its programs counted as lost since the last read.
pub struct SocketsBpfRead {
    pub ends: u64,
    pub ends_lost: u64,
    pub packets_untracked: u64,
    pub owners_untracked: u64,
    pub unparsed: u64,
    /// Whether to log the loss (held back by the caller).
    pub log: bool,
}

impl Event for SocketsBpfRead {
    fn emit(self, m: &MeterMetrics) {
        let s = &m.sockets;
        s.sockets_bpf_ends.inc_by(self.ends);
        s.sockets_bpf_ends_lost.inc_by(self.ends_lost);
        s.sockets_bpf_packets_untracked.inc_by(self.packets_untracked);
        s.sockets_bpf_owners_untracked.inc_by(self.owners_untracked);
        s.sockets_bpf_packets_unparsed.inc_by(self.unparsed);
        if self.log && (self.ends_lost > 0 || self.packets_untracked > 0) {
            warn!(
                ends_lost = self.ends_lost,
                packets_untracked = self.packets_untracked,
                "sockets source: the BPF programs' maps were full; raise sources.sockets.bpf.max_flows or ring_bytes (counted in each batch's loss)"
            );
        }
    }
}

/// One interval of the sockets source's completeness: the segments it accounted for and the
/// host's TCP segments (`None`: /proc/net/snmp could not be read, counted as
/// `source_errors{source="sockets",reason="snmp"}`).
pub struct SocketsCompleteness {
    pub accounted: u64,
    pub host: Option<u64>,
}

impl Event for SocketsCompleteness {
    fn emit(self, m: &MeterMetrics) {
        m.sockets.sockets_segments_accounted.inc_by(self.accounted);
        let Some(host) = self.host else {
            source_error(m, super::source::SOCKETS, "snmp");
            return;
        };
        m.sockets.sockets_host_segments.inc_by(host);
        if host > 0 {
            m.sockets
                .sockets_completeness_ratio
                .set(self.accounted as f64 / host as f64);
        }
    }
}

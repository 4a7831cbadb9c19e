//! Exporter clocks: a data record's times as Unix nanoseconds. Absolute time elements are taken
//! as they are; uptime elements (`flowStartSysUpTime`/`flowEndSysUpTime`, IEs 22/21, NetFlow
//! v9's first/last switched) count milliseconds from the exporter's start, which comes from
//! `systemInitTimeMilliseconds` (IE 160) in options data or, in NetFlow v9, from the header's
//! `sys_uptime` and `unix_secs`. Sans-IO: times are passed in.
//!
//! Owns: each exporter scope's init time (per address and observation domain / source id,
//! bounded), and IPFIX records whose uptime times wait for that scope's init time ([`Waiting`]:
//! bounded in records and in age). Must never: hold a record for good or past its bound: a record
//! whose init time does not come in time is released with the export time, and counted.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use ringflow_proto::pb;

/// An exporter scope: its address and v9 source id / IPFIX observation domain.
pub type Scope = (IpAddr, u32);

const NANOS_PER_MS: u64 = 1_000_000;
/// Uptime elements are unsigned32 milliseconds: they wrap every 2^32 ms (49.7 days).
const UPTIME_WRAP_MS: u64 = 1 << 32;
/// Seconds from the NTP epoch (1900) to the Unix epoch, for dateTimeMicro/Nanoseconds.
pub const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;
/// How far (ms) a v9 exporter's announced init time plus the header's uptime may be from the
/// header's export second and still be taken as the same boot (the header has whole seconds).
const V9_INIT_SLACK_MS: u64 = 2_000;

/// The exporter's clock as one message's header gives it.
#[derive(Debug, Clone, Copy)]
pub struct ExportClock {
    /// The header's export time (whole seconds in v9 and IPFIX), 0 if the exporter sent none.
    pub export_nanos: u64,
    /// NetFlow v9 only: the exporter's uptime when it sent the message.
    pub uptime_ms: Option<u32>,
    /// When the meter received the message.
    pub received_nanos: u64,
}

impl ExportClock {
    /// The time a record without usable time elements gets.
    fn fallback(&self) -> u64 {
        if self.export_nanos > 0 {
            self.export_nanos
        } else {
            self.received_nanos
        }
    }
}

/// The time elements of one data record, as sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecordTimes {
    /// Absolute start and end (IEs 150-157), Unix nanoseconds.
    pub start_nanos: Option<u64>,
    pub end_nanos: Option<u64>,
    /// Microseconds before the export time (IEs 158/159).
    pub start_delta_us: Option<u64>,
    pub end_delta_us: Option<u64>,
    /// Exporter uptime in milliseconds (IEs 22/21).
    pub first_uptime_ms: Option<u64>,
    pub last_uptime_ms: Option<u64>,
}

/// How uptime readings become Unix time for one record.
#[derive(Debug, Clone, Copy)]
enum Uptime {
    /// From the exporter's init time (Unix ms), learned from options data.
    Init(u64),
    /// From a NetFlow v9 header: uptime `now_ms` at `export_nanos`.
    Header { export_nanos: u64, now_ms: u32 },
    /// Not known (yet).
    Unknown,
}

impl RecordTimes {
    /// Whether the record's times need an uptime reference.
    fn uses_uptime(&self) -> bool {
        (self.end_nanos.is_none() && self.end_delta_us.is_none() && self.last_uptime_ms.is_some())
            || (self.start_nanos.is_none() && self.start_delta_us.is_none() && self.first_uptime_ms.is_some())
    }

    /// `(start, end)` in Unix nanoseconds, `start <= end`. `init_ms` is the scope's init time if
    /// known. `None` when the times count from an init time that is not known yet (IPFIX).
    pub fn resolve(&self, clock: &ExportClock, init_ms: Option<u64>) -> Option<(u64, u64)> {
        let uptime = match (init_ms, clock.uptime_ms) {
            // A v9 exporter that also announces its init time: exact to the millisecond, unless
            // it has rebooted since (then the header is right and the announcement stale).
            (Some(init), Some(now)) if init_matches_header(init, now, clock.export_nanos) => {
                Uptime::Init(init)
            }
            (_, Some(now_ms)) => Uptime::Header {
                export_nanos: clock.export_nanos,
                now_ms,
            },
            (Some(init), None) => Uptime::Init(init),
            (None, None) => Uptime::Unknown,
        };
        if matches!(uptime, Uptime::Unknown) && self.uses_uptime() {
            return None;
        }
        Some(self.with(clock, uptime))
    }

    /// `(start, end)` with the export time standing in for uptime times (their init time never
    /// came).
    pub fn at_export_time(&self, clock: &ExportClock) -> (u64, u64) {
        self.with(clock, Uptime::Unknown)
    }

    fn with(&self, clock: &ExportClock, uptime: Uptime) -> (u64, u64) {
        let export = clock.export_nanos;
        let from_uptime = |v: u64| match uptime {
            Uptime::Init(init) => Some(since_init(init, v, export / NANOS_PER_MS) * NANOS_PER_MS),
            Uptime::Header { export_nanos, now_ms } => Some(uptime_to_unix(export_nanos, now_ms, v as u32)),
            Uptime::Unknown => None,
        };
        let before_export = |us: u64| export.saturating_sub(us.saturating_mul(1_000));
        let end = self
            .end_nanos
            .or_else(|| self.end_delta_us.map(before_export))
            .or_else(|| self.last_uptime_ms.and_then(from_uptime))
            .unwrap_or_else(|| clock.fallback());
        let start = self
            .start_nanos
            .or_else(|| self.start_delta_us.map(before_export))
            .or_else(|| self.first_uptime_ms.and_then(from_uptime))
            .unwrap_or(end);
        (start.min(end), end)
    }
}

/// Whether a v9 exporter's announced init time agrees with its header (same boot).
fn init_matches_header(init_ms: u64, uptime_now_ms: u32, export_nanos: u64) -> bool {
    let export_ms = export_nanos / NANOS_PER_MS;
    (init_ms + u64::from(uptime_now_ms)).abs_diff(export_ms) <= V9_INIT_SLACK_MS
}

/// The wall time of an exporter uptime reading, from the uptime `uptime_now_ms` at
/// `export_nanos` (uptime counters wrap after 49.7 days).
pub fn uptime_to_unix(export_nanos: u64, uptime_now_ms: u32, uptime_ms: u32) -> u64 {
    export_nanos.saturating_sub(u64::from(uptime_now_ms.wrapping_sub(uptime_ms)) * NANOS_PER_MS)
}

/// Unix milliseconds of uptime reading `uptime_ms` of an exporter that started at `init_ms`. A
/// 32-bit reading wraps every 2^32 ms: the wrap that puts it nearest the export time is taken.
pub fn since_init(init_ms: u64, uptime_ms: u64, export_ms: u64) -> u64 {
    let direct = init_ms.saturating_add(uptime_ms);
    if uptime_ms >= UPTIME_WRAP_MS || export_ms <= direct + UPTIME_WRAP_MS / 2 {
        return direct;
    }
    let wraps = (export_ms - direct + UPTIME_WRAP_MS / 2) / UPTIME_WRAP_MS;
    direct + wraps * UPTIME_WRAP_MS
}

/// What is known of a scope's init time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// Announced in options data (Unix ms).
    Init(u64),
    /// A record waited for it in vain: later records of the scope take the export time at once
    /// (counted) until it is announced.
    GaveUp,
}

/// Init times per exporter scope, at most `max` scopes (then an arbitrary one is forgotten).
#[derive(Debug)]
pub struct InitTimes {
    known: HashMap<Scope, Known>,
    max: usize,
}

impl InitTimes {
    pub fn new(max: usize) -> Self {
        Self {
            known: HashMap::new(),
            max: max.max(1),
        }
    }

    fn set(&mut self, scope: Scope, known: Known) {
        if self.known.len() >= self.max
            && !self.known.contains_key(&scope)
            && let Some(other) = self.known.keys().next().copied()
        {
            self.known.remove(&other);
        }
        self.known.insert(scope, known);
    }

    pub fn announce(&mut self, scope: Scope, init_ms: u64) {
        self.set(scope, Known::Init(init_ms));
    }

    pub fn init_ms(&self, scope: &Scope) -> Option<u64> {
        match self.known.get(scope) {
            Some(Known::Init(ms)) => Some(*ms),
            _ => None,
        }
    }

    /// Whether records of `scope` wait for its init time (none waited in vain since the last
    /// announcement).
    pub fn worth_waiting(&self, scope: &Scope) -> bool {
        self.known.get(scope) != Some(&Known::GaveUp)
    }

    fn give_up(&mut self, scope: Scope) {
        if self.init_ms(&scope).is_none() {
            self.set(scope, Known::GaveUp);
        }
    }
}

/// A record waiting for its scope's init time.
#[derive(Debug)]
struct Held {
    scope: Scope,
    record: pb::FlowRecord,
    times: RecordTimes,
    clock: ExportClock,
}

/// Records waiting for their scope's init time: at most `max_records`, each at most `max_wait`
/// (by receive time). Released with their real times when the init time comes, else with the
/// export time.
#[derive(Debug)]
pub struct Waiting {
    held: VecDeque<Held>,
    max_records: usize,
    max_wait_nanos: u64,
    /// Records released with the export time, since the last [`Waiting::take_export_timed`].
    export_timed: u64,
}

impl Waiting {
    /// `max_records` 0: nothing waits (every such record takes the export time, counted).
    pub fn new(max_records: usize, max_wait_nanos: u64) -> Self {
        Self {
            held: VecDeque::new(),
            max_records,
            max_wait_nanos,
            export_timed: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Records released with the export time since the last call.
    pub fn take_export_timed(&mut self) -> u64 {
        std::mem::take(&mut self.export_timed)
    }

    /// Holds `record` (whose times need `scope`'s init time), or releases it at once with the
    /// export time if that scope's init time was already waited for in vain or nothing may
    /// wait. At the bound, the oldest record is released with the export time.
    pub fn hold(
        &mut self,
        (scope, times, clock): (Scope, RecordTimes, ExportClock),
        mut record: pb::FlowRecord,
        inits: &InitTimes,
        out: &mut Vec<pb::FlowRecord>,
    ) {
        if self.max_records == 0 || !inits.worth_waiting(&scope) {
            (record.start_unix_nanos, record.end_unix_nanos) = times.at_export_time(&clock);
            self.export_timed += 1;
            out.push(record);
            return;
        }
        if self.held.len() >= self.max_records
            && let Some(oldest) = self.held.pop_front()
        {
            out.push(self.timed_by_export(oldest));
        }
        self.held.push_back(Held {
            scope,
            record,
            times,
            clock,
        });
    }

    fn timed_by_export(&mut self, mut h: Held) -> pb::FlowRecord {
        (h.record.start_unix_nanos, h.record.end_unix_nanos) = h.times.at_export_time(&h.clock);
        self.export_timed += 1;
        h.record
    }

    /// Releases every record of `scope` with times from `init_ms`.
    pub fn release(&mut self, scope: Scope, init_ms: u64, out: &mut Vec<pb::FlowRecord>) {
        if self.held.iter().all(|h| h.scope != scope) {
            return;
        }
        let (mine, others): (VecDeque<Held>, VecDeque<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.scope == scope);
        self.held = others;
        for mut h in mine {
            let (start, end) = h
                .times
                .resolve(&h.clock, Some(init_ms))
                .unwrap_or_else(|| h.times.at_export_time(&h.clock));
            (h.record.start_unix_nanos, h.record.end_unix_nanos) = (start, end);
            out.push(h.record);
        }
    }

    /// Releases, with the export time, every record that has waited `max_wait` at `now_nanos`,
    /// and stops waiting for those scopes' init times.
    pub fn expire(&mut self, now_nanos: u64, inits: &mut InitTimes, out: &mut Vec<pb::FlowRecord>) {
        while let Some(front) = self.held.front() {
            if front.clock.received_nanos.saturating_add(self.max_wait_nanos) > now_nanos {
                break;
            }
            let Some(h) = self.held.pop_front() else { break };
            inits.give_up(h.scope);
            out.push(self.timed_by_export(h));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INIT_MS: u64 = 1_795_300_000_123;

    fn ipfix_clock(export_ms: u64) -> ExportClock {
        ExportClock {
            export_nanos: export_ms / 1000 * 1000 * NANOS_PER_MS,
            uptime_ms: None,
            received_nanos: export_ms * NANOS_PER_MS,
        }
    }

    #[test]
    fn uptime_times_count_from_the_init_time_to_the_millisecond() {
        let times = RecordTimes {
            first_uptime_ms: Some(3_600_001),
            last_uptime_ms: Some(3_601_702),
            ..Default::default()
        };
        let clock = ipfix_clock(INIT_MS + 3_604_000);
        assert_eq!(times.resolve(&clock, None), None, "no init time yet: wait");
        assert_eq!(
            times.resolve(&clock, Some(INIT_MS)),
            Some((
                (INIT_MS + 3_600_001) * NANOS_PER_MS,
                (INIT_MS + 3_601_702) * NANOS_PER_MS
            ))
        );
        let export = clock.export_nanos;
        assert_eq!(times.at_export_time(&clock), (export, export));
    }

    #[test]
    fn absolute_and_delta_times_need_no_init_time() {
        let clock = ipfix_clock(INIT_MS + 10_000);
        let times = RecordTimes {
            start_nanos: Some(5),
            end_delta_us: Some(2_500),
            ..Default::default()
        };
        assert_eq!(
            times.resolve(&clock, None),
            Some((5, clock.export_nanos - 2_500_000))
        );
    }

    #[test]
    fn a_wrapped_uptime_counter_lands_next_to_the_export_time() {
        // Fifty days after init the 32-bit uptime has wrapped once.
        let export_ms = INIT_MS + 50 * 86_400_000;
        let reading = (export_ms - 1_000 - INIT_MS) % UPTIME_WRAP_MS;
        assert_eq!(since_init(INIT_MS, reading, export_ms), export_ms - 1_000);
        // A reading just after the export second (the header truncates) stays unwrapped.
        assert_eq!(since_init(INIT_MS, 500, INIT_MS), INIT_MS + 500);
    }

    #[test]
    fn v9_prefers_an_announced_init_time_from_the_same_boot() {
        let export_ms = INIT_MS + 3_600_456;
        let clock = ExportClock {
            export_nanos: export_ms / 1000 * 1000 * NANOS_PER_MS,
            uptime_ms: Some(3_600_456),
            received_nanos: 0,
        };
        let times = RecordTimes {
            first_uptime_ms: Some(3_600_000),
            last_uptime_ms: Some(3_600_400),
            ..Default::default()
        };
        let header = times.resolve(&clock, None).unwrap();
        assert_eq!(
            header.1,
            (export_ms / 1000 * 1000 - 56) * NANOS_PER_MS,
            "whole seconds"
        );
        let exact = times.resolve(&clock, Some(INIT_MS)).unwrap();
        assert_eq!(exact.1, (INIT_MS + 3_600_400) * NANOS_PER_MS);
        // A stale announcement (the exporter rebooted a day later) is not used.
        assert_eq!(times.resolve(&clock, Some(INIT_MS - 86_400_000)).unwrap(), header);
    }

    fn scope(n: u8) -> Scope {
        (IpAddr::from([192, 0, 2, n]), 1)
    }

    fn uptime_record() -> (RecordTimes, pb::FlowRecord) {
        let times = RecordTimes {
            first_uptime_ms: Some(10),
            last_uptime_ms: Some(20),
            ..Default::default()
        };
        (times, pb::FlowRecord::default())
    }

    #[test]
    fn waiting_records_are_released_by_their_init_time_or_at_their_bounds() {
        let mut inits = InitTimes::new(8);
        let mut waiting = Waiting::new(2, 1_000);
        let clock = ipfix_clock(INIT_MS + 60_000);
        let mut out = Vec::new();
        let (times, record) = uptime_record();
        for s in [1, 2, 1] {
            waiting.hold((scope(s), times, clock), record.clone(), &inits, &mut out);
        }
        // The bound (2) released the oldest with the export time.
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].end_unix_nanos, clock.export_nanos);
        assert_eq!(waiting.take_export_timed(), 1);
        out.clear();

        inits.announce(scope(1), INIT_MS);
        waiting.release(scope(1), INIT_MS, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].start_unix_nanos, out[0].end_unix_nanos),
            ((INIT_MS + 10) * NANOS_PER_MS, (INIT_MS + 20) * NANOS_PER_MS)
        );
        out.clear();

        // Scope 2's record waits until its age runs out, then scope 2 stops waiting.
        waiting.expire(clock.received_nanos + 999, &mut inits, &mut out);
        assert!(out.is_empty());
        waiting.expire(clock.received_nanos + 1_000, &mut inits, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(waiting.len(), 0);
        assert!(!inits.worth_waiting(&scope(2)));
        out.clear();
        waiting.hold((scope(2), times, clock), record.clone(), &inits, &mut out);
        assert_eq!(out.len(), 1, "released at once, with the export time");
        assert_eq!(waiting.take_export_timed(), 2);
        inits.announce(scope(2), INIT_MS);
        assert!(
            inits.worth_waiting(&scope(2)),
            "an announcement makes it worth waiting again"
        );
    }

    #[test]
    fn init_times_are_bounded() {
        let mut inits = InitTimes::new(2);
        for n in 0..10 {
            inits.announce(scope(n), INIT_MS + u64::from(n));
        }
        assert_eq!(inits.known.len(), 2);
        assert_eq!(inits.init_ms(&scope(9)), Some(INIT_MS + 9));
    }
}

//! NetFlow v5, v9 and IPFIX datagrams to flow records. Decoding is netflow_parser's; this module
//! keeps its template state per exporter and maps what it decodes onto [`pb::FlowRecord`]
//! (fields in [`super::fields`], times in [`super::clock`]). Sans-IO: it is given datagrams,
//! their sender and the time.
//!
//! Owns: template caches scoped per exporter address and v9 source id / IPFIX observation
//! domain (RFC 3954, RFC 7011), bounded in exporters and templates; data that arrives before
//! its template, held (bounded) and decoded when the template comes; what options data announces
//! per exporter scope: sampling rates, and the exporter's init time (IE 160), which IPFIX uptime
//! times count from (records that need it before it is known wait, bounded, see
//! [`super::clock::Waiting`]). Must never: panic or keep a partial datagram: a datagram with any
//! error is dropped whole and counted by reason.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use netflow_parser::static_versions::v5::V5;
use netflow_parser::variable_versions::ipfix::{FlowSetBody as IpfixBody, IPFix};
use netflow_parser::variable_versions::v9::{FlowSetBody as V9Body, V9};
use netflow_parser::{AutoScopedParser, NetflowError, NetflowPacket, NetflowParser, PendingFlowsConfig};
use ringflow_proto::pb;

use super::clock::{ExportClock, InitTimes, Scope, Waiting, uptime_to_unix};
use super::fields::Fields;
use crate::config::NetflowConfig;
use crate::source::addr_bytes;

/// How long data waits for its template, and IPFIX records with uptime times for their
/// exporter's init time.
const PENDING_TTL: Duration = Duration::from_secs(60);
/// Bytes of waiting data held per exporter.
const PENDING_BYTES_PER_EXPORTER: usize = 1 << 20;
/// Records held (all exporters together) while their exporter's init time is not known.
pub const MAX_WAITING_RECORDS: usize = 4_096;

/// Why a datagram was dropped; the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than its own header or records say.
    Truncated,
    /// Not a NetFlow v5/v9 or IPFIX packet.
    UnsupportedVersion,
    /// Inconsistent lengths, bad templates, or too much decoded output.
    Malformed,
}

impl DropReason {
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::UnsupportedVersion => "unsupported_version",
            DropReason::Malformed => "malformed",
        }
    }

    fn of(error: &NetflowError) -> Self {
        match error {
            NetflowError::Incomplete { .. } => DropReason::Truncated,
            NetflowError::UnsupportedVersion { .. } | NetflowError::FilteredVersion { .. } => {
                DropReason::UnsupportedVersion
            }
            _ => DropReason::Malformed,
        }
    }
}

/// What one datagram gave.
#[derive(Debug, Default)]
pub struct Decoded {
    pub records: Vec<pb::FlowRecord>,
    pub dropped: Option<DropReason>,
}

pub struct Decoder {
    parser: AutoScopedParser,
    max_exporters: usize,
    /// Sampling rates from options data, per exporter and observation domain.
    sampling: HashMap<Scope, u32>,
    /// Init times from options data, per exporter and observation domain.
    inits: InitTimes,
    /// IPFIX records waiting for their exporter's init time.
    waiting: Waiting,
    evicted_seen: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot configure the NetFlow decoder: {0}")]
pub struct DecoderConfigError(String);

impl Decoder {
    pub fn new(config: &NetflowConfig) -> Result<Self, DecoderConfigError> {
        let mut builder = NetflowParser::builder()
            .with_cache_size(config.max_templates)
            .with_allowed_versions(&[5, 9, 10]);
        if config.max_pending_sets > 0 {
            let mut pending = PendingFlowsConfig::with_ttl(config.max_pending_sets, PENDING_TTL);
            pending.max_entries_per_template = config.max_pending_sets;
            pending.max_total_bytes = PENDING_BYTES_PER_EXPORTER;
            builder = builder.with_pending_flows(pending);
        }
        let parser = AutoScopedParser::try_with_builder(builder)
            .and_then(|p| p.with_max_sources(config.max_exporters))
            .map_err(|e| DecoderConfigError(e.to_string()))?;
        // Nothing waits when the operator turned waiting off (max_pending_sets = 0).
        let waiting = if config.max_pending_sets > 0 {
            MAX_WAITING_RECORDS
        } else {
            0
        };
        Ok(Self {
            parser,
            max_exporters: config.max_exporters,
            sampling: HashMap::new(),
            inits: InitTimes::new(config.max_exporters),
            waiting: Waiting::new(waiting, PENDING_TTL.as_nanos() as u64),
            evicted_seen: 0,
        })
    }

    /// Exporters forgotten (least recently heard) since the last call, to make room for new
    /// ones.
    pub fn take_evicted_exporters(&mut self) -> u64 {
        let total = self.parser.source_removal_metrics().capacity_pressure;
        let new = total.saturating_sub(self.evicted_seen);
        self.evicted_seen = total;
        new
    }

    /// Exporter scopes with templates kept now.
    pub fn exporters(&self) -> usize {
        self.parser.source_count()
    }

    /// Records waiting for their exporter's init time now.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Records whose uptime times had to take the export time instead (their exporter's init
    /// time did not come in time), since the last call.
    pub fn take_export_timed(&mut self) -> u64 {
        self.waiting.take_export_timed()
    }

    /// Records that have waited for their exporter's init time as long as they may at
    /// `now_nanos`, with the export time as their times (call about once a second).
    pub fn expire(&mut self, now_nanos: u64) -> Vec<pb::FlowRecord> {
        let mut out = Vec::new();
        self.waiting.expire(now_nanos, &mut self.inits, &mut out);
        out
    }

    /// Decodes one datagram from `exporter`, received at `now_nanos`. The records may include
    /// earlier ones that were waiting for an init time this datagram announces.
    pub fn decode(&mut self, exporter: SocketAddr, datagram: &[u8], now_nanos: u64) -> Decoded {
        let drop = |reason| Decoded {
            records: Vec::new(),
            dropped: Some(reason),
        };
        match datagram.get(..2).map(|v| u16::from_be_bytes([v[0], v[1]])) {
            Some(5 | 9 | 10) => {}
            Some(_) => return drop(DropReason::UnsupportedVersion),
            None => return drop(DropReason::Truncated),
        }
        if shorter_than_declared(datagram) {
            return drop(DropReason::Truncated);
        }
        let parser = &mut self.parser;
        // A bug in the parser must not take the listener down with it: the datagram counts as
        // malformed and the next one is read.
        let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            parser.parse_from_source(exporter, datagram)
        }));
        let result = match parsed {
            Ok(result) => result,
            Err(_) => return drop(DropReason::Malformed),
        };
        if let Some(error) = &result.error {
            return drop(DropReason::of(error));
        }
        let exporter_ip = exporter.ip().to_canonical();
        let mut records = Vec::new();
        // Options first (sampling rates, init times), wherever they are in the datagram: data
        // records before them in the same datagram use what they announce.
        for packet in &result.packets {
            match packet {
                NetflowPacket::V9(v9) => self.v9_options(v9, exporter_ip, &mut records),
                NetflowPacket::IPFix(ipfix) => self.ipfix_options(ipfix, exporter_ip, &mut records),
                _ => {}
            }
        }
        for packet in &result.packets {
            match packet {
                NetflowPacket::V5(v5) => read_v5(v5, exporter_ip, &mut records),
                NetflowPacket::V9(v9) => self.read_v9(v9, exporter_ip, now_nanos, &mut records),
                NetflowPacket::IPFix(ipfix) => self.read_ipfix(ipfix, exporter_ip, now_nanos, &mut records),
                // v7 is filtered out by the parser's configuration.
                _ => {}
            }
        }
        Decoded {
            records,
            dropped: None,
        }
    }

    fn note_sampling(&mut self, scope: Scope, rate: u32) {
        if self.sampling.len() >= self.max_exporters && !self.sampling.contains_key(&scope) {
            // Bounded like the template caches: a flood of exporters does not grow this.
            self.sampling.clear();
        }
        self.sampling.insert(scope, rate);
    }

    /// Records from data records of `scope`'s exporter; those whose times need an init time
    /// not known yet wait for it.
    fn data(
        &mut self,
        records: impl Iterator<Item = Fields>,
        kind: pb::SourceKind,
        (scope, clock): (Scope, &ExportClock),
        out: &mut Vec<pb::FlowRecord>,
    ) {
        let exporter_sampling = self.sampling.get(&scope).copied();
        let init = self.inits.init_ms(&scope);
        for f in records {
            match f.times.resolve(clock, init) {
                Some(times) => out.push(f.record(kind, scope.0, times, exporter_sampling)),
                None => {
                    let record = f.record(kind, scope.0, (0, 0), exporter_sampling);
                    self.waiting
                        .hold((scope, f.times, *clock), record, &self.inits, out);
                }
            }
        }
    }

    /// Options data: remembers the sampling rate and init time it announces for `scope`, and
    /// releases the records that waited for that init time.
    fn options(
        &mut self,
        records: impl Iterator<Item = Fields>,
        scope: Scope,
        out: &mut Vec<pb::FlowRecord>,
    ) {
        for f in records {
            if let Some(rate) = f.sampling {
                self.note_sampling(scope, rate);
            }
            if let Some(init) = f.system_init_ms {
                self.inits.announce(scope, init);
                self.waiting.release(scope, init, out);
            }
        }
    }

    fn v9_options(&mut self, v9: &V9, exporter: IpAddr, out: &mut Vec<pb::FlowRecord>) {
        let scope = (exporter, v9.header.source_id);
        for set in &v9.flowsets {
            if let V9Body::OptionsData(options) = &set.body {
                let fields = options.fields.iter().map(|o| Fields::of_v9(&o.options_fields));
                self.options(fields, scope, out);
            }
        }
    }

    fn ipfix_options(&mut self, ipfix: &IPFix, exporter: IpAddr, out: &mut Vec<pb::FlowRecord>) {
        let scope = (exporter, ipfix.header.observation_domain_id);
        for set in &ipfix.flowsets {
            match &set.body {
                IpfixBody::OptionsData(options) => {
                    self.options(options.fields.iter().map(|o| Fields::of_ipfix(o)), scope, out)
                }
                IpfixBody::V9OptionsData(options) => self.options(
                    options.fields.iter().map(|o| Fields::of_v9(&o.options_fields)),
                    scope,
                    out,
                ),
                _ => {}
            }
        }
    }

    fn read_v9(&mut self, v9: &V9, exporter: IpAddr, now: u64, out: &mut Vec<pb::FlowRecord>) {
        let h = &v9.header;
        let scope = (exporter, h.source_id);
        let clock = ExportClock {
            export_nanos: u64::from(h.unix_secs) * 1_000_000_000,
            uptime_ms: Some(h.sys_up_time),
            received_nanos: now,
        };
        for set in &v9.flowsets {
            if let V9Body::Data(data) = &set.body {
                self.data(
                    data.fields.iter().map(|r| Fields::of_v9(r)),
                    pb::SourceKind::NetflowV9,
                    (scope, &clock),
                    out,
                );
            }
        }
    }

    fn read_ipfix(&mut self, ipfix: &IPFix, exporter: IpAddr, now: u64, out: &mut Vec<pb::FlowRecord>) {
        let h = &ipfix.header;
        let scope = (exporter, h.observation_domain_id);
        let clock = ExportClock {
            export_nanos: u64::from(h.export_time) * 1_000_000_000,
            uptime_ms: None,
            received_nanos: now,
        };
        for set in &ipfix.flowsets {
            match &set.body {
                IpfixBody::Data(data) => self.data(
                    data.fields.iter().map(|r| Fields::of_ipfix(r)),
                    pb::SourceKind::Ipfix,
                    (scope, &clock),
                    out,
                ),
                IpfixBody::V9Data(data) => self.data(
                    data.fields.iter().map(|r| Fields::of_v9(r)),
                    pb::SourceKind::Ipfix,
                    (scope, &clock),
                    out,
                ),
                _ => {}
            }
        }
    }
}

/// Whether a datagram is shorter than its own header or set lengths say: it was cut in
/// transit (or by a sender's buffer). Only the framing is read here; decoding is the parser's.
pub fn shorter_than_declared(d: &[u8]) -> bool {
    let u16_at = |at: usize| d.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let Some(version) = u16_at(0) else {
        return true;
    };
    // Walks sets from `at` to `end`: each starts with (id, length), length counting its header.
    let sets_fit = |mut at: usize, end: usize| {
        while at + 4 <= end {
            match u16_at(at + 2) {
                Some(len) if len >= 4 && at + usize::from(len) <= end => at += usize::from(len),
                Some(len) if len >= 4 => return false,
                // A zero length cannot be walked: the parser judges it.
                _ => return true,
            }
        }
        true
    };
    match version {
        5 => match u16_at(2) {
            Some(count) => d.len() < 24 + usize::from(count) * 48,
            None => true,
        },
        9 => d.len() < 20 || !sets_fit(20, d.len()),
        10 => match u16_at(2) {
            Some(len) => d.len() < 16 || d.len() < usize::from(len) || !sets_fit(16, usize::from(len)),
            None => true,
        },
        _ => false,
    }
}

fn read_v5(v5: &V5, exporter: IpAddr, out: &mut Vec<pb::FlowRecord>) {
    let h = &v5.header;
    let export_nanos = u64::from(h.unix_secs) * 1_000_000_000 + u64::from(h.unix_nsecs);
    let at = |uptime: u32| uptime_to_unix(export_nanos, h.sys_up_time, uptime);
    // The top two bits are the sampling mode, the rest the interval.
    let sampling = u32::from(h.sampling_interval & 0x3fff);
    for f in &v5.flowsets {
        let (start, end) = (at(f.first), at(f.last));
        let (start, end) = (start.min(end), end);
        out.push(pb::FlowRecord {
            start_unix_nanos: start,
            end_unix_nanos: end,
            src_addr: addr_bytes(IpAddr::V4(f.src_addr)),
            dst_addr: addr_bytes(IpAddr::V4(f.dst_addr)),
            src_port: f.src_port.into(),
            dst_port: f.dst_port.into(),
            ip_protocol: f.protocol_number.into(),
            // Whole IP packets: exporters count octets with headers, never payload.
            ip_bytes_from_src: f.d_octets.into(),
            packets_from_src: f.d_pkts.into(),
            source: pb::SourceKind::NetflowV5 as i32,
            exporter_addr: addr_bytes(exporter),
            sampling_rate: sampling,
            ..Default::default()
        });
        if let Some(record) = out.last_mut() {
            ringflow_proto::community_id::stamp(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPFIX message (domain 1, exported at `export_secs`) of `sets`, each (set id, body).
    fn ipfix(export_secs: u32, sets: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut m = vec![0, 10, 0, 0];
        m.extend_from_slice(&export_secs.to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        for (id, body) in sets {
            m.extend_from_slice(&id.to_be_bytes());
            m.extend_from_slice(&(body.len() as u16 + 4).to_be_bytes());
            m.extend_from_slice(body);
        }
        let len = m.len() as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        m
    }

    fn words(w: &[u16]) -> Vec<u8> {
        w.iter().flat_map(|v| v.to_be_bytes()).collect()
    }

    #[test]
    fn ipfix_sysuptime_times_count_from_the_init_time_in_options_data() {
        let init_ms: u64 = 1_795_300_000_123;
        let (first, last): (u32, u32) = (3_600_001, 3_601_701);
        // Options template 257: scope observationDomainId (149, 4), systemInitTimeMilliseconds
        // (160, 8); template 256: ports (7, 11), protocol (4), flowStartSysUpTime (22, 4),
        // flowEndSysUpTime (21, 4).
        let options_template = words(&[257, 2, 1, 149, 4, 160, 8]);
        let mut options_data = 1u32.to_be_bytes().to_vec();
        options_data.extend_from_slice(&init_ms.to_be_bytes());
        let template = words(&[256, 5, 7, 2, 11, 2, 4, 1, 22, 4, 21, 4]);
        let mut data = words(&[40_000, 443]);
        data.push(6);
        data.extend_from_slice(&first.to_be_bytes());
        data.extend_from_slice(&last.to_be_bytes());
        let export_secs = ((init_ms + 3_605_000) / 1000) as u32;
        let from: SocketAddr = "192.0.2.9:4739".parse().unwrap();
        let mut d = Decoder::new(&NetflowConfig::default()).unwrap();

        // Data first: it waits for the init time.
        let early = ipfix(export_secs, &[(2, template), (256, data.clone())]);
        let out = d.decode(from, &early, 0);
        assert_eq!((out.records.len(), out.dropped, d.waiting()), (0, None, 1));
        let options = ipfix(
            export_secs,
            &[(3, options_template), (257, options_data), (256, data)],
        );
        let out = d.decode(from, &options, 0);
        assert_eq!(out.records.len(), 2, "the waiting record and the new one");
        for r in &out.records {
            assert_eq!(r.start_unix_nanos, (init_ms + u64::from(first)) * 1_000_000);
            assert_eq!(r.end_unix_nanos, (init_ms + u64::from(last)) * 1_000_000);
            assert_eq!((r.src_port, r.dst_port, r.ip_protocol), (40_000, 443, 6));
        }
        assert_eq!((d.waiting(), d.take_export_timed()), (0, 0));
    }
}

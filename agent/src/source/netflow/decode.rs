//! NetFlow v5, v9 and IPFIX datagrams to flow records. Decoding is netflow_parser's; this module
//! keeps its template state per exporter and maps what it decodes onto [`pb::FlowRecord`].
//! Sans-IO: it is given datagrams, their sender and the time.
//!
//! Owns: template caches scoped per exporter address and v9 source id / IPFIX observation
//! domain (RFC 3954, RFC 7011), bounded in exporters and templates; data that arrives before
//! its template, held (bounded) and decoded when the template comes; sampling rates announced in
//! options data, per exporter; the field mapping. Must never: panic or keep a partial datagram:
//! a datagram with any error is dropped whole and counted by reason.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use netflow_parser::static_versions::v5::V5;
use netflow_parser::variable_versions::ipfix::lookup::{
    IANAIPFixField as Iana, IPFixField, ReverseInformationElement as Reverse,
};
use netflow_parser::variable_versions::ipfix::{FlowSetBody as IpfixBody, IPFix};
use netflow_parser::variable_versions::v9::{FlowSetBody as V9Body, V9};
use netflow_parser::{
    AutoScopedParser, FieldValue, NetflowError, NetflowPacket, NetflowParser, PendingFlowsConfig, V9Field,
};
use ringflow_proto::pb;

use crate::config::NetflowConfig;

/// How long data waits for its template.
const PENDING_TTL: Duration = Duration::from_secs(60);
/// Bytes of waiting data held per exporter.
const PENDING_BYTES_PER_EXPORTER: usize = 1 << 20;

/// Information element ids (IANA IPFIX registry; NetFlow v9 uses the same numbers).
mod ie {
    pub const OCTETS: u16 = 1;
    pub const PACKETS: u16 = 2;
    pub const PROTOCOL: u16 = 4;
    pub const SRC_PORT: u16 = 7;
    pub const SRC_V4: u16 = 8;
    pub const DST_PORT: u16 = 11;
    pub const DST_V4: u16 = 12;
    pub const LAST_UPTIME_MS: u16 = 21;
    pub const FIRST_UPTIME_MS: u16 = 22;
    pub const SRC_V6: u16 = 27;
    pub const DST_V6: u16 = 28;
    pub const SAMPLING_INTERVAL: u16 = 34;
    pub const SAMPLER_RANDOM_INTERVAL: u16 = 50;
    pub const OCTETS_TOTAL: u16 = 85;
    pub const PACKETS_TOTAL: u16 = 86;
    pub const START_SECONDS: u16 = 150;
    pub const END_SECONDS: u16 = 151;
    pub const START_MS: u16 = 152;
    pub const END_MS: u16 = 153;
    pub const SAMPLING_PACKET_INTERVAL: u16 = 305;
}

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

/// The exporter scope a sampling rate announced in options data applies to.
type Scope = (IpAddr, u32);

pub struct Decoder {
    parser: AutoScopedParser,
    max_exporters: usize,
    /// Sampling rates from options data, per exporter and observation domain.
    sampling: HashMap<Scope, u32>,
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
        Ok(Self {
            parser,
            max_exporters: config.max_exporters,
            sampling: HashMap::new(),
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

    /// Decodes one datagram from `exporter`, received at `now_nanos`.
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

    /// Records from data records of `scope`'s exporter.
    fn data(
        &self,
        records: impl Iterator<Item = Fields>,
        kind: pb::SourceKind,
        (scope, clock): (Scope, &ExportClock),
        out: &mut Vec<pb::FlowRecord>,
    ) {
        let exporter_sampling = self.sampling.get(&scope).copied();
        out.extend(records.map(|f| f.record(kind, scope.0, clock, exporter_sampling)));
    }

    /// Options data: remembers a sampling rate it announces for `scope`.
    fn options(&mut self, records: impl Iterator<Item = Fields>, scope: Scope) {
        for f in records {
            if let Some(rate) = f.sampling {
                self.note_sampling(scope, rate);
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
            match &set.body {
                V9Body::Data(data) => self.data(
                    data.fields.iter().map(|r| Fields::of_v9(r)),
                    pb::SourceKind::NetflowV9,
                    (scope, &clock),
                    out,
                ),
                V9Body::OptionsData(options) => self.options(
                    options.fields.iter().map(|o| Fields::of_v9(&o.options_fields)),
                    scope,
                ),
                _ => {}
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
                IpfixBody::OptionsData(options) => {
                    self.options(options.fields.iter().map(|o| Fields::of_ipfix(o)), scope)
                }
                IpfixBody::V9OptionsData(options) => self.options(
                    options.fields.iter().map(|o| Fields::of_v9(&o.options_fields)),
                    scope,
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
        let (start, end) = ordered(at(f.first), at(f.last));
        out.push(pb::FlowRecord {
            start_unix_nanos: start,
            end_unix_nanos: end,
            src_addr: addr_bytes(IpAddr::V4(f.src_addr)),
            dst_addr: addr_bytes(IpAddr::V4(f.dst_addr)),
            src_port: f.src_port.into(),
            dst_port: f.dst_port.into(),
            ip_protocol: f.protocol_number.into(),
            bytes_from_src: f.d_octets.into(),
            packets_from_src: f.d_pkts.into(),
            source: pb::SourceKind::NetflowV5 as i32,
            exporter_addr: addr_bytes(exporter),
            sampling_rate: sampling,
            ..Default::default()
        });
    }
}

/// The exporter's clock: `uptime_ms` is its uptime when it sent the packet at `export_nanos`.
struct ExportClock {
    export_nanos: u64,
    uptime_ms: Option<u32>,
    received_nanos: u64,
}

/// The wall time of an exporter uptime reading (uptime counters wrap after 49.7 days).
fn uptime_to_unix(export_nanos: u64, uptime_now_ms: u32, uptime_ms: u32) -> u64 {
    export_nanos.saturating_sub(u64::from(uptime_now_ms.wrapping_sub(uptime_ms)) * 1_000_000)
}

fn ordered(start: u64, end: u64) -> (u64, u64) {
    (start.min(end), end)
}

fn addr_bytes(ip: IpAddr) -> Bytes {
    match ip.to_canonical() {
        IpAddr::V4(v4) => Bytes::copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => Bytes::copy_from_slice(&v6.octets()),
    }
}

/// An information element: IANA's, or the reverse direction of one (RFC 5103 biflows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Element {
    Iana(u16),
    Reverse(u16),
}

impl Element {
    fn of(field: &IPFixField) -> Option<Self> {
        match field {
            IPFixField::IANA(f) => iana_id(f).map(Element::Iana),
            IPFixField::ReverseInformationElement(Reverse::ReverseOctetDeltaCount) => {
                Some(Element::Reverse(ie::OCTETS))
            }
            IPFixField::ReverseInformationElement(Reverse::ReversePacketDeltaCount) => {
                Some(Element::Reverse(ie::PACKETS))
            }
            _ => None,
        }
    }
}

/// The id of an IANA element this decoder reads (the parser's enum does not convert back).
fn iana_id(field: &Iana) -> Option<u16> {
    Some(match field {
        Iana::OctetDeltaCount => ie::OCTETS,
        Iana::PacketDeltaCount => ie::PACKETS,
        Iana::ProtocolIdentifier => ie::PROTOCOL,
        Iana::SourceTransportPort => ie::SRC_PORT,
        Iana::SourceIpv4address => ie::SRC_V4,
        Iana::DestinationTransportPort => ie::DST_PORT,
        Iana::DestinationIpv4address => ie::DST_V4,
        Iana::SourceIpv6address => ie::SRC_V6,
        Iana::DestinationIpv6address => ie::DST_V6,
        Iana::SamplingInterval => ie::SAMPLING_INTERVAL,
        Iana::SamplerRandomInterval => ie::SAMPLER_RANDOM_INTERVAL,
        Iana::OctetTotalCount => ie::OCTETS_TOTAL,
        Iana::PacketTotalCount => ie::PACKETS_TOTAL,
        Iana::FlowStartSeconds => ie::START_SECONDS,
        Iana::FlowEndSeconds => ie::END_SECONDS,
        Iana::FlowStartMilliseconds => ie::START_MS,
        Iana::FlowEndMilliseconds => ie::END_MS,
        Iana::SamplingPacketInterval => ie::SAMPLING_PACKET_INTERVAL,
        // IPFIX's sysUpTime fields count from systemInitTimeMilliseconds, which the header
        // does not carry: such records take the export time.
        _ => return None,
    })
}

/// The fields of one data record that a flow record carries.
#[derive(Debug, Default)]
struct Fields {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    src_port: Option<u16>,
    dst_port: Option<u16>,
    protocol: Option<u8>,
    octets: Option<u64>,
    packets: Option<u64>,
    reverse_octets: Option<u64>,
    reverse_packets: Option<u64>,
    first_uptime_ms: Option<u64>,
    last_uptime_ms: Option<u64>,
    start_ms: Option<u64>,
    end_ms: Option<u64>,
    sampling: Option<u32>,
}

impl Fields {
    fn of_v9(record: &[(V9Field, FieldValue)]) -> Self {
        Self::gather(record.iter().map(|(k, v)| (Element::Iana(u16::from(*k)), v)))
    }

    fn of_ipfix(record: &[(IPFixField, FieldValue)]) -> Self {
        Self::gather(record.iter().filter_map(|(k, v)| Some((Element::of(k)?, v))))
    }

    fn gather<'a>(fields: impl Iterator<Item = (Element, &'a FieldValue)>) -> Self {
        let mut f = Fields::default();
        let ip = |v: &FieldValue| IpAddr::try_from(v).ok().map(|ip| ip.to_canonical());
        for (element, value) in fields {
            match element {
                Element::Iana(id) => match id {
                    ie::SRC_V4 | ie::SRC_V6 => f.src = f.src.or(ip(value)),
                    ie::DST_V4 | ie::DST_V6 => f.dst = f.dst.or(ip(value)),
                    ie::SRC_PORT => f.src_port = value.as_u16(),
                    ie::DST_PORT => f.dst_port = value.as_u16(),
                    ie::PROTOCOL => f.protocol = value.as_u8(),
                    ie::OCTETS => f.octets = value.as_u64(),
                    ie::PACKETS => f.packets = value.as_u64(),
                    ie::OCTETS_TOTAL => f.octets = f.octets.or(value.as_u64()),
                    ie::PACKETS_TOTAL => f.packets = f.packets.or(value.as_u64()),
                    ie::FIRST_UPTIME_MS => f.first_uptime_ms = value.as_u64(),
                    ie::LAST_UPTIME_MS => f.last_uptime_ms = value.as_u64(),
                    ie::START_MS | ie::START_SECONDS => f.start_ms = value.as_u64(),
                    ie::END_MS | ie::END_SECONDS => f.end_ms = value.as_u64(),
                    ie::SAMPLING_INTERVAL | ie::SAMPLER_RANDOM_INTERVAL | ie::SAMPLING_PACKET_INTERVAL => {
                        f.sampling = value.as_u64().and_then(|v| u32::try_from(v).ok())
                    }
                    _ => {}
                },
                Element::Reverse(ie::OCTETS) => f.reverse_octets = value.as_u64(),
                Element::Reverse(ie::PACKETS) => f.reverse_packets = value.as_u64(),
                Element::Reverse(_) => {}
            }
        }
        f
    }

    /// The record, with times from absolute fields, else uptime fields with the exporter's
    /// clock, else the export time.
    fn record(
        &self,
        kind: pb::SourceKind,
        exporter: IpAddr,
        clock: &ExportClock,
        exporter_sampling: Option<u32>,
    ) -> pb::FlowRecord {
        let fallback = if clock.export_nanos > 0 {
            clock.export_nanos
        } else {
            clock.received_nanos
        };
        let ms = |v: u64| v.saturating_mul(1_000_000);
        let from_uptime = |v: u64| {
            clock
                .uptime_ms
                .map(|now| uptime_to_unix(clock.export_nanos, now, v as u32))
        };
        let end = self
            .end_ms
            .map(ms)
            .or_else(|| self.last_uptime_ms.and_then(from_uptime))
            .unwrap_or(fallback);
        let start = self
            .start_ms
            .map(ms)
            .or_else(|| self.first_uptime_ms.and_then(from_uptime))
            .unwrap_or(end);
        let (start, end) = ordered(start, end);
        pb::FlowRecord {
            start_unix_nanos: start,
            end_unix_nanos: end,
            src_addr: self.src.map(addr_bytes).unwrap_or_default(),
            dst_addr: self.dst.map(addr_bytes).unwrap_or_default(),
            src_port: self.src_port.unwrap_or(0).into(),
            dst_port: self.dst_port.unwrap_or(0).into(),
            ip_protocol: self.protocol.unwrap_or(0).into(),
            bytes_from_src: self.octets.unwrap_or(0),
            packets_from_src: self.packets.unwrap_or(0),
            bytes_from_dst: self.reverse_octets.unwrap_or(0),
            packets_from_dst: self.reverse_packets.unwrap_or(0),
            source: kind as i32,
            exporter_addr: addr_bytes(exporter),
            sampling_rate: self.sampling.or(exporter_sampling).unwrap_or(0),
            ..Default::default()
        }
    }
}

//! The information elements of one v9 or IPFIX data record that a flow record carries, read from
//! what netflow_parser decoded, and the flow record built from them.
//!
//! Owns: which elements are read (IANA ids; RFC 5103 reverse counters) and how each maps onto
//! [`pb::FlowRecord`]. Must never: decide times (that is [`super::clock`]) or keep state.

use std::net::IpAddr;

use netflow_parser::variable_versions::ipfix::lookup::{
    IANAIPFixField as Iana, IPFixField, ReverseInformationElement as Reverse,
};
use netflow_parser::{FieldValue, V9Field};
use ringflow_proto::pb;

use crate::source::addr_bytes;

use super::clock::{NTP_UNIX_OFFSET_SECS, RecordTimes};

/// Information element ids (IANA IPFIX registry; NetFlow v9 uses the same numbers).
pub mod ie {
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
    pub const START_US: u16 = 154;
    pub const END_US: u16 = 155;
    pub const START_NS: u16 = 156;
    pub const END_NS: u16 = 157;
    pub const START_DELTA_US: u16 = 158;
    pub const END_DELTA_US: u16 = 159;
    pub const SYSTEM_INIT_MS: u16 = 160;
    pub const SAMPLING_PACKET_INTERVAL: u16 = 305;
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
        Iana::FlowEndSysUpTime => ie::LAST_UPTIME_MS,
        Iana::FlowStartSysUpTime => ie::FIRST_UPTIME_MS,
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
        Iana::FlowStartMicroseconds => ie::START_US,
        Iana::FlowEndMicroseconds => ie::END_US,
        Iana::FlowStartNanoseconds => ie::START_NS,
        Iana::FlowEndNanoseconds => ie::END_NS,
        Iana::FlowStartDeltaMicroseconds => ie::START_DELTA_US,
        Iana::FlowEndDeltaMicroseconds => ie::END_DELTA_US,
        Iana::SystemInitTimeMilliseconds => ie::SYSTEM_INIT_MS,
        Iana::SamplingPacketInterval => ie::SAMPLING_PACKET_INTERVAL,
        _ => return None,
    })
}

/// Unix nanoseconds of a dateTimeSeconds/Milliseconds value (Unix epoch).
fn unix_nanos(value: &FieldValue) -> Option<u64> {
    value.as_u64().and_then(|ms| ms.checked_mul(1_000_000))
}

/// Unix nanoseconds of a dateTimeMicroseconds/Nanoseconds value (NTP format, 1900 epoch).
fn ntp_nanos(value: &FieldValue) -> Option<u64> {
    match value {
        FieldValue::Duration(d) => {
            let since_1900 = d.as_duration();
            let unix = since_1900.checked_sub(std::time::Duration::from_secs(NTP_UNIX_OFFSET_SECS))?;
            u64::try_from(unix.as_nanos()).ok()
        }
        _ => None,
    }
}

/// The fields of one data (or options data) record that a flow record carries.
#[derive(Debug, Default)]
pub struct Fields {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    src_port: Option<u16>,
    dst_port: Option<u16>,
    protocol: Option<u8>,
    octets: Option<u64>,
    packets: Option<u64>,
    reverse_octets: Option<u64>,
    reverse_packets: Option<u64>,
    pub times: RecordTimes,
    /// A sampling interval (per record, or announced in options data).
    pub sampling: Option<u32>,
    /// `systemInitTimeMilliseconds` (options data): when the exporter started, Unix ms.
    pub system_init_ms: Option<u64>,
}

impl Fields {
    pub fn of_v9(record: &[(V9Field, FieldValue)]) -> Self {
        Self::gather(record.iter().map(|(k, v)| (Element::Iana(u16::from(*k)), v)))
    }

    pub fn of_ipfix(record: &[(IPFixField, FieldValue)]) -> Self {
        Self::gather(record.iter().filter_map(|(k, v)| Some((Element::of(k)?, v))))
    }

    fn gather<'a>(fields: impl Iterator<Item = (Element, &'a FieldValue)>) -> Self {
        let mut f = Fields::default();
        let ip = |v: &FieldValue| IpAddr::try_from(v).ok().map(|ip| ip.to_canonical());
        let t = &mut f.times;
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
                    ie::FIRST_UPTIME_MS => t.first_uptime_ms = value.as_u64(),
                    ie::LAST_UPTIME_MS => t.last_uptime_ms = value.as_u64(),
                    // The parser gives seconds and milliseconds as milliseconds.
                    ie::START_MS | ie::START_SECONDS => t.start_nanos = unix_nanos(value),
                    ie::END_MS | ie::END_SECONDS => t.end_nanos = unix_nanos(value),
                    ie::START_US | ie::START_NS => t.start_nanos = ntp_nanos(value),
                    ie::END_US | ie::END_NS => t.end_nanos = ntp_nanos(value),
                    ie::START_DELTA_US => t.start_delta_us = value.as_u64(),
                    ie::END_DELTA_US => t.end_delta_us = value.as_u64(),
                    ie::SYSTEM_INIT_MS => f.system_init_ms = value.as_u64(),
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

    /// The flow record, with `(start, end)` as the caller resolved them and a Community ID.
    pub fn record(
        &self,
        kind: pb::SourceKind,
        exporter: IpAddr,
        (start, end): (u64, u64),
        exporter_sampling: Option<u32>,
    ) -> pb::FlowRecord {
        let mut record = pb::FlowRecord {
            start_unix_nanos: start,
            end_unix_nanos: end,
            src_addr: self.src.map(addr_bytes).unwrap_or_default(),
            dst_addr: self.dst.map(addr_bytes).unwrap_or_default(),
            src_port: self.src_port.unwrap_or(0).into(),
            dst_port: self.dst_port.unwrap_or(0).into(),
            ip_protocol: self.protocol.unwrap_or(0).into(),
            // Whole IP packets: exporters count octets with headers, never payload.
            ip_bytes_from_src: self.octets.unwrap_or(0),
            packets_from_src: self.packets.unwrap_or(0),
            ip_bytes_from_dst: self.reverse_octets.unwrap_or(0),
            packets_from_dst: self.reverse_packets.unwrap_or(0),
            source: kind as i32,
            exporter_addr: addr_bytes(exporter),
            sampling_rate: self.sampling.or(exporter_sampling).unwrap_or(0),
            ..Default::default()
        };
        ringflow_proto::community_id::stamp(&mut record);
        record
    }
}

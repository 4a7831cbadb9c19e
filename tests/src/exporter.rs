//! A NetFlow v5 / v9 and IPFIX exporter for tests: builds datagrams, byte by byte from the
//! RFCs (Cisco's v5 layout, RFC 3954, RFC 7011, RFC 5103 for biflows), from a known list of
//! flows, so a test can check what the meter decodes field by field. Written independently of
//! the parser the meter uses.

use std::net::IpAddr;

/// One flow as an exporter reports it. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub bytes: u64,
    pub packets: u64,
    /// Bytes and packets of the reverse direction (IPFIX biflows only).
    pub reverse_bytes: u64,
    pub reverse_packets: u64,
    pub start_ms: u64,
    pub end_ms: u64,
}

impl Flow {
    /// Flow `i` of a test list: IPv4 unless `v6`, every field a distinct function of `i`.
    /// Times end `ago_ms`.. before `now_ms`.
    pub fn numbered(i: u32, v6: bool, now_ms: u64) -> Flow {
        let (src, dst) = if v6 {
            (
                IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 1, i as u16]),
                IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 2, i as u16]),
            )
        } else {
            (
                IpAddr::from([10, 1, (i >> 8) as u8, i as u8]),
                IpAddr::from([192, 0, 2, (i % 250) as u8 + 1]),
            )
        };
        Flow {
            src,
            dst,
            src_port: 20_000 + i as u16,
            dst_port: [53, 80, 443, 8080][i as usize % 4],
            protocol: [6, 17][i as usize % 2],
            bytes: 1_000 + 37 * u64::from(i),
            packets: 2 + u64::from(i % 50),
            reverse_bytes: 0,
            reverse_packets: 0,
            start_ms: now_ms - 9_000 + u64::from(i),
            end_ms: now_ms - 2_000 + u64::from(i),
        }
    }
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}
fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}
fn put_addr(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
    }
}

/// The exporter's clock: it booted `uptime_ms` before `export_ms` (Unix milliseconds, whole
/// seconds, since v9 and IPFIX headers carry seconds only).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub export_ms: u64,
    pub uptime_ms: u32,
}

impl Clock {
    pub fn at(now_ms: u64) -> Clock {
        Clock {
            export_ms: now_ms / 1000 * 1000,
            uptime_ms: 3_600_000,
        }
    }

    /// A Unix time as the exporter's uptime reading.
    fn uptime_of(&self, unix_ms: u64) -> u32 {
        self.uptime_ms - (self.export_ms - unix_ms) as u32
    }

    /// When the exporter started (Unix milliseconds): what it announces as
    /// systemInitTimeMilliseconds.
    pub fn init_ms(&self) -> u64 {
        self.export_ms - u64::from(self.uptime_ms)
    }
}

/// A NetFlow v5 datagram of IPv4 `flows` (at most 30), sampled 1 in `sampling` (0: unsampled).
pub fn v5(flows: &[Flow], clock: Clock, sequence: u32, sampling: u16) -> Vec<u8> {
    let mut p = Vec::new();
    put16(&mut p, 5);
    put16(&mut p, flows.len() as u16);
    put32(&mut p, clock.uptime_ms);
    put32(&mut p, (clock.export_ms / 1000) as u32);
    put32(&mut p, 0);
    put32(&mut p, sequence);
    p.extend_from_slice(&[0, 0]);
    // Mode 01 (packet interval) in the top two bits.
    put16(&mut p, if sampling > 0 { 0x4000 | sampling } else { 0 });
    for f in flows {
        put_addr(&mut p, f.src);
        put_addr(&mut p, f.dst);
        put32(&mut p, 0);
        put16(&mut p, 1);
        put16(&mut p, 2);
        put32(&mut p, f.packets as u32);
        put32(&mut p, f.bytes as u32);
        put32(&mut p, clock.uptime_of(f.start_ms));
        put32(&mut p, clock.uptime_of(f.end_ms));
        put16(&mut p, f.src_port);
        put16(&mut p, f.dst_port);
        p.extend_from_slice(&[0, 0x18, f.protocol, 0]);
        p.extend_from_slice(&[0; 8]);
    }
    p
}

/// Template fields: (element id, length). v9 and IPFIX share the ids used here.
pub type Layout = &'static [(u16, u16)];

pub mod ie {
    pub const OCTETS: u16 = 1;
    pub const PACKETS: u16 = 2;
    pub const PROTOCOL: u16 = 4;
    pub const SRC_PORT: u16 = 7;
    pub const SRC_V4: u16 = 8;
    pub const DST_PORT: u16 = 11;
    pub const DST_V4: u16 = 12;
    pub const LAST_UPTIME: u16 = 21;
    pub const FIRST_UPTIME: u16 = 22;
    pub const SRC_V6: u16 = 27;
    pub const DST_V6: u16 = 28;
    pub const SAMPLING_INTERVAL: u16 = 34;
    pub const OBSERVATION_DOMAIN: u16 = 149;
    pub const START_MS: u16 = 152;
    pub const END_MS: u16 = 153;
    pub const SYSTEM_INIT_MS: u16 = 160;
    /// RFC 5103 reverse elements: enterprise bit set, enterprise number 29305.
    pub const REVERSE_OCTETS: u16 = 0x8000 | OCTETS;
    pub const REVERSE_PACKETS: u16 = 0x8000 | PACKETS;
}

/// IPv4 with uptime times and a per-record sampling interval (v9).
pub const V9_LAYOUT_A: Layout = &[
    (ie::SRC_V4, 4),
    (ie::DST_V4, 4),
    (ie::SRC_PORT, 2),
    (ie::DST_PORT, 2),
    (ie::PROTOCOL, 1),
    (ie::OCTETS, 8),
    (ie::PACKETS, 4),
    (ie::FIRST_UPTIME, 4),
    (ie::LAST_UPTIME, 4),
    (ie::SAMPLING_INTERVAL, 4),
];

/// The same template id redefined: reordered, IPv6, 4-byte octets, no sampling field (v9).
pub const V9_LAYOUT_B: Layout = &[
    (ie::PACKETS, 8),
    (ie::OCTETS, 4),
    (ie::SRC_V6, 16),
    (ie::DST_V6, 16),
    (ie::PROTOCOL, 1),
    (ie::SRC_PORT, 2),
    (ie::DST_PORT, 2),
    (ie::FIRST_UPTIME, 4),
    (ie::LAST_UPTIME, 4),
];

/// IPFIX biflow with absolute millisecond times.
pub const IPFIX_LAYOUT: Layout = &[
    (ie::SRC_V4, 4),
    (ie::DST_V4, 4),
    (ie::SRC_PORT, 2),
    (ie::DST_PORT, 2),
    (ie::PROTOCOL, 1),
    (ie::OCTETS, 8),
    (ie::PACKETS, 8),
    (ie::REVERSE_OCTETS, 8),
    (ie::REVERSE_PACKETS, 8),
    (ie::START_MS, 8),
    (ie::END_MS, 8),
];

/// IPFIX with uptime times (flowStartSysUpTime / flowEndSysUpTime), as softflowd's default
/// template sends them: they count from the init time announced in options data.
pub const IPFIX_UPTIME_LAYOUT: Layout = &[
    (ie::SRC_V4, 4),
    (ie::DST_V4, 4),
    (ie::SRC_PORT, 2),
    (ie::DST_PORT, 2),
    (ie::PROTOCOL, 1),
    (ie::OCTETS, 8),
    (ie::PACKETS, 8),
    (ie::FIRST_UPTIME, 4),
    (ie::LAST_UPTIME, 4),
];

const REVERSE_PEN: u32 = 29_305;

/// One data record of `flow` in `layout`.
fn data_record(out: &mut Vec<u8>, layout: Layout, f: &Flow, clock: Clock, sampling: u32) {
    for &(id, len) in layout {
        let n = |v: u64| v.to_be_bytes()[8 - len as usize..].to_vec();
        let bytes = match id {
            ie::SRC_V4 | ie::SRC_V6 => {
                let mut b = Vec::new();
                put_addr(&mut b, f.src);
                b
            }
            ie::DST_V4 | ie::DST_V6 => {
                let mut b = Vec::new();
                put_addr(&mut b, f.dst);
                b
            }
            ie::SRC_PORT => n(f.src_port.into()),
            ie::DST_PORT => n(f.dst_port.into()),
            ie::PROTOCOL => n(f.protocol.into()),
            ie::OCTETS => n(f.bytes),
            ie::PACKETS => n(f.packets),
            ie::REVERSE_OCTETS => n(f.reverse_bytes),
            ie::REVERSE_PACKETS => n(f.reverse_packets),
            ie::FIRST_UPTIME => n(clock.uptime_of(f.start_ms).into()),
            ie::LAST_UPTIME => n(clock.uptime_of(f.end_ms).into()),
            ie::START_MS => n(f.start_ms),
            ie::END_MS => n(f.end_ms),
            ie::SAMPLING_INTERVAL => n(sampling.into()),
            other => panic!("the test exporter does not know element {other}"),
        };
        assert_eq!(bytes.len(), len as usize, "element {id}");
        out.extend_from_slice(&bytes);
    }
}

/// Pads a set or flowset to a multiple of 4 bytes and writes its length at `start + 2`.
fn close_set(p: &mut Vec<u8>, start: usize) {
    while !(p.len() - start).is_multiple_of(4) {
        p.push(0);
    }
    let len = (p.len() - start) as u16;
    p[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// What goes into one v9 or IPFIX message.
#[derive(Debug, Clone)]
pub enum Set<'a> {
    /// A template definition.
    Template { id: u16, layout: Layout },
    /// Data records of template `id`.
    Data {
        id: u16,
        layout: Layout,
        flows: &'a [Flow],
        sampling: u32,
    },
    /// v9 only: an options template scoped to the exporter ("System") carrying a sampling
    /// interval, and its one data record.
    SamplingOptions { id: u16, interval: u32 },
    /// IPFIX only: an options template set (scope observationDomainId, then
    /// systemInitTimeMilliseconds, 8 bytes) and an options data set with its one record: the
    /// exporter's init time, which uptime times count from (RFC 7011 §3.4.2.2, RFC 5102).
    InitTimeOptions { id: u16, domain: u32, init_ms: u64 },
}

/// The ids of the template set in each format.
const V9_TEMPLATE_SET: u16 = 0;
const IPFIX_TEMPLATE_SET: u16 = 2;

/// Writes a template or data set (header, then records; its length is left to the caller) and
/// returns how many records it holds. Reverse elements carry their enterprise number in IPFIX.
fn template_or_data_set(p: &mut Vec<u8>, set: &Set, template_set: u16, clock: Clock) -> u16 {
    match set {
        Set::Template { id, layout } => {
            put16(p, template_set);
            put16(p, 0);
            put16(p, *id);
            put16(p, layout.len() as u16);
            for &(field, len) in *layout {
                put16(p, field);
                put16(p, len);
                if template_set == IPFIX_TEMPLATE_SET && field & 0x8000 != 0 {
                    put32(p, REVERSE_PEN);
                }
            }
            1
        }
        Set::Data {
            id,
            layout,
            flows,
            sampling,
        } => {
            put16(p, *id);
            put16(p, 0);
            for f in *flows {
                data_record(p, layout, f, clock, *sampling);
            }
            flows.len() as u16
        }
        Set::SamplingOptions { .. } => panic!("options are written by the v9 exporter itself"),
        Set::InitTimeOptions { .. } => panic!("options are written by the IPFIX exporter itself"),
    }
}

/// The IPFIX options template set id.
const IPFIX_OPTIONS_TEMPLATE_SET: u16 = 3;

/// Writes an IPFIX options template set and its data set announcing `init_ms`.
fn ipfix_init_time(p: &mut Vec<u8>, id: u16, domain: u32, init_ms: u64) {
    let start = p.len();
    // Set header, then: template id, field count 2, scope field count 1, fields.
    for v in [
        IPFIX_OPTIONS_TEMPLATE_SET,
        0,
        id,
        2,
        1,
        ie::OBSERVATION_DOMAIN,
        4,
        ie::SYSTEM_INIT_MS,
        8,
    ] {
        put16(p, v);
    }
    let len = (p.len() - start) as u16;
    p[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    let data = p.len();
    put16(p, id);
    put16(p, 0);
    put32(p, domain);
    p.extend_from_slice(&init_ms.to_be_bytes());
    let len = (p.len() - data) as u16;
    p[data + 2..data + 4].copy_from_slice(&len.to_be_bytes());
}

/// A NetFlow v9 export packet.
pub fn v9(sets: &[Set], clock: Clock, sequence: u32, source_id: u32) -> Vec<u8> {
    let mut p = Vec::new();
    put16(&mut p, 9);
    put16(&mut p, 0); // count, filled in below
    put32(&mut p, clock.uptime_ms);
    put32(&mut p, (clock.export_ms / 1000) as u32);
    put32(&mut p, sequence);
    put32(&mut p, source_id);
    let mut count = 0u16;
    for set in sets {
        let start = p.len();
        if let Set::SamplingOptions { id, interval } = set {
            // Options template flowset (id 1): scope System (type 1, 4 bytes).
            for v in [1, 0, *id, 4, 4, 1, 4, ie::SAMPLING_INTERVAL, 4] {
                put16(&mut p, v);
            }
            close_set(&mut p, start);
            let data = p.len();
            put16(&mut p, *id);
            put16(&mut p, 0);
            put32(&mut p, 0);
            put32(&mut p, *interval);
            close_set(&mut p, data);
            count += 2;
            continue;
        }
        if let Set::InitTimeOptions { .. } = set {
            panic!("the test exporter announces init times in IPFIX only");
        }
        count += template_or_data_set(&mut p, set, V9_TEMPLATE_SET, clock);
        close_set(&mut p, start);
    }
    p[2..4].copy_from_slice(&count.to_be_bytes());
    p
}

/// An IPFIX message.
pub fn ipfix(sets: &[Set], clock: Clock, sequence: u32, domain: u32) -> Vec<u8> {
    let mut p = Vec::new();
    put16(&mut p, 10);
    put16(&mut p, 0); // length, filled in below
    put32(&mut p, (clock.export_ms / 1000) as u32);
    put32(&mut p, sequence);
    put32(&mut p, domain);
    for set in sets {
        if let Set::InitTimeOptions { id, domain, init_ms } = set {
            ipfix_init_time(&mut p, *id, *domain, *init_ms);
            continue;
        }
        let start = p.len();
        template_or_data_set(&mut p, set, IPFIX_TEMPLATE_SET, clock);
        // IPFIX sets need no padding; lengths are exact.
        let len = (p.len() - start) as u16;
        p[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p
}

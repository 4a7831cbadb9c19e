//! Community ID v1 flow hashing (the flow id Zeek, Suricata and the Elastic stack compute), so
//! records of one flow seen by two hosts, or by the meter and an IDS, join downstream. Here, in
//! the protocol crate, because a columnar block leaves out the ids its readers can derive
//! ([`derived`], `columns`).
//!
//! Owns: the hash (seed 0 in records): SHA-1 over seed (2 bytes, big-endian) ‖ source address
//! ‖ destination address ‖ IP protocol (1 byte) ‖ one zero byte ‖ source port ‖ destination port
//! (2 bytes each, big-endian; only for TCP, UDP, SCTP, and ICMP/ICMPv6 with their type/code
//! mapping), with the two endpoints in order (the smaller address, or on equal addresses the
//! smaller port, first) unless the ICMP message is one-way; the id is `1:` + base64 of the digest.
//! Must never: produce an id from a malformed tuple (addresses of different families or of
//! another length, a port over 65535): the record's id stays empty instead, as the
//! specification allows.

use std::net::IpAddr;

use crate::pb;
use base64::Engine;
use sha1::{Digest, Sha1};

const ICMP: u8 = 1;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMPV6: u8 = 58;
const SCTP: u8 = 132;

/// Sets `record.community_id` from its 5-tuple (seed 0); leaves it empty for a record without
/// addresses or with a malformed tuple. For ICMP and ICMPv6 the record's ports are read the way
/// NetFlow exporters fill them: `dst_port` = type × 256 + code, `src_port` 0.
pub fn stamp(record: &mut pb::FlowRecord) {
    record.community_id = id_of(record).unwrap_or_default();
}

/// The id a columnar block's readers derive for `r` (value 0 of its `community_id` column): the
/// Community ID of a TCP, UDP or SCTP record's tuple (seed 0); None for any other record, whose
/// id (if any) the block carries as text. Kept to these protocols so a reader needs no ICMP
/// type table (docs/read_columns.py derives it in a few lines).
pub fn derived(r: &pb::FlowRecord) -> Option<String> {
    match u8::try_from(r.ip_protocol).ok()? {
        TCP | UDP | SCTP => id_of(r),
        _ => None,
    }
}

fn id_of(r: &pb::FlowRecord) -> Option<String> {
    let src = addr(&r.src_addr)?;
    let dst = addr(&r.dst_addr)?;
    let proto = u8::try_from(r.ip_protocol).ok()?;
    let (sport, dport) = (u16::try_from(r.src_port).ok()?, u16::try_from(r.dst_port).ok()?);
    let ports = match proto {
        TCP | UDP | SCTP => Ports::Plain(sport, dport),
        ICMP | ICMPV6 if sport == 0 => Ports::Icmp {
            kind: (dport >> 8) as u8,
            code: dport as u8,
        },
        ICMP | ICMPV6 => return None,
        _ => Ports::None,
    };
    community_id_v1(0, src, dst, proto, ports)
}

fn addr(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// What stands in the ports' place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// TCP, UDP, SCTP: source and destination ports.
    Plain(u16, u16),
    /// ICMP (protocol 1) or ICMPv6 (58): the message's type and code.
    Icmp { kind: u8, code: u8 },
    /// Any other protocol: hashed without ports.
    None,
}

/// The Community ID v1 of a flow, `1:` + base64(SHA-1(...)); `None` when the addresses are of
/// different families.
pub fn community_id_v1(seed: u16, src: IpAddr, dst: IpAddr, proto: u8, ports: Ports) -> Option<String> {
    let (src, dst) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (s.octets().to_vec(), d.octets().to_vec()),
        (IpAddr::V6(s), IpAddr::V6(d)) => (s.octets().to_vec(), d.octets().to_vec()),
        _ => return None,
    };
    let (ports, one_way) = match ports {
        Ports::Plain(s, d) => (Some((s, d)), false),
        Ports::Icmp { kind, code } => {
            let (s, d, one_way) = icmp_ports(proto == ICMPV6, kind, code);
            (Some((s, d)), one_way)
        }
        Ports::None => (None, false),
    };
    let (sport, dport) = ports.unwrap_or((0, 0));
    let in_order = (src.as_slice(), sport) <= (dst.as_slice(), dport);
    let (a, b, pa, pb) = if one_way || in_order {
        (src, dst, sport, dport)
    } else {
        (dst, src, dport, sport)
    };
    let mut h = Sha1::new();
    h.update(seed.to_be_bytes());
    h.update(&a);
    h.update(&b);
    h.update([proto, 0]);
    if ports.is_some() {
        h.update(pa.to_be_bytes());
        h.update(pb.to_be_bytes());
    }
    let digest = h.finalize();
    Some(format!(
        "1:{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    ))
}

/// ICMP messages as endpoints (Zeek's convention, which the specification adopts): a request
/// or reply of a request/reply pair is (type, its counterpart's type), so both directions hash
/// alike; any other message is (type, code) and one-way (its endpoints are not reordered).
fn icmp_ports(v6: bool, kind: u8, code: u8) -> (u16, u16, bool) {
    const V4_PAIRS: [(u8, u8); 5] = [(8, 0), (13, 14), (15, 16), (10, 9), (17, 18)];
    const V6_PAIRS: [(u8, u8); 6] = [
        (128, 129),
        (130, 131),
        (133, 134),
        (135, 136),
        (139, 140),
        (144, 145),
    ];
    let pairs: &[(u8, u8)] = if v6 { &V6_PAIRS } else { &V4_PAIRS };
    let counterpart = pairs.iter().find_map(|&(a, b)| match kind {
        k if k == a => Some(b),
        k if k == b => Some(a),
        _ => None,
    });
    match counterpart {
        Some(other) => (kind.into(), other.into(), false),
        None => (kind.into(), code.into(), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's published baseline (`baseline/baseline_deflt.json` of
    /// corelight/community-id-spec, seed 0): protocol, source, destination, source port (the
    /// ICMP type), destination port (the ICMP code, or for a request/reply its counterpart's
    /// type), expected id.
    const BASELINE: [(u8, &str, &str, u16, u16, &str); 23] = [
        (
            58,
            "fe80::200:86ff:fe05:80da",
            "fe80::260:97ff:fe07:69ea",
            135,
            136,
            "1:dGHyGvjMfljg6Bppwm3bg0LO8TY=",
        ),
        (
            58,
            "fe80::260:97ff:fe07:69ea",
            "fe80::200:86ff:fe05:80da",
            136,
            135,
            "1:dGHyGvjMfljg6Bppwm3bg0LO8TY=",
        ),
        (
            58,
            "fe80::260:97ff:fe07:69ea",
            "fe80::200:86ff:fe05:80da",
            135,
            136,
            "1:zavyT/cezQr1fmImYCwYnMXbgck=",
        ),
        (
            58,
            "fe80::200:86ff:fe05:80da",
            "fe80::260:97ff:fe07:69ea",
            136,
            135,
            "1:zavyT/cezQr1fmImYCwYnMXbgck=",
        ),
        (
            58,
            "3ffe:501:1800:2345::2",
            "3ffe:507:0:1:200:86ff:fe05:80da",
            3,
            0,
            "1:2ObVBgIn28oZvibYZhZMBgh7WdQ=",
        ),
        (
            58,
            "3ffe:501:410:0:2c0:dfff:fe47:33e",
            "3ffe:507:0:1:200:86ff:fe05:80da",
            1,
            4,
            "1:hLZd0XGWojozrvxqE0dWB1iM6R0=",
        ),
        (
            58,
            "3ffe:507:0:1:200:86ff:fe05:80da",
            "3ffe:501:0:1001::2",
            128,
            129,
            "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg=",
        ),
        (
            58,
            "3ffe:501:0:1001::2",
            "3ffe:507:0:1:200:86ff:fe05:80da",
            129,
            128,
            "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg=",
        ),
        (
            58,
            "fe80::200:86ff:fe05:80da",
            "ff02::2",
            133,
            134,
            "1:hO+sN4H+MG5MY/8hIrXPqc4ZQz0=",
        ),
        (
            58,
            "fe80::260:97ff:fe07:69ea",
            "ff02::1",
            134,
            133,
            "1:pkvHqCL88/tg1k4cPigmZXUtL00=",
        ),
        (
            1,
            "192.168.0.89",
            "192.168.0.1",
            8,
            0,
            "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=",
        ),
        (
            1,
            "192.168.0.1",
            "192.168.0.89",
            0,
            8,
            "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=",
        ),
        (1, "10.0.0.1", "10.0.0.2", 11, 0, "1:YHxtAirCG//0OzkcVAukqKQN9xM="),
        (
            6,
            "2001:470:e5bf:dead:4957:2174:e82c:4887",
            "2607:f8b0:400c:c03::1a",
            63943,
            25,
            "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=",
        ),
        (
            6,
            "2607:f8b0:400c:c03::1a",
            "2001:470:e5bf:dead:4957:2174:e82c:4887",
            25,
            63943,
            "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=",
        ),
        (
            132,
            "192.168.170.8",
            "192.168.170.56",
            7,
            7,
            "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs=",
        ),
        (
            132,
            "192.168.170.56",
            "192.168.170.8",
            7,
            7,
            "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs=",
        ),
        (
            6,
            "128.232.110.120",
            "66.35.250.204",
            34855,
            80,
            "1:LQU9qZlK+B5F3KDmev6m5PMibrg=",
        ),
        (
            6,
            "66.35.250.204",
            "128.232.110.120",
            80,
            34855,
            "1:LQU9qZlK+B5F3KDmev6m5PMibrg=",
        ),
        (
            17,
            "192.168.1.52",
            "8.8.8.8",
            54585,
            53,
            "1:d/FP5EW3wiY1vCndhwleRRKHowQ=",
        ),
        (
            17,
            "8.8.8.8",
            "192.168.1.52",
            53,
            54585,
            "1:d/FP5EW3wiY1vCndhwleRRKHowQ=",
        ),
        (
            46,
            "10.1.12.1",
            "10.1.12.2",
            0,
            0,
            "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw=",
        ),
        (
            46,
            "10.1.12.2",
            "10.1.12.1",
            0,
            0,
            "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw=",
        ),
    ];

    fn ports_for(proto: u8, sport: u16, dport: u16) -> Ports {
        match proto {
            TCP | UDP | SCTP => Ports::Plain(sport, dport),
            ICMP | ICMPV6 => Ports::Icmp {
                kind: sport as u8,
                code: dport as u8,
            },
            _ => Ports::None,
        }
    }

    #[test]
    fn the_specifications_baseline_hashes_alike() {
        for (proto, src, dst, sport, dport, want) in BASELINE {
            let (s, d) = (src.parse().expect("src"), dst.parse().expect("dst"));
            let got = community_id_v1(0, s, d, proto, ports_for(proto, sport, dport));
            assert_eq!(
                got.as_deref(),
                Some(want),
                "{proto} {src}:{sport} -> {dst}:{dport}"
            );
        }
    }

    #[test]
    fn the_specifications_tables_hash_alike_with_seed_0_and_1() {
        // baseline/README.md: TCP, UDP and SCTP 1.2.3.4:1122 -> 5.6.7.8:3344 (and back), RSVP.
        let cases: [(u8, &str, &str); 4] = [
            (
                TCP,
                "1:wCb3OG7yAFWelaUydu0D+125CLM=",
                "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk=",
            ),
            (
                UDP,
                "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg=",
                "1:OShq+iKDAMVouh/4bMxB9Sz4amw=",
            ),
            (
                SCTP,
                "1:EKt4MsxuyaE6mL+hmrEkQ9csDD8=",
                "1:uitchpn5MMGAQKBJh7bIr/bAr7s=",
            ),
            (
                46,
                "1:ikv3kmf89luf73WPz1jOs49S768=",
                "1:/buhqeOmaRCopOZFy9HnoJd5XW8=",
            ),
        ];
        let (a, b) = ("1.2.3.4".parse().expect("a"), "5.6.7.8".parse().expect("b"));
        for (proto, seed0, seed1) in cases {
            let out = ports_for(proto, 1122, 3344);
            let back = ports_for(proto, 3344, 1122);
            assert_eq!(community_id_v1(0, a, b, proto, out).as_deref(), Some(seed0));
            assert_eq!(community_id_v1(0, b, a, proto, back).as_deref(), Some(seed0));
            assert_eq!(community_id_v1(1, a, b, proto, out).as_deref(), Some(seed1));
        }
        // ICMPv6 echo request and its reply; an unpaired type is one-way.
        let (x, y) = (
            "fe80:1:203:405:607:809:a0b:c0d".parse().expect("x"),
            "fe80:1011:1213:1415:1617:1819:1a1b:1c1d".parse().expect("y"),
        );
        let icmp6 = |kind| Ports::Icmp { kind, code: 0 };
        let echo = "1:0bf7hyMJUwt3fMED7z8LIfRpBeo=";
        assert_eq!(
            community_id_v1(0, x, y, ICMPV6, icmp6(128)).as_deref(),
            Some(echo)
        );
        assert_eq!(
            community_id_v1(0, y, x, ICMPV6, icmp6(129)).as_deref(),
            Some(echo)
        );
        let one_way = "1:fYC8+pz24E+EhANP1EZhpX0Dw10=";
        assert_eq!(
            community_id_v1(0, x, y, ICMPV6, icmp6(146)).as_deref(),
            Some(one_way)
        );
    }

    fn record(src: &[u8], dst: &[u8], proto: u32, sport: u32, dport: u32) -> pb::FlowRecord {
        pb::FlowRecord {
            src_addr: src.to_vec().into(),
            dst_addr: dst.to_vec().into(),
            ip_protocol: proto,
            src_port: sport,
            dst_port: dport,
            community_id: "stale".into(),
            ..Default::default()
        }
    }

    #[test]
    fn stamp_fills_records_and_leaves_malformed_ones_empty() {
        let mut r = record(&[1, 2, 3, 4], &[5, 6, 7, 8], 6, 1122, 3344);
        stamp(&mut r);
        assert_eq!(r.community_id, "1:wCb3OG7yAFWelaUydu0D+125CLM=");
        // NetFlow's ICMP convention: type 8 code 0 in dst_port.
        let mut r = record(&[192, 168, 0, 89], &[192, 168, 0, 1], 1, 0, 8 << 8);
        stamp(&mut r);
        assert_eq!(r.community_id, "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=");
        for mut bad in [
            record(&[], &[], 6, 1, 2),
            record(&[1, 2, 3, 4], &[0; 16], 6, 1, 2),
            record(&[1, 2, 3], &[5, 6, 7, 8], 6, 1, 2),
            record(&[1, 2, 3, 4], &[5, 6, 7, 8], 6, 70_000, 2),
            record(&[1, 2, 3, 4], &[5, 6, 7, 8], 300, 1, 2),
            record(&[1, 2, 3, 4], &[5, 6, 7, 8], 1, 3, 8 << 8),
        ] {
            stamp(&mut bad);
            assert_eq!(bad.community_id, "", "{bad:?}");
        }
    }
}

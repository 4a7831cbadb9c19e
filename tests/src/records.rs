//! Picking stored records apart for the capture tests: the records of one flow's end, and the
//! name the kernel gives this process.
//!
//! Owns: matching an address as records carry it (4 bytes for IPv4, IPv4-mapped included; 16 for
//! IPv6). Must never: match by port alone (every meter reads the whole host, other tests
//! included).

use std::net::{IpAddr, SocketAddr};

use ringflow_proto::pb;

/// `ip` as records carry it.
pub fn octets(ip: IpAddr) -> Vec<u8> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// The stored records with `dst` as their destination (a test's server).
pub fn records_to(stored: &[pb::StoredBatch], dst: SocketAddr) -> Vec<pb::FlowRecord> {
    let ip = octets(dst.ip());
    stored
        .iter()
        .flat_map(|b| &b.records)
        .filter(|r| r.dst_port == u32::from(dst.port()) && r.dst_addr.as_ref() == ip.as_slice())
        .cloned()
        .collect()
}

/// How many stored records have `end` as their source (a server's socket, which must not report
/// a flow whose client is on this host).
pub fn records_from(stored: &[pb::StoredBatch], end: SocketAddr) -> usize {
    let ip = octets(end.ip());
    stored
        .iter()
        .flat_map(|b| &b.records)
        .filter(|r| r.src_port == u32::from(end.port()) && r.src_addr.as_ref() == ip.as_slice())
        .count()
}

/// This process's name as the kernel has it (`/proc/self/comm`).
pub fn own_name() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

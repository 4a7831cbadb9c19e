//! The byte layouts the meter's BPF programs share with it (`agent/bpf/flows.bpf.c`): flow
//! keys and values of the `flows` map, owners of the `owners` map, the events of the `events`
//! ring buffer and the per-CPU `stats`. Sans-IO: bytes in, structs out.
//!
//! Owns: the offsets (little-endian, as the programs run on this host; ports in host order,
//! addresses as IPv6 or IPv4-mapped IPv6). Must never: disagree with the C structs: change both
//! together (the tests here pin the sizes the C comments state).

use std::net::{IpAddr, Ipv6Addr};

pub const KEY_LEN: usize = 32;
pub const VALUE_LEN: usize = 104;
pub const OWNER_LEN: usize = 72;
pub const EVENT_LEN: usize = KEY_LEN + VALUE_LEN + OWNER_LEN + 16;
pub const STATS_LEN: usize = 64;

/// `flow.flags`: this socket opened the flow (TCP: sent the SYN; UDP: sent the first packet).
pub const FLOW_INITIATOR: u8 = 1;
/// `flow.flags`: TCP: the state callbacks tell this connection's end.
pub const FLOW_CLOSE_TRACKED: u8 = 2;
/// `flow.flags`: TCP: whether this end connected is known (it was seen from its handshake).
pub const FLOW_ROLE_KNOWN: u8 = 4;
/// `flow.flags`: its end could not be told (the ring buffer was full): the next sweep ends it.
pub const FLOW_ENDED: u8 = 8;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// A key of the `flows` map: a socket, and for UDP the peer (TCP keys have no peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub cookie: u64,
    pub remote: [u8; 16],
    pub remote_port: u16,
    pub proto: u8,
}

impl FlowKey {
    pub fn parse(b: &[u8; KEY_LEN]) -> Self {
        Self {
            cookie: u64_at(b, 0),
            remote: array16(b, 8),
            remote_port: u16_at(b, 24),
            proto: b[26],
        }
    }

    pub fn to_bytes(self) -> [u8; KEY_LEN] {
        let mut b = [0u8; KEY_LEN];
        b[0..8].copy_from_slice(&self.cookie.to_le_bytes());
        b[8..24].copy_from_slice(&self.remote);
        b[24..26].copy_from_slice(&self.remote_port.to_le_bytes());
        b[26] = self.proto;
        b
    }
}

/// A flow's counters since its first packet; times are CLOCK_MONOTONIC nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub payload_out: u64,
    pub payload_in: u64,
    pub packets_out: u64,
    pub packets_in: u64,
    pub ip_bytes_out: u64,
    pub ip_bytes_in: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub local: [u8; 16],
    pub remote: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub flags: u8,
}

impl FlowValue {
    pub fn parse(b: &[u8; VALUE_LEN]) -> Self {
        Self {
            payload_out: u64_at(b, 0),
            payload_in: u64_at(b, 8),
            packets_out: u64_at(b, 16),
            packets_in: u64_at(b, 24),
            ip_bytes_out: u64_at(b, 32),
            ip_bytes_in: u64_at(b, 40),
            first_ns: u64_at(b, 48),
            last_ns: u64_at(b, 56),
            local: array16(b, 64),
            remote: array16(b, 80),
            local_port: u16_at(b, 96),
            remote_port: u16_at(b, 98),
            flags: b[100],
        }
    }

    #[cfg(test)]
    pub fn to_bytes(self) -> [u8; VALUE_LEN] {
        let mut b = [0u8; VALUE_LEN];
        let counters = [
            self.payload_out,
            self.payload_in,
            self.packets_out,
            self.packets_in,
            self.ip_bytes_out,
            self.ip_bytes_in,
            self.first_ns,
            self.last_ns,
        ];
        for (i, c) in counters.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&c.to_le_bytes());
        }
        b[64..80].copy_from_slice(&self.local);
        b[80..96].copy_from_slice(&self.remote);
        b[96..98].copy_from_slice(&self.local_port.to_le_bytes());
        b[98..100].copy_from_slice(&self.remote_port.to_le_bytes());
        b[100] = self.flags;
        b
    }
}

/// Who created a socket, as `rf_sock_create` saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfOwner {
    pub cgroup_id: u64,
    /// When the socket was created (CLOCK_MONOTONIC).
    pub created_ns: u64,
    pub pid: u32,
    pub uid: u32,
    /// `comm`, up to its first NUL.
    pub comm: String,
}

impl BpfOwner {
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < OWNER_LEN {
            return None;
        }
        let comm = &b[32..48];
        let end = comm.iter().position(|&c| c == 0).unwrap_or(comm.len());
        Some(Self {
            cgroup_id: u64_at(b, 0),
            created_ns: u64_at(b, 8),
            pid: u32_at(b, 16),
            uid: u32_at(b, 24),
            comm: String::from_utf8_lossy(&comm[..end]).into_owned(),
        })
    }
}

/// Why an event was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndKind {
    /// A TCP connection reached CLOSE: its counters are final.
    Closed,
    /// A socket was released by its process (UDP: its end; TCP established before the meter:
    /// the FIN may still follow).
    Released,
}

/// One event of the ring buffer: a socket's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndEvent {
    pub kind: EndKind,
    pub cookie: u64,
    /// The flow the programs ended (deleted from the map) with its final counters.
    pub flow: Option<(FlowKey, FlowValue)>,
    pub owner: Option<BpfOwner>,
    pub at_ns: u64,
    /// The socket may have other flows still in the map (they end at the next sweep).
    pub more_flows: bool,
}

const EVENT_HAS_FLOW: u8 = 1;
const EVENT_HAS_OWNER: u8 = 2;
const EVENT_MORE_FLOWS: u8 = 4;

impl EndEvent {
    /// `None` for bytes that are not an event of this layout.
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < EVENT_LEN {
            return None;
        }
        let key: &[u8; KEY_LEN] = b[..KEY_LEN].try_into().ok()?;
        let value: &[u8; VALUE_LEN] = b[KEY_LEN..KEY_LEN + VALUE_LEN].try_into().ok()?;
        let owner = &b[KEY_LEN + VALUE_LEN..KEY_LEN + VALUE_LEN + OWNER_LEN];
        let tail = KEY_LEN + VALUE_LEN + OWNER_LEN;
        let kind = match b[tail + 8] {
            1 => EndKind::Closed,
            2 => EndKind::Released,
            _ => return None,
        };
        let has = b[tail + 9];
        let key = FlowKey::parse(key);
        Some(Self {
            kind,
            cookie: key.cookie,
            flow: (has & EVENT_HAS_FLOW != 0).then(|| (key, FlowValue::parse(value))),
            owner: if has & EVENT_HAS_OWNER != 0 {
                BpfOwner::parse(owner)
            } else {
                None
            },
            at_ns: u64_at(b, tail),
            more_flows: has & EVENT_MORE_FLOWS != 0,
        })
    }
}

/// The programs' counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets not counted: the flow map was full.
    pub flows_full: u64,
    /// Their payload bytes.
    pub flows_full_bytes: u64,
    /// Sockets whose owner was not kept: the owner map was full.
    pub owners_full: u64,
    /// Ends not told: the ring buffer was full.
    pub events_lost: u64,
    /// Packets of TCP/UDP sockets whose headers could not be read.
    pub unparsed: u64,
}

impl Stats {
    /// Sums the per-CPU values.
    pub fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a [u8; STATS_LEN]>) -> Self {
        per_cpu.into_iter().fold(Self::default(), |s, b| Self {
            flows_full: s.flows_full + u64_at(b, 0),
            flows_full_bytes: s.flows_full_bytes + u64_at(b, 8),
            owners_full: s.owners_full + u64_at(b, 16),
            events_lost: s.events_lost + u64_at(b, 24),
            unparsed: s.unparsed + u64_at(b, 32),
        })
    }

    /// What was counted since `before`.
    pub fn since(&self, before: &Self) -> Self {
        Self {
            flows_full: self.flows_full.saturating_sub(before.flows_full),
            flows_full_bytes: self.flows_full_bytes.saturating_sub(before.flows_full_bytes),
            owners_full: self.owners_full.saturating_sub(before.owners_full),
            events_lost: self.events_lost.saturating_sub(before.events_lost),
            unparsed: self.unparsed.saturating_sub(before.unparsed),
        }
    }
}

/// An address as the programs store it, IPv4-mapped addresses given back as IPv4.
pub fn addr(b: &[u8; 16]) -> IpAddr {
    Ipv6Addr::from(*b).to_canonical()
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn array16(b: &[u8], at: usize) -> [u8; 16] {
    let mut x = [0u8; 16];
    x.copy_from_slice(&b[at..at + 16]);
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_c_structs() {
        // flows.bpf.c: flow_key 32, flow_value 104, owner 72, event 32 + 104 + 72 + 16.
        assert_eq!((KEY_LEN, VALUE_LEN, OWNER_LEN, EVENT_LEN), (32, 104, 72, 224));
    }

    #[test]
    fn a_key_and_a_value_round_trip() {
        let key = FlowKey {
            cookie: 0x0102_0304_0506_0708,
            remote: Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0x7f00, 1]).octets(),
            remote_port: 5353,
            proto: IPPROTO_UDP,
        };
        assert_eq!(FlowKey::parse(&key.to_bytes()), key);
        assert_eq!(addr(&key.remote), IpAddr::from([127, 0, 0, 1]));
        let value = FlowValue {
            payload_out: 1,
            payload_in: 2,
            packets_out: 3,
            packets_in: 4,
            ip_bytes_out: 5,
            ip_bytes_in: 6,
            first_ns: 7,
            last_ns: 8,
            local: [9; 16],
            remote: [10; 16],
            local_port: 11,
            remote_port: 12,
            flags: FLOW_INITIATOR | FLOW_ROLE_KNOWN,
        };
        assert_eq!(FlowValue::parse(&value.to_bytes()), value);
    }

    #[test]
    fn an_event_carries_what_its_flags_say() {
        let key = FlowKey {
            cookie: 77,
            remote: [0; 16],
            remote_port: 0,
            proto: IPPROTO_TCP,
        };
        let mut b = vec![0u8; EVENT_LEN];
        b[..KEY_LEN].copy_from_slice(&key.to_bytes());
        let o = KEY_LEN + VALUE_LEN;
        b[o + 16..o + 20].copy_from_slice(&4242u32.to_le_bytes());
        b[o + 32..o + 36].copy_from_slice(b"curl");
        let tail = o + OWNER_LEN;
        b[tail..tail + 8].copy_from_slice(&99u64.to_le_bytes());
        b[tail + 8] = 1;
        b[tail + 9] = EVENT_HAS_OWNER;
        let e = EndEvent::parse(&b).expect("an event");
        assert_eq!(e.kind, EndKind::Closed);
        assert_eq!((e.cookie, e.at_ns, e.flow, e.more_flows), (77, 99, None, false));
        let owner = e.owner.expect("owner");
        assert_eq!((owner.pid, owner.comm.as_str()), (4242, "curl"));
        b[tail + 8] = 9;
        assert_eq!(EndEvent::parse(&b), None, "an unknown kind");
        assert_eq!(EndEvent::parse(&b[..10]), None, "too short");
    }
}

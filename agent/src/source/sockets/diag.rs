//! Reads the kernel's TCP socket table through netlink sock_diag (`NETLINK_SOCK_DIAG`,
//! `SOCK_DIAG_BY_FAMILY` dumps for IPv4 and IPv6, with `tcp_info`). Blocking calls: the caller
//! runs them off the async runtime.
//!
//! Owns: the netlink socket, the dump request, and decoding `tcp_info` by its fixed kernel
//! layout (any kernel since 4.2 has every field read here; a shorter structure yields no
//! counters rather than wrong ones). Must never: need privileges (an unprivileged process sees
//! every TCP socket of its network namespace).

use std::io;
use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, nlas::Nla,
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

use super::table::{SocketSample, TcpCounters};

/// Room for one datagram of a dump (the kernel sends up to 32 KiB at a time).
const RECEIVE_BUFFER: usize = 256 << 10;

/// A connected sock_diag socket.
pub struct SockDiag {
    socket: Socket,
    buffer: Vec<u8>,
}

impl SockDiag {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&NetlinkAddr::new(0, 0))?;
        Ok(Self {
            socket,
            buffer: Vec::with_capacity(RECEIVE_BUFFER),
        })
    }

    /// Every TCP socket, IPv4 and IPv6, in every state but TIME_WAIT.
    pub fn read_tcp(&mut self) -> io::Result<Vec<SocketSample>> {
        let mut samples = Vec::new();
        for family in [AF_INET, AF_INET6] {
            self.dump(family, &mut samples)?;
        }
        Ok(samples)
    }

    fn dump(&mut self, family: u8, out: &mut Vec<SocketSample>) -> io::Result<()> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let socket_id = if family == AF_INET {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        };
        let mut request = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::INFO,
                // TIME_WAIT sockets carry no counters and a busy host has hundreds of
                // thousands of them (60 s of closed connections): not asked for.
                states: StateFlags::all() - StateFlags::TIME_WAIT,
                socket_id,
            })
            .into(),
        );
        request.finalize();
        let mut bytes = vec![0; request.buffer_len()];
        request.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;
        loop {
            self.buffer.clear();
            let n = self.socket.recv(&mut self.buffer, 0)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "netlink dump ended early",
                ));
            }
            let mut at = 0;
            while at < n {
                let message = <NetlinkMessage<SockDiagMessage>>::deserialize(&self.buffer[at..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let length = message.header.length as usize;
                match message.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                        out.push(sample_of(&r));
                    }
                    _ => {}
                }
                if length == 0 {
                    break;
                }
                at += length;
            }
        }
    }
}

/// One socket as the kernel describes it, in a dump or a destroy notification (whose `inode`
/// is 0). The owner is found later, by the caller.
pub fn sample_of(r: &InetResponse) -> SocketSample {
    let tcp_info = r.nlas.iter().find_map(|nla| match nla {
        Nla::TcpInfo(bytes) => Some(bytes.as_slice()),
        _ => None,
    });
    let id = &r.header.socket_id;
    SocketSample {
        cookie: u64::from_ne_bytes(id.cookie),
        local: endpoint(id.source_address, id.source_port),
        remote: endpoint(id.destination_address, id.destination_port),
        state: r.header.state,
        inode: u64::from(r.header.inode),
        counters: tcp_info.and_then(decode_tcp_info),
        owner: None,
    }
}

/// An address as one end of a flow: IPv4-mapped IPv6 (a dual-stack socket talking IPv4) is
/// reported as the IPv4 address it is.
fn endpoint(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.to_canonical(), port)
}

/// Offsets in `struct tcp_info` (`include/uapi/linux/tcp.h`), native byte order.
const RTT_AT: usize = 68;
const BYTES_ACKED_AT: usize = 120;
const BYTES_RECEIVED_AT: usize = 128;
const SEGS_OUT_AT: usize = 136;
const SEGS_IN_AT: usize = 140;

/// The counters in a `tcp_info`; `None` when it is too short to hold them.
pub fn decode_tcp_info(bytes: &[u8]) -> Option<TcpCounters> {
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_ne_bytes)
    };
    Some(TcpCounters {
        bytes_sent: u64_at(BYTES_ACKED_AT)?,
        bytes_received: u64_at(BYTES_RECEIVED_AT)?,
        segments_out: u32_at(SEGS_OUT_AT)?,
        segments_in: u32_at(SEGS_IN_AT)?,
        rtt_micros: u32_at(RTT_AT)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_info_fields_are_read_at_their_kernel_offsets_and_short_ones_refused() {
        let mut info = vec![0u8; 232];
        info[RTT_AT..RTT_AT + 4].copy_from_slice(&1234u32.to_ne_bytes());
        info[BYTES_ACKED_AT..BYTES_ACKED_AT + 8].copy_from_slice(&50_000_000u64.to_ne_bytes());
        info[BYTES_RECEIVED_AT..BYTES_RECEIVED_AT + 8].copy_from_slice(&5_000_000u64.to_ne_bytes());
        info[SEGS_OUT_AT..SEGS_OUT_AT + 4].copy_from_slice(&700u32.to_ne_bytes());
        info[SEGS_IN_AT..SEGS_IN_AT + 4].copy_from_slice(&90u32.to_ne_bytes());
        let c = decode_tcp_info(&info).unwrap();
        assert_eq!(
            (
                c.bytes_sent,
                c.bytes_received,
                c.segments_out,
                c.segments_in,
                c.rtt_micros
            ),
            (50_000_000, 5_000_000, 700, 90, 1234)
        );
        assert_eq!(decode_tcp_info(&info[..104]), None);
    }

    #[test]
    fn a_real_read_sees_a_loopback_connection_with_its_bytes() {
        for loopback in ["127.0.0.1:0", "[::1]:0"] {
            read_sees_a_connection_on(loopback);
        }
    }

    fn read_sees_a_connection_on(loopback: &str) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind(loopback).unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(&[7u8; 100_000]).unwrap();
        let mut got = vec![0u8; 100_000];
        server.read_exact(&mut got).unwrap();
        server.write_all(&[1u8; 3_000]).unwrap();
        client.read_exact(&mut got[..3_000]).unwrap();

        let samples = SockDiag::open().unwrap().read_tcp().unwrap();
        let local = client.local_addr().unwrap();
        let mine = samples
            .iter()
            .find(|s| s.local == local && s.remote == listener.local_addr().unwrap())
            .expect("the client's socket is in the table");
        let c = mine.counters.unwrap();
        assert_eq!(c.bytes_received, 3_000);
        // bytes_acked counts the acknowledged SYN too on some kernels.
        assert!((100_000..=100_001).contains(&c.bytes_sent), "{c:?}");
        assert!(
            samples
                .iter()
                .any(|s| s.state == super::super::table::TCP_LISTEN
                    && s.local == listener.local_addr().unwrap())
        );
    }
}

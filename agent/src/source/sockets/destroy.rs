//! The kernel's TCP socket-destroy notifications: a netlink sock_diag socket subscribed to the
//! multicast groups `SKNLGRP_INET_TCP_DESTROY` and `SKNLGRP_INET6_TCP_DESTROY`. Each
//! notification is an `inet_diag_msg` with the socket's cookie, addresses and final `tcp_info`
//! (its `inode` is 0: the socket is gone), sent when the kernel frees a TCP socket.
//!
//! Owns: that socket, its receive buffer size, reading it without blocking (tokio's `AsyncFd`
//! over the nonblocking netlink socket) and telling overflows (`ENOBUFS`: the kernel dropped
//! notifications because the buffer was full) from other errors. Must never: need privileges
//! (the kernel lets any process join these groups; `SO_RCVBUFFORCE` is tried and its refusal is
//! not an error), block the runtime, or decide what a notification means (the table does).

use std::io;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};
use tokio::io::unix::AsyncFd;

use super::diag::sample_of;
use super::table::SocketSample;

/// `SKNLGRP_INET_TCP_DESTROY` (`include/uapi/linux/sock_diag.h`).
const GROUP_TCP4_DESTROY: u32 = 1;
/// `SKNLGRP_INET6_TCP_DESTROY`.
const GROUP_TCP6_DESTROY: u32 = 3;

/// One notification is one datagram of a few hundred bytes; this holds the largest.
const DATAGRAM_BUFFER: usize = 16 << 10;

/// Datagrams read per wake-up at most, so a flood of closes cannot starve the source's other
/// work (dumps, flushes).
const MAX_PER_READ: usize = 4_096;

/// What one [`CloseEvents::read`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CloseRead {
    /// Notifications read (appended to the caller's vector).
    pub events: usize,
    /// Times the kernel said notifications were dropped since the last read (`ENOBUFS`); each
    /// stands for at least one lost notification, how many is not told.
    pub overflows: u64,
}

/// The subscribed notification socket.
pub struct CloseEvents {
    socket: AsyncFd<Socket>,
    buffer: Vec<u8>,
    /// The receive buffer the kernel granted (as it reports it: twice the size asked for).
    granted: usize,
}

impl CloseEvents {
    /// Subscribes to TCP destroy notifications for IPv4 and IPv6 with a receive buffer of
    /// `buffer_bytes`. Must run inside a tokio runtime.
    pub fn open(buffer_bytes: usize) -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        // Forcing needs CAP_NET_ADMIN; without it `net.core.rmem_max` caps the size.
        if rustix::net::sockopt::set_socket_recv_buffer_size_force(&socket, buffer_bytes).is_err() {
            socket.set_rx_buf_sz(buffer_bytes.min(i32::MAX as usize) as libc::c_int)?;
        }
        let granted = socket.get_rx_buf_sz()?;
        for group in [GROUP_TCP4_DESTROY, GROUP_TCP6_DESTROY] {
            socket.add_membership(group)?;
        }
        socket.set_non_blocking(true)?;
        // `AsyncFd::new` is deprecated for types whose fd could be closed behind its back; a
        // netlink `Socket` owns its fd and closes it only when dropped, after the `AsyncFd`
        // deregisters it, and the safe replacement needs `unsafe` at the call site.
        #[allow(deprecated)]
        let socket = AsyncFd::new(socket)?;
        Ok(Self {
            socket,
            buffer: Vec::with_capacity(DATAGRAM_BUFFER),
            granted,
        })
    }

    /// The receive buffer the kernel granted, in bytes.
    pub fn granted_buffer(&self) -> usize {
        self.granted
    }

    /// Waits until notifications (or an overflow) are there, then reads what is queued, up to
    /// [`MAX_PER_READ`] datagrams, appending the sockets to `out`. An error other than an
    /// overflow means the socket is unusable.
    pub async fn read(&mut self, out: &mut Vec<SocketSample>) -> io::Result<CloseRead> {
        let mut read = CloseRead::default();
        let mut guard = self.socket.readable().await?;
        for _ in 0..MAX_PER_READ {
            self.buffer.clear();
            let buffer = &mut self.buffer;
            match guard.try_io(|s| s.get_ref().recv(buffer, 0)) {
                Err(_would_block) => break,
                Ok(Ok(n)) => read.events += decode(&self.buffer[..n.min(self.buffer.len())], out),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => read.overflows += 1,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
            }
        }
        Ok(read)
    }
}

/// The sockets in one datagram (one notification, in practice); anything else is skipped.
fn decode(mut bytes: &[u8], out: &mut Vec<SocketSample>) -> usize {
    let mut found = 0;
    while !bytes.is_empty() {
        let Ok(message) = <NetlinkMessage<SockDiagMessage>>::deserialize(bytes) else {
            break;
        };
        if let NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) = &message.payload {
            out.push(sample_of(r));
            found += 1;
        }
        let length = message.header.length as usize;
        // Netlink messages are aligned to 4 bytes.
        let next = (length + 3) & !3;
        if length == 0 || next >= bytes.len() {
            break;
        }
        bytes = &bytes[next..];
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What the kernel tells of one loopback connection that moves 10,000 bytes up and 3,000
    /// down and closes: both ends' final counters, under their cookies. Pins what
    /// `tcpi_bytes_acked` and `tcpi_bytes_received` count beside the payload (the SYN, the
    /// FINs), which the integration tests assert exactly.
    #[tokio::test]
    async fn a_closed_loopback_connection_is_told_with_its_final_counters() {
        let mut events = CloseEvents::open(1 << 20).unwrap();
        assert!(events.granted_buffer() >= 2_048);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(server_addr), listener.accept());
        let (mut client, (mut server, _)) = (client.unwrap(), accepted.unwrap());
        let client_addr = client.local_addr().unwrap();
        client.write_all(&[1; 10_000]).await.unwrap();
        let mut got = vec![0; 10_000];
        server.read_exact(&mut got).await.unwrap();
        server.write_all(&[2; 3_000]).await.unwrap();
        client.read_exact(&mut got[..3_000]).await.unwrap();
        // The client closes first, the way an HTTP/1.0 client would after its answer.
        client.shutdown().await.unwrap();
        assert_eq!(server.read(&mut got).await.unwrap(), 0);
        drop(server);
        drop(client);

        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mine = |s: &SocketSample| {
            (s.local == client_addr && s.remote == server_addr)
                || (s.local == server_addr && s.remote == client_addr)
        };
        while seen.iter().filter(|s| mine(s)).count() < 2 {
            let read = tokio::time::timeout_at(deadline, events.read(&mut seen))
                .await
                .expect("both ends' notifications within 10 s")
                .unwrap();
            assert_eq!(read.overflows, 0);
        }
        let client_end = seen.iter().find(|s| s.local == client_addr).unwrap();
        let server_end = seen.iter().find(|s| s.local == server_addr).unwrap();
        assert_eq!(client_end.inode, 0, "the socket is gone: no inode");
        assert_ne!(client_end.cookie, server_end.cookie);
        let (c, s) = (client_end.counters.unwrap(), server_end.counters.unwrap());
        // bytes_acked: the payload, plus the SYN on the connecting end, plus each end's FIN once
        // the peer acknowledged it; bytes_received: the payload plus the peer's FIN.
        assert_eq!((c.bytes_sent, c.bytes_received), (10_002, 3_001), "client {c:?}");
        assert_eq!((s.bytes_sent, s.bytes_received), (3_001, 10_001), "server {s:?}");
    }

    #[test]
    fn garbage_decodes_to_nothing() {
        let mut out = Vec::new();
        assert_eq!(decode(&[0xff; 40], &mut out), 0);
        assert_eq!(decode(&[], &mut out), 0);
        assert!(out.is_empty());
    }
}

//! What the kernel knows about our UDP socket: the receive buffer it granted and the datagrams it
//! dropped because that buffer was full. A burst of handshakes that overflows the buffer is lost
//! before quinn ever sees it, so these numbers are how an operator tells "the collector refused"
//! from "the kernel dropped".
//!
//! Owns: parsing `/proc/net/udp{,6}` (per-socket `drops`, found by the socket's inode) and
//! `/proc/net/snmp{,6}` (host-wide `RcvbufErrors`). The parsers are pure; [`UdpSocketProbe::refresh`]
//! reads the files (a few KiB of procfs, at scrape time). Must never: fail the scrape; a missing
//! file (not Linux, no procfs) leaves the gauges at their last value.

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use crate::telemetry::CollectorMetrics;

/// Identifies the QUIC socket to the kernel's tables.
#[derive(Debug, Clone, Copy, Default)]
pub struct UdpSocketProbe {
    /// Inode of the socket (0 if unknown).
    pub inode: u64,
    /// Receive buffer the kernel granted (Linux reports twice the usable size).
    pub receive_buffer_bytes: usize,
}

impl UdpSocketProbe {
    pub fn of(socket: &std::net::UdpSocket) -> Self {
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd()))
            .map(|m| m.ino())
            .unwrap_or(0);
        Self {
            inode,
            receive_buffer_bytes: ringflow_proto::quic::granted_recv_buffer(socket).unwrap_or(0),
        }
    }

    /// Reads the kernel's counters into the metrics.
    pub fn refresh(&self, metrics: &CollectorMetrics) {
        if self.inode != 0 {
            let drops = ["/proc/net/udp", "/proc/net/udp6"]
                .iter()
                .filter_map(|p| std::fs::read_to_string(p).ok())
                .find_map(|table| socket_drops(&table, self.inode));
            if let Some(drops) = drops {
                metrics.runtime.udp_socket_drops.set(drops as i64);
            }
        }
        let v4 = std::fs::read_to_string("/proc/net/snmp")
            .ok()
            .and_then(|t| snmp_rcvbuf_errors(&t));
        let v6 = std::fs::read_to_string("/proc/net/snmp6")
            .ok()
            .and_then(|t| snmp6_rcvbuf_errors(&t));
        if v4.is_some() || v6.is_some() {
            let total = v4.unwrap_or(0) + v6.unwrap_or(0);
            metrics.runtime.udp_receive_buffer_errors.set(total as i64);
        }
    }
}

/// The `drops` column of the socket with `inode` in a `/proc/net/udp` table.
pub fn socket_drops(table: &str, inode: u64) -> Option<u64> {
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    // The header names "tx_queue rx_queue" and "tr tm->when" as two words each over one column,
    // so count columns from the end: inode is 4th from last ("inode ref pointer drops").
    if header.last() != Some(&"drops") {
        return None;
    }
    lines.find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let n = cols.len();
        (n >= 4 && cols[n - 4].parse::<u64>().ok() == Some(inode)).then(|| cols[n - 1].parse().ok())?
    })
}

/// `Udp: ... RcvbufErrors ...` from `/proc/net/snmp` (a header line, then a value line).
pub fn snmp_rcvbuf_errors(snmp: &str) -> Option<u64> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let names = udp.next()?;
    let values = udp.next()?;
    let at = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// `Udp6RcvbufErrors N` from `/proc/net/snmp6`.
pub fn snmp6_rcvbuf_errors(snmp6: &str) -> Option<u64> {
    snmp6.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next()? == "Udp6RcvbufErrors").then(|| parts.next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_socket_and_its_drops() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  1: 0100007F:1151 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 424242 2 0000000000000000 17\n\
  2: 0100007F:1152 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 99 2 0000000000000000 0\n";
        assert_eq!(socket_drops(table, 424242), Some(17));
        assert_eq!(socket_drops(table, 99), Some(0));
        assert_eq!(socket_drops(table, 7), None);
    }

    #[test]
    fn reads_the_hosts_receive_buffer_errors() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
Udp: 100 2 2041 90 2041 0 0 0 0\n\
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
UdpLite: 0 0 0 0 0 0 0 0 0\n";
        assert_eq!(snmp_rcvbuf_errors(snmp), Some(2041));
        assert_eq!(
            snmp6_rcvbuf_errors("Udp6InErrors 3\nUdp6RcvbufErrors 5\n"),
            Some(5)
        );
        assert_eq!(snmp6_rcvbuf_errors("Ip6InReceives 1\n"), None);
    }

    #[test]
    fn the_real_tables_find_a_socket_of_ours() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let probe = UdpSocketProbe::of(&socket);
        assert!(probe.inode != 0 && probe.receive_buffer_bytes > 0, "{probe:?}");
        let table = std::fs::read_to_string("/proc/net/udp").unwrap();
        assert_eq!(socket_drops(&table, probe.inode), Some(0));
        let metrics = CollectorMetrics::new();
        probe.refresh(&metrics);
        assert!(std::fs::read_to_string("/proc/net/snmp").is_ok_and(|t| snmp_rcvbuf_errors(&t).is_some()));
    }
}

//! Which end of a TCP connection is the server, and which socket reports a connection whose two
//! ends are both on this host. Sans-IO: given the listening sockets of the last dump.
//!
//! Owns: matching a connection's end to a listener however the listener is bound (a specific
//! address, `0.0.0.0`, dual-stack `[::]` accepting IPv4 clients, an IPv4-mapped address: the
//! dump already gives mapped addresses as plain IPv4), and the rule that a connection inside
//! this host is reported once, from its client's socket. Must never: do I/O.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The listening sockets of the last dump.
#[derive(Debug, Default)]
pub struct Listeners {
    bound: HashSet<(IpAddr, u16)>,
}

/// How one socket of a connection is to be reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Role {
    /// This socket reports the connection (false: the server's socket of a connection whose
    /// client is on this host too, which reports it).
    pub reports: bool,
    /// The local end listens: the server is `src`.
    pub local_listens: bool,
    /// Both ends are on this host: the host's counters see each segment twice.
    pub inside: bool,
}

impl Listeners {
    /// Replaces the set with the listening sockets' local addresses.
    pub fn replace(&mut self, listening: impl Iterator<Item = SocketAddr>) {
        self.bound.clear();
        self.bound
            .extend(listening.map(|a| (a.ip().to_canonical(), a.port())));
    }

    /// Whether a listener accepts connections at `end`: bound to its address, or to the
    /// wildcard of its family, or (for IPv4) to the dual-stack IPv6 wildcard.
    pub fn listens(&self, end: &SocketAddr) -> bool {
        let port = end.port();
        let has = |ip: IpAddr| self.bound.contains(&(ip, port));
        let ip = end.ip().to_canonical();
        has(ip)
            || match ip {
                IpAddr::V4(_) => has(Ipv4Addr::UNSPECIFIED.into()) || has(Ipv6Addr::UNSPECIFIED.into()),
                IpAddr::V6(_) => has(Ipv6Addr::UNSPECIFIED.into()),
            }
    }

    /// How the socket `local` → `remote` reports. A connection inside this host (the remote
    /// end is a loopback address, or this socket's own address) shows as two sockets, and
    /// only the client's reports: the end whose peer listens; when neither or both listen
    /// (the listener is gone, or a simultaneous open), the lower address reports, which both
    /// ends agree on.
    pub fn role(&self, local: &SocketAddr, remote: &SocketAddr) -> Role {
        let local_listens = self.listens(local);
        let inside = is_inside(local, remote);
        let reports = !inside
            || match (local_listens, self.listens(remote)) {
                (false, true) => true,
                (true, false) => false,
                _ => local < remote,
            };
        Role {
            reports,
            local_listens,
            inside,
        }
    }

    /// Whether the role of a connection inside this host would only be a guess: neither end
    /// is known to listen.
    pub fn undecided(&self, local: &SocketAddr, remote: &SocketAddr) -> bool {
        is_inside(local, remote) && !self.listens(local) && !self.listens(remote)
    }
}

/// Both ends on this host: the peer is a loopback address or this socket's own address.
pub fn is_inside(local: &SocketAddr, remote: &SocketAddr) -> bool {
    remote.ip().is_loopback() || remote.ip() == local.ip()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn with(listening: &[&str]) -> Listeners {
        let mut l = Listeners::default();
        l.replace(listening.iter().map(|s| a(s)));
        l
    }

    #[test]
    fn a_listener_is_recognised_however_it_is_bound() {
        for bound in [
            "[::]:8080",
            "0.0.0.0:8080",
            "127.0.0.1:8080",
            "[::ffff:127.0.0.1]:8080",
        ] {
            let l = with(&[bound]);
            assert!(l.listens(&a("127.0.0.1:8080")), "{bound}");
            assert!(l.listens(&a("[::ffff:127.0.0.1]:8080")), "{bound}");
            assert!(!l.listens(&a("127.0.0.1:8081")), "{bound}");
        }
        let specific = with(&["10.0.0.1:22"]);
        assert!(specific.listens(&a("10.0.0.1:22")));
        assert!(!specific.listens(&a("10.0.0.2:22")));
        let v6 = with(&["[::]:443"]);
        assert!(v6.listens(&a("[2001:db8::1]:443")));
        assert!(!with(&["0.0.0.0:443"]).listens(&a("[2001:db8::1]:443")));
    }

    #[test]
    fn inside_the_host_only_the_client_reports_and_outside_every_socket_does() {
        let l = with(&["[::]:5201"]);
        let (client, server) = (a("127.0.0.1:40000"), a("127.0.0.1:5201"));
        let c = l.role(&client, &server);
        let s = l.role(&server, &client);
        assert_eq!((c.reports, c.local_listens, c.inside), (true, false, true));
        assert_eq!((s.reports, s.local_listens, s.inside), (false, true, true));
        // A remote client of a local server: the server's socket reports, server = src.
        let r = l.role(&a("10.0.0.1:5201"), &a("10.0.0.9:50000"));
        assert_eq!((r.reports, r.local_listens, r.inside), (true, true, false));
        // Neither end listens any more: exactly one of the two reports.
        let none = with(&[]);
        assert!(none.undecided(&client, &server));
        assert_ne!(
            none.role(&client, &server).reports,
            none.role(&server, &client).reports
        );
        // To this host's own address, not loopback: inside too.
        assert!(is_inside(&a("10.0.0.1:40000"), &a("10.0.0.1:22")));
    }
}

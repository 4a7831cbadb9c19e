//! The blocking half of the sockets source: one dump of the kernel's TCP table, the owners of
//! the sockets it lists for the first time, and the host's TCP segment counters read right
//! after. Runs on tokio's blocking pool; the source moves it in and out of each read.
//!
//! Owns: the sock_diag socket (reopened after a failure), the owner index, which cookies'
//! owners were already looked up (those of the last dump only, so it is bounded by it), and
//! reading `/proc/net/snmp` through the `procfs` crate. Must never: run on the async runtime,
//! or look an owner up twice for one socket.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use super::diag::SockDiag;
use super::table::{SocketSample, TCP_LISTEN};
use crate::source::owner::{Owner, OwnerIndex};

/// What one read found.
pub struct Dump {
    pub samples: Vec<SocketSample>,
    /// The host's `Tcp: InSegs + OutSegs` right after the dump; `None` when unreadable.
    pub host_segments: Option<u64>,
}

pub struct Reader {
    diag: Option<SockDiag>,
    /// `None` when owner lookup is off (`sources.sockets.owners = false`).
    owners: Option<OwnerIndex>,
    /// The owner of each socket of the last dump, `None` where it could not be found.
    known: HashMap<u64, Option<Arc<Owner>>>,
    /// Owners looked up per read at most: the table tracks no more than this.
    max_lookups: usize,
}

impl Reader {
    /// `scan_budget`: processes whose fd tables one read may scan to find new owners.
    pub fn new(owners: bool, max_flows: usize, scan_budget: usize) -> Self {
        Self {
            diag: None,
            owners: owners.then(|| OwnerIndex::new(max_flows).with_scan_budget(scan_budget)),
            known: HashMap::new(),
            max_lookups: max_flows,
        }
    }

    /// Dumps the table (opening the socket if needed; a failed socket is dropped and reopened
    /// next time), reads the host's counters and finds the owners of new sockets.
    pub fn read(&mut self) -> io::Result<Dump> {
        let diag = match &mut self.diag {
            Some(d) => d,
            None => self.diag.insert(SockDiag::open()?),
        };
        let mut samples = match diag.read_tcp() {
            Ok(samples) => samples,
            Err(e) => {
                self.diag = None;
                return Err(e);
            }
        };
        let host_segments = host_segments();
        self.attach_owners(&mut samples);
        Ok(Dump {
            samples,
            host_segments,
        })
    }

    fn attach_owners(&mut self, samples: &mut [SocketSample]) {
        let Some(index) = &mut self.owners else { return };
        let wanted = |s: &SocketSample| {
            s.counters.is_some() && s.state != TCP_LISTEN && s.remote.port() != 0 && s.inode != 0
        };
        // Only sockets seen for the first time are asked for; the index keeps looking for those
        // it could not find at once (a budget of processes per call), so it is called while any
        // are pending, and what it finds later lands on sockets still waiting for an owner.
        let new_inodes: Vec<u64> = samples
            .iter()
            .filter(|s| wanted(s) && !self.known.contains_key(&s.cookie))
            .map(|s| s.inode)
            .take(self.max_lookups)
            .collect();
        let found = if new_inodes.is_empty() && index.stats().pending == 0 {
            HashMap::new()
        } else {
            index.resolve(&new_inodes)
        };
        let mut known = HashMap::with_capacity(self.known.len().max(samples.len() / 2));
        for s in samples.iter_mut().filter(|s| wanted(s)) {
            let owner = match self.known.remove(&s.cookie) {
                Some(Some(owner)) => Some(owner),
                _ => found.get(&s.inode).cloned(),
            };
            s.owner.clone_from(&owner);
            known.insert(s.cookie, owner);
        }
        self.known = known;
    }
}

/// The host's TCP segments in and out so far (`/proc/net/snmp`), for this network namespace.
pub fn host_segments() -> Option<u64> {
    let snmp = procfs::net::snmp().ok()?;
    Some(snmp.tcp_in_segs.saturating_add(snmp.tcp_out_segs))
}

/// Compares, interval by interval, what the source accounted for with the host's counters.
#[derive(Debug, Default)]
pub struct Completeness {
    last_host: Option<u64>,
}

impl Completeness {
    /// The host's segments since the last dump; `None` at the first dump or when unreadable.
    pub fn host_delta(&mut self, host_now: Option<u64>) -> Option<u64> {
        let now = host_now?;
        let before = self.last_host.replace(now)?;
        Some(now.saturating_sub(before))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_delta_starts_at_the_second_read() {
        let mut c = Completeness::default();
        assert_eq!(c.host_delta(Some(1_000)), None);
        assert_eq!(c.host_delta(Some(1_600)), Some(600));
        assert_eq!(c.host_delta(None), None);
        assert_eq!(c.host_delta(Some(1_700)), Some(100));
        assert!(host_segments().is_some(), "/proc/net/snmp is readable here");
    }
}

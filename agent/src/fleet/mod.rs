//! The fleet: which collectors exist, as far as this meter knows.
//!
//! Owns: the union that the ring is built over (static addresses ∪ the latest DNS answer ∪ the
//! fleet view the last collector sent in `Welcome`), and its last-known-good copy on disk
//! (`STATE_DIR/fleet.json`), used when DNS fails at start. The `Welcome` view is why a DNS that
//! answers one record per query (as caching resolvers in front of many meters do) still ends
//! balanced: the first collector a meter reaches tells it about all the others. Must never: look
//! anything up itself (see [`dns`]) or decide where to connect (see [`crate::selector`]).

pub mod dns;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::split_host_port;
use crate::ring::Ring;

/// Most collectors on a meter's ring (24 KiB each, see `ring::REPLICAS`: 12 MiB at the cap), so
/// a broken DNS answer or `Welcome` view cannot make a meter build an enormous ring. Static
/// addresses count first, then DNS, then the `Welcome` view.
pub const MAX_MEMBERS: usize = 512;

/// A collector address as the ring knows it: `ip:port` in canonical form, or `host:port` as
/// written. `None` if it is neither.
pub fn canonical(address: &str) -> Option<String> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Some(addr.to_string());
    }
    split_host_port(address).map(|_| address.to_owned())
}

fn canonical_set(addresses: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = addresses
        .into_iter()
        .filter_map(|a| canonical(&a))
        .take(MAX_MEMBERS)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The fleet as last seen, kept across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastKnownGood {
    pub saved_unix_ms: u64,
    pub collectors: Vec<String>,
}

impl LastKnownGood {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("fleet.json")
    }

    /// The saved fleet, if there is a readable one.
    pub fn load(state_dir: &Path) -> Option<LastKnownGood> {
        let path = Self::path(state_dir);
        let text = std::fs::read(&path).ok()?;
        match serde_json::from_slice::<LastKnownGood>(&text) {
            Ok(mut lkg) => {
                lkg.collectors = canonical_set(lkg.collectors);
                Some(lkg)
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "ignoring an unreadable last-known-good fleet");
                None
            }
        }
    }

    /// Saves `collectors` durably: temporary file, fsync, rename, fsync of the directory (a
    /// power loss leaves the old copy or the new one, never an empty file).
    pub fn save(state_dir: &Path, collectors: &[Arc<str>]) -> std::io::Result<()> {
        let lkg = LastKnownGood {
            saved_unix_ms: crate::unix_nanos_now() / 1_000_000,
            collectors: collectors.iter().map(|c| c.to_string()).collect(),
        };
        let text = serde_json::to_string_pretty(&lkg).unwrap_or_default();
        crate::state::write_synced(&Self::path(state_dir), &text).map_err(std::io::Error::other)
    }
}

/// The sets the ring is built from, and the ring.
pub struct FleetView {
    statics: Vec<String>,
    dns: Vec<String>,
    welcome: Vec<String>,
    ring: Arc<Ring>,
    /// Where to keep the last-known-good copy (none: do not keep one).
    state_dir: Option<PathBuf>,
}

impl FleetView {
    pub fn new(statics: &[String], state_dir: Option<PathBuf>) -> Self {
        let statics = canonical_set(statics.iter().cloned());
        FleetView {
            ring: Ring::shared(&statics),
            statics,
            dns: Vec::new(),
            welcome: Vec::new(),
            state_dir,
        }
    }

    /// The latest DNS answer (or the last-known-good set standing in for it). True if the ring
    /// changed.
    pub fn set_dns(&mut self, members: Vec<String>) -> bool {
        self.dns = canonical_set(members);
        self.rebuild()
    }

    /// The fleet view of the collector that welcomed this meter (or sent it elsewhere with
    /// `Reject`). True if the ring changed. An empty view (a collector that was not told its
    /// fleet) says nothing and changes nothing.
    pub fn set_welcome(&mut self, members: Vec<String>) -> bool {
        let members = canonical_set(members);
        if members.is_empty() {
            return false;
        }
        self.welcome = members;
        self.rebuild()
    }

    pub fn ring(&self) -> Arc<Ring> {
        Arc::clone(&self.ring)
    }

    fn rebuild(&mut self) -> bool {
        let mut all: Vec<&String> = Vec::new();
        for m in self.statics.iter().chain(&self.dns).chain(&self.welcome) {
            if all.len() == MAX_MEMBERS {
                break;
            }
            if !all.contains(&m) {
                all.push(m);
            }
        }
        all.sort();
        if all
            .iter()
            .map(|s| s.as_str())
            .eq(self.ring.members().iter().map(|m| &**m))
        {
            return false;
        }
        self.ring = Ring::shared(all);
        if let Some(dir) = &self.state_dir
            && !self.ring.is_empty()
            && let Err(error) = LastKnownGood::save(dir, self.ring.members())
        {
            tracing::warn!(%error, "cannot save the last-known-good fleet");
        }
        true
    }
}

/// The fleet view plus the stream of DNS answers that updates it.
pub struct FleetWatch {
    pub view: FleetView,
    dns: Option<watch::Receiver<Vec<String>>>,
}

impl FleetWatch {
    pub fn new(view: FleetView, dns: Option<watch::Receiver<Vec<String>>>) -> Self {
        FleetWatch { view, dns }
    }

    /// Resolves when a DNS answer changed the ring. Never, without DNS.
    pub async fn changed(&mut self) {
        loop {
            let Some(rx) = self.dns.as_mut() else {
                return std::future::pending().await;
            };
            if rx.changed().await.is_err() {
                // The lookups stopped (shutdown): no more changes.
                self.dns = None;
                continue;
            }
            let members = rx.borrow_and_update().clone();
            if self.view.set_dns(members) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_is_the_union_and_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let mut view = FleetView::new(&["s.example:4433".into()], Some(dir.path().to_owned()));
        assert_eq!(view.ring().members().len(), 1);
        assert!(view.set_dns(vec!["10.0.0.1:4433".into(), "10.0.0.2:4433".into()]));
        // The same answer again changes nothing.
        assert!(!view.set_dns(vec!["10.0.0.2:4433".into(), "10.0.0.1:4433".into()]));
        // A DNS answering one record: the Welcome view still fills the ring.
        assert!(view.set_dns(vec!["10.0.0.1:4433".into()]));
        assert!(view.set_welcome(vec![
            "10.0.0.1:4433".into(),
            "10.0.0.2:4433".into(),
            "10.0.0.3:4433".into()
        ]));
        let members: Vec<String> = view.ring().members().iter().map(|m| m.to_string()).collect();
        assert_eq!(
            members,
            [
                "10.0.0.1:4433",
                "10.0.0.2:4433",
                "10.0.0.3:4433",
                "s.example:4433"
            ]
        );
        let lkg = LastKnownGood::load(dir.path()).unwrap();
        assert_eq!(lkg.collectors, members);
    }

    #[test]
    fn addresses_are_canonical_and_junk_is_dropped() {
        assert_eq!(canonical("[::1]:4433").as_deref(), Some("[::1]:4433"));
        assert_eq!(canonical("[0:0::1]:4433").as_deref(), Some("[::1]:4433"));
        assert_eq!(canonical("c1.example:4433").as_deref(), Some("c1.example:4433"));
        assert_eq!(canonical("nonsense"), None);
        let set = canonical_set(vec!["10.0.0.1:1".into(), "junk".into(), "10.0.0.1:1".into()]);
        assert_eq!(set, ["10.0.0.1:1"]);
    }

    #[test]
    fn empty_views_change_nothing_and_the_ring_is_capped() {
        let mut view = FleetView::new(&[], None);
        assert!(view.set_welcome(vec!["10.0.0.1:4433".into()]));
        assert!(
            !view.set_welcome(Vec::new()),
            "a collector without a fleet view says nothing"
        );
        assert_eq!(view.ring().members().len(), 1);
        let many: Vec<String> = (0..2_000)
            .map(|i| format!("10.{}.{}.1:4433", i / 250, i % 250))
            .collect();
        view.set_dns(many);
        assert_eq!(view.ring().members().len(), MAX_MEMBERS);
    }

    #[test]
    fn an_unreadable_last_known_good_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(LastKnownGood::load(dir.path()), None);
        std::fs::write(LastKnownGood::path(dir.path()), b"{ not json").unwrap();
        assert_eq!(LastKnownGood::load(dir.path()), None);
    }
}

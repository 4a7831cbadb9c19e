//! The consistent-hash ring: which collectors a meter prefers, in what order.
//!
//! Owns: the ring hash, a fixed function of explicit bytes that must never change (a test vector
//! pins it), and the walk. Every point is SipHash-2-4 with the key (0, 0) over:
//!
//! ```text
//! collector replica r:  "ringflow/1 collector" 0x00 address 0x00 r (u32, big-endian)
//! meter:                "ringflow/1 meter" 0x00 meter_id
//! ```
//!
//! (`address` is the collector's dial address as text, e.g. `127.0.0.2:4433`; ids are UTF-8.)
//! Each collector gets [`REPLICAS`] points. A meter's first choice is the collector owning the
//! first point at or after the meter's own point, wrapping around; its walk continues clockwise
//! and skips collectors it has already met, so it visits every collector once, in an order that
//! depends only on the meter id and the set of addresses: the same in every process, on every
//! machine, with every Rust version (nothing goes through `std`'s `Hash` encoding).
//!
//! The `hashring` crate keeps the points sorted and finds the first point at or after a given one;
//! it is given an identity hasher because the points are computed here. Must never: do I/O, read
//! a clock, or depend on the order collectors were added in.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use hashring::HashRing;
use siphasher::sip::SipHasher24;

/// Points per collector. Measured over 200 random fleets of 5 collectors with 10,000 meters
/// (`cargo run --release -p ringflow-meter --example ring_balance`), the busiest collector holds
/// this much more than the mean:
///
/// | replicas | average max/mean | fleets over 1.10 | memory per collector |
/// |---|---|---|---|
/// | 256 | 1.079 | 49 / 200 | 6 KiB |
/// | 512 | 1.057 | 10 / 200 | 12 KiB |
/// | **1024** | **1.048** | **4 / 200** | **24 KiB** |
/// | 2048 | 1.037 | 1 / 200 | 48 KiB |
///
/// A perfectly uniform assignment of 10,000 meters averages 1.025 from sampling noise alone, so
/// more replicas buy little; 1024 keeps a 500-collector ring at 12 MiB. (Collectors cap their
/// load separately.) Changing this value moves meters: it is part of the hash contract.
pub const REPLICAS: u32 = 1024;

const COLLECTOR_DOMAIN: &[u8] = b"ringflow/1 collector\0";
const METER_DOMAIN: &[u8] = b"ringflow/1 meter\0";

fn sip(parts: &[&[u8]]) -> u64 {
    let mut h = SipHasher24::new_with_keys(0, 0);
    for p in parts {
        h.write(p);
    }
    h.finish()
}

/// The ring point of a meter.
pub fn meter_point(meter_id: &str) -> u64 {
    sip(&[METER_DOMAIN, meter_id.as_bytes()])
}

/// The ring point of replica `replica` of the collector at `address`.
pub fn replica_point(address: &str, replica: u32) -> u64 {
    sip(&[
        COLLECTOR_DOMAIN,
        address.as_bytes(),
        b"\0",
        &replica.to_be_bytes(),
    ])
}

/// One replica on the ring: its point and the index of its collector in [`Ring::members`].
#[derive(Debug, Clone)]
struct Replica {
    point: u64,
    member: u32,
}

/// Hands the already-computed point to the ring unchanged.
impl Hash for Replica {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.point);
    }
}

/// A position on the ring, to search from.
struct Point(u64);

impl Hash for Point {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
    }
}

/// The identity "hash": the ring's keys are points computed by [`sip`].
#[derive(Debug, Default, Clone, Copy)]
struct PointHasher(u64);

impl Hasher for PointHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is ever called (by `Replica` and `Point`); fold anything else anyway.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, point: u64) {
        self.0 = point;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct PointHash;

impl BuildHasher for PointHash {
    type Hasher = PointHasher;

    fn build_hasher(&self) -> PointHasher {
        PointHasher::default()
    }
}

/// A ring over a set of collector addresses. Immutable: a fleet change builds a new one.
pub struct Ring {
    ring: HashRing<Replica, PointHash>,
    /// Distinct addresses, sorted.
    members: Vec<Arc<str>>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("members", &self.members).finish()
    }
}

impl Ring {
    /// A ring over `addresses` (duplicates count once; order does not matter).
    pub fn new<S: AsRef<str>>(addresses: impl IntoIterator<Item = S>) -> Ring {
        Self::with_replicas(addresses, REPLICAS)
    }

    /// The ring over `addresses`, shared with every other holder of a ring over the same set in
    /// this process. A ring is a pure function of its members, and 1024 points per collector
    /// cost 24 KiB and a few thousand hashes each: a process running thousands of meters
    /// (`herd`) builds each distinct ring once. Rings nobody holds any more are forgotten.
    pub fn shared<S: AsRef<str>>(addresses: impl IntoIterator<Item = S>) -> Arc<Ring> {
        /// Rings in use, by their (sorted, distinct) members.
        type Rings = Vec<(Vec<Arc<str>>, std::sync::Weak<Ring>)>;
        static RINGS: std::sync::Mutex<Rings> = std::sync::Mutex::new(Vec::new());
        let mut key: Vec<Arc<str>> = addresses.into_iter().map(|a| Arc::from(a.as_ref())).collect();
        key.sort();
        key.dedup();
        let mut rings = RINGS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ring) = rings
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, w)| w.upgrade())
        {
            return ring;
        }
        rings.retain(|(_, w)| w.strong_count() > 0);
        let ring = Arc::new(Ring::new(&key));
        rings.push((key, Arc::downgrade(&ring)));
        ring
    }

    /// A ring with `replicas` points per collector (tests and measurements; [`REPLICAS`] is the
    /// contract).
    pub fn with_replicas<S: AsRef<str>>(addresses: impl IntoIterator<Item = S>, replicas: u32) -> Ring {
        let mut members: Vec<Arc<str>> = addresses.into_iter().map(|a| Arc::from(a.as_ref())).collect();
        members.sort();
        members.dedup();
        let mut ring = HashRing::with_hasher(PointHash);
        let replicas = members
            .iter()
            .enumerate()
            .flat_map(|(i, address)| {
                (0..replicas).map(move |r| Replica {
                    point: replica_point(address, r),
                    member: i as u32,
                })
            })
            .collect();
        ring.batch_add(replicas);
        Ring { ring, members }
    }

    /// The collectors on the ring, sorted by address.
    pub fn members(&self) -> &[Arc<str>] {
        &self.members
    }

    pub fn contains(&self, address: &str) -> bool {
        self.members.binary_search_by(|m| (**m).cmp(address)).is_ok()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The meter's first choice.
    pub fn first(&self, meter_id: &str) -> Option<&Arc<str>> {
        let replica = self.ring.get(&Point(meter_point(meter_id)))?;
        self.members.get(replica.member as usize)
    }

    /// Every collector, in this meter's order of preference.
    pub fn walk(&self, meter_id: &str) -> Walk<'_> {
        Walk {
            ring: self,
            next_point: meter_point(meter_id),
            seen: Vec::new(),
            found: 0,
            steps: 0,
        }
    }
}

/// The distinct collectors met walking clockwise from a meter's point. Lazy: each step is one
/// binary search, so finding the next collector after a failure is cheap even on a large ring.
pub struct Walk<'a> {
    ring: &'a Ring,
    next_point: u64,
    seen: Vec<bool>,
    found: usize,
    steps: usize,
}

impl Iterator for Walk<'_> {
    type Item = Arc<str>;

    fn next(&mut self) -> Option<Arc<str>> {
        let members = self.ring.members.len();
        if self.found == members {
            return None;
        }
        if self.seen.is_empty() {
            self.seen = vec![false; members];
        }
        // Each step passes one replica; after a full turn every collector has been met.
        while self.steps < self.ring.ring.len() {
            let replica = self.ring.ring.get(&Point(self.next_point))?;
            self.next_point = replica.point.wrapping_add(1);
            self.steps += 1;
            let i = replica.member as usize;
            if !self.seen[i] {
                self.seen[i] = true;
                self.found += 1;
                return self.ring.members.get(i).cloned();
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn addresses(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.1.{}.{}:4433", i / 200, i % 200 + 1))
            .collect()
    }

    fn meters(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("meter-{i:05}")).collect()
    }

    fn assignment(ring: &Ring, meters: &[String]) -> HashMap<String, Arc<str>> {
        meters
            .iter()
            .map(|m| (m.clone(), ring.first(m).cloned().unwrap()))
            .collect()
    }

    fn max_over_mean(ring: &Ring, meters: &[String]) -> f64 {
        let mut load: HashMap<Arc<str>, usize> = HashMap::new();
        for m in meters {
            *load.entry(ring.first(m).cloned().unwrap()).or_default() += 1;
        }
        let max = *load.values().max().unwrap() as f64;
        max / (meters.len() as f64 / ring.members().len() as f64)
    }

    #[test]
    fn the_hash_is_pinned() {
        // If any of these change, every deployed meter would move: never change them. The two
        // points were checked against an independent SipHash-2-4 implementation.
        assert_eq!(meter_point("meter-00001"), 0x14b4_be26_21c7_2cec);
        assert_eq!(replica_point("127.0.0.2:4433", 0), 0x0366_aa3b_1647_5227);
        let ring = Ring::new(["127.0.0.2:4433", "127.0.0.3:4433", "127.0.0.4:4433"]);
        let order = |m: &str| ring.walk(m).map(|c| c.to_string()).collect::<Vec<_>>();
        assert_eq!(
            order("meter-00001"),
            ["127.0.0.3:4433", "127.0.0.2:4433", "127.0.0.4:4433"]
        );
        assert_eq!(
            order("meter-00003"),
            ["127.0.0.4:4433", "127.0.0.3:4433", "127.0.0.2:4433"]
        );
        assert_eq!(
            order("m-9f3a"),
            ["127.0.0.2:4433", "127.0.0.4:4433", "127.0.0.3:4433"]
        );
    }

    #[test]
    fn shared_rings_are_built_once_per_member_set() {
        let a = Ring::shared(["10.0.0.2:4433", "10.0.0.1:4433"]);
        let b = Ring::shared(["10.0.0.1:4433", "10.0.0.2:4433", "10.0.0.1:4433"]);
        let c = Ring::shared(["10.0.0.1:4433"]);
        assert!(Arc::ptr_eq(&a, &b), "same set, same ring");
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(
            a.first("m1"),
            Ring::new(["10.0.0.1:4433", "10.0.0.2:4433"]).first("m1")
        );
    }

    #[test]
    fn order_of_insertion_does_not_matter() {
        let a = Ring::new(["c:1", "a:1", "b:1"]);
        let b = Ring::new(["b:1", "c:1", "a:1", "a:1"]);
        for m in meters(200) {
            assert_eq!(a.walk(&m).collect::<Vec<_>>(), b.walk(&m).collect::<Vec<_>>());
        }
    }

    #[test]
    fn ten_thousand_meters_over_five_collectors_are_balanced() {
        let ring = Ring::new(addresses(5));
        let ratio = max_over_mean(&ring, &meters(10_000));
        assert!(ratio <= 1.10, "max/mean {ratio:.3}");
    }

    #[test]
    fn balance_holds_across_many_fleets() {
        // Different address sets give different rings: the bound above is not one lucky fleet.
        // (Measured over 200 fleets: average 1.048, see REPLICAS.)
        let (mut sum, mut worst) = (0.0, 0.0f64);
        for fleet in 0..20 {
            let addrs: Vec<String> = (0..5)
                .map(|i| format!("192.168.{fleet}.{}:4433", i * 7 + 3))
                .collect();
            let ratio = max_over_mean(&Ring::new(&addrs), &meters(10_000));
            sum += ratio;
            worst = worst.max(ratio);
        }
        assert!(sum / 20.0 <= 1.07, "average max/mean {:.3}", sum / 20.0);
        assert!(worst <= 1.15, "worst max/mean {worst:.3}");
    }

    #[test]
    fn removing_a_collector_moves_only_its_meters_and_spreads_them() {
        let all = addresses(5);
        let before = Ring::new(&all);
        let gone = all[2].clone();
        let after = Ring::new(all.iter().filter(|a| **a != gone));
        let meters = meters(10_000);
        let (a, b) = (assignment(&before, &meters), assignment(&after, &meters));
        let mut moved_to: HashMap<Arc<str>, usize> = HashMap::new();
        let mut moved = 0;
        for m in &meters {
            if &*a[m] != gone.as_str() {
                assert_eq!(a[m], b[m], "{m} moved although its collector stayed");
            } else {
                moved += 1;
                *moved_to.entry(b[m].clone()).or_default() += 1;
                // It moves to its second choice on the old ring: the walk is the fallback order.
                assert_eq!(before.walk(m).nth(1).as_ref(), Some(&b[m]));
            }
        }
        let fair = moved as f64 / 4.0;
        assert_eq!(moved_to.len(), 4, "spread over every remaining collector");
        for (c, n) in moved_to {
            let share = n as f64 / fair;
            assert!(
                (0.5..=1.5).contains(&share),
                "{c} got {share:.2} x its fair share"
            );
        }
    }

    #[test]
    fn adding_a_collector_moves_about_one_in_k_plus_one() {
        let all = addresses(6);
        let before = Ring::new(&all[..5]);
        let after = Ring::new(&all);
        let meters = meters(10_000);
        let (a, b) = (assignment(&before, &meters), assignment(&after, &meters));
        let moved = meters.iter().filter(|m| a[*m] != b[*m]).count();
        for m in meters.iter().filter(|m| a[*m] != b[*m]) {
            assert_eq!(&*b[m], all[5].as_str(), "meters only move to the new collector");
        }
        let fraction = moved as f64 / meters.len() as f64;
        let expected = 1.0 / 6.0;
        assert!(
            (fraction - expected).abs() <= 0.2 * expected,
            "moved {fraction:.3}, expected {expected:.3}"
        );
    }

    #[test]
    fn a_walk_visits_every_collector_once() {
        let ring = Ring::new(addresses(40));
        for m in meters(50) {
            let order: Vec<_> = ring.walk(&m).collect();
            assert_eq!(order.len(), 40);
            let mut sorted = order.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 40);
            assert_eq!(Some(&order[0]), ring.first(&m));
        }
        assert_eq!(Ring::new(Vec::<String>::new()).walk("m").next(), None);
    }
}

//! Failed authentications, limited per source address.
//!
//! Owns: [`AuthThrottle`], a sans-IO token bucket of failures per address (IPv4 address, or IPv6
//! /64: one host usually holds a whole /64). Each failed `Hello` takes a token; an address with
//! none left gets `Reject(auth)` with a retry hint before its credentials are even looked at, so
//! guessing gains nothing and costs no hashing. A success gives nothing back: a valid token of
//! one org must not buy more guesses at another's. Must never: grow without bound (at most
//! `max_addresses` are tracked) or decide anything about successful sessions.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

/// The throttle's settings (`[auth]` in the config).
#[derive(Debug, Clone, Copy)]
pub struct ThrottleSettings {
    /// Failures an address may make in a burst.
    pub burst: u32,
    /// Failures per minute it regains.
    pub per_minute: u32,
    /// Addresses tracked at once.
    pub max_addresses: usize,
}

impl ThrottleSettings {
    fn per_second(&self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Tokens at `now`: what was left at `at`, plus the refill since, up to the burst.
    fn refilled(&self, settings: &ThrottleSettings, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * settings.per_second()).min(f64::from(settings.burst))
    }
}

/// Failure buckets by address.
#[derive(Debug)]
pub struct AuthThrottle {
    /// From `[auth]`, fixed at start.
    settings: ThrottleSettings,
    /// Failed attempts left per address key, at most `settings.max_addresses` of them.
    buckets: HashMap<IpAddr, Bucket>,
}

/// The key an address is counted under: IPv4 as is, IPv6 by its /64 (an IPv4-mapped IPv6
/// address is the IPv4 address).
fn key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::V6(s.into())
            }
        },
    }
}

impl AuthThrottle {
    pub fn new(settings: ThrottleSettings) -> Self {
        Self {
            settings,
            buckets: HashMap::new(),
        }
    }

    /// `Err(wait)` if `addr` has no failure left: refuse it without checking its credentials, and
    /// tell it to come back after `wait`.
    pub fn check(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let Some(&bucket) = self.buckets.get(&key(addr)) else {
            return Ok(());
        };
        let tokens = bucket.refilled(&self.settings, now);
        if tokens >= 1.0 {
            return Ok(());
        }
        let per_sec = self.settings.per_second();
        if per_sec <= 0.0 {
            return Err(Duration::from_secs(3600));
        }
        Err(Duration::from_secs_f64((1.0 - tokens) / per_sec))
    }

    /// Counts a failed authentication from `addr`.
    pub fn on_failure(&mut self, addr: IpAddr, now: Instant) {
        let k = key(addr);
        let tokens = match self.buckets.get(&k) {
            Some(&b) => b.refilled(&self.settings, now),
            None => {
                self.make_room(now);
                f64::from(self.settings.burst)
            }
        };
        self.buckets.insert(
            k,
            Bucket {
                tokens: (tokens - 1.0).max(0.0),
                at: now,
            },
        );
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    /// Before tracking a new address at the cap: forget addresses whose bucket has refilled (they
    /// are indistinguishable from new ones), then if still full, a tenth of the rest. Amortised:
    /// at most one sweep per tenth of the cap.
    fn make_room(&mut self, now: Instant) {
        if self.buckets.len() < self.settings.max_addresses {
            return;
        }
        let settings = self.settings;
        let burst = f64::from(settings.burst);
        self.buckets.retain(|_, b| b.refilled(&settings, now) < burst);
        let target = self.settings.max_addresses - self.settings.max_addresses.div_ceil(10);
        if self.buckets.len() > target {
            let excess = self.buckets.len() - target;
            let victims: Vec<IpAddr> = self.buckets.keys().take(excess).copied().collect();
            for v in victims {
                self.buckets.remove(&v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(burst: u32, per_minute: u32, max_addresses: usize) -> AuthThrottle {
        AuthThrottle::new(ThrottleSettings {
            burst,
            per_minute,
            max_addresses,
        })
    }

    #[test]
    fn an_address_gets_its_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut t = throttle(3, 6, 100);
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let b: IpAddr = "192.0.2.8".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(t.check(a, t0), Ok(()));
            t.on_failure(a, t0);
        }
        // 6 per minute: one failure back every 10 s.
        let wait = |r: Result<(), Duration>| r.expect_err("limited").as_secs_f64();
        assert!((wait(t.check(a, t0)) - 10.0).abs() < 1e-6);
        assert_eq!(t.check(b, t0), Ok(()), "other addresses are not affected");
        assert!((wait(t.check(a, t0 + Duration::from_secs(4))) - 6.0).abs() < 1e-6);
        assert_eq!(t.check(a, t0 + Duration::from_secs(10)), Ok(()));
        t.on_failure(a, t0 + Duration::from_secs(10));
        assert!(t.check(a, t0 + Duration::from_secs(10)).is_err());
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let t0 = Instant::now();
        let mut t = throttle(1, 1, 100);
        t.on_failure("2001:db8:1:2::1".parse().unwrap(), t0);
        assert!(t.check("2001:db8:1:2:ffff::9".parse().unwrap(), t0).is_err());
        assert_eq!(t.check("2001:db8:1:3::1".parse().unwrap(), t0), Ok(()));
        t.on_failure("::ffff:198.51.100.1".parse().unwrap(), t0);
        assert!(t.check("198.51.100.1".parse().unwrap(), t0).is_err());
    }

    #[test]
    fn tracking_is_bounded_and_forgets_refilled_addresses_first() {
        let t0 = Instant::now();
        let mut t = throttle(2, 60, 100);
        let addr = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        // 100 addresses fail once at t0; 2 s later all have refilled (60/min, burst 2).
        for i in 0..100 {
            t.on_failure(addr(i), t0);
        }
        // One address keeps failing and is limited.
        let hot = addr(1_000);
        let t1 = t0 + Duration::from_secs(2);
        t.on_failure(hot, t1);
        t.on_failure(hot, t1);
        assert!(t.check(hot, t1).is_err());
        assert!(t.tracked() <= 100);
        // A flood of new failing addresses never grows the table past its cap.
        for i in 2_000..2_500 {
            t.on_failure(addr(i), t1);
            assert!(t.tracked() <= 100);
        }
    }
}

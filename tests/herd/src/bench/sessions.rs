//! Sessions: how many new ones per second a collector completes against raw quinn handshakes,
//! and what an idle one costs it in memory.
//!
//! Owns: the two session-rate runs and the idle-session hold. Must never: decide what the
//! figures mean (the report does).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::Endpoint;

use crate::capacity::{measure, session};
use ringflow_tests::process::CollectorProcess;
use ringflow_tests::raw::{RawHello, RawSession};
use ringflow_tests::{ORG, TestBed, http_get, metric_value, poll_until};

/// Collector tables with every admission budget out of the way: what is measured is the work
/// of a session, not the budget that would refuse it.
pub fn wide_open(connections: usize) -> String {
    format!(
        "[limits]\nmax_connections = {connections}\n\
         [admission]\nmax_handshakes = 1000000\naccept_rate = 1000000\naccept_burst = 1000000\n\
         soft_max_sessions = {connections}\n"
    )
}

/// New sessions per second: raw quinn handshakes against [`super::bulk::raw_quinn_server`] and
/// ringflow sessions (QUIC + TLS + `Hello`/`Welcome`) against the collector at `collector`,
/// `n` each, `concurrency` at once, from `client`.
pub async fn session_rates(
    client: &Endpoint,
    raw_server: SocketAddr,
    collector: SocketAddr,
    token: &str,
    (n, concurrency): (usize, usize),
) -> anyhow::Result<(f64, f64)> {
    let raw = measure(n, concurrency, |_| {
        let client = client.clone();
        async move {
            let conn = client.connect(raw_server, "localhost")?.await?;
            conn.close(0u32.into(), b"");
            Ok(())
        }
    })
    .await?;
    let token: Arc<str> = token.into();
    let ours = measure(n, concurrency, |i| {
        let (client, token) = (client.clone(), Arc::clone(&token));
        async move { session(&client, collector, ORG, &format!("rate-{i}"), &token).await }
    })
    .await?;
    Ok((raw, ours))
}

/// What `n` idle sessions cost a collector.
#[derive(Debug, Clone, Copy)]
pub struct IdleCost {
    pub sessions: usize,
    pub rss_before: u64,
    pub rss_after: u64,
}

impl IdleCost {
    pub fn bytes_per_session(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.sessions as f64
    }
}

/// Opens `n` sessions to `collector` (a process of its own, admission wide open) and holds
/// them idle (QUIC keep-alives only); its resident memory before and once it counts all of them
/// as sessions. A few sessions are opened and closed first, so that memory the first sessions
/// allocate once (pools, tables) is not charged to the idle ones.
pub async fn idle_sessions(
    bed: &TestBed,
    collector: &CollectorProcess,
    n: usize,
) -> anyhow::Result<IdleCost> {
    let endpoint = RawSession::endpoint_at(bed, std::net::Ipv4Addr::LOCALHOST.into(), None)?;
    warm_up(&endpoint, bed, collector).await?;
    let rss_before = collector.process.rss_bytes()?;
    let held = open_sessions(&endpoint, bed, collector, n, "idle").await?;
    let rss_after = collector.process.rss_bytes()?;
    for s in &held {
        s.conn.close(0u32.into(), b"");
    }
    endpoint.wait_idle().await;
    Ok(IdleCost {
        sessions: n,
        rss_before,
        rss_after,
    })
}

/// Opens and closes 64 sessions to `collector` from `endpoint`, and waits until it counts none:
/// what the first sessions allocate once (pools, tables) is then not charged to those measured.
pub async fn warm_up(endpoint: &Endpoint, bed: &TestBed, collector: &CollectorProcess) -> anyhow::Result<()> {
    for i in 0..64 {
        if let RawHello::Welcomed(s) =
            RawSession::hello_on(endpoint, collector.addr, ORG, &format!("warm-{i}"), &bed.token).await?
        {
            s.conn.close(0u32.into(), b"");
        }
    }
    let admin = collector.admin_addr;
    poll_until(Duration::from_secs(30), "warm-up sessions closed", async || {
        sessions_open(admin).await == 0
    })
    .await
}

/// Opens `n` sessions (meters `PREFIX-00000`, ...) to `collector` from `endpoint`, 64 at once,
/// and returns them once the collector counts all of them as sessions.
pub async fn open_sessions(
    endpoint: &Endpoint,
    bed: &TestBed,
    collector: &CollectorProcess,
    n: usize,
    prefix: &str,
) -> anyhow::Result<Vec<Box<RawSession>>> {
    let held = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let token: Arc<str> = bed.token.as_str().into();
    let prefix: Arc<str> = prefix.into();
    let addr = collector.addr;
    measure(n, 64, |i| {
        let (endpoint, token, held, prefix) = (
            endpoint.clone(),
            Arc::clone(&token),
            Arc::clone(&held),
            Arc::clone(&prefix),
        );
        async move {
            match RawSession::hello_on(&endpoint, addr, ORG, &format!("{prefix}-{i:05}"), &token).await? {
                RawHello::Welcomed(s) => {
                    held.lock().unwrap_or_else(|p| p.into_inner()).push(s);
                    Ok(())
                }
                RawHello::Rejected(r) => anyhow::bail!("{prefix} session {i} rejected: {r:?}"),
            }
        }
    })
    .await?;
    let admin = collector.admin_addr;
    poll_until(Duration::from_secs(60), "every session counted", async || {
        sessions_open(admin).await == n
    })
    .await?;
    Ok(std::mem::take(
        &mut *held.lock().unwrap_or_else(|p| p.into_inner()),
    ))
}

/// The sessions the collector at `admin` counts (`connections{state="session"}`); `usize::MAX`
/// when it does not answer.
pub async fn sessions_open(admin: SocketAddr) -> usize {
    match http_get(admin, "/metrics").await {
        Ok((_, body)) => {
            metric_value(&body, "ringflow_collector_connections{state=\"session\"}").unwrap_or(0.0) as usize
        }
        Err(_) => usize::MAX,
    }
}

//! How many new sessions per second (QUIC + TLS + Hello/Welcome) a fleet completes on this
//! machine, measured in the same run as the herd it is compared with.
//!
//! Owns: the measurement loop (n sessions, a fixed number at once). Used by `herd run`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::Endpoint;
use tokio::time::Instant;

use ringflow_tests::raw::{RawHello, RawSession};

/// Runs `n` jobs, `concurrency` at a time; returns jobs per second.
pub async fn measure<F, Fut>(n: usize, concurrency: usize, job: F) -> anyhow::Result<f64>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..n {
        let permit = Arc::clone(&slots).acquire_owned().await?;
        let fut = job(i);
        tasks.spawn(async move {
            let _permit = permit;
            tokio::time::timeout(Duration::from_secs(30), fut).await?
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// A collector refused the attempt before its handshake (`CONNECTION_REFUSED`): over its
/// accept rate, which an adaptive one keeps below its ceiling until it has seen what it can take.
fn refused(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|e| e.to_string().contains("refused to accept a new connection"))
}

/// Longest pause before a refused probe tries again (a meter backs off with jitter; the probe
/// only needs not to spin).
const REFUSED_PAUSE: Duration = Duration::from_millis(20);

/// One ringflow session: connect, Hello, Welcome, leave. An attempt refused before its
/// handshake is tried again (the session still counts once), as a meter would.
pub async fn session(
    endpoint: &Endpoint,
    addr: SocketAddr,
    org: &str,
    meter_id: &str,
    token: &str,
) -> anyhow::Result<()> {
    let hello = loop {
        match RawSession::hello_on(endpoint, addr, org, meter_id, token).await {
            Err(e) if refused(&e) => tokio::time::sleep(REFUSED_PAUSE).await,
            other => break other?,
        }
    };
    match hello {
        RawHello::Welcomed(session) => {
            session.conn.close(0u32.into(), b"");
            Ok(())
        }
        // A collector over its share of the fleet (bounded load) turns the probe away after the
        // same handshake and Hello: as much work to measure.
        RawHello::Rejected(reject)
            if reject.reason == ringflow_proto::pb::RejectReason::Overloaded as i32 =>
        {
            Ok(())
        }
        RawHello::Rejected(reject) => anyhow::bail!("expected Welcome, got {reject:?}"),
    }
}

/// Sessions per second the collectors at `addrs` complete together: `n` sessions spread evenly
/// over them, `concurrency` at a time, from `endpoint`.
pub async fn fleet_session_rate(
    endpoint: &Endpoint,
    addrs: &[SocketAddr],
    org: &str,
    token: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let (org, token) = (Arc::<str>::from(org), Arc::<str>::from(token));
    let addrs: Arc<[SocketAddr]> = addrs.into();
    measure(n, concurrency, |i| {
        let (endpoint, org, token, addrs) = (
            endpoint.clone(),
            Arc::clone(&org),
            Arc::clone(&token),
            Arc::clone(&addrs),
        );
        async move {
            session(
                &endpoint,
                addrs[i % addrs.len()],
                &org,
                &format!("probe-{i:06}"),
                &token,
            )
            .await
        }
    })
    .await
}

//! The hold: what a collector spends on sessions that do little, beside raw quinn holding as many
//! connections, measured in one run. A collector process and a raw quinn echo server process
//! (`herd quinn-echo`, the collector's QUIC setup and nothing else) each hold N sessions opened
//! from this process with the meter's client configuration: first idle (ringflow's sending the
//! `Welcome`'s heartbeats, both QUIC keep-alives), then each exchanging one small message a second
//! (a 10-record batch acked by the collector; the same bytes echoed by raw quinn), paced by one
//! ticker. Each server's CPU, context switches and memory are read from `/proc` for its process.
//!
//! Modules: `cadence` (the keep-alive and heartbeat settings, read from the code), `pacer` (the
//! one ticker), `ours` (held ringflow sessions), `raw` (held raw quinn connections),
//! `echo_server` (the `herd quinn-echo` process). This module runs the phases in order.
//!
//! Owns: the order of the phases, their windows, and each server's [`Held`] figures. Must never:
//! decide what the figures mean (the report does) or leave a process or session behind.

pub mod cadence;
pub mod echo_server;
pub mod ours;
pub mod pacer;
pub mod raw;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::cadence::Cadence;
use self::ours::SmallBatch;
use self::pacer::{Nudge, mailbox, pace};
use super::Sizes;
use super::e2e::{self, Programs};
use super::sessions;
use ringflow_tests::TestBed;
use ringflow_tests::process::ChildProcess;
use ringflow_tests::procstat::{ThreadsMark, ThreadsUse};
use ringflow_tests::raw::RawSession;

/// How often each session exchanges a message in the busy phase.
pub const EXCHANGE_PERIOD: Duration = Duration::from_secs(1);

/// One server's figures over the hold.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    pub sessions: usize,
    /// Resident memory before the sessions were opened, and after the idle window.
    pub rss_before: u64,
    pub rss_after: u64,
    /// A window with no session held (the server's own background work), the idle window, and
    /// the busy one (each session exchanging once a second).
    pub baseline: ThreadsUse,
    pub idle: ThreadsUse,
    pub busy: ThreadsUse,
    /// Exchanges answered in the busy window: batches acked, or messages echoed.
    pub exchanges: u64,
    /// Exchanges the pacer skipped because the session was still busy with earlier ones.
    pub missed: u64,
}

impl Held {
    /// CPU microseconds per idle session per second: the idle window's CPU less what the server
    /// used with no session over as long.
    pub fn idle_us_per_session_sec(&self) -> f64 {
        let own = self.baseline.cpu / self.baseline.seconds * self.idle.seconds;
        (self.idle.cpu - own).max(0.0) / (self.sessions as f64 * self.idle.seconds) * 1e6
    }

    /// Voluntary context switches (a thread sleeping until something wakes it) per idle session
    /// per second, the server's own (with no session) taken out as for CPU.
    pub fn idle_wakeups_per_session_sec(&self) -> f64 {
        let own = self.baseline.voluntary_switches as f64 / self.baseline.seconds * self.idle.seconds;
        (self.idle.voluntary_switches as f64 - own).max(0.0) / (self.sessions as f64 * self.idle.seconds)
    }

    /// CPU microseconds per exchange: the busy window's CPU less what the idle sessions cost over
    /// as long, over the exchanges answered.
    pub fn us_per_exchange(&self) -> f64 {
        let idle_share = self.idle.cpu / self.idle.seconds * self.busy.seconds;
        (self.busy.cpu - idle_share).max(0.0) / self.exchanges.max(1) as f64 * 1e6
    }

    pub fn exchanges_per_sec(&self) -> f64 {
        self.exchanges as f64 / self.busy.seconds
    }

    pub fn bytes_per_idle_session(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.sessions as f64
    }

    /// Whether every window's CPU came from the threads' nanosecond clocks.
    pub fn precise(&self) -> bool {
        self.baseline.precise && self.idle.precise && self.busy.precise
    }
}

/// What the hold found: the collector's figures, raw quinn's, and the settings they ran with.
#[derive(Debug, Clone, Copy)]
pub struct HoldCost {
    pub ours: Held,
    pub raw: Held,
    pub cadence: Cadence,
    /// Bytes of one small batch's frame (also the raw echo's message).
    pub batch_bytes: usize,
}

/// Runs the hold with `sizes.hold_sessions` sessions on each side.
pub async fn hold(programs: &Programs, bed: &TestBed, sizes: &Sizes) -> anyhow::Result<HoldCost> {
    let n = sizes.hold_sessions;
    anyhow::ensure!(n > 0, "the hold needs at least one session");
    let collector = e2e::start_collector(programs, bed, "hold", &sessions::wide_open(n + 1_000)).await?;
    let (echo, echo_addr) = start_echo_server(programs, bed).await?;
    let servers = Servers {
        ours: collector.process.pid(),
        raw: echo.pid(),
    };
    let batch = SmallBatch::new();
    let message = batch.frame(1);
    let ours_client = RawSession::endpoint_at(bed, std::net::Ipv4Addr::LOCALHOST.into(), None)?;
    let raw_client = super::bench_client(bed)?;

    sessions::warm_up(&ours_client, bed, &collector).await?;
    raw::warm_up(&raw_client, echo_addr, &message).await?;
    let rss_before = (collector.process.rss_bytes()?, echo.rss_bytes()?);
    // What each server does with no session held, over a window as long as a warm-up.
    let marks = (ThreadsMark::now(servers.ours)?, ThreadsMark::now(servers.raw)?);
    tokio::time::sleep(sizes.hold_warm_up).await;
    let baseline = (marks.0.since()?, marks.1.since()?);
    let held_sessions = sessions::open_sessions(&ours_client, bed, &collector, n, "hold").await?;
    let held_conns = raw::open(&raw_client, echo_addr, n, &message).await?;
    let cadence = held_sessions
        .first()
        .map(|s| Cadence::of_code(&s.welcome))
        .context("no session was opened")?;

    let mut tasks = JoinSet::new();
    let (acked, echoed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut ours_mail = Vec::with_capacity(n);
    for session in held_sessions {
        let (to, from) = mailbox();
        ours_mail.push(to);
        tasks.spawn(ours::hold_session(
            session,
            from,
            batch.clone(),
            Arc::clone(&acked),
        ));
    }
    let mut raw_mail = Vec::with_capacity(n);
    for conn in held_conns {
        let (to, from) = mailbox();
        raw_mail.push(to);
        tasks.spawn(raw::hold_connection(
            conn,
            from,
            message.clone(),
            Arc::clone(&echoed),
        ));
    }
    let (ours_mail, raw_mail) = (Arc::new(ours_mail), Arc::new(raw_mail));
    let beats = Pacing::start(&ours_mail, Nudge::Heartbeat, cadence.heartbeat);

    eprintln!(
        "herd bench: holding {n} ringflow sessions and {n} raw quinn connections (keep-alive {:?}, heartbeat {:?})",
        cadence.keep_alive, cadence.heartbeat
    );
    tokio::time::sleep(sizes.hold_warm_up).await;
    still_held(&mut tasks)?;
    let marks = (ThreadsMark::now(servers.ours)?, ThreadsMark::now(servers.raw)?);
    tokio::time::sleep(cadence.idle_window(sizes.hold_window)).await;
    let idle = (marks.0.since()?, marks.1.since()?);
    let rss_after = (collector.process.rss_bytes()?, echo.rss_bytes()?);
    still_held(&mut tasks)?;
    let counted = sessions::sessions_open(collector.admin_addr).await;
    anyhow::ensure!(
        counted == n,
        "the collector held {counted} of {n} sessions after the idle window"
    );

    let raw_busy = busy(&raw_mail, servers.raw, &echoed, sizes).await?;
    still_held(&mut tasks)?;
    let ours_busy = busy(&ours_mail, servers.ours, &acked, sizes).await?;
    still_held(&mut tasks)?;
    beats.stop().await?;

    // The mailboxes' last senders go: every held session and connection closes and ends.
    drop((ours_mail, raw_mail));
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        anyhow::Ok(())
    });
    ended
        .await
        .map_err(|_| anyhow::anyhow!("the held sessions did not end within 60 s"))??;
    for client in [&ours_client, &raw_client] {
        let _ = tokio::time::timeout(Duration::from_secs(30), client.wait_idle()).await;
    }
    collector.terminate().await?;
    echo.terminate().await?;

    let held = |(rss_before, rss_after), (baseline, idle), (busy, exchanges, missed)| Held {
        sessions: n,
        rss_before,
        rss_after,
        baseline,
        idle,
        busy,
        exchanges,
        missed,
    };
    Ok(HoldCost {
        ours: held((rss_before.0, rss_after.0), (baseline.0, idle.0), ours_busy),
        raw: held((rss_before.1, rss_after.1), (baseline.1, idle.1), raw_busy),
        cadence,
        batch_bytes: message.len(),
    })
}

/// The two server processes measured.
struct Servers {
    ours: u32,
    raw: u32,
}

/// The busy phase of one side: every session exchanging once a second, paced by one ticker;
/// after the warm-up, the server's use over the window and the exchanges answered in it.
async fn busy(
    mail: &Arc<Vec<mpsc::Sender<Nudge>>>,
    server: u32,
    answered: &AtomicU64,
    sizes: &Sizes,
) -> anyhow::Result<(ThreadsUse, u64, u64)> {
    let exchanges = Pacing::start(mail, Nudge::Exchange, EXCHANGE_PERIOD);
    // At least one period, so that every session has opened its data stream before the window.
    tokio::time::sleep(sizes.hold_warm_up.max(EXCHANGE_PERIOD * 2)).await;
    let mark = ThreadsMark::now(server)?;
    let from = answered.load(Ordering::Relaxed);
    tokio::time::sleep(sizes.hold_window).await;
    let used = mark.since()?;
    let answered = answered.load(Ordering::Relaxed) - from;
    let missed = exchanges.stop().await?;
    Ok((used, answered, missed))
}

/// A pacer running on its own task until stopped.
struct Pacing {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<u64>,
}

impl Pacing {
    fn start(mail: &Arc<Vec<mpsc::Sender<Nudge>>>, nudge: Nudge, period: Duration) -> Self {
        let stop = CancellationToken::new();
        let (mail, until) = (Arc::clone(mail), stop.clone());
        let task = tokio::spawn(async move { pace(&mail, nudge, period, until).await });
        Self { stop, task }
    }

    /// Stops it; returns the nudges it missed.
    async fn stop(self) -> anyhow::Result<u64> {
        self.stop.cancel();
        Ok(self.task.await?)
    }
}

/// Fails if any held session or connection has ended: they end only when told to.
fn still_held(tasks: &mut JoinSet<anyhow::Result<()>>) -> anyhow::Result<()> {
    match tasks.try_join_next() {
        None => Ok(()),
        Some(done) => {
            done??;
            anyhow::bail!("a held session ended before the hold did")
        }
    }
}

/// Starts `herd quinn-echo` with the bed's server certificate; returns it and its address.
async fn start_echo_server(programs: &Programs, bed: &TestBed) -> anyhow::Result<(ChildProcess, SocketAddr)> {
    let data_dir = bed.path().join("quinn-echo");
    let args: Vec<&std::ffi::OsStr> = vec![
        echo_server::SUBCOMMAND.as_ref(),
        "--cert".as_ref(),
        bed.certs.server_cert.as_os_str(),
        "--key".as_ref(),
        bed.certs.server_key.as_os_str(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
    ];
    let log = programs.logs.join("quinn-echo.log");
    let process = ChildProcess::start_logged(
        &programs.herd,
        &args,
        "quinn-echo",
        echo_server::READY,
        Some(&log),
    )
    .await?;
    let addr = process
        .ready_line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("addr="))
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no addr= in {:?}", process.ready_line))?;
    Ok((process, addr))
}

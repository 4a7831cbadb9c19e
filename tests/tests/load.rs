//! A collector under load: a connection flood far beyond its budgets, a control plane measured
//! while the data plane is saturated behind a slow sink, and a drain of 200 meters spread over
//! the drain window. (Readiness following the sink: `sink_failure.rs` for the file sink,
//! `nats.rs` for NATS.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ringflow_meter::ring::Ring;
use ringflow_tests::nats::NatsServer;
use ringflow_tests::process::{CollectorProcess, free_udp_addr};
use ringflow_tests::raw::{RawHello, RawSession};
use ringflow_tests::throttle::ThrottledProxy;
use ringflow_tests::wedge::DataPlaneWedge;
use ringflow_tests::{
    ORG, TestBed, http_get, on_own_runtime, poll_until, records_acked, start_meter, stop_all, summarize,
    synthetic,
};
use tokio::time::Instant;

const COLLECTOR_BIN: &str = env!("CARGO_BIN_EXE_collector-fixture");

/// Sum of every sample of a Prometheus counter family (`name{...} value` lines).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// What a flood of connection attempts saw from the client side.
#[derive(Debug, Default)]
struct FloodOutcome {
    refused: usize,
    handshaken: usize,
    other: usize,
}

/// `attempts` QUIC connection attempts to `addr`, at most `concurrent` at once, from one client
/// endpoint. Every other connection that gets through its handshake is held without a Hello
/// until the collector closes it (its Hello timeout), occupying a slot as an attacker's would;
/// the rest hang up at once and come back as new attempts, spending the accept rate.
async fn flood(
    ca: &Path,
    addr: SocketAddr,
    attempts: usize,
    concurrent: usize,
) -> anyhow::Result<FloodOutcome> {
    let client = ringflow_meter::transport::client_config(ca)?;
    let endpoint = ringflow_meter::transport::client_endpoint(client)?;
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrent));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..attempts {
        let permit = Arc::clone(&slots).acquire_owned().await?;
        let connecting = endpoint.connect(addr, "localhost")?;
        tasks.spawn(async move {
            let _permit = permit;
            let result = tokio::time::timeout(Duration::from_secs(10), connecting).await;
            match result {
                Ok(Ok(conn)) => {
                    if i % 2 == 0 {
                        let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
                    } else {
                        conn.close(0u32.into(), b"bye");
                    }
                    "handshaken"
                }
                Ok(Err(quinn::ConnectionError::ConnectionClosed(close)))
                    if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
                {
                    "refused"
                }
                _ => "other",
            }
        });
    }
    let mut out = FloodOutcome::default();
    while let Some(outcome) = tasks.join_next().await {
        match outcome? {
            "refused" => out.refused += 1,
            "handshaken" => out.handshaken += 1,
            _ => out.other += 1,
        }
    }
    Ok(out)
}

/// Thousands of connection attempts far beyond every budget: the collector stays up, its memory
/// stays bounded, every refusal is counted by reason, and the meters it already serves keep
/// getting acks throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_shed_and_connected_meters_keep_getting_acks() -> anyhow::Result<()> {
    const ATTEMPTS: usize = 4_000;
    let bed = TestBed::new()?;
    let addr = free_udp_addr()?;
    // Budgets far below the flood: the accept rate binds first, the handshake budget when the
    // held connections pile up (the flood's clients never send a Hello, so each accepted one
    // holds a handshake slot until the 1 s Hello timeout: about 100 a second at this accept
    // rate, so half the budget is reached, and Retry starts, however fast the flood runs).
    let budgets = "[limits]\nmax_connections = 256\nhello_timeout_ms = 1000\n\
                   [admission]\nmax_handshakes = 40\naccept_rate = 100\naccept_burst = 20\n";
    let mut collector = CollectorProcess::start(COLLECTOR_BIN.as_ref(), &bed, "c1", addr, budgets).await?;
    let mut meters = Vec::new();
    for i in 0..2 {
        let mut config = bed.meter_config(&format!("m{i}"), &[addr]);
        config.sources.synthetic = synthetic(5_000, 0);
        meters.push(start_meter(config).await?);
    }
    poll_until(Duration::from_secs(60), "meters acked", async || {
        meters
            .iter()
            .all(|m| m.metrics().delivery.records_acked.get() >= 2_000)
    })
    .await?;
    let rss_before = collector.process.rss_bytes()?;
    let acked_before: Vec<u64> = meters
        .iter()
        .map(|m| m.metrics().delivery.records_acked.get())
        .collect();

    let started = Instant::now();
    let ca = bed.certs.ca.clone();
    let flood_task = tokio::spawn(async move { flood(&ca, addr, ATTEMPTS, 1_000).await });
    // Sample memory and acks while the flood runs.
    let mut rss_peak = rss_before;
    let mut samples = 0;
    while !flood_task.is_finished() {
        rss_peak = rss_peak.max(collector.process.rss_bytes()?);
        samples += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let outcome = flood_task.await??;
    let flood_time = started.elapsed();
    let acked_during: Vec<u64> = meters
        .iter()
        .zip(&acked_before)
        .map(|(m, before)| m.metrics().delivery.records_acked.get() - before)
        .collect();

    assert!(collector.process.is_running(), "the collector fell over");
    let (health, _) = http_get(collector.admin_addr, "/healthz").await?;
    assert_eq!(health, 200);
    let (_, text) = http_get(collector.admin_addr, "/metrics").await?;
    let refused = metric_sum(&text, "ringflow_collector_connections_refused_total");
    // Every reason is exported from the start (at 0): the ones that refused something.
    let by_reason: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("ringflow_collector_connections_refused_total{"))
        .filter(|l| {
            l.rsplit_once(' ')
                .and_then(|(_, v)| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
        })
        .collect();
    let retried = metric_sum(&text, "ringflow_collector_connections_retried_total");
    eprintln!(
        "flood of {ATTEMPTS} attempts in {flood_time:.1?}: client saw {outcome:?}; collector refused {refused} \
         ({by_reason:?}), sent {retried} stateless retries; RSS {} MiB before, peak {} MiB over {samples} samples; \
         meters acked {acked_during:?} records during the flood",
        rss_before >> 20,
        rss_peak >> 20
    );
    assert!(retried > 0.0, "busy handshakes made unvalidated addresses retry");
    assert!(
        outcome.refused > ATTEMPTS / 2,
        "most of the flood was refused before the handshake: {outcome:?}"
    );
    assert!(
        refused >= outcome.refused as f64,
        "every refusal the clients saw was counted: {refused} < {}",
        outcome.refused
    );
    let reasons = ["max_handshakes", "accept_rate", "max_connections"];
    assert!(
        by_reason.iter().all(|l| reasons.iter().any(|r| l.contains(r)))
            && by_reason.iter().any(|l| l.contains("accept_rate")),
        "refusals name the hard budget that refused them: {by_reason:?}"
    );
    assert!(
        rss_peak < rss_before + (64 << 20),
        "memory stayed bounded: {} MiB -> {} MiB",
        rss_before >> 20,
        rss_peak >> 20
    );
    for (i, n) in acked_during.iter().enumerate() {
        assert!(*n > 0, "meter m{i} got no acks during the flood");
    }
    for m in &meters {
        assert_eq!(
            m.metrics().sessions.sessions_started.get(),
            1,
            "a served meter lost its session in the flood"
        );
    }
    // And after it: acks go on.
    let after = records_acked(&meters);
    poll_until(Duration::from_secs(30), "acks after the flood", async || {
        records_acked(&meters) > after + 1_000
    })
    .await?;
    stop_all(meters).await?;
    collector.terminate().await?;
    Ok(())
}

/// Hello→Welcome and /healthz while the data plane is saturated (the sink behind a slow link,
/// its queue full, data streams waiting for room) stay close to the same measurements taken on
/// the unloaded collector at the start of the test. The collector runs in its own process, as in
/// production; the probe runs on a thread of its own, so the meters generating load in this
/// process do not delay the probe's side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_stays_prompt_while_the_data_plane_is_saturated() -> anyhow::Result<()> {
    const SAMPLES: usize = 15;
    // Smaller than what the meters' windows hold unacked, so streams wait for room in it.
    const QUEUE_BYTES: f64 = (1 << 20) as f64;
    let bed = TestBed::new()?;
    let nats = NatsServer::start(&bed.path().join("nats")).await?;
    let upstream: SocketAddr = nats.url().trim_start_matches("nats://").parse()?;
    let slow = ThrottledProxy::start(upstream, 256 << 10).await?;
    let sink = format!(
        "[limits]\nmax_frame_bytes = 262144\n[sink]\nqueue_bytes = {QUEUE_BYTES}\nkind = \"nats\"\n[sink.nats]\nservers = [\"nats://{}\"]\n\
         stream = \"LOAD\"\nmax_in_flight = 4\npublish_timeout_ms = 10000\n",
        slow.addr
    );
    let addr = free_udp_addr()?;
    let collector = CollectorProcess::start(COLLECTOR_BIN.as_ref(), &bed, "c1", addr, &sink).await?;
    let admin = collector.admin_addr;
    let gauge = async |name: &str| -> anyhow::Result<f64> {
        let (_, text) = http_get(admin, "/metrics").await?;
        Ok(metric_sum(&text, &format!("ringflow_collector_{name}")))
    };
    poll_until(Duration::from_secs(30), "the NATS sink ready", async || {
        gauge("sink_healthy").await.is_ok_and(|v| v == 1.0)
    })
    .await?;

    let probe = |label: &str| -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
        on_own_runtime(async {
            let (mut hello, mut health) = (Vec::new(), Vec::new());
            for i in 0..SAMPLES {
                let t = Instant::now();
                let answer =
                    RawSession::hello(&bed, addr, ORG, &format!("probe-{label}-{i}"), &bed.token).await?;
                hello.push(t.elapsed());
                anyhow::ensure!(
                    matches!(answer, RawHello::Welcomed(_)),
                    "probe {label} {i} not welcomed"
                );
                let t = Instant::now();
                let (status, _) = http_get(admin, "/healthz").await?;
                health.push(t.elapsed());
                anyhow::ensure!(status == 200);
            }
            Ok((hello, health))
        })
    };
    let (hello_base, health_base) = probe("idle")?;

    // Saturate: the meters offer several times what the slow link carries.
    let mut meters = Vec::new();
    for i in 0..6 {
        let mut config = bed.meter_config(&format!("m{i}"), &[addr]);
        config.sources.synthetic = synthetic(5_000, 0);
        config.batch.max_records = 5_000;
        // Rows, 56 bytes a record: as columns (a few bytes each) the six would fit the link.
        config.batch.columns = false;
        meters.push(start_meter(config).await?);
    }
    poll_until(Duration::from_secs(60), "the sink queue full", async || {
        // Streams wait for room in the queue (the sink holds up to max_in_flight batches out
        // of it, so the queue itself hovers below its bound).
        gauge("frames_waiting_bytes").await.is_ok_and(|v| v > 0.0)
            && gauge("sink_queue_bytes")
                .await
                .is_ok_and(|v| v > QUEUE_BYTES / 2.0)
    })
    .await?;
    let (hello_loaded, health_loaded) = probe("loaded")?;
    let queue_after = gauge("sink_queue_bytes").await?;
    let waiting_after = gauge("frames_waiting_bytes").await?;

    let (hb, hl) = (median(hello_base), median(hello_loaded));
    let (gb, gl) = (median(health_base), median(health_loaded));
    eprintln!(
        "control plane, median of {SAMPLES}: Hello->Welcome {hb:.1?} idle, {hl:.1?} saturated (x{:.2}); \
         /healthz {gb:.1?} idle, {gl:.1?} saturated (x{:.2}); sink queue {} KiB of {} KiB at the end, \
         sink healthy {}",
        hl.as_secs_f64() / hb.as_secs_f64(),
        gl.as_secs_f64() / gb.as_secs_f64(),
        queue_after as u64 >> 10,
        QUEUE_BYTES as u64 >> 10,
        gauge("sink_healthy").await?
    );
    assert!(
        waiting_after > 0.0 || queue_after > QUEUE_BYTES / 2.0,
        "the data plane stayed saturated while measuring"
    );
    // Within 4x of idle, or 25 ms more than idle (both are a few ms on an idle machine).
    let bound = |base: Duration| (base * 4).max(base + Duration::from_millis(25));
    assert!(hl <= bound(hb), "Hello->Welcome {hl:?} saturated vs {hb:?} idle");
    assert!(gl <= bound(gb), "/healthz {gl:?} saturated vs {gb:?} idle");

    // The queue would take many seconds to drain through the slow link: stop the collector
    // outright (what it held is unacked, and the meters keep it).
    drop(collector);
    stop_all(meters).await?;
    slow.stop().await;
    Ok(())
}

/// SIGTERM with 200 meters connected: each gets `Drain`, moves to the next collector within the
/// drain window, spread over it rather than bunched, and nothing acked is lost; the collector
/// exits within its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_200_meters_spread_over_the_window() -> anyhow::Result<()> {
    const METERS: usize = 200;
    const WINDOW: Duration = Duration::from_secs(4);
    const GRACE: Duration = Duration::from_secs(20);
    let bed = TestBed::new()?;
    let (a_addr, b_addr) = (free_udp_addr()?, free_udp_addr()?);
    // The drain window and grace of collector a (the bed's default [shutdown] is replaced).
    let a_toml = bed
        .collector_toml("a", a_addr, "")
        .replace(
            "drain_window_ms = 200",
            &format!("drain_window_ms = {}", WINDOW.as_millis()),
        )
        .replace("grace_ms = 5000", &format!("grace_ms = {}", GRACE.as_millis()));
    let a_config = bed.path().join("a.toml");
    std::fs::write(&a_config, a_toml)?;
    let a = ringflow_tests::process::ChildProcess::start(
        COLLECTOR_BIN.as_ref(),
        &["run".as_ref(), "--config".as_ref(), a_config.as_os_str()],
        "a",
        "collector ready",
    )
    .await?;
    let b = bed.start_collector_at("b", b_addr, "").await?;

    // Meters whose first choice is a.
    let ring = Ring::new([a_addr.to_string(), b_addr.to_string()]);
    let ids: Vec<String> = (0..)
        .map(|i| format!("drain-{i}"))
        .filter(|id| ring.first(id).is_some_and(|c| **c == *a_addr.to_string()))
        .take(METERS)
        .collect();
    let mut meters = Vec::new();
    for id in &ids {
        let mut config = bed.meter_config(id, &[a_addr, b_addr]);
        config.sources.synthetic = synthetic(50, 0);
        meters.push(start_meter(config).await?);
    }
    let (a_name, b_name) = (a_addr.to_string(), b_addr.to_string());
    poll_until(
        Duration::from_secs(120),
        "every meter on a and acked",
        async || {
            meters.iter().all(|m| {
                let mm = m.metrics();
                mm.connected_to().as_deref() == Some(a_name.as_str()) && mm.delivery.records_acked.get() > 0
            })
        },
    )
    .await?;

    a.sigterm()?;
    let signalled = Instant::now();
    let moved = std::cell::RefCell::new(HashMap::<usize, Duration>::new());
    poll_until(WINDOW + Duration::from_secs(30), "every meter on b", async || {
        let mut moved = moved.borrow_mut();
        for (i, m) in meters.iter().enumerate() {
            if !moved.contains_key(&i) && m.metrics().connected_to().as_deref() == Some(b_name.as_str()) {
                moved.insert(i, signalled.elapsed());
            }
        }
        moved.len() == METERS
    })
    .await?;
    let moved_at = moved.into_inner();
    let exit = a.wait(GRACE + Duration::from_secs(10)).await?;
    let exited_after = signalled.elapsed();

    // Every meter was drained (not cut off), once.
    for m in &meters {
        let drained = m
            .metrics()
            .sessions
            .session_ends
            .get_or_create(&ringflow_meter::telemetry::ReasonLabel { reason: "drained" })
            .get();
        assert_eq!(drained, 1, "meter {} was not drained once", m.id());
    }
    // Spread over the window: a quarter of it holds about a quarter of the moves. A move is
    // counted when the meter is welcomed by b, so moves drawn near the end of the window may
    // land a little after it (the last quarter takes those up to two seconds late).
    let mut quarters = [0usize; 5];
    for t in moved_at.values() {
        let q = (t.as_secs_f64() / WINDOW.as_secs_f64() * 4.0) as usize;
        let late = *t > WINDOW + Duration::from_secs(2);
        quarters[if late { 4 } else { q.min(3) }] += 1;
    }
    let last = moved_at.values().max().copied().unwrap_or_default();
    eprintln!(
        "drain of {METERS} meters over {WINDOW:?}: moves per quarter of the window {:?}, later {}; \
         last move at {last:.2?}; collector exited ({exit}) {exited_after:.2?} after SIGTERM",
        &quarters[..4],
        quarters[4]
    );
    assert!(exit.success(), "collector a exited with {exit}");
    assert!(exited_after < GRACE, "exited within the grace period");
    assert_eq!(
        quarters[4], 0,
        "moves more than 2 s after the window: {quarters:?}"
    );
    for (q, n) in quarters[..4].iter().enumerate() {
        assert!(
            (METERS * 10 / 100..=METERS * 40 / 100).contains(n),
            "quarter {q} of the window holds {n} of {METERS} moves: bunched ({quarters:?})"
        );
    }

    // Nothing acked is lost: everything the meters saw acked is in a's or b's store.
    let acked_total = records_acked(&meters);
    stop_all(meters).await?;
    b.stop().await;
    let mut stored = ringflow_collector::data::sink::file::store::read_all(&bed.data_dir("a"), None)?;
    stored.extend(ringflow_collector::data::sink::file::store::read_all(
        &bed.data_dir("b"),
        None,
    )?);
    let s = summarize(&stored);
    assert!(
        s.records >= acked_total,
        "stored {} records, meters saw {acked_total} acked",
        s.records
    );
    Ok(())
}

/// Over a soft budget a meter still completes its handshake, and its `Hello` is answered with
/// `Reject(overloaded)` and a retry hint drawn over a window, so the refused come back spread out;
/// the meters already served keep their sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_soft_session_budget_meters_are_told_when_to_retry() -> anyhow::Result<()> {
    const REFUSED: usize = 20;
    let bed = TestBed::new()?;
    let collector = bed
        .start_collector(
            "c1",
            "[admission]\nsoft_max_sessions = 2\nretry_after_min_ms = 1000\nretry_after_max_ms = 9000\n",
        )
        .await?;
    let mut served = Vec::new();
    for i in 0..2 {
        match RawSession::hello(&bed, collector.addr, ORG, &format!("served-{i}"), &bed.token).await? {
            RawHello::Welcomed(s) => served.push(s),
            RawHello::Rejected(r) => anyhow::bail!("rejected under the budget: {r:?}"),
        }
    }
    let mut hints = Vec::new();
    for i in 0..REFUSED {
        match RawSession::hello(&bed, collector.addr, ORG, &format!("late-{i}"), &bed.token).await? {
            RawHello::Rejected(r) => {
                assert_eq!(r.reason(), ringflow_proto::pb::RejectReason::Overloaded, "{r:?}");
                hints.push(r.retry_after_ms);
            }
            RawHello::Welcomed(_) => anyhow::bail!("welcomed over the soft budget"),
        }
    }
    hints.sort();
    eprintln!("retry hints over the soft budget (ms): {hints:?}");
    assert!(hints.iter().all(|h| (1_000..=9_000).contains(h)), "{hints:?}");
    hints.dedup();
    assert!(
        hints.len() > REFUSED / 2,
        "hints are spread, not one value: {hints:?}"
    );
    let m = &collector.metrics;
    assert_eq!(
        ringflow_collector::CollectorMetrics::count(&m.sessions.hello_rejects, "overloaded_sessions"),
        REFUSED as u64
    );
    assert_eq!(
        m.sessions.sessions_active.get(),
        2,
        "the served sessions were kept"
    );
    drop(served);
    collector.stop().await;
    Ok(())
}

/// The data plane wedged outright (every one of its threads blocked) does not hold up the
/// control plane: a new meter is welcomed and `/healthz` answers while no data-plane task can
/// run, which the stalled acks of a connected meter show. With one runtime for both planes
/// neither would answer until the data plane let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_data_plane_does_not_hold_up_the_control_plane() -> anyhow::Result<()> {
    const DATA_THREADS: usize = 2;
    const WEDGE: Duration = Duration::from_secs(4);
    let bed = TestBed::new()?;
    let collector = bed
        .start_collector("c1", &format!("[runtime]\ndata_threads = {DATA_THREADS}\n"))
        .await?;
    let mut config = bed.meter_config("m1", &[collector.addr]);
    config.sources.synthetic = synthetic(5_000, 0);
    let meter = start_meter(config).await?;
    poll_until(Duration::from_secs(30), "acks flowing", async || {
        meter.metrics().delivery.records_acked.get() >= 2_000
    })
    .await?;

    // Block every data-plane thread (tasks that never yield), and know they all are.
    let wedge = DataPlaneWedge::on(&collector, DATA_THREADS).await;
    let wedged_at = Instant::now();
    let acked_at_wedge = meter.metrics().delivery.records_acked.get();
    // The probe runs on a runtime of its own, so its deadline holds whatever the collector's
    // runtimes are doing.
    let within = on_own_runtime(async {
        Ok(tokio::time::timeout(WEDGE, async {
            let hello = RawSession::hello(&bed, collector.addr, ORG, "newcomer", &bed.token).await?;
            anyhow::ensure!(matches!(hello, RawHello::Welcomed(_)), "newcomer not welcomed");
            let (status, _) = http_get(collector.admin_addr, "/healthz").await?;
            anyhow::ensure!(status == 200);
            Ok(())
        })
        .await)
    })?;
    let took = wedged_at.elapsed();
    let acked_during = meter.metrics().delivery.records_acked.get() - acked_at_wedge;
    // Let the data plane go again.
    wedge.release();
    eprintln!(
        "data plane wedged: the probe (a new meter's Hello, then /healthz) ended after {took:.1?}; acks during the wedge {acked_during}"
    );
    within
        .map_err(|_| anyhow::anyhow!("the control plane did not answer while the data plane was wedged"))??;
    assert_eq!(acked_during, 0, "the data plane was really wedged");
    let after = meter.metrics().delivery.records_acked.get();
    poll_until(Duration::from_secs(30), "acks after the wedge", async || {
        meter.metrics().delivery.records_acked.get() > after
    })
    .await?;
    meter.stop().await?;
    collector.stop().await;
    Ok(())
}

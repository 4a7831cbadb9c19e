//! The NATS JetStream sink against a real `nats-server -js` on loopback: every batch acked to a
//! meter is in the stream exactly once, through a NATS outage and through a collector `kill -9`.
//! Each test starts its own server on a free port with a temporary store, and kills it at the end.

use std::net::SocketAddr;
use std::time::Duration;

use ringflow_proto::pb;
use ringflow_tests::logs::LogCapture;
use ringflow_tests::nats::{
    NatsServer, assert_exactly_once, read_all_with, start_meter_numbered, start_meters, wait_all_acked,
};
use ringflow_tests::process::{CollectorProcess, free_udp_addr};
use ringflow_tests::raw::{RawHello, RawSession};
use ringflow_tests::{ORG, TestBed, http_get, poll_until, records_acked, stop_all};

const COLLECTOR_BIN: &str = env!("CARGO_BIN_EXE_collector-fixture");
const STREAM: &str = "FLOWS";

/// Runs the `collector` command line with `args` and then `config`, killing it after 60 s.
async fn run_bounded(args: &[&str], config: &std::path::Path) -> anyhow::Result<std::process::Output> {
    let child = tokio::process::Command::new(COLLECTOR_BIN)
        .args(args)
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .map_err(|_| anyhow::anyhow!("collector {args:?} still running after 60 s"))?
        .map_err(Into::into)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_from_several_meters_through_two_collectors_are_in_the_stream_once() -> anyhow::Result<()> {
    const METERS: usize = 4;
    const TOTAL: u64 = 25_000;
    let bed = TestBed::new()?;
    let nats = NatsServer::start(&bed.path().join("nats")).await?;
    let c1 = bed.start_collector("c1", &nats.sink_toml(STREAM)).await?;
    let c2 = bed.start_collector("c2", &nats.sink_toml(STREAM)).await?;
    // Half the meters on each collector.
    let mut meters = Vec::new();
    for i in 0..METERS {
        let collector = if i % 2 == 0 { c1.addr } else { c2.addr };
        meters.push(start_meter_numbered(&bed, i, &[collector], 50_000, TOTAL).await?);
    }
    wait_all_acked(&meters, TOTAL, Duration::from_secs(120)).await?;

    let messages = nats.read_all(STREAM).await?;
    assert_exactly_once(&messages, &meters, TOTAL);
    assert_eq!(
        records_acked(&meters),
        METERS as u64 * TOTAL,
        "nothing acked twice"
    );
    let (m1, m2) = (&c1.metrics, &c2.metrics);
    let stored = m1.output.batches_stored.get() + m2.output.batches_stored.get();
    let dups = m1.sink.sink_duplicates.get() + m2.sink.sink_duplicates.get();
    assert_eq!(
        stored - dups,
        messages.len() as u64,
        "each new publish ack is one message"
    );
    assert!(
        m1.output.batches_stored.get() > 0 && m2.output.batches_stored.get() > 0,
        "both collectors carried batches"
    );
    eprintln!(
        "{} records in {} batches from {METERS} meters through 2 collectors: in the stream once each",
        METERS as u64 * TOTAL,
        messages.len()
    );

    // `collector read --config` prints what arrived, one JSON line per record.
    let config = bed.path().join("reader.toml");
    std::fs::write(
        &config,
        bed.collector_toml("reader", "127.0.0.1:0".parse()?, &nats.sink_toml(STREAM)),
    )?;
    let out = run_bounded(&["read", "--org", ORG, "--config"], &config).await?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout)?;
    assert_eq!(text.lines().count() as u64, METERS as u64 * TOTAL);
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap_or_default())?;
    assert_eq!(first["org"], ORG);
    assert_eq!(first["source"], "synthetic");
    stop_all(meters).await?;
    c1.stop().await;
    c2.stop().await;
    Ok(())
}

/// Answers within `within`: the admin server's /healthz, and a brand-new session's Hello.
async fn control_plane_answers(bed: &TestBed, quic: SocketAddr, admin: SocketAddr) -> anyhow::Result<String> {
    let within = Duration::from_secs(2);
    let (status, _) = tokio::time::timeout(within, http_get(admin, "/healthz")).await??;
    anyhow::ensure!(status == 200, "/healthz answered {status}");
    let answer = tokio::time::timeout(within, RawSession::hello(bed, quic, ORG, "probe", &bed.token))
        .await
        .map_err(|_| anyhow::anyhow!("no answer to Hello within {within:?}"))??;
    Ok(match answer {
        RawHello::Welcomed(_) => "welcome".into(),
        RawHello::Rejected(r) => format!("reject:{:?}", r.reason()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_holds_acks_and_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    const METERS: usize = 2;
    const TOTAL: u64 = 60_000;
    const OUTAGE: Duration = Duration::from_secs(10);
    let bed = TestBed::new()?;
    let mut nats = NatsServer::start(&bed.path().join("nats")).await?;
    // A small sink queue and window, so that the bound is visibly what the collector holds: the
    // queue, the jobs the sink took out of it, and one batch per data stream waiting to enter.
    const QUEUE: i64 = 16;
    const IN_FLIGHT: i64 = 8;
    let sink = format!(
        "{}max_in_flight = {IN_FLIGHT}\n",
        nats.sink_toml(STREAM)
            .replacen("[sink]\n", &format!("[sink]\nqueue_batches = {QUEUE}\n"), 1)
    );
    let collector = bed.start_collector("c1", &sink).await?;
    let meters = start_meters(&bed, &[collector.addr], METERS, 3_000, TOTAL).await?;
    poll_until(Duration::from_secs(60), "a quarter acked", async || {
        records_acked(&meters) >= METERS as u64 * TOTAL / 4
    })
    .await?;

    nats.kill();
    let killed = tokio::time::Instant::now();
    // Throughout the outage: liveness and new Hellos are answered at once; readiness goes to 503
    // and, once it has, nothing more is acked.
    let mut answers = 0;
    let mut acked_when_unready = None;
    let (mut peak_queue, mut peak_in_flight, mut peak_spooled) = (0, 0, 0);
    while killed.elapsed() < OUTAGE {
        // Readiness first: once it says 503 it stays so until NATS is back, so the Hello that
        // follows must be turned away.
        let (ready, _) = http_get(collector.admin_addr, "/readyz").await?;
        let answer = control_plane_answers(&bed, collector.addr, collector.admin_addr).await?;
        answers += 1;
        peak_queue = peak_queue.max(collector.metrics.queue.sink_queue_batches.get());
        peak_in_flight = peak_in_flight.max(collector.metrics.sink.sink_in_flight.get());
        peak_spooled = peak_spooled.max(meters.iter().map(|m| m.metrics().spool.spool_batches.get()).sum());
        match (ready, acked_when_unready) {
            (503, None) => {
                acked_when_unready = Some(records_acked(&meters));
                assert_eq!(
                    answer, "reject:SinkUnavailable",
                    "new meters told to come back later"
                );
            }
            (503, Some(before)) => assert_eq!(records_acked(&meters), before, "acked while NATS was down"),
            (status, _) => assert!(acked_when_unready.is_none(), "/readyz {status} during the outage"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let held =
        acked_when_unready.ok_or_else(|| anyhow::anyhow!("/readyz never said 503 during the outage"))?;
    assert!(
        held < METERS as u64 * TOTAL,
        "the outage happened before the meters finished"
    );
    assert!(collector.metrics.sink.sink_outages.get() >= 1);
    assert!(
        peak_queue <= QUEUE + IN_FLIGHT + METERS as i64 && peak_in_flight <= IN_FLIGHT,
        "held at most the queue's bound: queue {peak_queue}, in flight {peak_in_flight}"
    );
    assert!(
        peak_spooled > 2 * QUEUE,
        "meters kept the rest: {peak_spooled} batches spooled"
    );
    let ends: Vec<(&str, u64)> = [
        "silent",
        "stalled",
        "timeout",
        "closed_by_collector",
        "stream_closed",
        "stream",
        "protocol",
    ]
    .into_iter()
    .map(|r| {
        let n = meters
            .iter()
            .map(|m| ringflow_meter::MeterMetrics::count(&m.metrics().metrics().sessions.session_ends, r))
            .sum();
        (r, n)
    })
    .filter(|(_, n)| *n > 0)
    .collect();
    assert!(
        collector.metrics.sessions.sessions_active.get() >= METERS as i64,
        "sessions kept: {} active; the meters' session ends {ends:?}",
        collector.metrics.sessions.sessions_active.get()
    );

    nats.restart().await?;
    wait_all_acked(&meters, TOTAL, Duration::from_secs(120)).await?;
    assert_eq!(http_get(collector.admin_addr, "/readyz").await?.0, 200);
    for m in &meters {
        assert_eq!(
            m.metrics().spool.spool_dropped_batches.get(),
            0,
            "meters spooled, dropped nothing"
        );
    }
    let messages = nats.read_all(STREAM).await?;
    assert_exactly_once(&messages, &meters, TOTAL);
    eprintln!(
        "NATS down {OUTAGE:?}: {answers} control-plane probes answered; acks held at {held} records; \
         collector held at most {peak_queue} queued / {peak_in_flight} in flight, meters spooled up to {peak_spooled} batches; \
         after restart {} batches in the stream once each; outage counted {} s; duplicates dropped by JetStream: {}",
        messages.len(),
        collector.metrics.sink.sink_outage_seconds.get().round(),
        collector.metrics.sink.sink_duplicates.get()
    );
    stop_all(meters).await?;
    collector.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_collectors_meters_resend_elsewhere_and_the_stream_keeps_one_copy() -> anyhow::Result<()> {
    const METERS: usize = 4;
    const TOTAL: u64 = 40_000;
    let bed = TestBed::new()?;
    let nats = NatsServer::start(&bed.path().join("nats")).await?;
    let binary = std::path::Path::new(COLLECTOR_BIN);
    let extra = nats.sink_toml(STREAM);
    let addrs = [free_udp_addr()?, free_udp_addr()?];
    let mut collectors = vec![
        CollectorProcess::start(binary, &bed, "c0", addrs[0], &extra).await?,
        CollectorProcess::start(binary, &bed, "c1", addrs[1], &extra).await?,
    ];
    let meters = start_meters(&bed, &addrs, METERS, 5_000, TOTAL).await?;
    poll_until(Duration::from_secs(60), "a third acked", async || {
        records_acked(&meters) >= METERS as u64 * TOTAL / 3
    })
    .await?;

    // Kill the collector serving more meters (at least one, whatever the ring chose).
    let on = |addr: &str| -> Vec<usize> {
        (0..METERS)
            .filter(|i| meters[*i].metrics().connected_to().as_deref() == Some(addr))
            .collect()
    };
    let (a0, a1) = (addrs[0].to_string(), addrs[1].to_string());
    let victim = if on(&a0).len() >= on(&a1).len() { 0 } else { 1 };
    let victims_meters = on(&addrs[victim].to_string());
    assert!(!victims_meters.is_empty());
    collectors[victim].kill();
    wait_all_acked(&meters, TOTAL, Duration::from_secs(120)).await?;
    // The killed collector's meters finished on the survivor: nothing else was left to ack them.
    for i in &victims_meters {
        assert!(
            meters[*i].metrics().sessions.sessions_started.get() >= 2,
            "m{i} reconnected"
        );
    }
    let messages = nats.read_all(STREAM).await?;
    assert_exactly_once(&messages, &meters, TOTAL);
    let moved = victims_meters.len();
    eprintln!(
        "collector kill -9: {moved} of {METERS} meters moved; {} batches in the stream once each",
        messages.len()
    );
    stop_all(meters).await?;
    collectors.swap_remove(1 - victim).terminate().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_started_before_nats_is_unready_until_nats_comes() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let mut nats = NatsServer::not_started(&bed.path().join("nats"))?;
    let collector = bed.start_collector("c1", &nats.sink_toml(STREAM)).await?;
    assert_eq!(http_get(collector.admin_addr, "/readyz").await?.0, 503);
    assert_eq!(
        control_plane_answers(&bed, collector.addr, collector.admin_addr).await?,
        "reject:SinkUnavailable"
    );

    nats.restart().await?;
    poll_until(Duration::from_secs(30), "ready once NATS is up", async || {
        matches!(http_get(collector.admin_addr, "/readyz").await, Ok((200, _)))
    })
    .await?;
    let meters = start_meters(&bed, &[collector.addr], 1, 10_000, 2_000).await?;
    wait_all_acked(&meters, 2_000, Duration::from_secs(60)).await?;
    assert_exactly_once(&nats.read_all(STREAM).await?, &meters, 2_000);
    stop_all(meters).await?;
    collector.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_stream_that_does_not_fit_stops_the_start_with_exit_64() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let nats = NatsServer::start(&bed.path().join("nats")).await?;
    // Someone else's stream under our name, on other subjects.
    let client = async_nats::connect(nats.url()).await?;
    async_nats::jetstream::new(client)
        .create_stream(async_nats::jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec!["other.>".into()],
            ..Default::default()
        })
        .await?;
    let config = bed.path().join("c1.toml");
    std::fs::write(
        &config,
        bed.collector_toml("c1", free_udp_addr()?, &nats.sink_toml(STREAM)),
    )?;
    let out = run_bounded(&["run", "--config"], &config).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains(&format!("stream \"{STREAM}\" cannot take ringflow's batches"))
            && stderr.contains("do not include \"ringflow.flows.>\""),
        "{stderr}"
    );
    Ok(())
}

/// Token authentication: the right token delivers; a wrong one leaves the collector not ready
/// with an error naming the keys to check; neither token appears in any log line (the NATS
/// client's own debug output included).
#[tokio::test]
async fn nats_credentials_are_used_and_never_logged() -> anyhow::Result<()> {
    let logs = LogCapture::default();
    let _capture = logs.install();
    let bed = TestBed::new()?;
    let right = format!("right-{}", ringflow_collector::control::auth::generate_token());
    let wrong = format!("wrong-{}", ringflow_collector::control::auth::generate_token());
    let nats = NatsServer::start_with(&bed.path().join("nats"), &["--auth", &right]).await?;
    let with_token = |token: &str| format!("{}token = \"{token}\"\n", nats.sink_toml(STREAM));

    let refused = match bed.start_collector("c0", &with_token(&wrong)).await {
        Ok(_) => anyhow::bail!("a collector with a wrong NATS token started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        refused.contains("NATS refused the collector's credentials") && refused.contains("sink.nats.token"),
        "{refused}"
    );

    let collector = bed.start_collector("c1", &with_token(&right)).await?;
    assert_eq!(http_get(collector.admin_addr, "/readyz").await?.0, 200);
    let meters = start_meters(&bed, &[collector.addr], 1, 10_000, 1_000).await?;
    wait_all_acked(&meters, 1_000, Duration::from_secs(60)).await?;
    stop_all(meters).await?;
    collector.stop().await;
    let nats_reader = ringflow_collector::data::sink::nats::NatsSinkConfig {
        token: Some(ringflow_collector::data::sink::nats::Secret::new(right.clone())),
        ..nats.sink_config(STREAM)
    };
    assert!(!read_all_with(&nats_reader).await?.is_empty());

    let text = logs.text();
    assert!(text.contains("authorization violation"), "the refusal was logged");
    assert!(
        !text.contains(&right) && !text.contains(&wrong),
        "a NATS token was logged"
    );
    Ok(())
}

/// A batch re-sent after a failover (same meter, same seq, through another collector) is
/// acked again but stored once: JetStream's de-duplication by `Nats-Msg-Id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_resent_through_another_collector_is_stored_once() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let nats = NatsServer::start(&bed.path().join("nats")).await?;
    let c1 = bed.start_collector("c1", &nats.sink_toml(STREAM)).await?;
    let c2 = bed.start_collector("c2", &nats.sink_toml(STREAM)).await?;
    assert_eq!(send_until_acked(&bed, c1.addr, 1..=5).await?, 5);
    // The meter did not see those acks (say), and sends them again elsewhere, and more.
    assert_eq!(send_until_acked(&bed, c2.addr, 1..=8).await?, 8);
    assert_eq!(
        c2.metrics.sink.sink_duplicates.get(),
        5,
        "JetStream recognised the re-sent five"
    );
    let messages = nats.read_all(STREAM).await?;
    let seqs: Vec<u64> = messages
        .iter()
        .filter_map(|m| m.batch.as_ref().ok().map(|b| b.seq))
        .collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>(), "each batch once, in order");
    c1.stop().await;
    c2.stop().await;
    Ok(())
}

/// Sends batches `seqs` (10 records each) as meter "raw" and returns the highest seq acked.
async fn send_until_acked(
    bed: &TestBed,
    addr: SocketAddr,
    seqs: std::ops::RangeInclusive<u64>,
) -> anyhow::Result<u64> {
    let RawHello::Welcomed(raw) = RawSession::hello(bed, addr, ORG, "raw", &bed.token).await? else {
        anyhow::bail!("rejected");
    };
    let last = *seqs.end();
    let (_send, mut reader) = raw.send_raw(ringflow_tests::raw::batch_frames(seqs, 10)).await?;
    let mut acked = 0;
    while acked < last {
        let down = tokio::time::timeout(Duration::from_secs(10), reader.next_message::<pb::DataDown>())
            .await
            .map_err(|_| anyhow::anyhow!("no ack within 10 s"))??;
        match down.and_then(|d| d.msg) {
            Some(pb::data_down::Msg::Ack(a)) => acked = a.up_to_seq,
            other => anyhow::bail!("expected an ack, got {other:?}"),
        }
    }
    Ok(acked)
}

/// TLS to NATS: a server with a certificate from the test CA, trusted through `ca_file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_speaks_tls_to_nats_with_a_configured_ca() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let (cert, key) = (
        bed.certs.server_cert.display().to_string(),
        bed.certs.server_key.display().to_string(),
    );
    let nats = NatsServer::start_with(
        &bed.path().join("nats"),
        &["--tls", "--tlscert", &cert, "--tlskey", &key],
    )
    .await?;
    // Without the CA the server's certificate is not trusted: no connection, not ready.
    let untrusting = bed.start_collector("c0", &nats.sink_toml(STREAM)).await?;
    assert_eq!(http_get(untrusting.admin_addr, "/readyz").await?.0, 503);
    // With nothing queued, a sink that cannot reach NATS does not hold up shutdown (the sink
    // would otherwise be abandoned only after its 10 s flush timeout).
    tokio::time::timeout(Duration::from_secs(5), untrusting.stop())
        .await
        .map_err(|_| anyhow::anyhow!("an idle collector with NATS unreachable took over 5 s to stop"))?;

    let ca = bed.certs.ca.display().to_string();
    let sink = format!("{}ca_file = \"{ca}\"\n", nats.sink_toml(STREAM));
    let collector = bed.start_collector("c1", &sink).await?;
    assert_eq!(http_get(collector.admin_addr, "/readyz").await?.0, 200);
    let meters = start_meters(&bed, &[collector.addr], 1, 10_000, 1_000).await?;
    wait_all_acked(&meters, 1_000, Duration::from_secs(60)).await?;
    let reader = ringflow_collector::data::sink::nats::NatsSinkConfig {
        ca_file: Some(bed.certs.ca.clone()),
        ..nats.sink_config(STREAM)
    };
    assert_exactly_once(&read_all_with(&reader).await?, &meters, 1_000);
    stop_all(meters).await?;
    collector.stop().await;
    Ok(())
}

/// Tenancy in the stream: a session of one org whose payload names another lands on its own
/// org's subject, with its own org in the message id and the stored batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_naming_another_org_is_published_under_the_authenticated_one() -> anyhow::Result<()> {
    use ringflow_tests::raw::batch_naming_another_org;
    let bed = TestBed::new()?;
    let nats = NatsServer::start(&bed.path().join("nats")).await?;
    let victim = ringflow_collector::control::auth::generate_token();
    let extra = format!(
        "{}\n[[orgs]]\nid = \"victim\"\ntoken_hashes = [\"{}\"]\n",
        nats.sink_toml(STREAM),
        ringflow_collector::control::auth::hash_token(&victim)
    );
    let collector = bed.start_collector("c1", &extra).await?;
    let RawHello::Welcomed(raw) = RawSession::hello(&bed, collector.addr, ORG, "raw", &bed.token).await?
    else {
        anyhow::bail!("rejected");
    };
    let (_send, mut reader) = raw.send_raw(batch_naming_another_org("victim", 1)).await?;
    let reply = reader.next_message::<pb::DataDown>().await?.and_then(|d| d.msg);
    assert_eq!(reply, Some(pb::data_down::Msg::Ack(pb::Ack { up_to_seq: 1 })));
    drop(raw);
    collector.stop().await;
    let messages = nats.read_all(STREAM).await?;
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.subject, format!("ringflow.flows.{ORG}"));
    assert_eq!(m.message_id.as_deref(), Some(format!("{ORG}:raw:1").as_str()));
    let batch = m.batch.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(batch.org_id, ORG);
    assert_eq!(
        batch.records[0].interface, "victim",
        "payload is data, not tenancy"
    );
    Ok(())
}

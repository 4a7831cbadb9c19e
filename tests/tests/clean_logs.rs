//! What the meter and the collector log when a meter is rejected or a batch is refused. These
//! tests capture log output, so they live in their own test binary: tracing caches per-callsite
//! interest process-wide, and a callsite first hit by another test's thread (with no subscriber)
//! could be cached as disabled and vanish from the capture.

use std::time::Duration;

use ringflow_collector::CollectorMetrics;
use ringflow_collector::data::sink::file::store::read_all;
use ringflow_tests::logs::LogCapture;
use ringflow_tests::{TestBed, start_meter, synthetic, wait_for_meter};

/// A meter with the wrong token is rejected with reason auth; nothing is stored; both sides log
/// it clearly, and neither logs a token.
#[tokio::test]
async fn a_wrong_token_is_rejected_and_never_logged() -> anyhow::Result<()> {
    let logs = LogCapture::default();
    let _guard = logs.install();
    let bed = TestBed::new()?;
    let collector = bed.start_collector("c1", "").await?;
    let wrong = "rft_this-is-not-the-token-0123456789abcdefghijk";
    let mut config = bed.meter_config("m1", &[collector.addr]);
    config.org_token = Some(wrong.into());
    config.sources.synthetic = synthetic(1_000, 0);
    let meter = start_meter(config).await?;
    let metrics = meter.metrics();
    wait_for_meter(&metrics, Duration::from_secs(30), "two auth rejects", |m| {
        ringflow_meter::MeterMetrics::count(&m.sessions.rejects, "auth") >= 2
    })
    .await?;
    meter.stop().await?;
    let cm = collector.metrics.clone();
    collector.stop().await;

    assert!(CollectorMetrics::count(&cm.sessions.hello_rejects, "auth_wrong_token") >= 2);
    assert_eq!(cm.sessions.sessions_welcomed.get(), 0);
    assert_eq!(metrics.sessions.sessions_started.get(), 0);
    assert!(read_all(&bed.data_dir("c1"), None)?.is_empty(), "nothing stored");

    let text = logs.text();
    assert!(
        text.contains("rejected hello: authentication failed")
            && text.contains("reason=\"auth_wrong_token\""),
        "collector log line missing:\n{text}"
    );
    assert!(
        text.contains("kind=\"auth\"") && text.contains("check org_id and the org token"),
        "meter log line missing:\n{text}"
    );
    assert!(!text.contains(wrong), "the presented token was logged");
    assert!(!text.contains(&bed.token), "the real token was logged");
    // Repeats are aggregated, not logged once per attempt (the meter retries quickly here, so
    // its address may also run out of attempts: that is logged once under its own reason).
    let wrong_token_lines = text
        .lines()
        .filter(|l| l.contains("rejected hello") && l.contains("auth_wrong_token"))
        .count();
    assert_eq!(wrong_token_lines, 1, "{text}");
    Ok(())
}

/// A batch in the meter's spool that the collector refuses for good (here: left by an older
/// meter with an invalid address in it) is nacked once, removed from the spool with a counter
/// and a log line saying why, and never sent again, even after a restart; the batches around it
/// are delivered.
#[tokio::test]
async fn a_poison_batch_is_nacked_once_removed_and_logged_with_its_reason() -> anyhow::Result<()> {
    use bytes::Bytes;

    use ringflow_proto::pb;
    use ringflow_tests::raw::batch_frame;

    let logs = LogCapture::default();
    let _guard = logs.install();
    let bed = TestBed::new()?;
    let collector = bed.start_collector("c1", "").await?;
    let config = bed.meter_config("m1", &[collector.addr]);
    let good = pb::FlowRecord {
        src_addr: Bytes::from_static(&[10, 0, 0, 1]),
        dst_addr: Bytes::from_static(&[10, 0, 0, 2]),
        ip_protocol: 6,
        ..Default::default()
    };
    let mut poison = good.clone();
    poison.dst_addr = Bytes::from_static(&[1, 2, 3]);
    {
        let mut spool = ringflow_meter::open_spool(&config)?;
        for (seq, records) in [(1, vec![good.clone(); 3]), (2, vec![poison]), (3, vec![good; 2])] {
            let n = records.len() as u32;
            let frame = batch_frame(pb::FlowBatch {
                columns: Default::default(),
                loss: None,
                seq,
                records,
                created_unix_nanos: 0,
            });
            spool.append(seq, n, 0, frame)?;
        }
        spool.sync()?;
    }

    // No source: the meter delivers its spool and stops by itself.
    let meter = start_meter(config.clone()).await?;
    let metrics = meter.metrics();
    tokio::time::timeout(Duration::from_secs(30), meter.join()).await??;
    assert_eq!(
        ringflow_meter::MeterMetrics::count(&metrics.delivery.batches_nacked, "invalid_record"),
        1
    );
    assert_eq!(metrics.delivery.records_nacked.get(), 1);
    assert_eq!(metrics.delivery.records_acked.get(), 5);
    let text = logs.text();
    assert!(
        text.contains("collector refused a batch for good")
            && text.contains("seq=2")
            && text.contains("reason=\"invalid_record\""),
        "the meter says which batch it removed and why:\n{text}"
    );

    // Started again, it has nothing to send: the nack was recorded in the spool.
    let again = start_meter(config).await?;
    let metrics = again.metrics();
    tokio::time::timeout(Duration::from_secs(30), again.join()).await??;
    assert_eq!(metrics.delivery.batches_sent.get(), 0);
    let cm = collector.metrics.clone();
    collector.stop().await;
    assert_eq!(
        CollectorMetrics::count(&cm.ingest.nacks, "invalid_record"),
        1,
        "nacked once, ever"
    );
    let seqs: Vec<u64> = read_all(&bed.data_dir("c1"), None)?
        .iter()
        .map(|b| b.seq)
        .collect();
    assert_eq!(seqs, vec![1, 3]);
    Ok(())
}

/// `--log-format json`: each log line is one JSON object with the event's fields as keys.
#[tokio::test]
async fn json_logs_are_one_object_per_line_with_fields_as_keys() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let config = bed.path().join("c1.toml");
    std::fs::write(
        &config,
        bed.collector_toml("c1", std::net::SocketAddr::from(([127, 0, 0, 1], 0)), ""),
    )?;
    let collector = ringflow_tests::process::ChildProcess::start(
        env!("CARGO_BIN_EXE_collector-fixture").as_ref(),
        &[
            "--log-format".as_ref(),
            "json".as_ref(),
            "run".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
        ],
        "c1",
        "collector ready",
    )
    .await?;
    let line: serde_json::Value = serde_json::from_str(&collector.ready_line)?;
    assert_eq!(line["message"], "collector ready", "{line}");
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["collector_id"], "c1");
    assert!(
        line["admin"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{line}"
    );
    collector.terminate().await?;
    Ok(())
}

/// Both binaries, as processes logging at debug level, through a session with a known token and
/// known payload strings (an interface name the meter reads from its counters file, and strings
/// in batches the collector refuses): neither the token nor any payload string appears in any
/// log line of either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_binary_logs_a_token_or_a_payload() -> anyhow::Result<()> {
    use bytes::Bytes;
    use ringflow_proto::pb;
    use ringflow_tests::process::ChildProcess;
    use ringflow_tests::raw::{RawHello, RawSession, batch_frame};
    use ringflow_tests::{ORG, http_get};

    const DEV_HEADER: &str = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";
    let bed = TestBed::new()?;
    let marker = |what: &str| format!("{what}{:012x}", rand::random::<u64>() >> 16);
    let (interface, oversize, garbage, wrong) = (marker("if"), marker("big"), marker("junk"), marker("rft_"));

    let collector_config = bed.path().join("c1.toml");
    std::fs::write(
        &collector_config,
        bed.collector_toml("c1", std::net::SocketAddr::from(([127, 0, 0, 1], 0)), ""),
    )?;
    let collector_log = bed.path().join("collector.log");
    let collector = ChildProcess::start_filtered(
        env!("CARGO_BIN_EXE_collector-fixture").as_ref(),
        &["run".as_ref(), "--config".as_ref(), collector_config.as_os_str()],
        "c1",
        "collector ready",
        Some(&collector_log),
        "debug",
    )
    .await?;
    let field = |key: &str| {
        collector
            .ready_line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key))
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .ok_or_else(|| anyhow::anyhow!("no {key} in {:?}", collector.ready_line))
    };
    let (admin, quic) = (field("admin=")?, field("listen=")?);

    // The meter reads one interface, named by a marker, every 200 ms.
    let counters = bed.path().join("net-dev");
    let write_counters = |n: u64| {
        std::fs::write(
            &counters,
            format!(
                "{DEV_HEADER}{interface:>6}: {} {n} 0 0 0 0 0 0 {} {n} 0 0 0 0 0 0\n",
                n * 100,
                n * 50
            ),
        )
    };
    write_counters(1)?;
    let meter_config = bed.path().join("m1.toml");
    std::fs::write(
        &meter_config,
        bed.meter_toml(
            "m1",
            &[quic],
            &format!(
                "[sources.interfaces]\ninterval_ms = 200\npath = \"{}\"\n",
                counters.display()
            ),
        ),
    )?;
    let meter_log = bed.path().join("meter.log");
    let meter = ChildProcess::start_filtered(
        env!("CARGO_BIN_EXE_meter-fixture").as_ref(),
        &["run".as_ref(), "--config".as_ref(), meter_config.as_os_str()],
        "m1",
        "meter started",
        Some(&meter_log),
        "debug",
    )
    .await?;
    // Counters keep moving until the collector has stored the interface's records (its
    // metrics, in another process, are polled).
    let n = std::cell::Cell::new(1);
    ringflow_tests::poll_until(
        Duration::from_secs(20),
        "the interface's records stored",
        async || {
            n.set(n.get() + 1);
            let _ = write_counters(n.get());
            let Ok((_, text)) = http_get(admin, "/metrics").await else {
                return false;
            };
            ringflow_tests::metric_value(&text, "ringflow_collector_records_stored_total") >= Some(3.0)
        },
    )
    .await?;

    // The collector's refusal paths, with payload strings in what it refuses.
    match RawSession::hello(&bed, quic, ORG, "raw", &wrong).await? {
        RawHello::Rejected(r) => assert_eq!(r.reason, pb::RejectReason::Auth as i32),
        RawHello::Welcomed(_) => anyhow::bail!("a wrong token was welcomed"),
    }
    let RawHello::Welcomed(raw) = RawSession::hello(&bed, quic, ORG, "raw", &bed.token).await? else {
        anyhow::bail!("the bed's token was rejected");
    };
    let too_long = pb::FlowRecord {
        src_addr: Bytes::from_static(&[10, 0, 0, 1]),
        dst_addr: Bytes::from_static(&[10, 0, 0, 2]),
        interface: oversize.repeat(8),
        ..Default::default()
    };
    let (_s1, mut r1) = raw
        .send_raw(batch_frame(pb::FlowBatch {
            columns: Default::default(),
            loss: None,
            seq: 1,
            records: vec![too_long],
            created_unix_nanos: 0,
        }))
        .await?;
    let nack = r1.next_message::<pb::DataDown>().await?.and_then(|d| d.msg);
    assert!(matches!(nack, Some(pb::data_down::Msg::Nack(_))), "{nack:?}");
    let mut junk = (garbage.len() as u32 + bed.token.len() as u32)
        .to_be_bytes()
        .to_vec();
    junk.extend_from_slice(garbage.as_bytes());
    junk.extend_from_slice(bed.token.as_bytes());
    let (_s2, mut r2) = raw.send_raw(Bytes::from(junk)).await?;
    assert!(
        r2.next_message::<pb::DataDown>().await.is_err(),
        "garbage closes its stream"
    );
    drop(raw);

    meter.terminate().await?;
    collector.terminate().await?;
    let logs = [
        ("collector", std::fs::read_to_string(&collector_log)?),
        ("meter", std::fs::read_to_string(&meter_log)?),
    ];
    for (binary, text) in &logs {
        assert!(
            text.contains("DEBUG"),
            "{binary} did not log at debug level:\n{text}"
        );
        for (what, secret) in [
            ("the token", bed.token.as_str()),
            ("a wrong token", wrong.as_str()),
            ("the interface name", interface.as_str()),
            ("a refused record's field", oversize.as_str()),
            ("a garbage frame's bytes", garbage.as_str()),
        ] {
            assert!(!text.contains(secret), "{binary} logged {what}:\n{text}");
        }
    }
    let collector_text = &logs[0].1;
    assert!(
        collector_text.contains("auth_wrong_token") && collector_text.contains("session started"),
        "the collector logged the session and the rejection:\n{collector_text}"
    );
    Ok(())
}

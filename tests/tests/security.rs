//! Hostile clients against one collector while a well-behaved meter keeps getting acks: wrong
//! tokens, another org's token, failed attempts limited per address, a payload naming another
//! tenant, silent connections and a flood of data streams. And client certificates (mTLS): a
//! certificate proves the org its names map to, and no other.
//!
//! Oversize and garbage frames, under the same conditions, are in `protocol.rs`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use ringflow_collector::CollectorMetrics;
use ringflow_collector::control::auth::{generate_token, hash_token};
use ringflow_collector::data::sink::file::store::read_all;
use ringflow_meter::MeterWatch;
use ringflow_proto::codes::ConnectionCode;
use ringflow_proto::frame::{FrameReader, MAX_CONTROL_FRAME_BYTES};
use ringflow_proto::pb;
use ringflow_tests::raw::{RawHello, RawSession, batch_frame, batch_naming_another_org};
use ringflow_tests::{
    CLIENT_NAME, ORG, RunningCollector, TestBed, poll_until, start_meter, synthetic, wait_for_meter,
};

const VICTIM: &str = "victim";

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Waits until the meter has had `more` records acked since `before`.
async fn acks_continue(metrics: &MeterWatch, what: &str) -> anyhow::Result<()> {
    let before = metrics.delivery.records_acked.get();
    wait_for_meter(metrics, Duration::from_secs(20), what, |m| {
        m.delivery.records_acked.get() >= before + 200
    })
    .await
}

fn rejected(outcome: RawHello) -> anyhow::Result<pb::Reject> {
    match outcome {
        RawHello::Rejected(r) => Ok(r),
        RawHello::Welcomed(_) => anyhow::bail!("expected a Reject, got a Welcome"),
    }
}

fn welcomed(outcome: RawHello) -> anyhow::Result<Box<RawSession>> {
    match outcome {
        RawHello::Welcomed(s) => Ok(s),
        RawHello::Rejected(r) => anyhow::bail!("expected a Welcome, got {r:?}"),
    }
}

/// Sends `frame` on a new data stream of `session` and returns the first reply.
async fn send_and_reply(session: &RawSession, frame: Bytes) -> anyhow::Result<pb::data_down::Msg> {
    let (mut send, mut reader) = session.send_raw(frame).await?;
    let reply = tokio::time::timeout(Duration::from_secs(10), reader.next_message::<pb::DataDown>())
        .await??
        .and_then(|d| d.msg)
        .ok_or_else(|| anyhow::anyhow!("the data stream ended without a reply"))?;
    send.finish()?;
    Ok(reply)
}

/// Waits for `conn` to be closed and returns the collector's application close code.
async fn closed_with(conn: &quinn::Connection, within: Duration) -> anyhow::Result<Option<ConnectionCode>> {
    let error = tokio::time::timeout(within, conn.closed()).await?;
    Ok(match error {
        quinn::ConnectionError::ApplicationClosed(close) => ConnectionCode::from_varint(close.error_code),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_refused_while_a_good_meter_keeps_getting_acks() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let victim_token = generate_token();
    let extra = format!(
        "[[orgs]]\nid = \"{VICTIM}\"\ntoken_hashes = [\"{}\"]\n[auth]\nfailure_burst = 3\nfailures_per_minute = 1\n[limits]\nhello_timeout_ms = 1000\n",
        hash_token(&victim_token)
    );
    let collector = bed.start_collector("c1", &extra).await?;
    let cm = collector.metrics.clone();
    let mut config = bed.meter_config("good", &[collector.addr]);
    config.sources.synthetic = synthetic(2_000, 0);
    let meter = start_meter(config).await?;
    let metrics = meter.metrics();
    acks_continue(&metrics, "the good meter is flowing").await?;

    // Three failed attempts from one address: a wrong token, this org's token for another org,
    // an unknown org. Each hears only "auth".
    let attacker = RawSession::endpoint_at(&bed, loopback(9), None)?;
    let wrong_token = generate_token();
    let attempts = [
        (ORG, wrong_token.as_str()),
        (VICTIM, bed.token.as_str()),
        ("nobody", bed.token.as_str()),
    ];
    let mut messages = Vec::new();
    for (org, token) in attempts {
        let r = rejected(RawSession::hello_on(&attacker, collector.addr, org, "attacker", token).await?)?;
        assert_eq!(r.reason, pb::RejectReason::Auth as i32, "{org}");
        assert!(!r.message.contains("rft_"), "{}", r.message);
        messages.push(r.message);
    }
    messages.dedup();
    assert_eq!(
        messages.len(),
        1,
        "the three failures read the same: {messages:?}"
    );
    // The address is out of attempts: even a valid token is refused now, with a retry hint.
    let r = rejected(RawSession::hello_on(&attacker, collector.addr, ORG, "attacker", &bed.token).await?)?;
    assert_eq!(r.reason, pb::RejectReason::Auth as i32);
    assert!(r.retry_after_ms >= 1_000, "{r:?}");
    assert_eq!(
        CollectorMetrics::count(&cm.sessions.hello_rejects, "auth_wrong_token"),
        2
    );
    assert_eq!(
        CollectorMetrics::count(&cm.sessions.hello_rejects, "auth_unknown_org"),
        1
    );
    assert_eq!(
        CollectorMetrics::count(&cm.sessions.hello_rejects, "auth_rate_limited"),
        1
    );
    acks_continue(&metrics, "acks during the failed logins").await?;

    // Another address is not affected.
    let neighbour = RawSession::endpoint_at(&bed, loopback(10), None)?;
    let session = welcomed(RawSession::hello_on(&neighbour, collector.addr, ORG, "raw", &bed.token).await?)?;

    // A payload naming another tenant lands in the authenticated org.
    assert_eq!(
        send_and_reply(&session, batch_naming_another_org(VICTIM, 1)).await?,
        pb::data_down::Msg::Ack(pb::Ack { up_to_seq: 1 })
    );

    // Stream flood: the collector grants `max_data_streams` (4) data streams at a time; a fifth
    // cannot even be opened until one ends, and hundreds opened one after another are each served
    // and leave nothing behind.
    let mut held = Vec::new();
    for seq in 2..=5 {
        let (send, mut reader) = session.send_raw(batch_frame(batch(seq))).await?;
        let reply = reader.next_message::<pb::DataDown>().await?;
        assert!(matches!(
            reply.and_then(|d| d.msg),
            Some(pb::data_down::Msg::Ack(_))
        ));
        held.push((send, reader));
    }
    let conn = session.conn.clone();
    let fifth = conn.open_bi();
    tokio::pin!(fifth);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut fifth)
            .await
            .is_err(),
        "a fifth data stream opened while four were held"
    );
    let (mut first_send, mut first_reader) = held.remove(0);
    first_send.finish()?;
    assert!(first_reader.next_message::<pb::DataDown>().await?.is_none());
    let (mut send, recv) = tokio::time::timeout(Duration::from_secs(10), fifth).await??;
    send.write_chunk(batch_frame(batch(6))).await?;
    let mut reader = FrameReader::new(recv, MAX_CONTROL_FRAME_BYTES);
    assert!(reader.next_message::<pb::DataDown>().await?.is_some());
    send.finish()?;
    for (mut send, _) in held.drain(..) {
        send.finish()?;
    }
    for seq in 7..=306 {
        let reply = send_and_reply(&session, batch_frame(batch(seq))).await?;
        assert_eq!(reply, pb::data_down::Msg::Ack(pb::Ack { up_to_seq: seq }));
    }
    assert!(
        session.conn.close_reason().is_none(),
        "the flooding session was kept"
    );
    acks_continue(&metrics, "acks after the stream flood").await?;

    // Silent connections: one that never opens a stream, one that starts a frame and stops.
    let quiet = RawSession::endpoint_at(&bed, loopback(11), None)?;
    let silent = quiet.connect(collector.addr, "localhost")?.await?;
    let halting = quiet.connect(collector.addr, "localhost")?.await?;
    let (mut half, _recv) = halting.open_bi().await?;
    half.write_all(&[0, 0]).await?;
    for conn in [&silent, &halting] {
        assert_eq!(
            closed_with(conn, Duration::from_secs(10)).await?,
            Some(ConnectionCode::HelloTimeout)
        );
    }
    assert_eq!(
        CollectorMetrics::count(&cm.sessions.hello_rejects, "hello_timeout"),
        2
    );
    acks_continue(&metrics, "acks after the silent connections").await?;
    assert!(session.conn.close_reason().is_none());

    meter.stop().await?;
    drop(session);
    collector.stop().await;
    let stored = read_all(&bed.data_dir("c1"), Some(ORG))?;
    let raw: Vec<_> = stored.iter().filter(|b| b.meter_id == "raw").collect();
    assert_eq!(raw.len(), 306, "every acked raw batch is stored once");
    assert!(raw.iter().all(|b| b.org_id == ORG));
    assert_eq!(
        raw[0].records[0].interface, VICTIM,
        "payload is data, not tenancy"
    );
    assert!(read_all(&bed.data_dir("c1"), Some(VICTIM))?.is_empty());
    assert!(!bed.data_dir("c1").join("segments").join(VICTIM).exists());
    Ok(())
}

fn batch(seq: u64) -> pb::FlowBatch {
    pb::FlowBatch {
        columns: Default::default(),
        loss: None,
        seq,
        records: vec![pb::FlowRecord::default()],
        created_unix_nanos: 0,
    }
}

/// A collector that asks for client certificates signed by the bed's CA and maps the bed's
/// client certificate to org `certorg`, which has no token at all.
async fn mtls_collector(bed: &TestBed, name: &str, require: bool) -> anyhow::Result<RunningCollector> {
    let text = bed
        .collector_toml(
            name,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            "[[orgs]]\nid = \"certorg\"\nclient_names = [\"*.testorg.example\"]\n",
        )
        .replace(
            "[tls]\n",
            &format!(
                "[tls]\nclient_ca = \"{}\"\nrequire_client_cert = {require}\n",
                bed.certs.ca.display()
            ),
        );
    RunningCollector::start(ringflow_collector::Config::parse(&text)?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_proves_the_org_its_names_map_to_and_no_other() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    assert!(CLIENT_NAME.ends_with(".testorg.example"));
    let collector = mtls_collector(&bed, "c1", false).await?;

    // A real meter with a client certificate and no token sends for certorg.
    let (_, cert, key) = &bed.certs.clients[0];
    let text = bed
        .meter_toml(
            "certmeter",
            &[collector.addr],
            "[sources.synthetic]\nenabled = true\nrecords_per_second = 500\ntotal_records = 300\n",
        )
        .replace(&format!("org_id = \"{ORG}\""), "org_id = \"certorg\"")
        .replace(
            &format!("org_token = \"{}\"", bed.token),
            &format!(
                "client_cert = \"{}\"\nclient_key = \"{}\"",
                cert.display(),
                key.display()
            ),
        );
    let meter = start_meter(ringflow_meter::Config::parse(&text)?).await?;
    let metrics = meter.metrics();
    wait_for_meter(
        &metrics,
        Duration::from_secs(20),
        "the certificate meter's records acked",
        |m| m.delivery.records_acked.get() >= 300,
    )
    .await?;
    meter.stop().await?;

    let with_cert = RawSession::endpoint_at(&bed, loopback(1), Some(0))?;
    let without = RawSession::endpoint_at(&bed, loopback(1), None)?;
    // The certificate is certorg's: it cannot claim testorg, even with testorg's valid token.
    let r = rejected(RawSession::hello_on(&with_cert, collector.addr, ORG, "m", &bed.token).await?)?;
    assert_eq!(r.reason, pb::RejectReason::Auth as i32);
    // Without the certificate there is no way into certorg; tokens still work for testorg.
    let r = rejected(RawSession::hello_on(&without, collector.addr, "certorg", "m", "").await?)?;
    assert_eq!(r.reason, pb::RejectReason::Auth as i32);
    welcomed(RawSession::hello_on(&without, collector.addr, ORG, "m", &bed.token).await?)?;
    let cm = collector.metrics.clone();
    assert_eq!(
        CollectorMetrics::count(&cm.sessions.hello_rejects, "auth_certificate_org"),
        1
    );
    collector.stop().await;
    let stored = read_all(&bed.data_dir("c1"), Some("certorg"))?;
    assert_eq!(stored.iter().map(|b| b.records.len()).sum::<usize>(), 300);
    assert!(read_all(&bed.data_dir("c1"), Some(ORG))?.is_empty());

    // Required: a meter without a certificate does not get past the TLS handshake.
    let strict = mtls_collector(&bed, "c2", true).await?;
    let outcome = RawSession::hello_on(&without, strict.addr, ORG, "m", &bed.token).await;
    assert!(outcome.is_err(), "a meter without a certificate got an answer");
    welcomed(RawSession::hello_on(&with_cert, strict.addr, "certorg", "m", "").await?)?;
    strict.stop().await;
    Ok(())
}

/// A welcomed session that goes silent (no keep-alives) is closed by the idle timeout, and the
/// collector counts why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_session_is_closed_by_the_idle_timeout_and_counted() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let collector = bed
        .start_collector("c1", "[limits]\nidle_timeout_ms = 1000\n")
        .await?;
    // The raw client's keep-alive (3 s) is longer than the collector's idle timeout.
    let session = welcomed(RawSession::hello(&bed, collector.addr, ORG, "quiet", &bed.token).await?)?;
    let error = tokio::time::timeout(Duration::from_secs(10), session.conn.closed()).await?;
    assert!(matches!(error, quinn::ConnectionError::TimedOut), "{error:?}");
    let ended = || CollectorMetrics::count(&collector.metrics.sessions.sessions_ended, "idle_timeout");
    // The collector's counters have no change signal: poll.
    poll_until(Duration::from_secs(10), "the idle session counted", async || {
        ended() > 0
    })
    .await?;
    assert_eq!(ended(), 1);
    collector.stop().await;
    Ok(())
}

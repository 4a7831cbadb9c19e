//! ringflow/1 against bad input: wrong tokens, oversize and garbage frames, poison batches.

use std::time::Duration;

use bytes::Bytes;
use ringflow_collector::CollectorMetrics;
use ringflow_collector::data::sink::file::store::read_all;
use ringflow_proto::codes::StreamCode;
use ringflow_proto::pb;
use ringflow_tests::raw::{RawHello, RawSession, batch_frame};
use ringflow_tests::{ORG, TestBed, start_meter, synthetic, wait_for_meter};

async fn expect_stream_code(
    reader: &mut ringflow_proto::frame::FrameReader<quinn::RecvStream>,
    expected: StreamCode,
) -> anyhow::Result<()> {
    let outcome =
        tokio::time::timeout(Duration::from_secs(10), reader.next_message::<pb::DataDown>()).await?;
    let err = match outcome {
        Ok(msg) => anyhow::bail!("expected the stream to be reset with {expected:?}, got {msg:?}"),
        Err(e) => e,
    };
    let code = err.peer_reset_code().and_then(StreamCode::from_varint);
    anyhow::ensure!(
        code == Some(expected),
        "expected {expected:?}, stream ended with {err} ({code:?})"
    );
    Ok(())
}

/// On one connection: an oversize frame and a garbage frame each close only their own stream with
/// a defined code; a poison batch is nacked; a good batch is acked on the same connection; and
/// another meter connected at the same time is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_their_stream_while_others_are_served() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let collector = bed.start_collector("c1", "").await?;
    let mut config = bed.meter_config("good", &[collector.addr]);
    config.sources.synthetic = synthetic(5_000, 0);
    let meter = start_meter(config).await?;
    let metrics = meter.metrics();
    wait_for_meter(
        &metrics,
        Duration::from_secs(30),
        "the good meter is flowing",
        |m| m.delivery.records_acked.get() >= 1_000,
    )
    .await?;

    let RawHello::Welcomed(raw) = RawSession::hello(&bed, collector.addr, ORG, "raw", &bed.token).await?
    else {
        anyhow::bail!("raw session was rejected");
    };
    let max = raw.welcome.limits.map(|l| l.max_frame_bytes).unwrap_or_default();
    assert_eq!(max, 1 << 20);

    // Oversize: the length prefix alone announces one byte over the limit.
    let mut oversize = (max + 1).to_be_bytes().to_vec();
    oversize.extend_from_slice(&[0u8; 64]);
    let (_send, mut reader) = raw.send_raw(Bytes::from(oversize)).await?;
    expect_stream_code(&mut reader, StreamCode::FrameTooLarge).await?;

    // Garbage: a whole frame whose body is not a DataUp.
    let (_send, mut reader) = raw
        .send_raw(Bytes::from_static(&[
            0, 0, 0, 6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ]))
        .await?;
    expect_stream_code(&mut reader, StreamCode::MalformedFrame).await?;

    // A poison batch (an address of 3 bytes) is nacked, then a good one acked, on one stream.
    let record = pb::FlowRecord {
        src_addr: Bytes::from_static(&[10, 0, 0, 1]),
        dst_addr: Bytes::from_static(&[10, 0, 0, 2]),
        ip_protocol: 6,
        ..Default::default()
    };
    let mut poison = record.clone();
    poison.dst_addr = Bytes::from_static(&[1, 2, 3]);
    let mut wire = batch_frame(pb::FlowBatch {
        columns: Default::default(),
        loss: None,
        seq: 1,
        records: vec![poison],
        created_unix_nanos: 0,
    })
    .to_vec();
    wire.extend_from_slice(&batch_frame(pb::FlowBatch {
        columns: Default::default(),
        loss: None,
        seq: 2,
        records: vec![record; 3],
        created_unix_nanos: 0,
    }));
    let (_send, mut reader) = raw.send_raw(Bytes::from(wire)).await?;
    let mut replies = vec![ringflow_tests::raw::next_reply(&mut reader).await?];
    while !matches!(
        replies.last(),
        Some(pb::data_down::Msg::Ack(pb::Ack { up_to_seq: 2 }))
    ) {
        replies.push(ringflow_tests::raw::next_reply(&mut reader).await?);
    }
    assert!(
        matches!(&replies[0], pb::data_down::Msg::Nack(n) if n.seq == 1 && n.reason == pb::NackReason::InvalidRecord as i32),
        "{replies:?}"
    );
    assert!(
        raw.conn.close_reason().is_none(),
        "the connection survived its bad streams"
    );

    // The other meter kept being served.
    let before = metrics.delivery.records_acked.get();
    wait_for_meter(
        &metrics,
        Duration::from_secs(30),
        "the good meter still flowing",
        |m| m.delivery.records_acked.get() >= before + 1_000,
    )
    .await?;
    meter.stop().await?;
    let cm = collector.metrics.clone();
    collector.stop().await;

    assert_eq!(
        CollectorMetrics::count(&cm.ingest.stream_errors, "frame_too_large"),
        1
    );
    assert_eq!(
        CollectorMetrics::count(&cm.ingest.stream_errors, "malformed_frame"),
        1
    );
    assert_eq!(CollectorMetrics::count(&cm.ingest.nacks, "invalid_record"), 1);
    let raw_batches: Vec<_> = read_all(&bed.data_dir("c1"), Some(ORG))?
        .into_iter()
        .filter(|b| b.meter_id == "raw")
        .collect();
    assert_eq!(raw_batches.len(), 1, "only the good raw batch is stored");
    assert_eq!((raw_batches[0].seq, raw_batches[0].records.len()), (2, 3));
    Ok(())
}

/// Tenancy comes from authentication: a token of one org cannot open a session for another, and
/// what each session stores lands under the org its token proved.
#[tokio::test]
async fn a_token_of_one_org_cannot_write_into_another() -> anyhow::Result<()> {
    use ringflow_collector::control::auth::{generate_token, hash_token};
    let bed = TestBed::new()?;
    let victim_token = generate_token();
    let extra = format!(
        "[[orgs]]\nid = \"victim\"\ntoken_hashes = [\"{}\"]\n",
        hash_token(&victim_token)
    );
    let collector = bed.start_collector("c1", &extra).await?;

    match RawSession::hello(&bed, collector.addr, "victim", "intruder", &bed.token).await? {
        RawHello::Rejected(r) => assert_eq!(r.reason, pb::RejectReason::Auth as i32),
        RawHello::Welcomed(_) => anyhow::bail!("testorg's token opened a session for victim"),
    }

    for (org, token, seq) in [(ORG, bed.token.as_str(), 7), ("victim", victim_token.as_str(), 9)] {
        let RawHello::Welcomed(raw) = RawSession::hello(&bed, collector.addr, org, "raw", token).await?
        else {
            anyhow::bail!("{org} was rejected with its own token");
        };
        let batch = pb::FlowBatch {
            columns: Default::default(),
            loss: None,
            seq,
            records: vec![pb::FlowRecord::default()],
            created_unix_nanos: 0,
        };
        let (mut send, mut reader) = raw.send_raw(batch_frame(batch)).await?;
        assert_eq!(
            ringflow_tests::raw::next_reply(&mut reader).await?,
            pb::data_down::Msg::Ack(pb::Ack { up_to_seq: seq })
        );
        // Finishing the stream ends it cleanly on both sides; the connection stays.
        send.finish()?;
        let end =
            tokio::time::timeout(Duration::from_secs(10), reader.next_message::<pb::DataDown>()).await?;
        assert!(matches!(end, Ok(None)), "{end:?}");
        assert!(raw.conn.close_reason().is_none());
    }
    // The stream's task ends just after it finishes its side, which the client may see first.
    let data_tasks = || {
        collector
            .metrics
            .runtime
            .tasks_active
            .get_or_create(&ringflow_collector::telemetry::TaskLabel { task: "data_stream" })
            .get()
    };
    let left = ringflow_tests::poll_until(Duration::from_secs(10), "no data_stream task left", async || {
        data_tasks() == 0
    })
    .await;
    assert!(
        left.is_ok(),
        "finished streams leave no task behind: {} left",
        data_tasks()
    );
    collector.stop().await;
    let seqs = |org| -> anyhow::Result<Vec<(String, u64)>> {
        Ok(read_all(&bed.data_dir("c1"), Some(org))?
            .into_iter()
            .map(|b| (b.org_id, b.seq))
            .collect())
    };
    assert_eq!(seqs(ORG)?, vec![(ORG.to_owned(), 7)]);
    assert_eq!(seqs("victim")?, vec![("victim".to_owned(), 9)]);
    Ok(())
}

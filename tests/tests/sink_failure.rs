//! A collector whose disk fails: it acks nothing it has not written, says it is not ready,
//! resumes by itself when the disk recovers, and still shuts down within its bounds.

use std::time::Duration;

use ringflow_proto::frame::FrameReader;
use ringflow_proto::pb;
use ringflow_tests::raw::{RawHello, RawSession, batch_frames};
use ringflow_tests::{ORG, TestBed, http_get};

async fn next_ack(
    reader: &mut FrameReader<quinn::RecvStream>,
    within: Duration,
) -> anyhow::Result<Option<u64>> {
    match tokio::time::timeout(within, reader.next_message::<pb::DataDown>()).await {
        Err(_) => Ok(None),
        Ok(msg) => match msg?.and_then(|d| d.msg) {
            Some(pb::data_down::Msg::Ack(a)) => Ok(Some(a.up_to_seq)),
            other => anyhow::bail!("expected an ack, got {other:?}"),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_holds_acks_and_shutdown_stays_bounded() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let collector = bed.start_collector("c1", "[sink]\nqueue_batches = 1\n").await?;
    // Every write fails: where the org's segment directory should go, there is a file.
    let blocker = bed.data_dir("c1").join("segments").join(ORG);
    std::fs::write(&blocker, b"not a directory")?;

    let RawHello::Welcomed(raw) = RawSession::hello(&bed, collector.addr, ORG, "raw", &bed.token).await?
    else {
        anyhow::bail!("rejected");
    };
    let (mut send, mut reader) = raw.send_raw(batch_frames(1..=8, 10)).await?;
    // The sink retries every second; over three seconds nothing may be acked.
    assert_eq!(
        next_ack(&mut reader, Duration::from_secs(3)).await?,
        None,
        "acked a batch it could not write"
    );
    assert!(collector.metrics.sink_write_errors.get() >= 2);
    let (status, body) = http_get(collector.admin_addr, "/readyz").await?;
    assert_eq!((status, body.trim()), (503, "not ready: sink unavailable"));

    // The disk recovers: acks resume by themselves, for every batch.
    std::fs::remove_file(&blocker)?;
    let mut acked = 0;
    while acked < 8 {
        acked = next_ack(&mut reader, Duration::from_secs(10))
            .await?
            .ok_or_else(|| anyhow::anyhow!("no ack after the disk recovered"))?;
    }
    assert_eq!(http_get(collector.admin_addr, "/readyz").await?.0, 200);

    // It fails again, with batches queued: shutdown still completes within grace + flush bounds.
    std::fs::remove_dir_all(&blocker)?;
    std::fs::write(&blocker, b"not a directory")?;
    send.write_chunk(batch_frames(9..=16, 10)).await?;
    assert_eq!(next_ack(&mut reader, Duration::from_secs(2)).await?, None);
    drop(raw);
    tokio::time::timeout(Duration::from_secs(30), collector.stop())
        .await
        .map_err(|_| anyhow::anyhow!("collector shutdown hung behind a failing sink"))?;
    Ok(())
}

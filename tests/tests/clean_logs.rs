//! What a rejected meter and the collector log. This test captures log output, so it lives in
//! its own test binary: tracing caches per-callsite interest process-wide, and a callsite first
//! hit by another test's thread (with no subscriber) could be cached as disabled and vanish from
//! the capture.

use std::time::Duration;

use ringflow_collector::CollectorMetrics;
use ringflow_collector::store::read_all;
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
        ringflow_agent::MeterMetrics::count(&m.rejects, "auth") >= 2
    })
    .await?;
    meter.stop().await?;
    let cm = collector.metrics.clone();
    collector.stop().await;

    assert!(CollectorMetrics::count(&cm.hello_rejects, "auth_wrong_token") >= 2);
    assert_eq!(cm.sessions_welcomed.get(), 0);
    assert_eq!(metrics.sessions_started.get(), 0);
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
    // Repeats are aggregated, not logged once per attempt.
    assert_eq!(text.matches("rejected hello").count(), 1, "{text}");
    Ok(())
}

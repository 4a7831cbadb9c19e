use std::time::Duration;

use tokio::time::Instant;

use super::*;

#[test]
fn throttle_logs_first_then_once_per_interval_with_a_count() {
    let t = LogThrottle::new(Duration::from_secs(10), 2);
    let t0 = Instant::now();
    assert_eq!(t.check("auth", t0), Some(0));
    for i in 1..=5 {
        assert_eq!(t.check("auth", t0 + Duration::from_secs(i)), None);
    }
    assert_eq!(t.check("auth", t0 + Duration::from_secs(11)), Some(5));
    assert_eq!(t.check("other-key", t0), Some(0), "keys are independent");
    // Past max_keys, new keys share one slot instead of growing the map.
    assert_eq!(t.check("k3", t0), Some(0));
    assert_eq!(t.check("k4", t0), None);
}

#[test]
fn metrics_encode_with_their_prefix() {
    let m = CollectorMetrics::new();
    m.connections.refused(RefuseReason::MaxConnections);
    m.org_counters("acme").batches.inc();
    let text = m.encode();
    assert!(
        text.contains("ringflow_collector_connections_refused_total{reason=\"max_connections\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("ringflow_collector_batches_in_total{org=\"acme\"} 1"),
        "{text}"
    );
}

#[test]
fn every_metric_is_registered_once_under_its_name() {
    let m = CollectorMetrics::new();
    let text = m.encode();
    let types: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ringflow_collector_"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    // Families show only once they have a series; the 46 metrics without labels always show,
    // and so do the 5 families created at zero from start.
    assert_eq!(types.len(), 51, "{types:?}");
    let unique: std::collections::HashSet<_> = types.iter().collect();
    assert_eq!(unique.len(), types.len(), "{types:?}");
}

#[test]
fn events_move_their_metrics() {
    let m = CollectorMetrics::new();
    let log = LogThrottle::new(Duration::from_secs(10), 4);
    let refused = |reason| ConnectionRefused {
        reason,
        connections: 1,
        handshakes: 2,
        buffered_bytes: 3,
        log: &log,
        now: Instant::now(),
    };
    refused(RefuseReason::Draining).emit(&m);
    refused(RefuseReason::AcceptRate).emit(&m);
    assert_eq!(
        CollectorMetrics::count(&m.connections.connections_refused, "draining"),
        1
    );
    assert_eq!(
        CollectorMetrics::count(&m.connections.connections_refused, "accept_rate"),
        1
    );
    BatchNacked {
        reason: ringflow_proto::pb::NackReason::InvalidRecord,
    }
    .emit(&m);
    assert_eq!(CollectorMetrics::count(&m.ingest.nacks, "invalid_record"), 1);
    assert_eq!(CollectorMetrics::count(&m.output.batches_dropped, "nacked"), 1);
    SegmentEvicted {
        org: "acme",
        segment: 7,
        batches: 4,
        records: 40,
        bytes: 400,
    }
    .emit(&m);
    assert_eq!(
        CollectorMetrics::count(&m.output.batches_dropped, "store_byte_cap"),
        4
    );
    assert_eq!(m.store.store_dropped_records.get(), 40);
    BatchStored {
        org: "acme",
        records: 10,
        bytes: 100,
    }
    .emit(&m);
    let text = m.encode();
    assert!(
        text.contains("ringflow_collector_org_records_out_total{org=\"acme\"} 10"),
        "{text}"
    );
    assert_eq!(m.output.bytes_out.get(), 100);
}

#[test]
fn meter_loss_is_summed_per_org_and_kind() {
    let m = CollectorMetrics::new();
    let (acme, other) = (m.org_counters("acme"), m.org_counters("other"));
    let loss = |close, untracked, dropped, packets| ringflow_proto::pb::MeasurementLoss {
        close_events_lost: close,
        flows_untracked: untracked,
        records_dropped: dropped,
        packets_untracked: packets,
    };
    for (org, l) in [
        (&acme, loss(2, 0, 5, 0)),
        (&acme, loss(1, 3, 0, 40)),
        (&other, loss(0, 0, 7, 0)),
    ] {
        MeterLossReported {
            loss: &l,
            meter_id: "m",
            seq: 1,
        }
        .emit(org);
    }
    let text = m.encode();
    for line in [
        r#"ringflow_collector_meter_loss_total{org="acme",kind="close_events_lost"} 3"#,
        r#"ringflow_collector_meter_loss_total{org="acme",kind="flows_untracked"} 3"#,
        r#"ringflow_collector_meter_loss_total{org="acme",kind="records_dropped"} 5"#,
        r#"ringflow_collector_meter_loss_total{org="acme",kind="packets_untracked"} 40"#,
        r#"ringflow_collector_meter_loss_total{org="other",kind="records_dropped"} 7"#,
        r#"ringflow_collector_meter_loss_total{org="other",kind="close_events_lost"} 0"#,
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}

#[test]
fn known_reasons_are_exported_at_zero_from_start() {
    let text = CollectorMetrics::new().encode();
    for line in [
        r#"ringflow_collector_connections_refused_total{reason="accept_rate"} 0"#,
        r#"ringflow_collector_connections_refused_total{reason="max_buffered_bytes"} 0"#,
        r#"ringflow_collector_batches_dropped_total{reason="store_byte_cap"} 0"#,
        r#"ringflow_collector_sessions_ended_total{reason="idle_timeout"} 0"#,
        r#"ringflow_collector_hello_rejects_total{reason="overloaded_bounded_load"} 0"#,
        r#"ringflow_collector_hello_rejects_total{reason="sink_unavailable"} 0"#,
        r#"ringflow_collector_control_request_seconds_count{request="hello"} 0"#,
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}

#[test]
fn limit_gauges_are_exported_beside_what_they_bound() {
    let m = CollectorMetrics::new();
    m.ingest.max_frame_bytes.set(1 << 20);
    m.runtime.ready.set(1);
    let text = m.encode();
    for line in [
        "ringflow_collector_max_frame_bytes 1048576",
        "ringflow_collector_ready 1",
        "ringflow_collector_store_max_bytes 0",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}

#[test]
fn the_sink_queue_exports_its_bounds() {
    let m = std::sync::Arc::new(CollectorMetrics::new());
    let (_handle, _jobs) = crate::data::sink::queue(
        crate::data::sink::QueueBounds {
            batches: 64,
            bytes: 4 << 20,
        },
        std::sync::Arc::clone(&m),
    );
    let text = m.encode();
    for line in [
        "ringflow_collector_sink_queue_max_batches 64",
        "ringflow_collector_sink_queue_max_bytes 4194304",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}

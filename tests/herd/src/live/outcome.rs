//! The verdict of a live run: what was lost, how evenly the collectors ended up loaded, how the
//! ack latency fared before and during the herd, how soon a killed collector's meters were
//! welcomed elsewhere, written out as `report.json`, `report.md`, `timeline.json` and the charts.
//!
//! Must never: count a batch that was acked twice (a resend after failover) as lost twice, or
//! judge a collector that is down as holding no sessions.

use std::collections::HashSet;
use std::sync::Arc;

use ringflow_proto::pb;
use tokio::time::Instant;

use super::RunOptions;
use super::failover::Failover;
use super::node_loss::{NodeLossReport, NodeLossSeen};
use super::sampler::{Accumulated, attempts, fleet_handshakes, peak_per_second, sustained_handshakes};
use crate::acks::AckBook;
use crate::fleet::{Fleet, SinkKind};
use crate::meters::{Population, meter_id};
use crate::report::{AckLatency, FailoverException, MAX_FAILOVER_EXCEPTIONS, Report, Thresholds};
use crate::scenario::{FAILOVER_MAX_S, Scenario, balance_threshold};
use crate::timeline::Timeline;

/// Acks the first wave needs before the herd for the latency comparison to be judged.
const MIN_BASELINE_ACKS: u64 = 1_000;

/// What a run left when it stopped: what the verdict is made of.
pub(super) struct Ended {
    pub(super) timeline: Timeline,
    pub(super) acc: Accumulated,
    /// Each meter's collector when the run's duration was up (`None`: not connected).
    pub(super) at_end: Vec<Option<Arc<str>>>,
    /// What the watch of the killed collector's meters saw (`None`: no collector was killed).
    pub(super) failover: Option<Failover>,
    /// The NATS node killed and its stream's election (`None`: no node was killed).
    pub(super) node_loss: Option<NodeLossSeen>,
    /// Every batch the fleet's sink holds.
    pub(super) stored: Vec<pb::StoredBatch>,
    pub(super) population: Arc<Population>,
    pub(super) book: Arc<AckBook>,
    pub(super) herd_at: Option<Instant>,
    pub(super) all_connected_at: Option<Instant>,
}

/// Judges the run, writes its report, timeline and charts into `options.out`.
pub(super) fn judge(
    options: &RunOptions,
    sink: SinkKind,
    capacity: f64,
    fleet: &Fleet,
    ended: Ended,
    added: Option<String>,
) -> anyhow::Result<Report> {
    let (meters, collectors, scenario) = (options.meters, options.collectors, options.scenario);
    let summary = ringflow_tests::summarize(&ended.stored);
    let lost = records_lost(&ended, options.seed, meters);
    let totals = ended
        .population
        .each(|_, m| (m.records.records_generated.get(), m.delivery.records_acked.get()));
    let live = live_sessions(&ended.timeline);
    let connected_at_end = ended.at_end.iter().filter(|c| c.is_some()).count();
    // Meters that went over to the added collector, of those connected at the end.
    let moved_fraction = added.map(|added| {
        let moved = ended
            .at_end
            .iter()
            .filter(|c| c.as_deref() == Some(added.as_str()))
            .count();
        moved as f64 / connected_at_end.max(1) as f64
    });
    let acks = ended.book.summary();
    let failover = ended.failover.as_ref();
    let mut report = Report {
        scenario: scenario.name().to_owned(),
        mode: "live".to_owned(),
        meters,
        collectors,
        seed: options.seed,
        sink: match sink {
            SinkKind::File => "file",
            SinkKind::Nats => "nats",
            SinkKind::NatsCluster => "nats-cluster",
            SinkKind::Kafka => "kafka",
        }
        .to_owned(),
        placement: Some(crate::placement::Placement {
            first_wave_nice: ended.population.first_wave_nice(),
            ..options.placement.clone()
        }),
        duration_s: options.duration.as_secs_f64(),
        records_sent: totals.iter().map(|t| t.0).sum(),
        records_acked: totals.iter().map(|t| t.1).sum(),
        records_stored: summary.records,
        records_lost: lost,
        duplicates_stored: summary.duplicate_batches as u64,
        time_to_all_connected_s: match (ended.herd_at, ended.all_connected_at) {
            (Some(h), Some(a)) => Some(a.duration_since(h).as_secs_f64()),
            _ => None,
        },
        peak_attempts_per_s: peak_per_second(&ended.timeline.samples, attempts),
        handshakes_peak_per_s: peak_per_second(&ended.timeline.samples, fleet_handshakes),
        handshakes_sustained_per_s: herd_handshakes(&ended.timeline, meters),
        handshake_capacity_per_s: capacity,
        sessions_max_over_mean: max_over_mean(&live),
        meters_connected_at_end: connected_at_end,
        moved_fraction,
        failover_max_s: failover.and_then(Failover::max_s),
        failover_p50_s: failover.and_then(Failover::p50_s),
        failover_meters: failover.map(Failover::killed_meters),
        failover_unmoved: failover.map(Failover::unmoved),
        moved_from_live: failover.map(Failover::moved_from_live),
        failover_exceptions: failover.map_or_else(Vec::new, |f| failover_exceptions(f, fleet, options.seed)),
        node_loss: ended
            .node_loss
            .map(|seen| NodeLossReport::from_timeline(seen, &ended.timeline)),
        growth: if scenario == Scenario::Soak {
            // Judged once every kind of event has happened (the herd's period and one cycle of
            // four), so high-water marks are set; each collector process from two periods after
            // it started (its meters back), over at least two periods.
            let period = options.duration.as_secs_f64() / f64::from(crate::scenario::SOAK_PERIODS);
            crate::growth::judge(&ended.timeline, 5.0 * period, 2.0 * period, 2.0 * period)
        } else {
            Vec::new()
        },
        ack_latency_ms: AckLatency {
            p50: acks.all.p50,
            p99: acks.all.p99,
            p99_before_herd: acks.before_herd.p99,
            p99_during_herd: acks.during_herd.p99,
            acks_before_herd: acks.before_herd.count,
            acks_during_herd: acks.during_herd.count,
        },
        collector_crashes: fleet.crashes(),
        collector_rss_max_bytes: ended
            .timeline
            .samples
            .iter()
            .flat_map(|s| s.collector_rss_bytes.iter().copied())
            .max()
            .unwrap_or(0),
        collector_scrapes_missed: ended.timeline.silent_scrapes,
        refusals: ended.acc.refusals,
        verdict: String::new(),
        failures: Vec::new(),
        thresholds: thresholds(scenario, meters, collectors, live.len()),
    };
    report.judge();
    write(options, &report, &ended.timeline)?;
    Ok(report)
}

/// The meters the failover checks name, their collectors by label (`c1`, ...).
fn failover_exceptions(failover: &Failover, fleet: &Fleet, seed: u64) -> Vec<FailoverException> {
    let labels: Vec<(String, String)> = fleet
        .addrs()
        .iter()
        .map(|a| a.to_string())
        .zip(fleet.names())
        .collect();
    let label = |addr: &str| {
        labels
            .iter()
            .find(|(a, _)| a == addr)
            .map_or_else(|| addr.to_owned(), |(_, name)| name.clone())
    };
    failover
        .meters
        .iter()
        .filter(|w| w.is_exception())
        .take(MAX_FAILOVER_EXCEPTIONS)
        .map(|w| FailoverException {
            meter: meter_id(seed, w.meter),
            from: label(&w.from),
            to: w.welcomed.as_ref().map(|(by, _)| label(by)),
            after_s: w.welcomed.as_ref().map(|(_, after)| after.as_secs_f64()),
        })
        .collect()
}

/// Records acked to a meter but not in the sink, batch by batch (each acked batch once).
fn records_lost(ended: &Ended, seed: u64, meters: usize) -> u64 {
    let stored_ids: HashSet<(&str, u64)> = ended
        .stored
        .iter()
        .map(|b| (b.meter_id.as_str(), b.seq))
        .collect();
    let ids: Vec<String> = (0..meters).map(|i| meter_id(seed, i)).collect();
    let mut lost = 0u64;
    for (i, acked) in ended.book.acked_batches().into_iter().enumerate() {
        let mut seen = HashSet::new();
        for (seq, records) in acked.batches() {
            if seen.insert(seq) && !stored_ids.contains(&(ids[i].as_str(), seq)) {
                lost += u64::from(records);
            }
        }
    }
    lost
}

/// Sessions held at the last sample by each collector that was up then.
fn live_sessions(timeline: &Timeline) -> Vec<u64> {
    timeline
        .samples
        .last()
        .map(|s| {
            s.sessions
                .iter()
                .zip(&s.collector_rss_bytes)
                .filter(|(_, rss)| **rss > 0)
                .map(|(n, _)| *n)
                .collect()
        })
        .unwrap_or_default()
}

/// The busiest collector's sessions over the mean (`None` when no collector holds any).
fn max_over_mean(live: &[u64]) -> Option<f64> {
    let total: u64 = live.iter().sum();
    (total > 0).then(|| {
        let mean = total as f64 / live.len() as f64;
        live.iter().copied().max().unwrap_or(0) as f64 / mean
    })
}

/// What a live run of `scenario` is judged against.
fn thresholds(scenario: Scenario, meters: usize, collectors: usize, live: usize) -> Thresholds {
    Thresholds {
        records_lost: 0,
        collector_crashes: 0,
        sessions_max_over_mean: balance_threshold(scenario, meters, live.max(1)),
        p99_during_over_before: (scenario == Scenario::ColdStart).then_some(2.0),
        min_baseline_acks: MIN_BASELINE_ACKS,
        moved_fraction: scenario
            .moves_meters()
            .then(|| crate::scenario::moved_range(collectors, meters)),
        all_connected: true,
        min_connected_at_end: (meters as f64 * 0.99).floor() as usize,
        peak_attempts_over_capacity: None,
        time_to_all_connected_max_s: None,
        failover_max_s: scenario.judges_failover().then_some(FAILOVER_MAX_S),
        failover_unmoved: scenario.judges_failover().then_some(0),
        moved_from_live: scenario.judges_failover().then_some(0),
    }
}

/// `report.json`, `report.md`, `timeline.json` and the charts.
fn write(options: &RunOptions, report: &Report, timeline: &Timeline) -> anyhow::Result<()> {
    report.write(&options.out)?;
    std::fs::write(
        options.out.join("timeline.json"),
        serde_json::to_string(timeline)? + "\n",
    )?;
    let title = format!(
        "herd {} ({} meters, {} collectors)",
        options.scenario.name(),
        options.meters,
        options.collectors
    );
    crate::charts::write_charts(&options.out, &title, timeline)?;
    Ok(())
}

/// [`sustained_handshakes`] over the herd: from "herd started" (every herd meter running) until
/// "all connected"; when most meters were in before the last one started, from "herd: N meters".
fn herd_handshakes(timeline: &Timeline, meters: usize) -> Option<f64> {
    let at = |prefix: &str| {
        timeline
            .events
            .iter()
            .find(|e| e.what.starts_with(prefix))
            .map(|e| e.t_s)
    };
    let to = at(super::ALL_CONNECTED).unwrap_or(f64::MAX);
    let over = |from: f64| sustained_handshakes(&timeline.samples, from, to, meters);
    at(super::HERD_STARTED)
        .and_then(over)
        .or_else(|| at(super::HERD_EVENT_PREFIX).and_then(over))
}

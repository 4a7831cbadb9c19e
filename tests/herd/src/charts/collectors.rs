//! The charts of each collector over time, from the 100 ms samples: sessions held, handshakes
//! completed per second, the accept rate in force (adaptive or configured), the control plane's
//! lag (what the adaptive rate watches) and CPU used, so a
//! reader sees where a herd's cost went. One line per collector slot, or, past
//! [`MAX_COLLECTOR_LINES`] collectors, the busiest, the mean and the idlest of those above 0.

use super::{Chart, MAX_COLLECTOR_LINES, Series};
use crate::timeline::{Sample, Timeline};

/// A sample's value for each collector slot.
type PerCollector = fn(&Sample) -> Vec<f64>;

/// The per-collector charts; a series no sample has (CPU in a simulation) gives no chart.
pub(super) fn charts(timeline: &Timeline) -> Vec<Chart> {
    let sessions = Spec {
        file_stem: "sessions",
        name: "sessions per collector",
        y_desc: "sessions",
        value: |s| s.sessions.iter().map(|&n| n as f64).collect(),
    };
    let more = [
        Spec {
            file_stem: "collector_handshakes",
            name: "handshakes completed per collector",
            y_desc: "per second",
            value: |s| s.handshakes_per_s.clone(),
        },
        Spec {
            file_stem: "collector_accept_rate",
            name: "accept rate in force per collector",
            y_desc: "accepts per second",
            value: |s| s.accept_rate.clone(),
        },
        Spec {
            file_stem: "collector_lag",
            name: "control-plane lag per collector",
            y_desc: "ms",
            value: |s| s.control_lag_ms.clone(),
        },
        Spec {
            file_stem: "collector_cpu",
            name: "CPU used per collector process",
            y_desc: "cores",
            value: |s| s.collector_cpu.clone(),
        },
    ];
    let mut charts = vec![chart(timeline, &sessions)];
    for spec in &more {
        if timeline.samples.iter().any(|s| !(spec.value)(s).is_empty()) {
            charts.push(chart(timeline, spec));
        }
    }
    // Beside the collectors' CPU, the meters' process's: which side a herd ran out of.
    if let Some(cpu) = charts.iter_mut().find(|c| c.file_stem == "collector_cpu") {
        let meters = timeline.samples.iter().map(|s| (s.t_s, s.meters_cpu));
        cpu.series.push(Series::new("meters (herd)", meters));
        cpu.name = "CPU used per collector process and by the meters' process".to_owned();
    }
    charts
}

/// One per-collector chart: its file, title, unit and the value drawn.
struct Spec {
    file_stem: &'static str,
    name: &'static str,
    y_desc: &'static str,
    value: PerCollector,
}

fn chart(timeline: &Timeline, spec: &Spec) -> Chart {
    let value = spec.value;
    // One line per collector slot; a sample whose vector is short just has no point for the
    // missing slots.
    let slots = timeline
        .samples
        .iter()
        .map(|s| value(s).len())
        .max()
        .unwrap_or(0)
        .max(timeline.collectors.len());
    if slots > MAX_COLLECTOR_LINES {
        return summary(timeline, spec);
    }
    let series = (0..slots)
        .map(|i| {
            let label = timeline
                .collectors
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("collector #{i}"));
            let points = timeline
                .samples
                .iter()
                .filter_map(|s| value(s).get(i).map(|&v| (s.t_s, v)));
            Series::new(label, points)
        })
        .collect();
    Chart {
        file_stem: spec.file_stem,
        name: spec.name.to_owned(),
        y_desc: spec.y_desc,
        y_cap: None,
        series,
    }
}

/// The busiest collector, the mean and the idlest, over the collectors above 0 in each sample.
fn summary(timeline: &Timeline, spec: &Spec) -> Chart {
    let value = spec.value;
    let pick = |f: fn(&[f64]) -> f64| {
        timeline.samples.iter().filter_map(move |s| {
            let busy: Vec<f64> = value(s).into_iter().filter(|&v| v > 0.0).collect();
            (!busy.is_empty()).then(|| (s.t_s, f(&busy)))
        })
    };
    Chart {
        file_stem: spec.file_stem,
        name: format!("{} (busiest, mean, idlest)", spec.name),
        y_desc: spec.y_desc,
        y_cap: None,
        series: vec![
            Series::new("busiest", pick(|b| b.iter().copied().fold(f64::MIN, f64::max))),
            Series::new("mean", pick(|b| b.iter().sum::<f64>() / b.len() as f64)),
            Series::new("idlest", pick(|b| b.iter().copied().fold(f64::MAX, f64::min))),
        ],
    }
}

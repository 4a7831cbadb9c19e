//! The charts of what each process held, once a second: memory, open descriptors, threads,
//! tasks alive, and each collector's sink queue; one line per collector slot (a gap while it is
//! down) and one for the meters' process.

use super::{Chart, Series};
use crate::timeline::{Resources, Timeline};

/// One chart per resource; none when the run sampled no resources.
pub(super) fn charts(timeline: &Timeline) -> Vec<Chart> {
    if timeline.resources.is_empty() {
        return Vec::new();
    }
    let mib = |r: &Resources| r.rss_bytes as f64 / (1024.0 * 1024.0);
    vec![
        chart(timeline, "resources_rss", "resident memory", "MiB", mib, true),
        chart(
            timeline,
            "resources_fds",
            "open file descriptors",
            "descriptors",
            |r| r.fds as f64,
            true,
        ),
        chart(
            timeline,
            "resources_threads",
            "threads",
            "threads",
            |r| r.threads as f64,
            true,
        ),
        chart(
            timeline,
            "resources_tasks",
            "tasks alive",
            "tasks",
            |r| r.tasks as f64,
            true,
        ),
        chart(
            timeline,
            "resources_sink_queue",
            "sink queue",
            "batches",
            |r| r.sink_queue_batches as f64,
            false,
        ),
    ]
}

fn chart(
    timeline: &Timeline,
    file_stem: &'static str,
    name: &'static str,
    y_desc: &'static str,
    value: fn(&Resources) -> f64,
    with_meters: bool,
) -> Chart {
    let mut series: Vec<Series> = (0..timeline.resource_slots())
        .map(|i| {
            let points = timeline.slot_resources(i).map(|(t, r)| (t, value(&r)));
            Series::new(timeline.collector_label(i), points)
        })
        .collect();
    if with_meters {
        let points = timeline
            .resources
            .iter()
            .filter_map(|s| s.meters.map(|r| (s.t_s, value(&r))));
        series.push(Series::new("meters (herd)", points));
    }
    Chart {
        file_stem,
        name: name.to_owned(),
        y_desc,
        y_cap: None,
        series,
    }
}

//! `herd soak`'s verdict on what the processes hold: a least-squares line through each
//! process's resources (sampled once a second) after its warm-up; a series whose line rises by
//! more than its allowance over its window fails.
//!
//! Owns: the fit, the windows (per process: a collector started again is a new process, judged
//! after its own warm-up) and the allowances. Must never: read a clock or a process (sans-IO:
//! it reads the timeline).

use serde::Serialize;

use crate::timeline::{Resources, Timeline};

/// What each series may rise by over its window, as (metric, fraction of its mean, floor):
/// memory 10% of its mean or 8 MiB; descriptors 10% or 16; threads 2 (fixed pools); the
/// meters' tasks 10% or 32; a collector's tasks per session (they come and go with its meters,
/// which events move) 10% or 0.25; a collector's sink queue 64 batches (it is bounded anyway:
/// a rising line means batches stuck).
pub const ALLOWANCES: [(&str, f64, f64); 6] = [
    ("rss_bytes", 0.10, 8.0 * 1024.0 * 1024.0),
    ("fds", 0.10, 16.0),
    ("threads", 0.0, 2.0),
    ("tasks", 0.10, 32.0),
    ("tasks_per_session", 0.10, 0.25),
    ("sink_queue_batches", 0.0, 64.0),
];

/// One process's series over its window.
#[derive(Debug, Clone, Serialize)]
pub struct Growth {
    /// `c1`, ... or `meters` (the herd process itself).
    pub process: String,
    pub pid: u32,
    pub metric: &'static str,
    /// The window, seconds of the run.
    pub from_s: f64,
    pub to_s: f64,
    pub mean: f64,
    /// What the fitted line rose by over the window (negative: it fell).
    pub growth: f64,
    pub allowed: f64,
    pub ok: bool,
}

fn value(r: &Resources, metric: &str) -> f64 {
    (match metric {
        "rss_bytes" => r.rss_bytes,
        "fds" => r.fds,
        "threads" => r.threads,
        "tasks" => r.tasks,
        "tasks_per_session" => return r.tasks as f64 / r.sessions.max(1) as f64,
        _ => r.sink_queue_batches,
    }) as f64
}

/// Whether `metric` is judged for `process` (`meters`, or a collector).
fn judged(process: &str, metric: &str) -> bool {
    match metric {
        "tasks" => process == "meters",
        "tasks_per_session" | "sink_queue_batches" => process != "meters",
        _ => true,
    }
}

/// Slope of the least-squares line through `points` (per second), and the mean of y.
pub fn fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let (mt, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (t, y)| (a + t / n, b + y / n));
    let (mut sty, mut stt) = (0.0, 0.0);
    for (t, y) in points {
        sty += (t - mt) * (y - my);
        stt += (t - mt) * (t - mt);
    }
    (stt > 0.0).then(|| (sty / stt, my))
}

/// A process's label, pid and its resources over time.
type Process = (String, u32, Vec<(f64, Resources)>);

/// Judges every process of `timeline`: each collector process from `settle_s` after it started
/// (and not before `warmup_s`), the meters' process from `warmup_s`; a process with less than
/// `min_window_s` of samples in its window is not judged.
pub fn judge(timeline: &Timeline, warmup_s: f64, settle_s: f64, min_window_s: f64) -> Vec<Growth> {
    let mut processes: Vec<Process> = Vec::new();
    for slot in 0..timeline.resource_slots() {
        let label = timeline.collector_label(slot);
        for (t, r) in timeline.slot_resources(slot) {
            match processes.last_mut() {
                Some((l, pid, points)) if *l == label && *pid == r.pid => points.push((t, r)),
                _ => processes.push((label.clone(), r.pid, vec![(t, r)])),
            }
        }
    }
    let meters: Vec<(f64, Resources)> = timeline
        .resources
        .iter()
        .filter_map(|s| s.meters.map(|r| (s.t_s, r)))
        .collect();
    if let Some((_, first)) = meters.first() {
        processes.push(("meters".to_owned(), first.pid, meters));
    }
    let mut out = Vec::new();
    for (process, pid, points) in processes {
        let started = points.first().map_or(0.0, |p| p.0);
        let from = if process == "meters" {
            warmup_s
        } else {
            warmup_s.max(started + settle_s)
        };
        let window: Vec<&(f64, Resources)> = points.iter().filter(|(t, _)| *t >= from).collect();
        let (Some(first), Some(last)) = (window.first(), window.last()) else {
            continue;
        };
        if last.0 - first.0 < min_window_s {
            continue;
        }
        for (metric, relative, floor) in ALLOWANCES {
            if !judged(&process, metric) {
                continue;
            }
            let series: Vec<(f64, f64)> = window.iter().map(|(t, r)| (*t, value(r, metric))).collect();
            let Some((slope, mean)) = fit(&series) else {
                continue;
            };
            let growth = slope * (last.0 - first.0);
            let allowed = (relative * mean).max(floor);
            out.push(Growth {
                process: process.clone(),
                pid,
                metric,
                from_s: first.0,
                to_s: last.0,
                mean,
                growth,
                allowed,
                ok: growth <= allowed,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::ResourceSample;

    fn res(pid: u32, rss_mib: f64, fds: u64) -> Resources {
        Resources {
            pid,
            rss_bytes: (rss_mib * 1024.0 * 1024.0) as u64,
            fds,
            threads: 10,
            tasks: 100,
            sink_queue_batches: 0,
            sessions: 50,
        }
    }

    #[test]
    fn the_fit_finds_the_slope_of_a_line_and_nothing_in_a_flat_sawtooth() {
        let line: Vec<(f64, f64)> = (0..100)
            .map(|t| (f64::from(t), 3.0 + 0.5 * f64::from(t)))
            .collect();
        let (slope, _) = fit(&line).expect("a line");
        assert!((slope - 0.5).abs() < 1e-9);
        let saw: Vec<(f64, f64)> = (0..1000).map(|t| (f64::from(t), f64::from(t % 100))).collect();
        let (slope, mean) = fit(&saw).expect("a sawtooth");
        assert!(slope.abs() < 0.01 && (mean - 49.5).abs() < 1e-9, "{slope} {mean}");
        assert!(fit(&[(1.0, 1.0)]).is_none());
    }

    #[test]
    fn a_leaking_collector_fails_a_steady_one_passes_and_a_restart_starts_a_new_window() {
        // c1 leaks 1 MiB a minute for 10 minutes after warm-up; c2 is flat but restarted at 300 s
        // (a new pid, judged apart from its settling); the meters are flat.
        let samples = (0..600)
            .map(|t| {
                let t = f64::from(t);
                let c2 = if t < 300.0 {
                    res(20, 40.0, 50)
                } else {
                    res(21, 30.0 + (t - 300.0).min(30.0) / 3.0, 50)
                };
                ResourceSample {
                    t_s: t,
                    collectors: vec![Some(res(10, 40.0 + t / 60.0, 50)), Some(c2)],
                    meters: Some(res(1, 200.0, 400)),
                }
            })
            .collect();
        let timeline = Timeline {
            collectors: vec!["c1".into(), "c2".into()],
            resources: samples,
            ..Timeline::default()
        };
        let verdict = judge(&timeline, 60.0, 60.0, 120.0);
        let failing: Vec<(&str, &str)> = verdict
            .iter()
            .filter(|g| !g.ok)
            .map(|g| (g.process.as_str(), g.metric))
            .collect();
        assert_eq!(failing, vec![("c1", "rss_bytes")], "{verdict:#?}");
        let c1 = verdict
            .iter()
            .find(|g| g.process == "c1" && g.metric == "rss_bytes")
            .expect("c1 judged");
        assert!((c1.growth / (1024.0 * 1024.0) - 8.98).abs() < 0.05, "{c1:?}");
        // c2's first process (0-300 s) and its second from 360 s on are judged apart.
        let c2: Vec<u32> = verdict
            .iter()
            .filter(|g| g.process == "c2" && g.metric == "fds")
            .map(|g| g.pid)
            .collect();
        assert_eq!(c2, vec![20, 21]);
        assert!(
            verdict
                .iter()
                .any(|g| g.process == "meters" && g.metric == "tasks" && g.ok)
        );
    }
}

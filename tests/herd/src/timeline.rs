//! What `herd` saw over time: one [`Sample`] per sampling interval (100 ms), plus the scenario's
//! events. Filled by the live sampler (and, later, by the simulator); read by the report and the
//! charts.
//!
//! Owns: the shape of a run's time series. Must never: measure anything itself.

use serde::Serialize;

/// One sampling interval's view of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Seconds since the run started (the end of the interval).
    pub t_s: f64,
    /// Sessions held by each collector, indexed like [`Timeline::collectors`] (0 for one that is
    /// down or not started yet).
    pub sessions: Vec<u64>,
    /// Connection attempts by all meters per second over the interval.
    pub attempts_per_s: f64,
    /// Meters started so far (`Meter::start_embedded` returned; live only, 0 simulated).
    pub meters_started: u64,
    /// Meters that had dialled a collector at least once so far (live only, 0 simulated).
    pub meters_dialled: u64,
    /// Refusals and rejects per second over the interval, by reason (`accept_rate`,
    /// `handshakes`, `overloaded_sessions`, ...).
    pub refusals_per_s: std::collections::BTreeMap<String, f64>,
    /// Records the meters' sources produced so far.
    pub records_sent: u64,
    /// Records collectors acked to meters so far.
    pub records_acked: u64,
    /// Records collectors stored so far (their own counters; the report recounts the store).
    pub records_stored: u64,
    /// Ack latency percentiles of the batches acked in this interval (None: no acks).
    pub ack_p50_ms: Option<f64>,
    pub ack_p99_ms: Option<f64>,
    /// Resident memory of each collector process, bytes (0 when down).
    pub collector_rss_bytes: Vec<u64>,
    /// Whether each collector said it was ready (`ringflow_collector_ready`; false when down,
    /// its last answer when too busy to answer).
    pub collector_ready: Vec<bool>,
    /// CPU each collector process used over the interval, in cores (live only; 0 when down).
    pub collector_cpu: Vec<f64>,
    /// CPU the meters' process (`herd` itself) used over the interval, in cores (live only).
    pub meters_cpu: f64,
    /// Handshakes each collector completed per second over the interval (`Welcome` or
    /// `Reject` sent: `handshake_seconds_count`).
    pub handshakes_per_s: Vec<f64>,
    /// Each collector's accept rate in force (`admission_accept_rate`: adaptive, or the
    /// configured one; 0 when down).
    pub accept_rate: Vec<f64>,
    /// Each collector's control-plane lag, ms: live, `control_lag_seconds` (the mean over its
    /// last 100 ms window; 0 unless `--adaptive-lag-ms`); simulated, the handshake work queued
    /// ahead at the sample.
    pub control_lag_ms: Vec<f64>,
}

/// What one process held at one instant (see `live::resources`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Resources {
    pub pid: u32,
    pub rss_bytes: u64,
    /// Open file descriptors.
    pub fds: u64,
    pub threads: u64,
    /// Tasks alive: a collector's `tasks_active` summed, the meters' runtime's alive tasks.
    pub tasks: u64,
    /// A collector's `sink_queue_batches` (0 for the meters).
    pub sink_queue_batches: u64,
    /// A collector's sessions (0 for the meters): its tasks are judged per session, since they
    /// come and go with its meters.
    pub sessions: u64,
}

/// Once a second: what each collector process and the meters' process (this one) held.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ResourceSample {
    pub t_s: f64,
    /// Indexed like [`Timeline::collectors`]; `None` while a collector is down.
    pub collectors: Vec<Option<Resources>>,
    pub meters: Option<Resources>,
}

/// A scenario event, drawn as a marker on the charts.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub t_s: f64,
    /// What happened, for a chart label: "herd starts", "c2 killed", ...
    pub what: String,
}

/// A run's time series.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timeline {
    /// Collector labels (`c1`, `c2`, ...), one per slot of [`Sample::sessions`].
    pub collectors: Vec<String>,
    /// Their dial addresses (`herd sim --port` takes the port of a live run from here, so both
    /// put the same meters on the same collectors).
    pub addresses: Vec<String>,
    pub samples: Vec<Sample>,
    /// Once a second, what each process held (`herd soak` judges their growth).
    pub resources: Vec<ResourceSample>,
    pub events: Vec<Event>,
    /// Scrapes of a running collector's `/metrics` that did not answer within the timeout (its
    /// previous figures were carried forward).
    pub silent_scrapes: u64,
}

impl Timeline {
    /// Collector slots in the resource samples.
    pub fn resource_slots(&self) -> usize {
        self.resources
            .iter()
            .map(|s| s.collectors.len())
            .max()
            .unwrap_or(0)
    }

    /// Collector slot `i`'s label (`c1`, ...).
    pub fn collector_label(&self, i: usize) -> String {
        self.collectors
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("c{}", i + 1))
    }

    /// What collector slot `i` held over time, while it was up.
    pub fn slot_resources(&self, i: usize) -> impl Iterator<Item = (f64, Resources)> + '_ {
        self.resources
            .iter()
            .filter_map(move |s| s.collectors.get(i).copied().flatten().map(|r| (s.t_s, r)))
    }
}

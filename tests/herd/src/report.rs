//! A run's verdict: `report.json` (every key documented in docs/herd.md) and a
//! short `report.md`.
//!
//! Owns: the report's keys, the thresholds and how the verdict follows from them. Must never:
//! measure (the runner fills [`Report`]) or draw (see `charts`).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::growth::Growth;
use crate::live::node_loss::NodeLossReport;

/// The top-level keys of every `report.json`, live or simulated (docs/herd.md's table
/// documents each; `tests/docs.rs` checks it does).
pub const KEYS: [&str; 33] = [
    "scenario",
    "mode",
    "meters",
    "collectors",
    "seed",
    "sink",
    "placement",
    "records_sent",
    "records_acked",
    "records_stored",
    "records_lost",
    "duplicates_stored",
    "time_to_all_connected_s",
    "peak_attempts_per_s",
    "handshake_capacity_per_s",
    "handshakes_peak_per_s",
    "handshakes_sustained_per_s",
    "sessions_max_over_mean",
    "meters_connected_at_end",
    "moved_fraction",
    "failover_max_s",
    "failover_p50_s",
    "failover_meters",
    "failover_unmoved",
    "moved_from_live",
    "failover_exceptions",
    "node_loss",
    "growth",
    "ack_latency_ms",
    "collector_crashes",
    "verdict",
    "failures",
    "thresholds",
];

/// `v` with two decimals and `unit`, or "n/a".
fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or("n/a".to_owned(), |v| format!("{v:.2}{unit}"))
}

/// Ack latency, milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AckLatency {
    /// Over every ack of the run.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    /// Acks to the first wave while only it was connected.
    pub p99_before_herd: Option<f64>,
    /// Acks to the first wave (already connected) while the herd connected.
    pub p99_during_herd: Option<f64>,
    /// How many acks each of the two phase figures is based on.
    pub acks_before_herd: u64,
    pub acks_during_herd: u64,
}

/// The most meters `failover_exceptions` names (the counts are in `failover_unmoved` and
/// `moved_from_live`).
pub const MAX_FAILOVER_EXCEPTIONS: usize = 20;

/// A meter the failover checks name: one of the killed collector's that no other collector
/// welcomed, or one of a running collector's that another one did.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverException {
    /// The meter's id.
    pub meter: String,
    /// Its collector at the kill (`c1`, ...).
    pub from: String,
    /// The collector that welcomed it next (null: none did by the end of the run).
    pub to: Option<String>,
    /// From the kill to that welcome, seconds.
    pub after_s: Option<f64>,
}

/// What passes.
#[derive(Debug, Clone, Serialize)]
pub struct Thresholds {
    /// Acked but not stored: must be this (0).
    pub records_lost: u64,
    /// Collector exits nobody asked for.
    pub collector_crashes: u32,
    /// Highest `sessions_max_over_mean` that passes.
    pub sessions_max_over_mean: f64,
    /// Highest `p99_during_herd / p99_before_herd` that passes (null: not judged in this
    /// scenario; a baseline under `min_baseline_acks` is not judged either).
    pub p99_during_over_before: Option<f64>,
    /// Acks the baseline needs before the latency ratio is checked.
    pub min_baseline_acks: u64,
    /// `moved_fraction` must lie in this range (null: not checked).
    pub moved_fraction: Option<(f64, f64)>,
    /// Every meter must have been connected at once after the herd.
    pub all_connected: bool,
    /// Meters that must hold a session at the end (99%: a few may be between two collectors,
    /// moving home).
    pub min_connected_at_end: usize,
    /// Highest `peak_attempts_per_s / handshake_capacity_per_s` that passes (null: not judged;
    /// `herd sim` judges it, a live run's capacity is the machine's, not the fleet's budget).
    pub peak_attempts_over_capacity: Option<f64>,
    /// Longest `time_to_all_connected_s` that passes (null: not judged; `herd sim`: 1.25 × N /
    /// capacity).
    pub time_to_all_connected_max_s: Option<f64>,
    /// Longest `failover_max_s` that passes (null: failover not judged; a live crash-one judges
    /// it, see `scenario::FAILOVER_MAX_S`).
    pub failover_max_s: Option<f64>,
    /// Highest `failover_unmoved` that passes (null: not judged).
    pub failover_unmoved: Option<usize>,
    /// Highest `moved_from_live` that passes (null: not judged).
    pub moved_from_live: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    /// "live" (`herd run`) or "sim" (`herd sim`).
    pub mode: String,
    pub meters: usize,
    pub collectors: usize,
    pub seed: u64,
    pub sink: String,
    /// Which CPUs the collectors and the meters ran on (null: `herd sim`).
    pub placement: Option<crate::placement::Placement>,
    pub duration_s: f64,
    pub records_sent: u64,
    pub records_acked: u64,
    pub records_stored: u64,
    pub records_lost: u64,
    pub duplicates_stored: u64,
    /// From the herd's start until every meter had been welcomed by a collector (null: never).
    pub time_to_all_connected_s: Option<f64>,
    pub peak_attempts_per_s: f64,
    pub handshake_capacity_per_s: f64,
    /// Most handshakes the fleet completed in any one-second stretch (from the collectors'
    /// `handshake_seconds_count`): what the collectors did while the herd's meters shared the
    /// machine, against `handshake_capacity_per_s`, which the probe measured before.
    pub handshakes_peak_per_s: f64,
    /// Median of the fleet's handshakes per second over the 100 ms samples from "herd started"
    /// (every herd meter running) until all were connected, while under nine tenths held a
    /// session: what the collectors sustained through the herd (the calibration's service rate
    /// for `herd sim --capacity`, divided by the collectors). Null in a simulation, or when no
    /// sample fell there.
    pub handshakes_sustained_per_s: Option<f64>,
    pub sessions_max_over_mean: Option<f64>,
    /// Meters with a session at the end of the run.
    pub meters_connected_at_end: usize,
    pub moved_fraction: Option<f64>,
    /// From the kill until the slowest of the killed collector's meters was welcomed by
    /// another collector, seconds, of those that were (null: no collector killed, none of its
    /// meters welcomed elsewhere, or not measured: `herd sim`).
    pub failover_max_s: Option<f64>,
    /// The same, the median meter.
    pub failover_p50_s: Option<f64>,
    /// Meters connected to the killed collector when it was killed (null: none killed, or not
    /// measured).
    pub failover_meters: Option<usize>,
    /// Of those, meters no other collector had welcomed by the end of the run.
    pub failover_unmoved: Option<usize>,
    /// Meters connected at the kill to a collector that was not killed, and later to another
    /// one than their first choice on the ring (a live collector's meter must stay; going home
    /// is the herd's rebalancing finishing).
    pub moved_from_live: Option<usize>,
    /// The meters behind `failover_unmoved` and `moved_from_live`, at most
    /// [`MAX_FAILOVER_EXCEPTIONS`].
    pub failover_exceptions: Vec<FailoverException>,
    /// node-loss: the NATS node killed, how long the stream's election took, and how long each
    /// collector was unready meanwhile (null: no node killed, or `herd sim`).
    pub node_loss: Option<NodeLossReport>,
    /// `herd soak`: each process's resources over its window after warm-up, and whether each
    /// rose by no more than its allowance (empty for other runs).
    pub growth: Vec<Growth>,
    pub ack_latency_ms: AckLatency,
    pub collector_crashes: u32,
    /// Most resident memory any collector had, bytes.
    pub collector_rss_max_bytes: u64,
    /// Scrapes of a running collector's `/metrics` that timed out (a collector too busy to answer
    /// its admin endpoint within 1 s).
    pub collector_scrapes_missed: u64,
    /// Refusals and rejects over the run, by reason.
    pub refusals: std::collections::BTreeMap<String, u64>,
    pub verdict: String,
    /// Why the verdict is "fail" (empty on "pass").
    pub failures: Vec<String>,
    pub thresholds: Thresholds,
}

impl FailoverException {
    /// `herd-1-000004 of c1: never welcomed elsewhere`, `herd-1-000123 of c2: to c3 after 7.10 s`.
    fn text(&self) -> String {
        match (&self.to, self.after_s) {
            (Some(to), Some(after)) => format!("{} of {}: to {to} after {after:.2} s", self.meter, self.from),
            _ => format!("{} of {}: never welcomed elsewhere", self.meter, self.from),
        }
    }
}

impl Report {
    /// Sets `verdict` and `failures` from the figures and `thresholds`.
    pub fn judge(&mut self) {
        let t = &self.thresholds;
        let mut failures = Vec::new();
        if self.records_lost > t.records_lost {
            failures.push(format!("{} acked records were not stored", self.records_lost));
        }
        if self.collector_crashes > t.collector_crashes {
            failures.push(format!("{} collector crashes", self.collector_crashes));
        }
        match self.sessions_max_over_mean {
            Some(m) if m > t.sessions_max_over_mean => failures.push(format!(
                "sessions max/mean {m:.3} > {:.3}",
                t.sessions_max_over_mean
            )),
            None => failures.push("no sessions at the end".to_owned()),
            _ => {}
        }
        if t.all_connected && self.time_to_all_connected_s.is_none() {
            failures.push("not every meter connected".to_owned());
        }
        if self.meters_connected_at_end < t.min_connected_at_end {
            failures.push(format!(
                "{} of {} meters connected at the end (at least {} must be)",
                self.meters_connected_at_end, self.meters, t.min_connected_at_end
            ));
        }
        let l = &self.ack_latency_ms;
        if let (Some(limit), Some(before), Some(during)) =
            (t.p99_during_over_before, l.p99_before_herd, l.p99_during_herd)
            && l.acks_before_herd >= t.min_baseline_acks
            && during > limit * before
        {
            failures.push(format!(
                "first wave's ack p99 rose from {before:.1} ms to {during:.1} ms during the herd (limit x{limit})"
            ));
        }
        if let Some(limit) = t.peak_attempts_over_capacity
            && self.peak_attempts_per_s > limit * self.handshake_capacity_per_s
        {
            failures.push(format!(
                "peak attempts {:.0}/s > {limit} x the fleet's handshake capacity {:.0}/s",
                self.peak_attempts_per_s, self.handshake_capacity_per_s
            ));
        }
        if let (Some(limit), Some(took)) = (t.time_to_all_connected_max_s, self.time_to_all_connected_s)
            && took > limit
        {
            failures.push(format!(
                "every meter connected after {took:.2} s (at most {limit:.2} s passes)"
            ));
        }
        self.judge_failover(&mut failures);
        if let Some(node_loss) = &self.node_loss {
            failures.extend(node_loss.failures());
        }
        if self.scenario == "soak" && self.growth.is_empty() {
            failures
                .push("no process was sampled long enough after its warm-up to judge its growth".to_owned());
        }
        for g in self.growth.iter().filter(|g| !g.ok) {
            failures.push(format!(
                "{} (pid {}) {} rose by {:.0} over {:.0}-{:.0} s (mean {:.0}; at most {:.0} may)",
                g.process, g.pid, g.metric, g.growth, g.from_s, g.to_s, g.mean, g.allowed
            ));
        }
        if let Some((lo, hi)) = t.moved_fraction {
            match self.moved_fraction {
                Some(m) if (lo..=hi).contains(&m) => {}
                Some(m) => failures.push(format!("moved fraction {m:.3} outside [{lo:.3}, {hi:.3}]")),
                None => failures.push("moved fraction not measured".to_owned()),
            }
        }
        self.verdict = if failures.is_empty() { "pass" } else { "fail" }.to_owned();
        self.failures = failures;
    }

    /// The failover checks: the killed collector's meters welcomed elsewhere soon enough, all
    /// of them, and no other meter moved.
    fn judge_failover(&self, failures: &mut Vec<String>) {
        let t = &self.thresholds;
        let meters = self.failover_meters.unwrap_or(0);
        if t.failover_max_s.is_some() && meters == 0 {
            failures.push("failover not measured: the killed collector had no meters".to_owned());
            return;
        }
        if let (Some(limit), Some(took)) = (t.failover_max_s, self.failover_max_s)
            && took > limit
        {
            failures.push(format!(
                "the slowest of the killed collector's meters was welcomed elsewhere {took:.2} s after the kill (at most {limit:.1} s passes)"
            ));
        }
        if let (Some(limit), Some(unmoved)) = (t.failover_unmoved, self.failover_unmoved)
            && unmoved > limit
        {
            failures.push(format!(
                "of the killed collector's {meters} meters, {unmoved} never welcomed elsewhere (at most {limit} may be)"
            ));
        }
        if let (Some(limit), Some(moved)) = (t.moved_from_live, self.moved_from_live)
            && moved > limit
        {
            failures.push(format!(
                "meters of collectors still running that moved to another: {moved} (at most {limit} may)"
            ));
        }
    }

    /// `report.md`'s node-loss rows (none when no node was killed).
    fn node_loss_rows(&self) -> Vec<(&'static str, String)> {
        let Some(n) = &self.node_loss else {
            return Vec::new();
        };
        let unready: Vec<String> = n.unready_max_s.iter().map(|u| format!("{u:.2} s")).collect();
        vec![
            (
                "NATS node killed (the stream's leader), election took",
                format!("node-{}, {}", n.node, opt(n.election_s, " s")),
            ),
            (
                "collectors unready at most (allowed)",
                format!("{} ({})", unready.join(", "), opt(n.unready_allowed_s, " s")),
            ),
        ]
    }

    /// `report.md`'s table of `herd soak`'s growth figures (nothing for other runs).
    fn growth_table(&self, md: &mut String) {
        if self.growth.is_empty() {
            return;
        }
        let _ = writeln!(
            md,
            "\nGrowth after warm-up (fitted line's rise over the window; allowance):\n\n| process | metric | window | mean | rise | allowed | |\n|---|---|---|---|---|---|---|"
        );
        for g in &self.growth {
            let _ = writeln!(
                md,
                "| {} (pid {}) | {} | {:.0}-{:.0} s | {} | {} | {} | {} |",
                g.process,
                g.pid,
                g.metric,
                g.from_s,
                g.to_s,
                figure(g.mean),
                figure(g.growth),
                figure(g.allowed),
                if g.ok { "ok" } else { "GROWS" }
            );
        }
    }

    pub fn passed(&self) -> bool {
        self.verdict == "pass"
    }

    /// crash-one's rows of the summary (none when no collector was killed).
    fn failover_rows(&self) -> Vec<(&'static str, String)> {
        let Some(meters) = self.failover_meters else {
            return Vec::new();
        };
        let limit = self
            .thresholds
            .failover_max_s
            .map_or(String::new(), |l| format!(" (limit {l:.1} s)"));
        vec![
            (
                "failover p50 / max, kill to welcomed elsewhere",
                format!(
                    "{} / {}{limit}",
                    opt(self.failover_p50_s, " s"),
                    opt(self.failover_max_s, " s")
                ),
            ),
            (
                "killed collector's meters never welcomed elsewhere",
                format!("{} of {meters}", self.failover_unmoved.unwrap_or(0)),
            ),
            (
                "meters of running collectors that moved",
                self.moved_from_live.unwrap_or(0).to_string(),
            ),
        ]
    }

    /// The short human summary.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# herd {} ({}): {}\n",
            self.scenario,
            self.mode,
            self.verdict.to_uppercase()
        );
        let _ = writeln!(
            md,
            "{} meters, {} collectors, {} sink, {:.0} s, seed {}.\n",
            self.meters, self.collectors, self.sink, self.duration_s, self.seed
        );
        for f in &self.failures {
            let _ = writeln!(md, "- **fail:** {f}");
        }
        if !self.failures.is_empty() {
            md.push('\n');
        }
        let l = &self.ack_latency_ms;
        let mut rows = vec![
            (
                "records sent / acked / stored",
                format!(
                    "{} / {} / {}",
                    self.records_sent, self.records_acked, self.records_stored
                ),
            ),
            ("records lost (acked, not stored)", self.records_lost.to_string()),
            ("duplicate batches stored", self.duplicates_stored.to_string()),
            ("time to all connected", opt(self.time_to_all_connected_s, " s")),
            (
                "placement",
                self.placement.as_ref().map_or_else(
                    || "not modelled".to_owned(),
                    crate::placement::Placement::describe,
                ),
            ),
            ("peak attempts/s", format!("{:.0}", self.peak_attempts_per_s)),
            (
                "handshake capacity/s (same run)",
                format!("{:.0}", self.handshake_capacity_per_s),
            ),
            (
                "handshakes/s at the peak (fleet)",
                format!("{:.0}", self.handshakes_peak_per_s),
            ),
            (
                "handshakes/s sustained through the herd (fleet)",
                self.handshakes_sustained_per_s
                    .map_or("n/a".to_owned(), |v| format!("{v:.0}")),
            ),
            (
                "sessions max/mean at the end",
                opt(self.sessions_max_over_mean, ""),
            ),
            (
                "meters connected at the end",
                self.meters_connected_at_end.to_string(),
            ),
            ("moved fraction", opt(self.moved_fraction, "")),
            (
                "ack latency p50 / p99",
                format!("{} / {}", opt(l.p50, " ms"), opt(l.p99, " ms")),
            ),
            (
                "first wave p99 before / during herd",
                format!(
                    "{} / {}",
                    opt(l.p99_before_herd, " ms"),
                    opt(l.p99_during_herd, " ms")
                ),
            ),
            ("collector crashes", self.collector_crashes.to_string()),
            (
                "collector RSS max",
                format!(
                    "{:.1} MiB",
                    self.collector_rss_max_bytes as f64 / (1 << 20) as f64
                ),
            ),
            (
                "collector scrapes missed (> 1 s)",
                self.collector_scrapes_missed.to_string(),
            ),
        ];
        rows.extend(self.failover_rows());
        rows.extend(self.node_loss_rows());
        let _ = writeln!(md, "| figure | value |\n|---|---|");
        for (k, v) in rows {
            let _ = writeln!(md, "| {k} | {v} |");
        }
        if !self.failover_exceptions.is_empty() {
            let list: Vec<String> = self
                .failover_exceptions
                .iter()
                .map(FailoverException::text)
                .collect();
            let _ = writeln!(md, "\nFailover exceptions: {}.", list.join("; "));
        }
        if !self.refusals.is_empty() {
            let list: Vec<String> = self.refusals.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(md, "\nRefusals and rejects: {}.", list.join(", "));
        }
        self.growth_table(&mut md);
        let _ = writeln!(
            md,
            "\nCharts: sessions.png, collector_*.png, attempts.png, ack_latency.png, resources_*.png for a live run (and .svg)."
        );
        md
    }

    /// Writes `report.json` and `report.md` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(self)? + "\n",
        )?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        Ok(())
    }
}

/// A growth figure: whole numbers for large ones (bytes, tasks), two decimals for ratios.
fn figure(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passing() -> Report {
        Report {
            scenario: "cold-start".into(),
            mode: "live".into(),
            meters: 100,
            collectors: 2,
            seed: 1,
            sink: "file".into(),
            duration_s: 10.0,
            records_sent: 10,
            records_acked: 10,
            records_stored: 10,
            records_lost: 0,
            duplicates_stored: 0,
            time_to_all_connected_s: Some(1.0),
            peak_attempts_per_s: 100.0,
            handshake_capacity_per_s: 1000.0,
            handshakes_peak_per_s: 900.0,
            handshakes_sustained_per_s: Some(700.0),
            placement: None,
            sessions_max_over_mean: Some(1.05),
            meters_connected_at_end: 100,
            moved_fraction: None,
            failover_max_s: Some(2.0),
            failover_p50_s: Some(1.0),
            failover_meters: Some(50),
            failover_unmoved: Some(0),
            moved_from_live: Some(0),
            failover_exceptions: Vec::new(),
            node_loss: None,
            growth: Vec::new(),
            ack_latency_ms: AckLatency {
                p99_before_herd: Some(2.0),
                p99_during_herd: Some(3.0),
                acks_before_herd: 1000,
                ..AckLatency::default()
            },
            collector_crashes: 0,
            collector_rss_max_bytes: 0,
            collector_scrapes_missed: 0,
            refusals: Default::default(),
            verdict: String::new(),
            failures: Vec::new(),
            thresholds: Thresholds {
                records_lost: 0,
                collector_crashes: 0,
                sessions_max_over_mean: 1.10,
                p99_during_over_before: Some(2.0),
                min_baseline_acks: 100,
                moved_fraction: None,
                all_connected: true,
                min_connected_at_end: 99,
                peak_attempts_over_capacity: Some(1.5),
                time_to_all_connected_max_s: Some(2.0),
                failover_max_s: Some(3.0),
                failover_unmoved: Some(0),
                moved_from_live: Some(0),
            },
        }
    }

    #[test]
    fn each_threshold_alone_fails_the_verdict() {
        let mut r = passing();
        r.judge();
        assert!(r.passed(), "{:?}", r.failures);
        let breaks: [fn(&mut Report); 13] = [
            |r| r.peak_attempts_per_s = 1_600.0,
            |r| r.time_to_all_connected_s = Some(2.5),
            |r| r.meters_connected_at_end = 98,
            |r| r.records_lost = 1,
            |r| r.collector_crashes = 1,
            |r| r.sessions_max_over_mean = Some(1.2),
            |r| r.time_to_all_connected_s = None,
            |r| r.ack_latency_ms.p99_during_herd = Some(4.5),
            |r| {
                r.thresholds.moved_fraction = Some((0.2, 0.3));
                r.moved_fraction = Some(0.5);
            },
            |r| r.failover_max_s = Some(3.5),
            |r| r.failover_unmoved = Some(1),
            |r| r.moved_from_live = Some(1),
            |r| {
                r.failover_meters = Some(0);
                r.failover_max_s = None;
            },
        ];
        for (i, b) in breaks.iter().enumerate() {
            let mut r = passing();
            b(&mut r);
            r.judge();
            assert_eq!(
                (r.verdict.as_str(), r.failures.len()),
                ("fail", 1),
                "break {i}: {:?}",
                r.failures
            );
        }
        let mut thin = passing();
        thin.ack_latency_ms.acks_before_herd = 10;
        thin.ack_latency_ms.p99_during_herd = Some(100.0);
        thin.judge();
        assert!(thin.passed(), "a thin baseline is not compared");
        let mut unjudged = passing();
        unjudged.thresholds.failover_max_s = None;
        unjudged.thresholds.failover_unmoved = None;
        unjudged.thresholds.moved_from_live = None;
        unjudged.failover_max_s = Some(30.0);
        unjudged.failover_unmoved = Some(5);
        unjudged.moved_from_live = Some(5);
        unjudged.judge();
        assert!(unjudged.passed(), "failover is judged only where asked");
    }

    #[test]
    fn the_text_report_shows_the_failover_and_its_limit() {
        let mut r = passing();
        r.failover_max_s = Some(3.25);
        r.judge();
        let md = r.markdown();
        assert!(md.contains("1.00 s / 3.25 s (limit 3.0 s)"), "{md}");
        assert!(md.contains("(at most 3.0 s passes)"), "{md}");
        assert!(md.contains("| 0 of 50 |"), "{md}");
        r.failover_exceptions = vec![
            FailoverException {
                meter: "herd-1-000004".into(),
                from: "c1".into(),
                to: None,
                after_s: None,
            },
            FailoverException {
                meter: "herd-1-000123".into(),
                from: "c2".into(),
                to: Some("c3".into()),
                after_s: Some(7.1),
            },
        ];
        let md = r.markdown();
        assert!(
            md.contains(
                "herd-1-000004 of c1: never welcomed elsewhere; herd-1-000123 of c2: to c3 after 7.10 s."
            ),
            "{md}"
        );
    }
}

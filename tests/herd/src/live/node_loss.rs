//! node-loss: how long the JetStream cluster took to elect the stream's new leader after its
//! node was killed, and how long each collector said it was not ready meanwhile.
//!
//! Owns: reading the collectors' readiness out of the timeline around the kill, and the check
//! that none was unready for longer than the election took (give or take the sampling).
//! Must never: count a collector that is down (no process) as unready: node-loss kills none.

use serde::Serialize;

use crate::timeline::Timeline;

/// What the run saw of the node it killed, in seconds of the run's clock.
#[derive(Debug, Clone, Copy)]
pub struct NodeLossSeen {
    pub node: usize,
    pub killed_s: f64,
    /// When the cluster announced the stream's new leader (`None`: it never did).
    pub elected_s: Option<f64>,
}

/// `report.json`'s `node_loss`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeLossReport {
    /// The node killed (`node-N`): the stream's leader at the time.
    pub node: usize,
    /// From the kill to the cluster's announcement of the stream's new leader (`null`: none).
    pub election_s: Option<f64>,
    /// Each collector's longest stretch of samples saying not ready, from the kill on.
    pub unready_max_s: Vec<f64>,
    /// The most any collector may be unready: the election plus two of the longest gaps
    /// between samples around it (readiness is seen only when sampled).
    pub unready_allowed_s: Option<f64>,
}

impl NodeLossReport {
    /// Reads each collector's readiness from the samples after the kill.
    pub fn from_timeline(seen: NodeLossSeen, timeline: &Timeline) -> Self {
        let after: Vec<_> = timeline
            .samples
            .iter()
            .filter(|s| s.t_s >= seen.killed_s)
            .collect();
        let collectors = after.first().map_or(0, |s| s.collector_ready.len());
        let mut unready_max_s = vec![0.0f64; collectors];
        let mut since: Vec<Option<f64>> = vec![None; collectors];
        for sample in &after {
            for (c, ready) in sample.collector_ready.iter().enumerate().take(collectors) {
                match (ready, since[c]) {
                    (false, None) => since[c] = Some(sample.t_s),
                    (true, Some(from)) => {
                        unready_max_s[c] = unready_max_s[c].max(sample.t_s - from);
                        since[c] = None;
                    }
                    _ => {}
                }
            }
        }
        // Still unready at the last sample: unready until then.
        if let Some(last) = after.last() {
            for (c, from) in since.iter().enumerate() {
                if let Some(from) = from {
                    unready_max_s[c] = unready_max_s[c].max(last.t_s - from);
                }
            }
        }
        let election_s = seen.elected_s.map(|e| e - seen.killed_s);
        let unready_allowed_s = election_s.map(|election| {
            let window_end = seen.killed_s + election + 5.0;
            let gap = after
                .windows(2)
                .filter(|w| w[0].t_s <= window_end)
                .map(|w| w[1].t_s - w[0].t_s)
                .fold(0.0f64, f64::max);
            election + 2.0 * gap
        });
        NodeLossReport {
            node: seen.node,
            election_s,
            unready_max_s,
            unready_allowed_s,
        }
    }

    /// Why the run fails, if it does: no election, or a collector unready longer than it.
    pub fn failures(&self) -> Vec<String> {
        let Some(allowed) = self.unready_allowed_s else {
            return vec![format!(
                "the cluster announced no new leader for the stream after node-{} was killed",
                self.node
            )];
        };
        self.unready_max_s
            .iter()
            .enumerate()
            .filter(|(_, u)| **u > allowed)
            .map(|(c, u)| {
                format!(
                    "c{} was unready for {u:.2} s, longer than the election ({:.2} s; {allowed:.2} s allowed with the sampling)",
                    c + 1,
                    self.election_s.unwrap_or(0.0)
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::Sample;

    fn timeline(ready: &[(f64, [bool; 2])]) -> Timeline {
        Timeline {
            samples: ready
                .iter()
                .map(|(t, r)| Sample {
                    t_s: *t,
                    collector_ready: r.to_vec(),
                    ..Sample::default()
                })
                .collect(),
            ..Timeline::default()
        }
    }

    #[test]
    fn a_collector_unready_no_longer_than_the_election_passes_and_one_longer_fails() {
        let seen = NodeLossSeen {
            node: 1,
            killed_s: 10.0,
            elected_s: Some(15.0),
        };
        let mut samples = vec![(9.9, [true, true])];
        for i in 0..=80 {
            let t = 10.0 + f64::from(i) * 0.1;
            // c1 unready from 10.1 to 15.0 (4.9 s); c2 from 10.1 to 16.0 (5.9 s).
            samples.push((t, [!(10.05..14.95).contains(&t), !(10.05..15.95).contains(&t)]));
        }
        let report = NodeLossReport::from_timeline(seen, &timeline(&samples));
        assert_eq!(report.election_s, Some(5.0));
        assert!((report.unready_max_s[0] - 4.9).abs() < 1e-6, "{report:?}");
        assert!((report.unready_max_s[1] - 5.9).abs() < 1e-6, "{report:?}");
        let allowed = report.unready_allowed_s.expect("elected");
        assert!((allowed - 5.2).abs() < 1e-6, "two 100 ms gaps: {allowed}");
        let failures = report.failures();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].starts_with("c2 was unready for 5.90 s"),
            "{failures:?}"
        );
    }

    #[test]
    fn no_election_fails_and_a_collector_unready_at_the_end_counts_until_then() {
        let seen = NodeLossSeen {
            node: 0,
            killed_s: 1.0,
            elected_s: None,
        };
        let report =
            NodeLossReport::from_timeline(seen, &timeline(&[(1.0, [true, false]), (3.0, [true, false])]));
        assert_eq!(report.unready_max_s, vec![0.0, 2.0]);
        assert_eq!(report.failures().len(), 1);
    }
}

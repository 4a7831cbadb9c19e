//! Whether the Kafka cluster can take the sink's batches now, from the producer's own view of
//! it: librdkafka's statistics (every `health_interval_ms`, on its own thread) say which brokers
//! are up and which broker leads each partition the producer writes to.
//!
//! Owns: the readiness rule (sans-IO, [`ready`]) and the client context that feeds it and routes
//! librdkafka's logs and errors to `tracing`. Must never: block, or call into the producer.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::telemetry::LogThrottle;

/// Broker states (librdkafka's) of a connection that failed: closed or refused, and waiting to
/// try again. `INIT` is not among them: librdkafka connects to a broker only once it has
/// something for it, so an idle leader sits in `INIT` and is fine.
const FAILED_STATES: &[&str] = &["DOWN", "TRY_CONNECT"];

/// The cluster as one statistics report shows it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// Whether any connection, to a known broker or a bootstrap address, is up. librdkafka keeps
    /// one up for metadata while the cluster answers.
    pub any_up: bool,
    /// Node ids of the brokers the producer knows.
    pub brokers: HashSet<i32>,
    /// Node ids of the brokers whose connection failed.
    pub failed: HashSet<i32>,
    /// (topic, partition, leader node id or -1) of every partition the producer knows.
    pub partitions: Vec<(String, i32, i32)>,
}

impl ClusterView {
    pub fn of(stats: &Statistics) -> Self {
        let known = || stats.brokers.values().filter(|b| b.nodeid >= 0);
        Self {
            any_up: stats.brokers.values().any(|b| b.state == "UP"),
            brokers: known().map(|b| b.nodeid).collect(),
            failed: known()
                .filter(|b| FAILED_STATES.contains(&b.state.as_str()))
                .map(|b| b.nodeid)
                .collect(),
            partitions: stats
                .topics
                .values()
                .flat_map(|t| {
                    t.partitions
                        .values()
                        .filter(|p| p.partition >= 0)
                        .map(|p| (t.topic.clone(), p.partition, p.leader))
                })
                .collect(),
        }
    }
}

/// Ready: some connection to the cluster is up, and every partition the producer writes to has
/// a leader whose connection has not failed (a leader idle in `INIT` is fine: librdkafka
/// connects when it has something for it). A partition without a reachable leader holds its
/// batches (librdkafka keeps them until a leader answers), so new meters are better sent
/// elsewhere meanwhile.
pub fn ready(view: &ClusterView) -> bool {
    let reachable = |id: &i32| *id >= 0 && !view.failed.contains(id);
    view.any_up && view.partitions.iter().all(|(_, _, leader)| reachable(leader))
}

/// The producer's context: readiness from statistics, librdkafka's logs and errors in `tracing`.
pub struct KafkaContext {
    ready: Arc<watch::Sender<bool>>,
    throttle: LogThrottle,
    /// librdkafka reported a fatal error: the producer can no longer deliver (an idempotence
    /// guarantee it cannot keep); not ready until the collector is restarted.
    fatal: AtomicBool,
}

impl KafkaContext {
    /// A context that publishes readiness on `ready` (the sink's loop picks it up and tells
    /// `/readyz`).
    pub fn new(ready: Arc<watch::Sender<bool>>) -> Self {
        let throttle = LogThrottle::new(Duration::from_secs(10), 8);
        Self {
            ready,
            throttle,
            fatal: AtomicBool::new(false),
        }
    }

    fn set_ready(&self, ready: bool) {
        set_ready(&self.ready, ready);
    }
}

/// Sets readiness, waking the receiver only on a change.
pub fn set_ready(sender: &watch::Sender<bool>, ready: bool) {
    sender.send_if_modified(|now| std::mem::replace(now, ready) != ready);
}

impl ClientContext for KafkaContext {
    fn stats(&self, stats: Statistics) {
        let view = ClusterView::of(&stats);
        let now_ready = ready(&view) && !self.fatal.load(Ordering::Relaxed);
        if now_ready != *self.ready.borrow() {
            let leaderless: Vec<String> = view
                .partitions
                .iter()
                .filter(|(_, _, leader)| *leader < 0 || view.failed.contains(leader))
                .map(|(topic, partition, leader)| format!("{topic}/{partition} (leader {leader})"))
                .collect();
            if now_ready {
                info!("Kafka: every partition has a reachable leader");
            } else {
                warn!(
                    brokers_failed = ?view.failed,
                    ?leaderless,
                    "Kafka: partitions without a reachable leader"
                );
            }
        }
        self.set_ready(now_ready);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => self.set_ready(false),
            Some(RDKafkaErrorCode::Fatal) => {
                self.fatal.store(true, Ordering::Relaxed);
                self.set_ready(false);
                tracing::error!(%error, reason, "Kafka producer failed for good; nothing more is acked (meters keep their data): restart the collector");
                return;
            }
            _ => {}
        }
        if let Some(suppressed) = self.throttle.check("error", Instant::now()) {
            warn!(%error, reason, suppressed, "Kafka client error");
        }
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                if let Some(suppressed) = self.throttle.check(facility, Instant::now()) {
                    warn!(facility, suppressed, "librdkafka: {message}");
                }
            }
            _ => debug!(facility, "librdkafka: {message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(failed: &[i32], leaders: &[i32]) -> ClusterView {
        ClusterView {
            any_up: failed.len() < 3,
            brokers: [1, 2, 3].into_iter().collect(),
            failed: failed.iter().copied().collect(),
            partitions: leaders
                .iter()
                .enumerate()
                .map(|(p, l)| ("flows".to_owned(), p as i32, *l))
                .collect(),
        }
    }

    #[test]
    fn ready_needs_a_reachable_leader_for_every_partition() {
        assert!(ready(&view(&[], &[1, 2, 3])));
        // Nothing produced yet: any broker not failed will do.
        assert!(ready(&view(&[1, 3], &[])));
        assert!(!ready(&view(&[1, 2, 3], &[])));
        // The leader of partition 0 failed; a follower failing does not matter.
        assert!(!ready(&view(&[1], &[1, 2, 3])));
        assert!(ready(&view(&[3], &[1, 2, 1])));
        // A partition without a leader at all.
        assert!(!ready(&view(&[], &[1, -1, 3])));
        // Nothing known and no connection up (the cluster never answered): not ready.
        assert!(!ready(&ClusterView::default()));
        // A bootstrap connection up, no broker known yet: ready.
        assert!(ready(&ClusterView {
            any_up: true,
            ..ClusterView::default()
        }));
    }
}

//! Failover in a live run: which collector each meter was connected to when one was killed, and
//! when each was next welcomed by a different collector, stamped when the meter's own progress
//! signal says so (it is woken as its connect loop records a new collector), not at the
//! sampler's 100 ms.
//!
//! Owns: one watcher per meter connected at the kill, from the kill to the end of the run, and
//! the figures made of what they saw. Must never: hold a meter up (a watcher only reads the
//! meter's current collector when woken) or outlive the run (the watch ends with it).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::meters::Population;

/// A killed collector's failover, being watched.
pub(super) struct FailoverWatch {
    /// When the collector was killed (stamped as the watch was armed, just before the kill).
    killed_at: Instant,
    /// Ends every watcher when the run is over.
    over: CancellationToken,
    /// One per meter connected at the kill: whether its collector was the one killed, and when
    /// a different collector welcomed it (`None`: none did before the end).
    watchers: JoinSet<(bool, Option<Instant>)>,
}

/// What the watch saw, from the kill to the end of the run.
#[derive(Debug, Default)]
pub(super) struct Failover {
    /// Each of the killed collector's meters: from the kill until another collector welcomed it
    /// (`None`: none did).
    pub(super) of_killed: Vec<Option<Duration>>,
    /// Meters connected at the kill to a collector that was not killed, and later to another.
    pub(super) moved_from_live: usize,
}

impl FailoverWatch {
    /// Notes the collector of every started meter and starts watching each connected one; to be
    /// called just before `killed` (its dial address, as the meters name it) is killed, which is
    /// the instant the failover is timed from.
    pub(super) fn arm(population: &Population, killed: &str) -> FailoverWatch {
        let over = CancellationToken::new();
        let mut watchers = JoinSet::new();
        for meter in population.watches() {
            // Subscribed before the collector is read: no change after the reading is missed.
            let progress = meter.changed();
            let Some(from) = meter.connected_to() else {
                continue;
            };
            let of_killed = &*from == killed;
            let over = over.clone();
            watchers.spawn(async move {
                let current = move || meter.connected_to();
                (of_killed, welcomed_elsewhere(current, progress, from, over).await)
            });
        }
        FailoverWatch {
            killed_at: Instant::now(),
            over,
            watchers,
        }
    }

    /// Ends the watch (the run is over) and returns what it saw.
    pub(super) async fn finish(mut self) -> anyhow::Result<Failover> {
        self.over.cancel();
        let mut failover = Failover::default();
        while let Some(watched) = self.watchers.join_next().await {
            match watched? {
                (true, welcomed) => failover
                    .of_killed
                    .push(welcomed.map(|at| at.duration_since(self.killed_at))),
                (false, Some(_)) => failover.moved_from_live += 1,
                (false, None) => {}
            }
        }
        Ok(failover)
    }
}

/// When the meter whose current collector `current` reads was first seen connected to a
/// collector other than `from`, looking each time its `progress` signal wakes; at the end of the
/// run (`over`) one last look (`None`: still with `from`, or with none).
async fn welcomed_elsewhere(
    current: impl Fn() -> Option<Arc<str>>,
    mut progress: watch::Receiver<()>,
    from: Arc<str>,
    over: CancellationToken,
) -> Option<Instant> {
    let elsewhere = || current().is_some_and(|c| c != from);
    loop {
        if elsewhere() {
            return Some(Instant::now());
        }
        tokio::select! {
            changed = progress.changed() => if changed.is_err() { break },
            _ = over.cancelled() => break,
        }
    }
    elsewhere().then(Instant::now)
}

impl Failover {
    /// The killed collector's meters that another collector welcomed: seconds from the kill.
    fn moved_s(&self) -> impl Iterator<Item = f64> + '_ {
        self.of_killed.iter().flatten().map(Duration::as_secs_f64)
    }

    /// The slowest of the killed collector's meters welcomed elsewhere (`None`: none was).
    pub(super) fn max_s(&self) -> Option<f64> {
        self.moved_s().max_by(f64::total_cmp)
    }

    /// The median of the killed collector's meters welcomed elsewhere (`None`: none was).
    pub(super) fn p50_s(&self) -> Option<f64> {
        let moved: Vec<f64> = self.moved_s().collect();
        (!moved.is_empty()).then(|| crate::bench::median(moved))
    }

    /// The killed collector's meters no other collector welcomed.
    pub(super) fn unmoved(&self) -> usize {
        self.of_killed.iter().filter(|m| m.is_none()).count()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A meter's current collector and its progress signal, set by hand.
    struct Fake {
        collector: Arc<Mutex<Option<Arc<str>>>>,
        progress: watch::Sender<()>,
    }

    impl Fake {
        fn new(on: &str) -> Fake {
            Fake {
                collector: Arc::new(Mutex::new(Some(on.into()))),
                progress: watch::Sender::new(()),
            }
        }

        fn connect(&self, to: Option<&str>) {
            *self.collector.lock().unwrap() = to.map(Arc::from);
            self.progress.send_replace(());
        }

        fn watch(&self, over: &CancellationToken) -> tokio::task::JoinHandle<Option<Instant>> {
            let collector = Arc::clone(&self.collector);
            let current = move || collector.lock().unwrap().clone();
            let watching = welcomed_elsewhere(current, self.progress.subscribe(), "c1".into(), over.clone());
            tokio::spawn(watching)
        }
    }

    #[tokio::test]
    async fn a_meter_is_welcomed_elsewhere_when_it_signals_another_collector() {
        let (meter, over) = (Fake::new("c1"), CancellationToken::new());
        let watcher = meter.watch(&over);
        meter.connect(None);
        tokio::task::yield_now().await;
        assert!(!watcher.is_finished(), "between two collectors is not elsewhere");
        let before = Instant::now();
        meter.connect(Some("c2"));
        let seen = watcher.await.unwrap().expect("welcomed by c2");
        assert!(seen >= before);
    }

    #[tokio::test]
    async fn a_meter_back_on_its_collector_or_on_none_at_the_end_did_not_move() {
        let over = CancellationToken::new();
        let (back, gone) = (Fake::new("c1"), Fake::new("c1"));
        let watchers = [back.watch(&over), gone.watch(&over)];
        back.connect(None);
        back.connect(Some("c1"));
        gone.connect(None);
        over.cancel();
        for w in watchers {
            assert_eq!(w.await.unwrap(), None);
        }
    }

    #[test]
    fn the_figures_are_of_the_meters_that_moved_and_count_the_others() {
        let s = Duration::from_secs;
        let f = Failover {
            of_killed: vec![Some(s(3)), None, Some(s(1)), Some(s(2))],
            moved_from_live: 0,
        };
        assert_eq!((f.max_s(), f.p50_s(), f.unmoved()), (Some(3.0), Some(2.0), 1));
        let none = Failover {
            of_killed: vec![None],
            moved_from_live: 0,
        };
        assert_eq!((none.max_s(), none.p50_s(), none.unmoved()), (None, None, 1));
    }
}

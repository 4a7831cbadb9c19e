//! Failover in a live run: which collector each meter was connected to when one was killed, and
//! when each was next welcomed by a different collector, stamped when the meter's own progress
//! signal says so (it is woken as its connect loop records a new collector), not at the
//! sampler's 100 ms. A meter of another collector that moves counts against the run, unless it
//! moves to its first choice on the ring: that is the herd's rebalancing finishing (a meter sent
//! elsewhere while the herd connected goes home within its rebalance window, doubled after each
//! failed try), not a failover.
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

use ringflow_meter::ring::Ring;

use crate::meters::Population;

/// A killed collector's failover, being watched.
pub(super) struct FailoverWatch {
    /// When the collector was killed (stamped as the watch was armed, just before the kill).
    killed_at: Instant,
    /// Ends every watcher when the run is over.
    over: CancellationToken,
    /// One per meter connected at the kill: the meter, and the collector that welcomed it next
    /// with when (`None`: none did before the end).
    watchers: JoinSet<(Watched, Option<Welcome>)>,
}

/// The collector that welcomed a meter, and when.
type Welcome = (Arc<str>, Instant);

/// One meter connected at the kill, as watched until the end of the run.
#[derive(Debug, Clone)]
pub(super) struct Watched {
    /// Its index in the population.
    pub(super) meter: usize,
    /// Its collector at the kill.
    pub(super) from: Arc<str>,
    /// `from` is the collector killed.
    pub(super) of_killed: bool,
    /// Its first choice on the ring of the fleet it knows.
    pub(super) home: Option<Arc<str>>,
    /// The collector that welcomed it next, and how long after the kill (`None`: none did).
    pub(super) welcomed: Option<(Arc<str>, Duration)>,
}

impl Watched {
    /// A running collector's meter that another collector welcomed, other than its first
    /// choice.
    fn moved_away(&self) -> bool {
        !self.of_killed
            && self
                .welcomed
                .as_ref()
                .is_some_and(|(by, _)| Some(by) != self.home.as_ref())
    }

    /// Named by the failover checks: one of the killed collector's meters that no other
    /// collector welcomed, or a running collector's meter that moved away.
    pub(super) fn is_exception(&self) -> bool {
        (self.of_killed && self.welcomed.is_none()) || self.moved_away()
    }
}

/// What the watch saw, from the kill to the end of the run: every meter connected at the kill,
/// by index.
#[derive(Debug, Default)]
pub(super) struct Failover {
    pub(super) meters: Vec<Watched>,
}

impl FailoverWatch {
    /// Notes the collector of every started meter and starts watching each connected one; to be
    /// called just before `killed` (its dial address, as the meters name it) is killed, which is
    /// the instant the failover is timed from. `fleet`: the collectors the meters know (DNS
    /// names them all), whose ring gives each meter's first choice.
    pub(super) fn arm(population: &Population, killed: &str, fleet: &[String]) -> FailoverWatch {
        let ring = Ring::shared(fleet);
        let over = CancellationToken::new();
        let mut watchers = JoinSet::new();
        for (meter, watch) in population.watches() {
            // Subscribed before the collector is read: no change after the reading is missed.
            let progress = watch.changed();
            let Some(from) = watch.connected_to() else {
                continue;
            };
            let watched = Watched {
                meter,
                of_killed: &*from == killed,
                home: ring.first(&population.id(meter)).cloned(),
                from: Arc::clone(&from),
                welcomed: None,
            };
            let over = over.clone();
            watchers.spawn(async move {
                let current = move || watch.connected_to();
                (watched, welcomed_elsewhere(current, progress, from, over).await)
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
        let mut meters = Vec::with_capacity(self.watchers.len());
        while let Some(done) = self.watchers.join_next().await {
            let (mut watched, welcomed) = done?;
            watched.welcomed = welcomed.map(|(by, at)| (by, at.duration_since(self.killed_at)));
            meters.push(watched);
        }
        meters.sort_by_key(|w| w.meter);
        Ok(Failover { meters })
    }
}

/// The collector other than `from` that the meter whose current collector `current` reads was
/// first seen connected to, and when, looking each time its `progress` signal wakes; at the end
/// of the run (`over`) one last look (`None`: still with `from`, or with none).
async fn welcomed_elsewhere(
    current: impl Fn() -> Option<Arc<str>>,
    mut progress: watch::Receiver<()>,
    from: Arc<str>,
    over: CancellationToken,
) -> Option<Welcome> {
    let elsewhere = || current().filter(|c| *c != from).map(|c| (c, Instant::now()));
    loop {
        if let Some(welcomed) = elsewhere() {
            return Some(welcomed);
        }
        tokio::select! {
            changed = progress.changed() => if changed.is_err() { break },
            _ = over.cancelled() => break,
        }
    }
    elsewhere()
}

impl Failover {
    /// The killed collector's meters.
    fn of_killed(&self) -> impl Iterator<Item = &Watched> {
        self.meters.iter().filter(|w| w.of_killed)
    }

    /// The killed collector's meters that another collector welcomed: seconds from the kill.
    fn moved_s(&self) -> impl Iterator<Item = f64> + '_ {
        self.of_killed()
            .filter_map(|w| w.welcomed.as_ref())
            .map(|(_, after)| after.as_secs_f64())
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

    /// Meters connected to the killed collector at the kill.
    pub(super) fn killed_meters(&self) -> usize {
        self.of_killed().count()
    }

    /// The killed collector's meters no other collector welcomed.
    pub(super) fn unmoved(&self) -> usize {
        self.of_killed().filter(|w| w.welcomed.is_none()).count()
    }

    /// Meters of the collectors not killed that another collector than their first choice
    /// welcomed later.
    pub(super) fn moved_from_live(&self) -> usize {
        self.meters.iter().filter(|w| w.moved_away()).count()
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

        fn watch(&self, over: &CancellationToken) -> tokio::task::JoinHandle<Option<Welcome>> {
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
        let (by, at) = watcher.await.unwrap().expect("welcomed by c2");
        assert_eq!(&*by, "c2");
        assert!(at >= before);
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
    fn the_figures_are_of_the_killed_collectors_meters_that_moved_and_count_the_others() {
        let watched = |meter, of_killed, after: Option<u64>| Watched {
            meter,
            from: if of_killed { "c1" } else { "c2" }.into(),
            of_killed,
            home: Some("c1".into()),
            welcomed: after.map(|s| (Arc::from("c3"), Duration::from_secs(s))),
        };
        let home_from_c2 = Watched {
            meter: 6,
            home: Some("c3".into()),
            ..watched(6, false, Some(4))
        };
        let f = Failover {
            meters: vec![
                watched(0, true, Some(3)),
                watched(1, true, None),
                watched(2, true, Some(1)),
                watched(3, true, Some(2)),
                watched(4, false, None),
                watched(5, false, Some(9)),
                home_from_c2,
            ],
        };
        assert_eq!((f.max_s(), f.p50_s()), (Some(3.0), Some(2.0)));
        assert_eq!((f.killed_meters(), f.unmoved(), f.moved_from_live()), (4, 1, 1));
        let named: Vec<usize> = f
            .meters
            .iter()
            .filter(|w| w.is_exception())
            .map(|w| w.meter)
            .collect();
        assert_eq!(named, [1, 5]);
        let none = Failover {
            meters: vec![watched(0, true, None)],
        };
        assert_eq!((none.max_s(), none.p50_s(), none.unmoved()), (None, None, 1));
    }
}

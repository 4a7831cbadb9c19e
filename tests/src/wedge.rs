//! A collector's data plane wedged on purpose: every one of its threads blocked by a task that
//! never yields, until the test lets it go. What a stuck sink call or a CPU-bound bug would do.

use std::sync::Arc;

use crate::RunningCollector;

/// Every thread of a collector's data runtime blocked, until [`DataPlaneWedge::release`].
pub struct DataPlaneWedge {
    release: Arc<std::sync::Barrier>,
}

impl DataPlaneWedge {
    /// Blocks the `threads` threads of `collector`'s data runtime (its `runtime.data_threads`),
    /// and returns once every one of them is blocked.
    pub async fn on(collector: &RunningCollector, threads: usize) -> DataPlaneWedge {
        let (started_tx, mut started_rx) = tokio::sync::mpsc::channel(threads);
        let release = Arc::new(std::sync::Barrier::new(threads + 1));
        for _ in 0..threads {
            let (started_tx, release) = (started_tx.clone(), Arc::clone(&release));
            collector.data_runtime.spawn(async move {
                let _ = started_tx.try_send(());
                release.wait();
            });
        }
        for _ in 0..threads {
            started_rx.recv().await;
        }
        DataPlaneWedge { release }
    }

    /// Lets the data plane go (from a multi-threaded test runtime).
    pub fn release(self) {
        tokio::task::block_in_place(|| self.release.wait());
    }
}

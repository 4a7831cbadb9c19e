//! The data plane's runtime: the threads data streams, the sink and the sink's client run on.
//!
//! Owns: [`DataRuntime`], a multi-thread tokio runtime of `runtime.data_threads` threads named
//! `collector-data`, separate from the control plane's, so that however busy the data plane is,
//! accepting, authenticating and draining never wait in its run queue. Must never: block when
//! dropped (a collector may be dropped inside an async context), or run control-plane work.

thread_local! {
    /// A data-plane thread's scoped subscriber, held until the thread stops.
    static DATA_THREAD_LOG: std::cell::RefCell<Option<tracing::dispatcher::DefaultGuard>> =
        const { std::cell::RefCell::new(None) };
}

/// The data plane's runtime. Shut down without blocking when dropped, so a collector can be
/// dropped (or finish) inside an async context.
pub struct DataRuntime(Option<tokio::runtime::Runtime>);

impl DataRuntime {
    /// Starts `threads` worker threads.
    pub fn start(threads: usize) -> std::io::Result<Self> {
        // The data plane's threads log to the creator's subscriber, even one scoped to the
        // creating thread (an embedding such as `herd`, or a test capturing logs). tracing cannot
        // tell a scoped subscriber from the global one, so this is done in every case.
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("collector-data")
            .on_thread_start(move || {
                let guard = tracing::dispatcher::set_default(&dispatch);
                DATA_THREAD_LOG.with(|g| *g.borrow_mut() = Some(guard));
            })
            .on_thread_stop(|| DATA_THREAD_LOG.with(|g| drop(g.borrow_mut().take())))
            .enable_all()
            .build()
            .map(|rt| DataRuntime(Some(rt)))
    }

    /// Where to spawn data-plane work.
    pub fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(rt) => rt.handle().clone(),
            None => tokio::runtime::Handle::current(),
        }
    }
}

impl Drop for DataRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

//! Where a session's data streams leave the control plane: each one the meter opens is spawned
//! on the data plane's runtime and tracked there, never awaited here.
//!
//! Owns: [`DataPlane`] (the runtime and task tracker data streams run on), building each
//! stream's [`StreamContext`] (the session's authenticated identity, the sink, the frame limits;
//! the type is the data plane's), and [`hand_off`].
//! Must never: read or write a data stream's bytes, or wait for a data-stream task: a saturated
//! data plane cannot hold up accepting, authenticating or draining.

use std::sync::Arc;

use quinn::{RecvStream, SendStream};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::Shared;
use crate::data::ingest::{SessionIdentity, StreamContext, serve_data_stream};

/// Where data-stream tasks run. The control plane spawns them here and never awaits them, so a
/// saturated data plane cannot hold up accepting, authenticating or draining.
#[derive(Clone)]
pub struct DataPlane {
    /// The data plane's runtime ([`crate::data::runtime::DataRuntime`]): every data-stream task
    /// is spawned on it by a session's control stream.
    pub runtime: tokio::runtime::Handle,
    /// Every data-stream task. Spawned into by the sessions; closed and waited on only by the
    /// lifecycle at stop (bounded by the sink flush timeout), so data streams settle what they
    /// handed to the sink before the sink's queue closes.
    pub tasks: TaskTracker,
}

/// What every data stream of the session `identity` shares: built once at `Welcome`.
pub(super) fn context(shared: &Shared, identity: SessionIdentity) -> Arc<StreamContext> {
    Arc::new(StreamContext {
        org_counters: shared.metrics.org_counters(&identity.org),
        session: Arc::new(identity),
        sink: shared.sink.clone(),
        limits: shared.data_limits,
        metrics: Arc::clone(&shared.metrics),
    })
}

/// Hands a data stream the meter opened to the data plane, stopped at the hard stop.
pub(super) fn hand_off(
    send: SendStream,
    recv: RecvStream,
    shared: &Shared,
    streams: &Arc<StreamContext>,
    span: &tracing::Span,
) {
    let ctx = Arc::clone(streams);
    let stop = shared.hard_stop.child_token();
    let plane = &shared.data_plane;
    plane.tasks.spawn_on(
        serve_data_stream(send, recv, ctx, stop).instrument(span.clone()),
        &plane.runtime,
    );
}

//! The NATS connection and the stream behind it, kept up by tasks of their own.
//!
//! Owns: connecting, reconnecting (async-nats' connection task, with our jittered delays), and
//! making sure the stream exists and fits ([`super::stream::check_existing`]) after every
//! (re)connect. Tells the publish loop through a `watch` whether publishing can work now. Must
//! never: be awaited by the loop that takes batches from the sink queue; that loop only reads the
//! `watch`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, context::CreateStreamErrorKind, context::GetStreamErrorKind};
use async_nats::{Client, ConnectOptions, Event};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::config::NatsSinkConfig;
pub use super::config::loggable_servers;
use super::stream::{StreamMismatch, check_existing, wanted_stream};
use crate::telemetry::LogThrottle;

/// Longest wait between reconnect attempts (each wait is random up to the doubled delay, so a
/// fleet of collectors does not reconnect in step after a NATS restart).
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// How often a stream that does not fit is looked at again (someone may fix it).
const MISMATCH_RECHECK: Duration = Duration::from_secs(10);

/// How long to wait before asking again when JetStream did not answer.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot read sink.nats.creds_file {path}: {source}")]
    Credentials {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sink.nats.servers {servers:?}: {error}")]
    Connect { servers: Vec<String>, error: String },
    #[error(transparent)]
    Stream(#[from] StreamMismatch),
    #[error("{AUTH_REFUSED}")]
    AuthRefused,
}

impl Link {
    /// Waits up to `timeout` for the first (or next) connection; false if none came.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut connected = self.connected.clone();
        tokio::time::timeout(timeout, connected.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// What the client's event callback reports.
struct LinkEvents {
    connected: watch::Sender<bool>,
    auth_refused: Arc<AtomicBool>,
}

const AUTH_REFUSED: &str = "NATS refused the collector's credentials (authorization violation): check sink.nats.token, sink.nats.user/password or sink.nats.creds_file, and the account's permissions";

/// A client whose connection task is running (connected or still trying). Clones share it.
#[derive(Clone)]
pub struct Link {
    pub client: Client,
    pub js: jetstream::Context,
    /// True while the TCP/TLS connection to a server is up.
    pub connected: watch::Receiver<bool>,
    /// Set when a server refused our credentials, cleared by a successful connection.
    pub auth_refused: Arc<AtomicBool>,
}

/// Starts the client. Returns at once: the first connection is made in the background.
pub async fn start(config: &NatsSinkConfig, collector_id: &str) -> Result<Link, LinkError> {
    let (connected_tx, connected) = watch::channel(false);
    let auth_refused = Arc::new(AtomicBool::new(false));
    let events = Arc::new(LinkEvents {
        connected: connected_tx,
        auth_refused: Arc::clone(&auth_refused),
    });
    let log = Arc::new(LogThrottle::new(Duration::from_secs(10), 8));
    let mut options = ConnectOptions::new()
        .name(format!("ringflow-collector {collector_id}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_millis(config.connect_timeout_ms))
        .ping_interval(Duration::from_secs(10))
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let events = Arc::clone(&events);
            let log = Arc::clone(&log);
            async move { on_event(event, &events, &log) }
        });
    if let Some(token) = &config.token {
        options = options.token(token.expose().to_owned());
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.expose().to_owned());
    }
    if let Some(path) = &config.creds_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|source| LinkError::Credentials {
                path: path.clone(),
                source,
            })?;
    }
    if let Some(ca) = &config.ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let client = options
        .connect(config.servers.clone())
        .await
        .map_err(|e| LinkError::Connect {
            servers: loggable_servers(&config.servers),
            error: e.to_string(),
        })?;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(config.publish_timeout_ms))
        // We bound in-flight publishes ourselves, well below this.
        .max_ack_inflight(config.max_in_flight * 2)
        .backpressure_on_inflight(false)
        .build(client.clone());
    Ok(Link {
        client,
        js,
        connected,
        auth_refused,
    })
}

fn reconnect_delay(attempts: usize) -> Duration {
    let cap = Duration::from_millis(50u64 << attempts.min(6)).min(MAX_RECONNECT_DELAY);
    cap.mul_f64(rand::random::<f64>())
}

/// Whether a client event says the server refused our credentials.
fn is_auth_refusal(event: &Event) -> bool {
    match event {
        Event::ServerError(async_nats::ServerError::AuthorizationViolation) => true,
        Event::ClientError(e) => e.to_string().contains("authorization violation"),
        _ => false,
    }
}

fn on_event(event: Event, state: &LinkEvents, log: &LogThrottle) {
    if is_auth_refusal(&event) {
        state.auth_refused.store(true, Ordering::Relaxed);
        if let Some(suppressed) = log.check("auth", Instant::now()) {
            error!(suppressed, "{AUTH_REFUSED}; retrying");
        }
        return;
    }
    match event {
        Event::Connected => {
            info!("NATS connected");
            state.auth_refused.store(false, Ordering::Relaxed);
            state.connected.send_replace(true);
        }
        Event::Disconnected | Event::Closed => {
            if state.connected.send_replace(false) {
                warn!("NATS connection lost; reconnecting");
            }
        }
        Event::LameDuckMode => warn!("NATS server entering lame duck mode; the client will move"),
        other => {
            if let Some(suppressed) = log.check("event", Instant::now()) {
                warn!(event = %other, suppressed, "NATS client event");
            }
        }
    }
}

/// Why the stream could not be made ready.
#[derive(Debug)]
pub enum EnsureError {
    /// The stream exists and does not fit: an operator must act.
    Mismatch(StreamMismatch),
    /// JetStream did not answer (not connected, no JetStream, timeout): try again.
    Unavailable(String),
}

/// Makes sure the stream exists and fits: creates it if missing, checks it otherwise. Returns
/// notes about settings that differ from ours but are fine.
pub async fn ensure_stream(
    js: &jetstream::Context,
    config: &NatsSinkConfig,
    max_message_bytes: usize,
) -> Result<Vec<String>, EnsureError> {
    let unavailable = |e: &dyn std::fmt::Display| EnsureError::Unavailable(e.to_string());
    for _ in 0..2 {
        match js.get_stream(&config.stream).await {
            Ok(stream) => {
                return check_existing(&stream.cached_info().config, config, max_message_bytes)
                    .map_err(EnsureError::Mismatch);
            }
            Err(e)
                if matches!(e.kind(), GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                match js.create_stream(wanted_stream(config)).await {
                    Ok(_) => {
                        info!(stream = %config.stream, "created the JetStream stream");
                        return Ok(Vec::new());
                    }
                    Err(e) => match e.kind() {
                        // Another collector created it a moment ago: check theirs.
                        CreateStreamErrorKind::JetStream(j)
                            if j.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST => {}
                        // JetStream answered no (too many replicas for the cluster, no
                        // resources, not allowed): an operator must act.
                        CreateStreamErrorKind::JetStream(j) => {
                            return Err(EnsureError::Mismatch(StreamMismatch {
                                stream: config.stream.clone(),
                                problem: format!(
                                    "JetStream refused to create it: {j}; check sink.nats.replicas, sink.nats.max_bytes and the account's JetStream limits, or create the stream yourself"
                                ),
                            }));
                        }
                        _ => return Err(unavailable(&e)),
                    },
                }
            }
            Err(e) => return Err(unavailable(&e)),
        }
    }
    Err(EnsureError::Unavailable(
        "the stream was created and removed again while checking it".into(),
    ))
}

/// Keeps `ready` true exactly while the client is connected and the stream has been checked
/// since the connection came up (`checked_at_start`: it was, just before this started).
/// `recheck` asks for the stream to be looked at again (a publish was refused). Runs until
/// `stop`.
pub async fn supervise(
    link: Link,
    config: NatsSinkConfig,
    max_message_bytes: usize,
    ready: watch::Sender<bool>,
    checked_at_start: bool,
    recheck: Arc<Notify>,
    stop: CancellationToken,
) {
    let Link {
        client,
        js: link_js,
        mut connected,
        ..
    } = link;
    let log = LogThrottle::new(Duration::from_secs(10), 4);
    // A replicated stream whose leader died answers nothing until its replicas elect another
    // (seconds); the cluster announces the election, and the stream is looked at again the
    // moment it does rather than at the next retry (a request then waits out its timeout).
    let mut elections = match client.subscribe(leader_elected_subject(&config.stream)).await {
        Ok(subscriber) => Some(subscriber),
        Err(why) => {
            warn!(%why, "cannot follow the stream's leader elections; retrying on a timer only");
            None
        }
    };
    if checked_at_start {
        ready.send_replace(true);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = connected.wait_for(|up| !*up) => {}
            _ = recheck.notified() => {}
        }
    }
    loop {
        ready.send_replace(false);
        tokio::select! {
            _ = stop.cancelled() => return,
            up = connected.wait_for(|up| *up) => if up.is_err() { return },
        }
        let max_payload = client.server_info().max_payload;
        let ensured = if max_payload > 0 && max_payload < max_message_bytes {
            // Granted to meters at start; a server that cannot take it would refuse batches.
            Err(EnsureError::Mismatch(StreamMismatch {
                stream: config.stream.clone(),
                problem: format!(
                    "the NATS server's max_payload ({max_payload} bytes) is below the largest batch message ({max_message_bytes} bytes) this collector granted meters at start; raise max_payload on every server or restart the collector to grant less"
                ),
            }))
        } else {
            tokio::select! {
                _ = stop.cancelled() => return,
                ensured = ensure_stream(&link_js, &config, max_message_bytes) => ensured,
                // A new leader: the request in flight may be waiting for the old one; ask again.
                () = next_election(&mut elections) => continue,
            }
        };
        let wait = match ensured {
            Ok(notes) => {
                for note in notes {
                    warn!(stream = %config.stream, "JetStream stream {note}");
                }
                ready.send_replace(true);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = connected.wait_for(|up| !*up) => {}
                    _ = recheck.notified() => {}
                }
                continue;
            }
            Err(EnsureError::Mismatch(mismatch)) => {
                error!(
                    "{mismatch}; nothing is stored (or acked) until it is fixed, looked at again every {}s",
                    MISMATCH_RECHECK.as_secs()
                );
                MISMATCH_RECHECK
            }
            Err(EnsureError::Unavailable(why)) => {
                if let Some(suppressed) = log.check("unavailable", Instant::now()) {
                    warn!(%why, suppressed, stream = %config.stream, "JetStream did not answer; retrying");
                }
                UNAVAILABLE_RETRY
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = recheck.notified() => {}
            () = next_election(&mut elections) => {}
        }
    }
}

/// The subject of JetStream's advisory that `stream` has a new leader.
pub fn leader_elected_subject(stream: &str) -> String {
    format!("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{stream}")
}

/// Waits for the next leader-election advisory; forever when there is no subscription (or it
/// ended: the client is closing).
async fn next_election(elections: &mut Option<async_nats::Subscriber>) {
    use futures_util::StreamExt;
    match elections {
        Some(subscriber) => {
            if subscriber.next().await.is_none() {
                *elections = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

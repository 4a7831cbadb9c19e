//! The raw quinn side of the hold, from this process: connections to the `quinn-echo` server
//! with the meter's client configuration, each with one open stream on which one message has
//! been echoed (as a ringflow session has its control stream, on which `Hello` was answered),
//! then held idle, and echoing one message when nudged.
//!
//! Owns: opening, holding and closing the raw connections. Must never: keep a timer of its own
//! per connection (the pacer times them) or decide what the figures mean.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::sync::mpsc;

use super::pacer::Nudge;
use crate::capacity::measure;

/// How long one echo may take before the run fails.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to the echo server with its stream.
pub struct EchoConnection {
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
}

impl EchoConnection {
    /// Connects to `server` from `endpoint`, opens a stream and has `message` echoed on it once:
    /// once this returns, the server holds the connection and its stream.
    pub async fn open(endpoint: &Endpoint, server: SocketAddr, message: &Bytes) -> anyhow::Result<Self> {
        let conn = endpoint.connect(server, "localhost")?.await?;
        let (send, recv) = conn.open_bi().await?;
        let mut held = Self { conn, send, recv };
        held.echo(message).await?;
        Ok(held)
    }

    /// Sends `message` and reads it back.
    async fn echo(&mut self, message: &Bytes) -> anyhow::Result<()> {
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(ECHO_TIMEOUT, async {
            self.send.write_chunk(message.clone()).await?;
            self.recv.read_exact(&mut back).await?;
            anyhow::Ok(())
        })
        .await
        .map_err(|_| anyhow::anyhow!("no echo within {ECHO_TIMEOUT:?}"))??;
        anyhow::ensure!(back == message.as_ref(), "the echo differs from the message");
        Ok(())
    }

    pub fn close(&self) {
        self.conn.close(0u32.into(), b"");
    }
}

/// Opens and closes 64 connections, and waits until `endpoint` has let go of them: what the
/// first connections allocate once in the server is then not charged to those measured.
pub async fn warm_up(endpoint: &Endpoint, server: SocketAddr, message: &Bytes) -> anyhow::Result<()> {
    for _ in 0..64 {
        EchoConnection::open(endpoint, server, message).await?.close();
    }
    tokio::time::timeout(Duration::from_secs(30), endpoint.wait_idle())
        .await
        .map_err(|_| anyhow::anyhow!("the warm-up connections did not close within 30 s"))
}

/// Opens `n` connections, 64 at once.
pub async fn open(
    endpoint: &Endpoint,
    server: SocketAddr,
    n: usize,
    message: &Bytes,
) -> anyhow::Result<Vec<EchoConnection>> {
    let held = Arc::new(Mutex::new(Vec::with_capacity(n)));
    measure(n, 64, |_| {
        let (endpoint, held, message) = (endpoint.clone(), Arc::clone(&held), message.clone());
        async move {
            let conn = EchoConnection::open(&endpoint, server, &message).await?;
            held.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            Ok(())
        }
    })
    .await?;
    Ok(std::mem::take(
        &mut *held.lock().unwrap_or_else(|p| p.into_inner()),
    ))
}

/// Holds `conn` until its mailbox closes, then closes it; each exchange nudge echoes `message`
/// once, counted in `echoed`. Raw quinn has no heartbeats: heartbeat nudges are not sent to it.
pub async fn hold_connection(
    mut conn: EchoConnection,
    mut nudges: mpsc::Receiver<Nudge>,
    message: Bytes,
    echoed: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    while let Some(nudge) = nudges.recv().await {
        anyhow::ensure!(nudge == Nudge::Exchange, "a raw connection was sent {nudge:?}");
        conn.echo(&message).await?;
        echoed.fetch_add(1, Ordering::Relaxed);
    }
    conn.close();
    Ok(())
}

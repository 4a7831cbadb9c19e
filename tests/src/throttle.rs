//! A TCP proxy on loopback that forwards at a fixed byte rate in each direction: a slow link to a
//! sink (NATS), so tests can make the collector's data plane back up without changing the
//! collector. The pauses here are the throttle itself, not synchronisation.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Bytes forwarded per step; the rate is kept by pausing after each step for its share of a
/// second.
const STEP_BYTES: usize = 4096;

pub struct ThrottledProxy {
    pub addr: SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl ThrottledProxy {
    /// Listens on a free loopback port and forwards each connection to `upstream` at
    /// `bytes_per_second` each way.
    pub async fn start(upstream: SocketAddr, bytes_per_second: u64) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (accept_stop, accept_tasks) = (stop.clone(), tasks.clone());
        tasks.spawn(async move {
            loop {
                let client = tokio::select! {
                    _ = accept_stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => return,
                    },
                };
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (client_rx, client_tx) = client.into_split();
                let (server_rx, server_tx) = server.into_split();
                for (rx, tx) in [(client_rx, server_tx), (server_rx, client_tx)] {
                    accept_tasks.spawn(forward(rx, tx, bytes_per_second, accept_stop.clone()));
                }
            }
        });
        Ok(Self { addr, stop, tasks })
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

async fn forward(
    mut rx: OwnedReadHalf,
    mut tx: OwnedWriteHalf,
    bytes_per_second: u64,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; STEP_BYTES];
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => return,
            read = rx.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        if tx.write_all(&buf[..n]).await.is_err() {
            return;
        }
        let pace = Duration::from_secs_f64(n as f64 / bytes_per_second.max(1) as f64);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pace) => {}
        }
    }
}

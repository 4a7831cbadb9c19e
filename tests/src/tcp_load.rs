//! Short TCP connections on loopback with known byte counts, for the sockets source's tests and
//! its benchmark: a server that reads what a client sends, answers, and closes after the client;
//! clients that each connect from their own loopback address (127.1.x.y), so every connection
//! is told apart in the store by its source address.
//!
//! Owns: the connection script (client sends `up` bytes, server answers `down`, the client
//! closes first, then the server) and the pacing. Must never: sleep in place of a signal (the
//! only waits are the pace of the paced load and I/O).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What each connection moves: `up` bytes from client to server, `down` back.
#[derive(Debug, Clone, Copy)]
pub struct Script {
    pub up: usize,
    pub down: usize,
}

/// The loopback address connection `i` comes from: 127.1.0.1 onwards (65,000 of them).
pub fn client_ip(i: usize) -> IpAddr {
    let i = i % 65_000;
    IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8))
}

/// The connection index of a client address made by [`client_ip`] (below 65,000).
pub fn client_index(ip: &[u8]) -> Option<usize> {
    match ip {
        [127, 1, hi, lo] if *lo >= 1 => Some(usize::from(*hi) * 250 + usize::from(*lo) - 1),
        _ => None,
    }
}

/// A server that runs `script` on every connection it accepts until `stop`.
pub struct ScriptServer {
    pub addr: SocketAddr,
    /// Connections it finished (read EOF after answering).
    pub served: Arc<AtomicU64>,
}

impl ScriptServer {
    pub async fn start(bind: &str, script: Script, stop: CancellationToken) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let served = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&served);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((conn, _)) = accepted else { continue };
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    if serve(conn, script).await.is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        Ok(Self { addr, served })
    }
}

async fn serve(mut conn: TcpStream, script: Script) -> std::io::Result<()> {
    let mut buf = vec![0u8; script.up.clamp(1, 64 << 10)];
    let mut left = script.up;
    let size = buf.len();
    while left > 0 {
        let n = conn.read(&mut buf[..left.min(size)]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        left -= n;
    }
    conn.write_all(&vec![0x42; script.down]).await?;
    // The client closes first; then this end does.
    let mut rest = [0u8; 1];
    if conn.read(&mut rest).await? != 0 {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    Ok(())
}

/// One client connection from `from`: connect, send, read the answer, close.
pub async fn client(server: SocketAddr, from: IpAddr, script: Script) -> anyhow::Result<Duration> {
    let started = tokio::time::Instant::now();
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let mut conn = socket.connect(server).await?;
    conn.write_all(&vec![0x17; script.up]).await?;
    let mut answer = vec![0u8; script.down];
    conn.read_exact(&mut answer).await?;
    drop(conn);
    Ok(started.elapsed())
}

/// Runs `count` connections with at most `concurrency` open at once; the longest one's time
/// from connect to close.
pub async fn run_clients(
    server: SocketAddr,
    count: usize,
    concurrency: usize,
    script: Script,
) -> anyhow::Result<Duration> {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let next = Arc::clone(&next);
        workers.spawn(async move {
            let mut longest = Duration::ZERO;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= count {
                    return anyhow::Ok(longest);
                }
                longest = longest.max(client(server, client_ip(i), script).await?);
            }
        });
    }
    let mut longest = Duration::ZERO;
    while let Some(done) = workers.join_next().await {
        longest = longest.max(done??);
    }
    Ok(longest)
}

/// Opens `per_second` connections a second (in steps of 10 ms) until `stop`; returns how many.
pub async fn paced_clients(
    server: SocketAddr,
    per_second: u64,
    script: Script,
    stop: CancellationToken,
) -> u64 {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let per_tick = (per_second / 100).max(1);
    let mut started = 0u64;
    let mut running = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        for _ in 0..per_tick {
            let from = client_ip(started as usize);
            running.spawn(client(server, from, script));
            started += 1;
        }
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
    started
}

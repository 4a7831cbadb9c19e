//! `herd quinn-echo`: the raw quinn server the hold is compared with, in a process of its own so
//! that its CPU and memory are its own. It runs a collector's QUIC setup exactly (the endpoint
//! configuration from `listener::endpoint_config`, `listener::server_config` with the default
//! `[limits]`, the collector's certificate and socket buffers) on a multi-threaded runtime of one
//! thread per CPU (as a collector's control plane), and does nothing but echo: on each stream a
//! client opens, every length-prefixed message (4-byte big-endian length and body, as a data
//! frame) is written back as it came.
//!
//! Owns: the process (its flags, runtime and lifetime) and the echo. Must never: run longer than
//! `--max-seconds` (it stops by itself if `herd bench` is gone), or listen beyond loopback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use quinn::{Endpoint, RecvStream, SendStream, TokioRuntime};
use ringflow_proto::quic;

use crate::bench::bulk::collector_server_config;

/// The subcommand under which `herd` runs this server (it starts itself).
pub const SUBCOMMAND: &str = "quinn-echo";
/// The line it logs once it listens, followed by ` addr=IP:PORT`.
pub const READY: &str = "quinn-echo ready";
/// The largest message it echoes: a data frame's default limit.
const MAX_MESSAGE_BYTES: usize = ringflow_proto::frame::DEFAULT_MAX_FRAME_BYTES;

#[derive(Parser, Debug)]
#[command(
    name = "herd quinn-echo",
    about = "A bare quinn echo server with a collector's QUIC setup (herd bench)"
)]
struct Args {
    /// The server certificate chain (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// Its key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// Where the endpoint's reset key is kept, as in a collector's data directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// The loopback address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Exits after this long whatever happens.
    #[arg(long, default_value_t = 3_600)]
    max_seconds: u64,
}

/// `herd quinn-echo ...` (`args` from the subcommand's name on).
pub fn main_with_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let args = Args::parse_from(args);
    if !args.listen.ip().is_loopback() {
        eprintln!("herd quinn-echo: --listen must be a loopback address");
        return ExitCode::from(2);
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("herd quinn-echo: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("herd quinn-echo: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)?;
    let endpoint = Endpoint::new(
        ringflow_collector::control::listener::endpoint_config(&args.data_dir)?,
        Some(collector_server_config(&args.cert, &args.key)?),
        quic::bind_udp(args.listen, quic::SOCKET_BUFFER_BYTES)?,
        Arc::new(TokioRuntime),
    )?;
    eprintln!("{READY} addr={}", endpoint.local_addr()?);
    let lifetime = Duration::from_secs(args.max_seconds);
    let _ = tokio::time::timeout(lifetime, accept_loop(&endpoint)).await;
    endpoint.close(0u32.into(), b"");
    Ok(())
}

/// Accepts every connection, and every stream of each.
async fn accept_loop(endpoint: &Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.accept() else { return };
            let Ok(conn) = conn.await else { return };
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(echo(send, recv));
            }
        });
    }
}

/// Writes back every length-prefixed message read from `recv` until it ends (or is too large).
async fn echo(mut send: SendStream, mut recv: RecvStream) {
    let mut message = Vec::new();
    loop {
        let mut prefix = [0u8; 4];
        if recv.read_exact(&mut prefix).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes(prefix) as usize;
        if len > MAX_MESSAGE_BYTES {
            break;
        }
        message.clear();
        message.extend_from_slice(&prefix);
        message.resize(4 + len, 0);
        if recv.read_exact(&mut message[4..]).await.is_err() || send.write_all(&message).await.is_err() {
            break;
        }
    }
    let _ = send.finish();
}

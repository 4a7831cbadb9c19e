//! New sessions per second: raw quinn handshakes against a bare quinn server, then full ringflow
//! sessions (QUIC + TLS + Hello/Welcome) against a collector, with the same certificate, on the
//! same machine, in one run. Admission is opened wide for the measurement; the figures are what
//! the admission defaults are derived from (README, "Admission budgets").
//!
//! `cargo run --release -p ringflow-tests --example session_rate -- [SESSIONS] [CONCURRENCY]`

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::{Endpoint, TokioRuntime};
use ringflow_proto::quic;
use ringflow_tests::herd::capacity::{measure, session};
use ringflow_tests::{ORG, TestBed};

const WIDE_OPEN: &str = "[limits]\nmax_connections = 1000000\n\
    [admission]\nmax_handshakes = 1000000\naccept_rate = 1000000\naccept_burst = 1000000\n\
    soft_max_sessions = 1000000\n[runtime]\ndata_threads = 1\n";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let sessions: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2_000);
    let concurrency: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(64);
    let bed = TestBed::new()?;
    let client = ringflow_agent::transport::client_config(&bed.certs.ca)?;
    let endpoint = ringflow_agent::transport::client_endpoint(client)?;

    let raw_server = raw_quinn_server(&bed)?;
    let raw_addr = raw_server.local_addr()?;
    let raw = measure(sessions, concurrency, |_| {
        let endpoint = endpoint.clone();
        async move {
            let conn = endpoint.connect(raw_addr, "localhost")?.await?;
            conn.close(0u32.into(), b"");
            Ok(())
        }
    })
    .await?;

    let collector = bed.start_collector("rate", WIDE_OPEN).await?;
    let addr = collector.addr;
    let token = Arc::new(bed.token.clone());
    let ours = measure(sessions, concurrency, |i| {
        let (endpoint, token) = (endpoint.clone(), Arc::clone(&token));
        async move { session(&endpoint, addr, ORG, &format!("rate-{i}"), &token).await }
    })
    .await?;
    collector.stop().await;
    raw_server.close(0u32.into(), b"");

    println!(
        "new sessions per second, {sessions} sessions, {concurrency} at once, client and server in one process:"
    );
    println!("  raw quinn handshakes      {raw:>8.0}/s");
    println!(
        "  ringflow sessions         {ours:>8.0}/s  ({:.2} of raw)",
        ours / raw
    );
    Ok(())
}

/// A bare quinn server with the collector's certificate, socket buffers and crypto: accepts
/// every connection, completes the handshake, and waits for the client to close.
fn raw_quinn_server(bed: &TestBed) -> anyhow::Result<Endpoint> {
    let chain = quic::load_certificates("server certificate", &bed.certs.server_cert)?;
    let key = quic::load_private_key("server key", &bed.certs.server_key)?;
    let crypto = quic::server_crypto(chain, key)?;
    let socket = quic::bind_udp(SocketAddr::from(([127, 0, 0, 1], 0)), quic::SOCKET_BUFFER_BYTES)?;
    let endpoint = Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(quinn::ServerConfig::with_crypto(Arc::new(crypto))),
        socket,
        Arc::new(TokioRuntime),
    )?;
    let server = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                if let Ok(connecting) = incoming.accept()
                    && let Ok(conn) = connecting.await
                {
                    conn.closed().await;
                }
            });
        }
    });
    Ok(endpoint)
}

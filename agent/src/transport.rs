//! The meter's QUIC client: endpoint and client configuration.
//!
//! Owns: the client transport parameters (keep-alive, idle timeout, no incoming streams). TLS
//! verification always uses the configured CA; there is no other mode.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::{ClientConfig, Endpoint, EndpointConfig, TokioRuntime, TransportConfig, VarInt};
use ringflow_proto::quic::{self, TlsError};

/// A meter has one connection; 1 MiB socket buffers are plenty for it.
const CLIENT_SOCKET_BUFFER_BYTES: usize = 1 << 20;

/// A session with no packets from the collector for this long is dead (QUIC uses the lower of the
/// two sides' idle timeouts): three keep-alives. A meter with batches in flight notices a
/// collector that vanished much sooner (`reconnect.silence_timeout_ms`, see
/// [`crate::session::liveness`]); a collector restarted on its data directory resets the old
/// connection at once (see the collector's `reset-key`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Keep-alive so an idle but healthy session never reaches the idle timeout, and its UDP mapping
/// in NATs and conntrack (30 s at the least in common defaults; Linux conntrack's unreplied UDP
/// timeout is 30 s) never expires. Each one costs both ends a packet and an ACK, so it is as
/// rare as those mappings allow.
pub const KEEP_ALIVE: Duration = Duration::from_secs(20);

/// Client configuration: TLS 1.3 with ALPN ringflow/1, verified against `ca_file`.
pub fn client_config(ca_file: &Path) -> Result<ClientConfig, TlsError> {
    client_config_with_identity(ca_file, None)
}

/// A meter's client certificate (mTLS): PEM chain and key files.
#[derive(Debug, Clone, Copy)]
pub struct ClientIdentity<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
}

impl<'a> ClientIdentity<'a> {
    /// The client certificate `config` names, if any.
    pub fn of(config: &'a crate::config::Config) -> Option<Self> {
        config
            .client_cert_and_key()
            .map(|(cert, key)| ClientIdentity { cert, key })
    }
}

/// As [`client_config`], presenting `identity` to collectors that ask for a client certificate.
pub fn client_config_with_identity(
    ca_file: &Path,
    identity: Option<ClientIdentity<'_>>,
) -> Result<ClientConfig, TlsError> {
    let identity = match identity {
        None => None,
        Some(id) => Some((
            quic::load_certificates("client_cert", id.cert)?,
            quic::load_private_key("client_key", id.key)?,
        )),
    };
    let crypto = quic::client_crypto_with_identity(quic::load_ca("ca_file", ca_file)?, identity)?;
    let mut transport = TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT)
            .unwrap_or(quinn::IdleTimeout::from(VarInt::from_u32(30_000))),
    ));
    // The collector never opens streams towards a meter.
    transport.max_concurrent_bidi_streams(VarInt::from_u32(0));
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    let mut config = ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// A client endpoint on an ephemeral port, IPv6 and IPv4 when the host has IPv6, else IPv4.
pub fn client_endpoint(config: ClientConfig) -> std::io::Result<Endpoint> {
    let socket = quic::bind_udp(SocketAddr::from(([0u16; 8], 0)), CLIENT_SOCKET_BUFFER_BYTES)
        .or_else(|_| quic::bind_udp(SocketAddr::from(([0u8; 4], 0)), CLIENT_SOCKET_BUFFER_BYTES))?;
    endpoint_on(config, socket)
}

/// A client endpoint bound to `addr` (a test gives each client its own loopback address).
pub fn client_endpoint_at(config: ClientConfig, addr: SocketAddr) -> std::io::Result<Endpoint> {
    endpoint_on(config, quic::bind_udp(addr, CLIENT_SOCKET_BUFFER_BYTES)?)
}

fn endpoint_on(config: ClientConfig, socket: std::net::UdpSocket) -> std::io::Result<Endpoint> {
    let mut endpoint = Endpoint::new(EndpointConfig::default(), None, socket, Arc::new(TokioRuntime))?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

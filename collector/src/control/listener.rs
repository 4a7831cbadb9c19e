//! The QUIC listener's setup: the TLS server config, the UDP socket, the endpoint keys that
//! survive a restart, and the transport limits every connection gets.
//!
//! Owns: [`bind`] (socket and endpoint, on the control plane's runtime), [`endpoint_config`]
//! (the stateless-reset and connection-ID keys kept in `DATA_DIR/reset-key`) and
//! [`server_config`] (streams, flow-control windows, idle timeout from `limits`). Must never:
//! accept connections (that is [`crate::control::accept`]) or read anything from a meter.

use std::sync::Arc;
use std::time::Duration;

use quinn::{Endpoint, EndpointConfig, ServerConfig, TokioRuntime, TransportConfig, VarInt};
use ringflow_proto::quic::{self, SOCKET_BUFFER_BYTES, TlsError};
use tracing::warn;

use crate::config::{Config, LimitsConfig, TlsConfig};
use crate::control::udp_stats::UdpSocketProbe;

/// Bytes of the stateless-reset key.
const RESET_KEY_BYTES: usize = 64;

/// Why the QUIC listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot use the QUIC reset key {path}: {source}")]
    ResetKey {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bind the {what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The TLS side of the listener: the server's certificate chain and key, and the CA that meters'
/// client certificates are checked against (optional or required, as configured).
pub fn server_crypto(tls: &TlsConfig) -> Result<quinn::crypto::rustls::QuicServerConfig, ListenerError> {
    let chain = quic::load_certificates("tls.cert", &tls.cert)?;
    let key = quic::load_private_key("tls.key", &tls.key)?;
    let clients = match &tls.client_ca {
        None => quic::ClientCerts::None,
        Some(path) => {
            let roots = Arc::new(quic::load_ca("tls.client_ca", path)?);
            if tls.require_client_cert {
                quic::ClientCerts::Required(roots)
            } else {
                quic::ClientCerts::Optional(roots)
            }
        }
    };
    Ok(quic::server_crypto_with_clients(chain, key, clients)?)
}

/// Binds the UDP socket on `config.listen` and builds the endpoint on it, serving with `crypto`.
/// Returns the endpoint and the probe that reads the socket's kernel counters.
pub fn bind(
    config: &Config,
    crypto: quinn::crypto::rustls::QuicServerConfig,
) -> Result<(Endpoint, UdpSocketProbe), ListenerError> {
    let bind_err = |source| ListenerError::Bind {
        what: "QUIC",
        addr: config.listen,
        source,
    };
    let socket = quic::bind_udp(config.listen, SOCKET_BUFFER_BYTES).map_err(bind_err)?;
    let udp = UdpSocketProbe::of(&socket);
    // Linux reports twice the usable size it granted.
    if udp.receive_buffer_bytes / 2 < SOCKET_BUFFER_BYTES {
        warn!(
            granted = udp.receive_buffer_bytes / 2,
            wanted = SOCKET_BUFFER_BYTES,
            "the kernel granted a smaller UDP receive buffer than asked for: a burst of \
             handshakes may be dropped; raise net.core.rmem_max"
        );
    }
    let endpoint = Endpoint::new(
        endpoint_config(&config.data_dir)?,
        Some(server_config(crypto, &config.limits)),
        socket,
        Arc::new(TokioRuntime),
    )
    .map_err(bind_err)?;
    Ok((endpoint, udp))
}

/// The endpoint's QUIC stateless-reset key, kept in `DATA_DIR/reset-key` (mode 0600) and created
/// on first start. Because it survives a restart, a collector restarted on the same data
/// directory (after a crash or `kill -9`) answers its previous incarnation's connections with a
/// valid stateless reset (RFC 9000, 10.3): their meters learn at their next packet that the
/// collector restarted and reconnect at once, instead of waiting out the idle timeout. The
/// connection-ID key is derived from it for the same reason.
pub fn endpoint_config(data_dir: &std::path::Path) -> Result<EndpointConfig, ListenerError> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("reset-key");
    let err = |source| ListenerError::ResetKey {
        path: path.clone(),
        source,
    };
    let mut key = [0u8; RESET_KEY_BYTES];
    match std::fs::File::open(&path) {
        Ok(mut f) => f.read_exact(&mut key).map_err(err)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            key = rand::random();
            let tmp = data_dir.join("reset-key.tmp");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(err)?;
            f.write_all(&key).and_then(|()| f.sync_all()).map_err(err)?;
            std::fs::rename(&tmp, &path).map_err(err)?;
        }
        Err(e) => return Err(err(e)),
    }
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    // Connection IDs carry a keyed hash so that packets with made-up IDs are dropped without a
    // reply. That key must survive restarts too, or the old connections' IDs would be dropped as
    // made-up and never reset.
    let tag = ring::hmac::sign(&reset_key, b"ringflow connection id key");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&tag.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    Ok(config)
}

/// The QUIC server configuration a collector runs with: stream counts, flow-control windows and
/// idle timeout from `limits`. Public so that `herd bench` measures raw quinn with the same setup.
pub fn server_config(crypto: quinn::crypto::rustls::QuicServerConfig, limits: &LimitsConfig) -> ServerConfig {
    let mut transport = TransportConfig::default();
    // One control stream plus the data streams; meters never get unidirectional streams.
    transport.max_concurrent_bidi_streams(VarInt::from_u32(1 + limits.max_data_streams));
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    transport.stream_receive_window(VarInt::from_u32(limits.stream_receive_window));
    // Bounds what one connection can make us buffer across all its streams.
    transport.receive_window(VarInt::from_u32(
        limits
            .stream_receive_window
            .saturating_mul(1 + limits.max_data_streams),
    ));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_millis(limits.idle_timeout_ms))
            .unwrap_or(quinn::IdleTimeout::from(VarInt::from_u32(30_000))),
    ));
    // Meters send no datagrams: no buffer is kept for them.
    transport.datagram_receive_buffer_size(None);
    let mut server = ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport));
    server
}

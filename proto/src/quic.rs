//! Transport setup both ends of ringflow/1 must agree on: ALPN, TLS 1.3 only with one crypto
//! provider, and UDP sockets sized for handshake bursts.
//!
//! Owns: building rustls/quinn crypto configs and UDP sockets. Must never: decide policy (timeouts,
//! stream counts and budgets belong to each binary's config) or disable certificate verification.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use socket2::{Domain, Protocol, Socket, Type};

/// ALPN protocol id of ringflow/1. A peer that does not offer it fails the handshake.
pub const ALPN: &[u8] = b"ringflow/1";

/// UDP send/receive buffer size asked of the kernel. With the default (~208 KiB) a burst of
/// handshakes overflows the receive buffer and the accepted connection rate collapses (measured:
/// ~1,500/s down to ~64/s, see NOTES-deps.md). The kernel caps this at `net.core.rmem_max`.
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} = {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{what} = {path} holds no PEM certificate (expected '-----BEGIN CERTIFICATE-----')")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("invalid CA certificate in {what} = {path}: {source}")]
    BadCa {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot verify client certificates with the configured CA: {0}")]
    ClientVerifier(String),
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS configuration has no TLS 1.3 cipher suite usable by QUIC: {0}")]
    Quic(String),
}

/// The one crypto provider both binaries use (ring), chosen explicitly so rustls never has to
/// guess between two compiled-in providers.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate from a PEM file.
pub fn load_certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) from a PEM file. `what` names it in
/// errors (the config key, e.g. `tls.key`).
pub fn load_private_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Root store holding the CA(s) in a PEM file: those a meter trusts to sign collector
/// certificates, or a collector trusts to sign meters' client certificates. `what` names it in
/// errors (the config key, e.g. `ca_file`).
pub fn load_ca(what: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certificates(what, path)? {
        roots.add(cert).map_err(|source| TlsError::BadCa {
            what,
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

/// Whether a server asks meters for client certificates (mTLS).
#[derive(Debug, Clone)]
pub enum ClientCerts {
    /// Not asked for.
    None,
    /// Asked for and verified against these roots when presented; a meter without one still
    /// completes the handshake (and authenticates with its token).
    Optional(Arc<RootCertStore>),
    /// Required: a meter without a certificate signed by these roots fails the handshake.
    Required(Arc<RootCertStore>),
}

/// Server crypto: TLS 1.3 only, ALPN `ringflow/1`, no client certificates.
pub fn server_crypto(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<QuicServerConfig, TlsError> {
    server_crypto_with_clients(chain, key, ClientCerts::None)
}

/// Server crypto: TLS 1.3 only, ALPN `ringflow/1`, client certificates as `clients` says.
pub fn server_crypto_with_clients(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    clients: ClientCerts,
) -> Result<QuicServerConfig, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let verifier = |roots, optional| {
        let b = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, crypto_provider());
        let b = if optional { b.allow_unauthenticated() } else { b };
        b.build().map_err(|e| TlsError::ClientVerifier(e.to_string()))
    };
    let builder = match clients {
        ClientCerts::None => builder.with_no_client_auth(),
        ClientCerts::Optional(roots) => builder.with_client_cert_verifier(verifier(roots, true)?),
        ClientCerts::Required(roots) => builder.with_client_cert_verifier(verifier(roots, false)?),
    };
    let mut tls = builder.with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // 0-RTT data could be replayed; ringflow never accepts it.
    tls.max_early_data_size = 0;
    QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))
}

/// Client crypto: TLS 1.3 only, ALPN `ringflow/1`, the server verified against `roots`.
pub fn client_crypto(roots: RootCertStore) -> Result<QuicClientConfig, TlsError> {
    client_crypto_with_identity(roots, None)
}

/// Client crypto as [`client_crypto`], presenting `identity` (certificate chain, leaf first, and
/// its key) when the server asks for a client certificate.
pub fn client_crypto_with_identity(
    roots: RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<QuicClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut tls = match identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))
}

/// A non-blocking UDP socket bound to `addr` with send and receive buffers of `buffer_bytes`
/// (the kernel may grant less; see [`SOCKET_BUFFER_BYTES`]). An IPv6 wildcard address also
/// accepts IPv4.
pub fn bind_udp(addr: SocketAddr, buffer_bytes: usize) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_recv_buffer_size(buffer_bytes)?;
    socket.set_send_buffer_size(buffer_bytes)?;
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The receive buffer the kernel actually granted a socket (Linux reports double the usable size).
pub fn granted_recv_buffer(socket: &std::net::UdpSocket) -> io::Result<usize> {
    socket2::SockRef::from(socket).recv_buffer_size()
}

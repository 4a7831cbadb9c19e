//! TLS material for the collector: generating a development CA, server certificate and meter
//! client certificates (`collector dev-certs`), and reading the names of a connection's verified
//! client certificate (mTLS).
//!
//! Owns: the files `ca.pem`, `server.pem`, `server.key` and `client-NAME.pem|key` that
//! `dev-certs` writes. Must never: write a private key readable by others, or offer any way to
//! skip certificate verification (meters verify against the CA; that is the point of generating
//! one).

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Names every development server certificate is valid for, besides those asked for.
pub const DEV_CERT_DEFAULT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// How long development certificates stay valid.
const DEV_CERT_VALID_DAYS: i64 = 365;

#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// PEM text of a development CA, a server certificate and client certificates signed by it.
#[derive(Debug)]
pub struct DevCerts {
    /// The CA certificate meters trust (`ca_file` in the meter config), and collectors trust for
    /// client certificates (`tls.client_ca`).
    pub ca_pem: String,
    /// Server certificate chain: the leaf, then the CA.
    pub server_chain_pem: String,
    pub server_key_pem: String,
    /// Per client name: its certificate chain (leaf, then the CA) and key.
    pub clients: Vec<(String, String, String)>,
}

/// Paths of the files [`write_dev_certs`] wrote.
#[derive(Debug, Clone)]
pub struct DevCertPaths {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Per client name: its certificate and key files.
    pub clients: Vec<(String, PathBuf, PathBuf)>,
}

/// A new CA, a server certificate valid for localhost, 127.0.0.1, ::1 and `extra_names` (DNS
/// names or IP addresses), and a client certificate for each of `client_names` (DNS names: the
/// collector maps them to orgs with `orgs[].client_names`).
pub fn generate_dev_certs(extra_names: &[String], client_names: &[String]) -> Result<DevCerts, DevCertError> {
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::days(1);
    let not_after = now + time::Duration::days(DEV_CERT_VALID_DAYS);

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ringflow development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut names: Vec<String> = DEV_CERT_DEFAULT_NAMES.iter().map(|s| s.to_string()).collect();
    for n in extra_names {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let common_name = extra_names.first().map_or("localhost", String::as_str);
    let leaf = |names: Vec<String>, common_name: &str, purpose| -> Result<_, DevCertError> {
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![purpose];
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok((format!("{}{}", cert.pem(), ca_cert.pem()), key.serialize_pem()))
    };
    let (server_chain_pem, server_key_pem) = leaf(names, common_name, ExtendedKeyUsagePurpose::ServerAuth)?;
    let mut clients = Vec::new();
    for name in client_names {
        let (chain, key) = leaf(vec![name.clone()], name, ExtendedKeyUsagePurpose::ClientAuth)?;
        clients.push((name.clone(), chain, key));
    }

    Ok(DevCerts {
        ca_pem: ca_cert.pem(),
        server_chain_pem,
        server_key_pem,
        clients,
    })
}

/// Generates development certificates and writes `ca.pem`, `server.pem`, `server.key` and
/// `client-NAME.pem`, `client-NAME.key` per client name (keys mode 0600) into `dir`, creating it
/// if needed.
pub fn write_dev_certs(
    dir: &Path,
    extra_names: &[String],
    client_names: &[String],
) -> Result<DevCertPaths, DevCertError> {
    let certs = generate_dev_certs(extra_names, client_names)?;
    std::fs::create_dir_all(dir).map_err(|source| DevCertError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let paths = DevCertPaths {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        clients: Vec::new(),
    };
    write_file(&paths.ca, &certs.ca_pem, 0o644)?;
    write_file(&paths.server_cert, &certs.server_chain_pem, 0o644)?;
    write_file(&paths.server_key, &certs.server_key_pem, 0o600)?;
    let mut paths = paths;
    for (name, chain, key) in &certs.clients {
        let cert_path = dir.join(format!("client-{name}.pem"));
        let key_path = dir.join(format!("client-{name}.key"));
        write_file(&cert_path, chain, 0o644)?;
        write_file(&key_path, key, 0o600)?;
        paths.clients.push((name.clone(), cert_path, key_path));
    }
    Ok(paths)
}

/// The DNS names (subject alternative names) of the client certificate `conn`'s handshake
/// verified against `tls.client_ca`; empty when the meter presented none.
pub fn client_certificate_names(conn: &quinn::Connection) -> Vec<String> {
    let Some(identity) = conn.peer_identity() else {
        return Vec::new();
    };
    let Ok(chain) = identity.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>() else {
        return Vec::new();
    };
    let Some(leaf) = chain.first() else {
        return Vec::new();
    };
    match webpki::EndEntityCert::try_from(leaf) {
        Ok(cert) => cert.valid_dns_names().map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    }
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), DevCertError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| DevCertError::Write {
        path: path.to_owned(),
        source,
    };
    // Remove first so an existing file's looser mode is not kept.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_a_ca_and_a_server_chain_that_rustls_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_dev_certs(
            dir.path(),
            &["collectors.example".into()],
            &["m1.acme.example".into()],
        )
        .unwrap();
        let roots = ringflow_proto::quic::load_ca("ca", &paths.ca).unwrap();
        assert_eq!(roots.len(), 1);
        let chain = ringflow_proto::quic::load_certificates("server", &paths.server_cert).unwrap();
        assert_eq!(chain.len(), 2, "leaf and CA");
        let key = ringflow_proto::quic::load_private_key("key", &paths.server_key).unwrap();
        ringflow_proto::quic::server_crypto(chain, key).unwrap();
        let mode = std::fs::metadata(&paths.server_key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (name, cert, key) = &paths.clients[0];
        assert_eq!(name, "m1.acme.example");
        let chain = ringflow_proto::quic::load_certificates("client", cert).unwrap();
        let leaf = webpki::EndEntityCert::try_from(&chain[0]).unwrap();
        assert_eq!(leaf.valid_dns_names().collect::<Vec<_>>(), ["m1.acme.example"]);
        let mode = std::fs::metadata(key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

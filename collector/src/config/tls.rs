//! `[tls]`: the certificate meters see, and whether they must show one of their own (mTLS).
//!
//! Owns: the section's keys and their check. Must never: read the files it names (the
//! collector loads them at start, naming the key of a file it cannot use).

use std::path::PathBuf;

use ringflow_ops::ConfigError;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain presented to meters (leaf first). Required: no default.
    pub cert: PathBuf,
    /// PEM private key of that certificate. Required: no default.
    pub key: PathBuf,
    /// PEM CA(s) that sign meters' client certificates (mTLS). Unset: no client certificates are
    /// asked for. Set: a meter may present one, and its DNS names map it to an org
    /// (`orgs[].client_names`).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: a meter without a valid client certificate fails the handshake.
    /// Default false (tokens still work).
    #[serde(default)]
    pub require_client_cert: bool,
}

impl TlsConfig {
    /// Checks `[tls]`: a required client certificate needs the CA that signs it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.require_client_cert && self.client_ca.is_none() {
            return Err(ConfigError::invalid(
                "tls.require_client_cert",
                "needs tls.client_ca, the CA that signs meters' client certificates",
            ));
        }
        Ok(())
    }
}

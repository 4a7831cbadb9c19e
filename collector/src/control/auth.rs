//! Org tokens and client-certificate names: generation, hashing, and the check of a meter's
//! `Hello`.
//!
//! Owns: the token format (`rft_` + 43 base64url characters = 256 random bits), hashing a token
//! (its text form `sha256:<hex>` is `config::credentials`'), the directory of orgs built from
//! `[[orgs]]` ([`OrgDirectory::from_config`]), and the mapping from a verified client certificate's DNS names to an org
//! (`orgs[].client_names`). Tokens are high-entropy random values, so a plain SHA-256 is enough to
//! make a leaked config useless (no password stretching needed), and hashes are compared in
//! constant time. Must never: store, log or echo a token, or say whether the org or the token was
//! wrong.

use std::collections::HashMap;

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use crate::config::credentials::{BadNamePattern, BadTokenHash, NamePattern, TokenHash};
use crate::config::{Config, ConfigError};

const TOKEN_PREFIX: &str = "rft_";

/// A new random org token.
pub fn generate_token() -> String {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    )
}

pub fn hash_token(token: &str) -> TokenHash {
    TokenHash::from_digest(Sha256::digest(token.as_bytes()).into())
}

/// Why a `Hello` was not authenticated. Kept for counters and the collector's own log; the meter
/// only ever hears "auth".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    UnknownOrg,
    WrongToken,
    /// The meter's verified client certificate belongs to another org than the one it claimed.
    CertificateOfAnotherOrg,
}

impl AuthFailure {
    /// Metric label and log key.
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::UnknownOrg => "auth_unknown_org",
            AuthFailure::WrongToken => "auth_wrong_token",
            AuthFailure::CertificateOfAnotherOrg => "auth_certificate_org",
        }
    }
}

/// How a `Hello` proved its org.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    Token,
    ClientCertificate,
}

/// What the directory keeps about one org.
#[derive(Debug, Default, Clone)]
pub struct OrgCredentials {
    pub token_hashes: Vec<TokenHash>,
    pub client_names: Vec<NamePattern>,
}

/// Orgs, the hashes of their valid tokens and the client-certificate names that prove them.
#[derive(Debug, Default, Clone)]
pub struct OrgDirectory {
    orgs: HashMap<String, OrgCredentials>,
}

impl OrgDirectory {
    /// The configured orgs (`[[orgs]]`) with their credentials, checked as `validate` checks
    /// them (a bad entry is reported with its key).
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let mut dir = OrgDirectory::default();
        for org in config.orgs.parse(&config.tls)? {
            let credentials = OrgCredentials {
                token_hashes: org.token_hashes,
                client_names: org.client_names,
            };
            dir.insert(&org.id, credentials);
        }
        Ok(dir)
    }

    /// Adds an org; false if it was already there.
    pub fn insert(&mut self, org: &str, credentials: OrgCredentials) -> bool {
        if self.orgs.contains_key(org) {
            return false;
        }
        self.orgs.insert(org.to_owned(), credentials);
        true
    }

    pub fn is_empty(&self) -> bool {
        self.orgs.is_empty()
    }

    /// Authenticates a `Hello` claiming `org`. `cert_names` are the DNS names of the client
    /// certificate the TLS handshake verified (empty without one). A certificate whose names map
    /// to `org` proves it; one that maps only to other orgs is refused whatever the token; one
    /// that maps to no org leaves the token to decide.
    pub fn authenticate(&self, org: &str, token: &str, cert_names: &[String]) -> Result<Proof, AuthFailure> {
        if !cert_names.is_empty() {
            let owns = |c: &OrgCredentials| {
                c.client_names
                    .iter()
                    .any(|p| cert_names.iter().any(|n| p.matches(n)))
            };
            if self.orgs.get(org).is_some_and(owns) {
                return Ok(Proof::ClientCertificate);
            }
            if self.orgs.values().any(owns) {
                return Err(AuthFailure::CertificateOfAnotherOrg);
            }
        }
        self.check_token(org, token).map(|()| Proof::Token)
    }

    /// Checks `token` against every hash of `org` in constant time. The work done does not depend
    /// on which hash matched, and an unknown org costs the same hash computation.
    fn check_token(&self, org: &str, token: &str) -> Result<(), AuthFailure> {
        let presented = hash_token(token);
        let Some(hashes) = self.orgs.get(org).map(|c| &c.token_hashes) else {
            // Compare against a dummy so an unknown org takes as long as a known one.
            let _ = presented.digest().ct_eq(&[0u8; 32]);
            return Err(AuthFailure::UnknownOrg);
        };
        let matched = hashes.iter().fold(subtle::Choice::from(0), |acc, h| {
            acc | h.digest().ct_eq(presented.digest())
        });
        if bool::from(matched) {
            Ok(())
        } else {
            Err(AuthFailure::WrongToken)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_verify_against_their_hash() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert!(
            a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 43,
            "{a}"
        );
        let mut dir = OrgDirectory::default();
        let creds = OrgCredentials {
            token_hashes: vec![hash_token(&a), hash_token(&b)],
            client_names: Vec::new(),
        };
        assert!(dir.insert("acme", creds.clone()));
        assert!(!dir.insert("acme", creds), "an org is listed once");
        assert_eq!(dir.authenticate("acme", &a, &[]), Ok(Proof::Token));
        assert_eq!(
            dir.authenticate("acme", &b, &[]),
            Ok(Proof::Token),
            "second token (rotation)"
        );
        assert_eq!(
            dir.authenticate("acme", "rft_nope", &[]),
            Err(AuthFailure::WrongToken)
        );
        assert_eq!(dir.authenticate("other", &a, &[]), Err(AuthFailure::UnknownOrg));
    }

    #[test]
    fn a_client_certificate_proves_the_org_its_names_map_to_and_no_other() {
        let token = generate_token();
        let mut dir = OrgDirectory::default();
        let pattern = |s: &str| s.parse::<NamePattern>().unwrap();
        dir.insert(
            "acme",
            OrgCredentials {
                token_hashes: vec![hash_token(&token)],
                client_names: vec![pattern("*.acme.example"), pattern("edge.example")],
            },
        );
        dir.insert(
            "globex",
            OrgCredentials {
                token_hashes: Vec::new(),
                client_names: vec![pattern("meter-1.globex.example")],
            },
        );
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cert = Proof::ClientCertificate;
        assert_eq!(
            dir.authenticate("acme", "", &names(&["m7.acme.example"])),
            Ok(cert)
        );
        assert_eq!(
            dir.authenticate("acme", "", &names(&["a.b.ACME.example"])),
            Ok(cert)
        );
        assert_eq!(
            dir.authenticate("acme", "", &names(&["x", "edge.example"])),
            Ok(cert)
        );
        assert_eq!(
            dir.authenticate("globex", "", &names(&["meter-1.globex.example"])),
            Ok(cert)
        );
        // A wildcard needs a label of its own; it does not match the bare suffix or a look-alike.
        for name in ["acme.example", "evilacme.example", "m.acme.example.evil"] {
            assert_eq!(
                dir.authenticate("acme", "", &names(&[name])),
                Err(AuthFailure::WrongToken),
                "{name}"
            );
        }
        // Another org's certificate is refused even with a valid token for the claimed org.
        assert_eq!(
            dir.authenticate("acme", &token, &names(&["meter-1.globex.example"])),
            Err(AuthFailure::CertificateOfAnotherOrg)
        );
        // A certificate that maps to no org leaves it to the token.
        assert_eq!(
            dir.authenticate("acme", &token, &names(&["unrelated.example"])),
            Ok(Proof::Token)
        );
        // An org without token hashes has no token that works.
        assert_eq!(dir.authenticate("globex", "", &[]), Err(AuthFailure::WrongToken));
        for bad in ["", "*", "*.", "a..b", "a b.example", "**.x", "x.*.y"] {
            assert!(bad.parse::<NamePattern>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hash_text_round_trips_and_rejects_garbage() {
        let h = hash_token("rft_x");
        assert_eq!(h.to_string().parse::<TokenHash>().unwrap(), h);
        // Pinned: a stored hash must keep matching across versions.
        assert_eq!(
            hash_token("abc").to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!("sha256:zz".parse::<TokenHash>().is_err());
        assert!("ba7816bf".parse::<TokenHash>().is_err());
    }
}

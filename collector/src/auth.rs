//! Org tokens: generation, hashing, and the constant-time check of a meter's `Hello`.
//!
//! Owns: the token format (`rft_` + 43 base64url characters = 256 random bits) and the hash format
//! (`sha256:<hex>`). Tokens are high-entropy random values, so a plain SHA-256 is enough to make a
//! leaked config useless (no password stretching needed), and hashes are compared in constant
//! time. Must never: store, log or echo a token, or say whether the org or the token was wrong.

use std::collections::HashMap;
use std::str::FromStr;

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const TOKEN_PREFIX: &str = "rft_";
const HASH_PREFIX: &str = "sha256:";

/// SHA-256 of an org token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{HASH_PREFIX}{}", hex::encode(self.0))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a token hash: expected \"sha256:\" and 64 hex digits, as printed by `collector token`")]
pub struct BadTokenHash(String);

impl FromStr for TokenHash {
    type Err = BadTokenHash;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let shown = || BadTokenHash(s.chars().take(80).collect());
        let digits = s.strip_prefix(HASH_PREFIX).ok_or_else(shown)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(digits, &mut out).map_err(|_| shown())?;
        Ok(TokenHash(out))
    }
}

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
    TokenHash(Sha256::digest(token.as_bytes()).into())
}

/// Why a `Hello` was not authenticated. Kept for counters and the collector's own log; the meter
/// only ever hears "auth".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    UnknownOrg,
    WrongToken,
}

/// Orgs and the hashes of their valid tokens.
#[derive(Debug, Default, Clone)]
pub struct OrgDirectory {
    orgs: HashMap<String, Vec<TokenHash>>,
}

impl OrgDirectory {
    /// Adds an org; false if it was already there.
    pub fn insert(&mut self, org: &str, hashes: Vec<TokenHash>) -> bool {
        if self.orgs.contains_key(org) {
            return false;
        }
        self.orgs.insert(org.to_owned(), hashes);
        true
    }

    pub fn is_empty(&self) -> bool {
        self.orgs.is_empty()
    }

    /// Checks `token` against every hash of `org` in constant time. The work done does not depend
    /// on which hash matched, and an unknown org costs the same hash computation.
    pub fn authenticate(&self, org: &str, token: &str) -> Result<(), AuthFailure> {
        let presented = hash_token(token);
        let Some(hashes) = self.orgs.get(org) else {
            // Compare against a dummy so an unknown org takes as long as a known one.
            let _ = presented.0.ct_eq(&[0u8; 32]);
            return Err(AuthFailure::UnknownOrg);
        };
        let matched = hashes
            .iter()
            .fold(subtle::Choice::from(0), |acc, h| acc | h.0.ct_eq(&presented.0));
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
        assert!(dir.insert("acme", vec![hash_token(&a), hash_token(&b)]));
        assert_eq!(dir.authenticate("acme", &a), Ok(()));
        assert_eq!(dir.authenticate("acme", &b), Ok(()), "second token (rotation)");
        assert_eq!(dir.authenticate("acme", "rft_nope"), Err(AuthFailure::WrongToken));
        assert_eq!(dir.authenticate("other", &a), Err(AuthFailure::UnknownOrg));
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

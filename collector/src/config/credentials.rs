//! The credentials `[[orgs]]` lists, in the form an operator writes them: token hashes
//! (`sha256:<64 hex>`, as `collector token` prints them) and client-certificate name patterns.
//!
//! Owns: the hash's text form and the pattern's syntax and matching. `control::auth` makes
//! tokens, hashes them and compares hashes in constant time. Must never: hold or log a token.

use std::str::FromStr;

const HASH_PREFIX: &str = "sha256:";

/// SHA-256 of an org token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The hash whose SHA-256 digest is `digest`.
    pub fn from_digest(digest: [u8; 32]) -> Self {
        TokenHash(digest)
    }

    /// The digest, for a constant-time comparison.
    pub fn digest(&self) -> &[u8; 32] {
        &self.0
    }
}

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

/// A client-certificate name pattern: an exact DNS name, or `*.suffix` for any name of one or
/// more labels under `suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern(String);

#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?} is not a client name pattern: a DNS name (\"meter-1.acme.example\") or \"*.\" and one (\"*.acme.example\")"
)]
pub struct BadNamePattern(String);

impl FromStr for NamePattern {
    type Err = BadNamePattern;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.strip_prefix("*.").unwrap_or(s);
        let valid_label = |l: &str| {
            (1..=63).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
            return Err(BadNamePattern(s.chars().take(80).collect()));
        }
        Ok(NamePattern(s.to_ascii_lowercase()))
    }
}

impl NamePattern {
    /// Whether the certificate name `name` is one this pattern stands for (case-insensitive).
    pub fn matches(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        match self.0.strip_prefix("*.") {
            Some(suffix) => name
                .strip_suffix(suffix)
                .and_then(|head| head.strip_suffix('.'))
                .is_some_and(|head| !head.is_empty()),
            None => name == self.0,
        }
    }
}

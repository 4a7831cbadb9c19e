//! What a binary was built from, for `--version` and the logs: the workspace's version and the
//! commit `build.rs` found (`$RINGFLOW_COMMIT`, else `git` in the checkout, else `unknown`).
//!
//! Owns: the `--version` line's format. Must never: run `git` at run time (a built binary may
//! run far from its checkout).

/// The workspace's version (every crate of the workspace shares it; each binary checks that at
/// compile time with [`same_version`]).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// 12 hex digits of the commit, with `-dirty` when tracked files differed from it; what
/// `$RINGFLOW_COMMIT` said; or `unknown`.
pub const COMMIT: &str = env!("RINGFLOW_BUILD_COMMIT");

/// Where [`COMMIT`] came from: `git`, `env` (`$RINGFLOW_COMMIT`) or `none`.
pub const COMMIT_SOURCE: &str = env!("RINGFLOW_BUILD_COMMIT_SOURCE");

/// What `--version` prints after the binary's name, e.g.
/// `0.1.0 (commit 1a2b3c4d5e6f, built from a clean tree)`, `0.1.0 (commit 1a2b3c4d5e6f-dirty)`,
/// `0.1.0 (commit unknown)`.
pub const LONG_VERSION: &str = env!("RINGFLOW_BUILD_LONG_VERSION");

/// The `--version` text for `commit` found by `source` (`build.rs` writes [`LONG_VERSION`] with
/// the same rule; a test holds them together).
pub fn describe(version: &str, commit: &str, source: &str) -> String {
    if source == "git" && !commit.ends_with("-dirty") {
        format!("{version} (commit {commit}, built from a clean tree)")
    } else {
        format!("{version} (commit {commit})")
    }
}

/// Whether two version strings are equal, in a `const` context: a binary asserts at compile time
/// that its crate's version is the workspace's that [`VERSION`] names.
pub const fn same_version(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_line_names_the_commit_and_whether_the_tree_was_clean() {
        assert_eq!(
            describe("0.1.0", "1a2b3c4d5e6f", "git"),
            "0.1.0 (commit 1a2b3c4d5e6f, built from a clean tree)"
        );
        assert_eq!(
            describe("0.1.0", "1a2b3c4d5e6f-dirty", "git"),
            "0.1.0 (commit 1a2b3c4d5e6f-dirty)"
        );
        assert_eq!(describe("0.1.0", "unknown", "none"), "0.1.0 (commit unknown)");
        assert_eq!(
            describe("0.1.0", "v0.1.0-3-gabc", "env"),
            "0.1.0 (commit v0.1.0-3-gabc)"
        );
        assert_eq!(LONG_VERSION, describe(VERSION, COMMIT, COMMIT_SOURCE));
        assert!(same_version("0.1.0", VERSION) && !same_version("0.1.0", "0.1.1"));
    }
}

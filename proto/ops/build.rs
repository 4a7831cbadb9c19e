//! Finds the commit the binaries are built from, for `meter --version`, `collector --version`
//! and `src/build_info.rs`: `$RINGFLOW_COMMIT` when set (packagers building from a tarball),
//! else `git rev-parse` in this checkout (12 hex digits, `-dirty` when tracked files differ
//! from HEAD), else `unknown` (a source tarball, or no `git`).
//!
//! Reruns when HEAD moves (a commit, a checkout), when the branch it points to moves, when the
//! index changes (`git add`, which may make the tree dirty or clean), and when
//! `$RINGFLOW_COMMIT` changes. The git directory comes from `git rev-parse --git-dir`, since a
//! worktree's `.git` is a file naming it; branch refs live in the common directory. Watching
//! every source file for `-dirty` would rebuild both binaries at every edit: an edit not yet
//! added to the index is seen only when something else reruns this script.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-env-changed=RINGFLOW_COMMIT");
    let (commit, source) = match std::env::var("RINGFLOW_COMMIT") {
        Ok(given) if !given.trim().is_empty() => (given.trim().to_owned(), "env"),
        _ => match from_git() {
            Some((hash, dirty)) => (format!("{hash}{}", if dirty { "-dirty" } else { "" }), "git"),
            None => ("unknown".to_owned(), "none"),
        },
    };
    println!("cargo::rustc-env=RINGFLOW_BUILD_COMMIT={commit}");
    println!("cargo::rustc-env=RINGFLOW_BUILD_COMMIT_SOURCE={source}");
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    // The rule of `build_info::describe`, which a unit test holds to this.
    let long = if source == "git" && !commit.ends_with("-dirty") {
        format!("{version} (commit {commit}, built from a clean tree)")
    } else {
        format!("{version} (commit {commit})")
    };
    println!("cargo::rustc-env=RINGFLOW_BUILD_LONG_VERSION={long}");
}

/// Runs `git args` in the crate's directory; None when git is missing or fails.
fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let out = Command::new("git").current_dir(dir).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The short commit of HEAD and whether tracked files differ from it, watching what moves them.
fn from_git() -> Option<(String, bool)> {
    let git_dir = absolute(git(&["rev-parse", "--git-dir"])?);
    let common_dir = git(&["rev-parse", "--git-common-dir"]).map_or_else(|| git_dir.clone(), absolute);
    let mut watched = vec![git_dir.join("HEAD"), git_dir.join("index")];
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        // A branch moved by a commit changes its loose ref, or packed-refs once packed.
        watched.extend([&git_dir, &common_dir].map(|dir| dir.join(&reference)));
        watched.push(common_dir.join("packed-refs"));
    }
    // Cargo reruns a build script at every build while a watched file is missing: only those
    // that exist.
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo::rerun-if-changed={}", path.display());
    }
    let hash = git(&["rev-parse", "--short=12", "HEAD"])?;
    // No optional locks: `status` must not rewrite the index it is watched through.
    let dirty = git(&[
        "--no-optional-locks",
        "status",
        "--porcelain",
        "--untracked-files=no",
    ])
    .is_some_and(|s| !s.is_empty());
    Some((hash, dirty))
}

/// `git rev-parse` prints paths relative to the directory it ran in.
fn absolute(path: String) -> PathBuf {
    let path = PathBuf::from(path);
    match std::env::var_os("CARGO_MANIFEST_DIR") {
        Some(dir) if path.is_relative() => Path::new(&dir).join(path),
        _ => path,
    }
}

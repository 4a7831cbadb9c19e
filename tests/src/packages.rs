//! For the Debian package tests: where `package debs` left the packages, what they hold, a
//! repackaged next version for the upgrade, and a throwaway root to install them into.
//!
//! Owns: [`ThrowawayRoot`], an overlay of `/` whose every write lands in a tmpfs, entered with
//! `chroot`: `dpkg -i` there runs the real maintainer scripts, `adduser` and
//! `deb-systemd-helper` against a copy of this machine that is gone when the value drops. Needs
//! root (mounts); elsewhere [`ThrowawayRoot::new`] says why it cannot.
//! Must never: build the packages itself (tests/run-all.sh runs `package debs` once before the
//! tests; a missing or stale package fails with the command to run).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace's root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The package `name`'s `.deb` for this workspace's version, from `RINGFLOW_DEBS` or Cargo's
/// target directory's `debian/` (where tests/run-all.sh has `package debs` write them).
pub fn deb(name: &str) -> PathBuf {
    let dir = match std::env::var_os("RINGFLOW_DEBS") {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("CARGO_TARGET_DIR") {
            Some(target) => workspace_root().join(target).join("debian"),
            None => workspace_root().join("target/debian"),
        },
    };
    let arch = stdout(Command::new("dpkg").arg("--print-architecture"));
    let path = dir.join(format!(
        "{name}_{}-1_{}.deb",
        env!("CARGO_PKG_VERSION"),
        arch.trim()
    ));
    assert!(
        path.is_file(),
        "{} is missing: build the packages first with `cargo run -p ringflow-packaging -- debs` \
         (tests/run-all.sh does), or point RINGFLOW_DEBS at their directory",
        path.display()
    );
    path
}

/// The regular files and symlinks a package installs (`dpkg-deb -c`), as absolute paths.
pub fn files(deb: &Path) -> Vec<String> {
    stdout(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .filter(|line| !line.starts_with('d'))
        .filter_map(|line| line.split_whitespace().nth(5))
        .map(|path| path.trim_start_matches('.').to_string())
        .collect()
}

/// One control field of a package (`dpkg-deb -f`).
pub fn field(deb: &Path, name: &str) -> String {
    stdout(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name))
        .trim()
        .to_string()
}

/// A file of the package's data or control part, read from an extraction into `dir`.
pub fn extract(deb: &Path, dir: &Path) {
    let out = Command::new("dpkg-deb")
        .arg("-R")
        .arg(deb)
        .arg(dir)
        .output()
        .expect("run dpkg-deb -R");
    assert!(
        out.status.success(),
        "dpkg-deb -R {}: {}",
        deb.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The same package as `deb` with version `version` (the files unchanged), written into `dir`:
/// the next release, for the upgrade test.
pub fn with_version(deb: &Path, version: &str, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("create the repackaging directory");
    let tree = dir.join("tree");
    extract(deb, &tree);
    let control_path = tree.join("DEBIAN/control");
    let control = std::fs::read_to_string(&control_path).expect("read control");
    let control: String = control
        .lines()
        .map(|line| {
            if line.starts_with("Version:") {
                format!("Version: {version}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    std::fs::write(&control_path, control).expect("write control");
    let stem = deb.file_stem().expect("a .deb file").to_string_lossy();
    let out_path = dir.join(format!("{stem}-as-{version}.deb"));
    let out = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-b"])
        .arg(&tree)
        .arg(&out_path)
        .output()
        .expect("run dpkg-deb -b");
    assert!(
        out.status.success(),
        "dpkg-deb -b: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out_path
}

fn stdout(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An overlay of `/` with its writes in a tmpfs, to install packages into (see the module doc).
pub struct ThrowawayRoot {
    base: tempfile::TempDir,
    merged: PathBuf,
}

impl ThrowawayRoot {
    /// Mounts it. `Err(reason)` when this process may not mount (not root) or the kernel refuses.
    pub fn new() -> Result<Self, String> {
        crate::bpf::may_load()
            .map_err(|_| "not root: mounting a throwaway root needs root, as CI has".to_string())?;
        let base = tempfile::tempdir().map_err(|e| e.to_string())?;
        mount(&["-t", "tmpfs", "tmpfs"], base.path())?;
        let (upper, work, merged) = (
            base.path().join("u"),
            base.path().join("w"),
            base.path().join("m"),
        );
        for dir in [&upper, &work, &merged] {
            std::fs::create_dir(dir).map_err(|e| e.to_string())?;
        }
        let options = format!(
            "lowerdir=/,upperdir={},workdir={}",
            upper.display(),
            work.display()
        );
        let root = Self { base, merged };
        mount(&["-t", "overlay", "overlay", "-o", &options], &root.merged)?;
        Ok(root)
    }

    /// A path inside the root, as seen from outside it.
    pub fn path(&self, inside: &str) -> PathBuf {
        self.merged.join(inside.trim_start_matches('/'))
    }

    /// Copies `file` into the root's `/tmp` and returns its path inside the root.
    pub fn copy_in(&self, file: &Path) -> String {
        let name = file.file_name().expect("a file").to_string_lossy();
        let inside = format!("/tmp/ringflow-test-{name}");
        std::fs::copy(file, self.path(&inside)).expect("copy into the throwaway root");
        inside
    }

    /// Runs `program args` inside the root.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new("chroot")
            .arg(&self.merged)
            .arg(program)
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .expect("run chroot")
    }

    /// Runs `program args` inside the root; panics with its output unless it succeeds. Returns
    /// its stdout.
    pub fn ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?} in the throwaway root: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for ThrowawayRoot {
    fn drop(&mut self) {
        for target in [&self.merged, &self.base.path().to_path_buf()] {
            let _ = Command::new("umount").arg("-l").arg(target).status();
        }
    }
}

fn mount(args: &[&str], target: &Path) -> Result<(), String> {
    let out = Command::new("mount")
        .args(args)
        .arg(target)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount {args:?} {}: {}",
            target.display(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

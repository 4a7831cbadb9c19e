//! ringflow's Debian packages: `ringflow-meter` and `ringflow-collector`, built by `cargo deb`
//! from the metadata in `agent/Cargo.toml` and `collector/Cargo.toml`, with the files of
//! `packaging/debian/` (systemd units, maintainer scripts) and what this crate generates from
//! the binaries' clap definitions (man pages, shell completions).
//!
//! Owns: the list of packaged binaries, generating their man pages and completions into
//! `TARGET/release/dist/` (where the Cargo metadata's assets name them), and the steps of
//! `package debs`. Must never: write a man page or completion by hand (they follow the flags),
//! or build with another profile than the one `cargo deb` packages (`release`).

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use clap_complete::Shell;

/// One packaged binary.
#[derive(Debug, Clone, Copy)]
pub struct Binary {
    /// The executable's name (`/usr/bin/NAME`).
    pub name: &'static str,
    /// The Cargo package that builds it, and whose metadata describes its Debian package.
    pub cargo_package: &'static str,
    /// The Debian package's name.
    pub deb_package: &'static str,
    /// Its command line's definition.
    pub command: fn() -> clap::Command,
}

/// Every binary that ships in a Debian package.
pub const BINARIES: [Binary; 2] = [
    Binary {
        name: "meter",
        cargo_package: "ringflow-meter",
        deb_package: "ringflow-meter",
        command: ringflow_meter::cli::command,
    },
    Binary {
        name: "collector",
        cargo_package: "ringflow-collector",
        deb_package: "ringflow-collector",
        command: ringflow_collector::cli::command,
    },
];

/// The shells a completion is generated for, and the file name each one's completion has (the
/// directories are in the Cargo metadata's assets).
pub const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "{}.bash"),
    (Shell::Zsh, "_{}"),
    (Shell::Fish, "{}.fish"),
];

/// The workspace's root (this crate is `packaging/` in it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("packaging/ is inside the workspace")
        .to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set, else `target/` in the workspace.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Where generated assets go: `TARGET/release/dist`, which the Cargo metadata names as
/// `target/release/dist` (cargo-deb maps `target/release/` to the real target directory).
pub fn dist_dir() -> PathBuf {
    target_dir().join("release").join("dist")
}

/// Writes `NAME.1` and one `NAME-SUBCOMMAND.1` per subcommand into `dir`, gzipped as Debian
/// wants them. Returns the files written.
pub fn write_man_pages(binary: &Binary, dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let command = (binary.command)();
    let version = command.get_version().unwrap_or_default().to_string();
    let mut pages = vec![(binary.name.to_string(), command.clone())];
    for sub in command.get_subcommands() {
        let name = format!("{}-{}", binary.name, sub.get_name());
        // A subcommand's page is titled by its full name, as `man meter-run` finds it.
        pages.push((name.clone(), sub.clone().name(name).version(version.clone())));
    }
    let mut written = Vec::new();
    for (name, page) in pages {
        let mut roff = Vec::new();
        clap_mangen::Man::new(page)
            .section("1")
            .source(format!("ringflow {}", env!("CARGO_PKG_VERSION")))
            .manual("ringflow")
            .render(&mut roff)
            .with_context(|| format!("render the man page of {name}"))?;
        let path = dir.join(format!("{name}.1"));
        fs::write(&path, roff).with_context(|| format!("write {}", path.display()))?;
        written.push(gzip(&path)?);
    }
    Ok(written)
}

/// Writes the binary's completion for every shell of [`SHELLS`] into `dir`.
pub fn write_completions(binary: &Binary, dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut written = Vec::new();
    for (shell, pattern) in SHELLS {
        let path = dir.join(pattern.replace("{}", binary.name));
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut (binary.command)(), binary.name, &mut script);
        fs::write(&path, script).with_context(|| format!("write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Generates every binary's man pages and completions into `dist` (`man/`, `completions/`).
pub fn write_assets(dist: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for binary in &BINARIES {
        written.extend(write_man_pages(binary, &dist.join("man"))?);
        written.extend(write_completions(binary, &dist.join("completions"))?);
    }
    Ok(written)
}

/// `gzip -9n` (no name or time stamp inside, so a rebuild is byte-identical): returns `PATH.gz`.
fn gzip(path: &Path) -> Result<PathBuf> {
    run(Command::new("gzip").args(["-9nf"]).arg(path), "gzip")?;
    Ok(path.with_extension("1.gz"))
}

/// What `package debs` does, besides where it writes.
#[derive(Debug, Clone, Default)]
pub struct DebOptions {
    /// Where the `.deb` files go (default `TARGET/debian`).
    pub out: Option<PathBuf>,
    /// The Debian version (default: the workspace's version, revision 1).
    pub deb_version: Option<String>,
    /// Skip `cargo build --release` (the binaries are already built).
    pub no_build: bool,
}

/// Builds both binaries (release), generates the assets, and runs `cargo deb` for each
/// package. Returns the `.deb` files, meter first.
pub fn build_debs(options: &DebOptions) -> Result<Vec<PathBuf>> {
    let root = workspace_root();
    if !options.no_build {
        let mut build = Command::new(cargo());
        build.current_dir(&root).args(["build", "--release", "--locked"]);
        for binary in &BINARIES {
            build.args(["-p", binary.cargo_package]);
        }
        run(&mut build, "cargo build --release")?;
    }
    write_assets(&dist_dir())?;
    let out = options.out.clone().unwrap_or_else(|| target_dir().join("debian"));
    fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let mut debs = Vec::new();
    for binary in &BINARIES {
        let mut deb = Command::new(cargo());
        deb.current_dir(&root)
            .args([
                "deb",
                "--no-build",
                "--strip",
                "-p",
                binary.cargo_package,
                "--output",
            ])
            .arg(&out);
        if let Some(version) = &options.deb_version {
            deb.args(["--deb-version", version]);
        }
        let printed = run(&mut deb, "cargo deb")?;
        let path = printed
            .lines()
            .rev()
            .map(str::trim)
            .find(|line| line.ends_with(".deb"))
            .map(PathBuf::from)
            .with_context(|| {
                format!(
                    "cargo deb -p {} printed no .deb path: {printed}",
                    binary.cargo_package
                )
            })?;
        ensure!(
            path.is_file(),
            "cargo deb said it wrote {}, which is not a file",
            path.display()
        );
        debs.push(path);
    }
    Ok(debs)
}

/// `lintian` on each package: `Err` with its report when it finds an error (`E:` tags);
/// warnings are returned for the caller to print.
pub fn lintian(debs: &[PathBuf]) -> Result<String> {
    let output = Command::new("lintian")
        .args(["--tag-display-limit", "0", "--display-info"])
        .args(debs)
        .output()
        .context("run lintian (tests/ensure-packaging-tools.sh installs it)")?;
    let report =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = report.lines().filter(|line| line.starts_with("E:")).collect();
    if !errors.is_empty() {
        bail!("lintian found {} error(s):\n{}", errors.len(), errors.join("\n"));
    }
    Ok(report)
}

/// The `cargo` that runs us (so a toolchain chosen by rustup is kept), else `cargo`.
fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Runs `command`; `Err` naming `what`, with its output, if it fails. Returns its stdout.
fn run(command: &mut Command, what: &str) -> Result<String> {
    let output = command.output().with_context(|| format!("start {what}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {} {}\n{stdout}{}",
            output.status,
            command.get_program().to_string_lossy(),
            command
                .get_args()
                .map(OsStr::to_string_lossy)
                .collect::<Vec<_>>()
                .join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

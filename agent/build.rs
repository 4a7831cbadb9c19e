//! Compiles the bpf tier's programs (`bpf/flows.bpf.c`) with clang into `OUT_DIR`, where
//! `src/source/bpf/load.rs` embeds them. Without clang the meter still builds: the `bpf` tier
//! then says it was built without its programs, and the meter uses the sock_diag tier.
//!
//! The compiler: `$RINGFLOW_BPF_CLANG` (`none`: build without the programs), else the first of
//! `clang`, `clang-19` ... `clang-14` on the PATH. Headers: the kernel's UAPI (`linux-libc-dev`) and libbpf's helpers (`libbpf-dev`);
//! `tests/ensure-bpf-toolchain.sh` installs all three on Debian.

use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = "bpf/flows.bpf.c";

fn main() {
    println!("cargo::rerun-if-changed={SOURCE}");
    println!("cargo::rerun-if-env-changed=RINGFLOW_BPF_CLANG");
    println!("cargo::rustc-check-cfg=cfg(ringflow_bpf_object)");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("flows.bpf.o");
    let Some(clang) = find_clang() else {
        println!(
            "cargo::warning=clang not found: the meter is built without its BPF programs (bpf tier off); run tests/ensure-bpf-toolchain.sh"
        );
        return;
    };
    let multiarch = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{multiarch}"))
        .args(["-c", SOURCE, "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => println!("cargo::rustc-cfg=ringflow_bpf_object"),
        Ok(s) => panic!(
            "{clang} failed to compile {SOURCE} ({s}); fix the program, or build without clang on the PATH"
        ),
        Err(e) => panic!("cannot run {clang}: {e}"),
    }
}

fn find_clang() -> Option<String> {
    if let Some(c) = std::env::var_os("RINGFLOW_BPF_CLANG") {
        return (c != "none").then(|| c.to_string_lossy().into_owned());
    }
    let names = [
        "clang", "clang-19", "clang-18", "clang-17", "clang-16", "clang-15", "clang-14",
    ];
    names.into_iter().map(String::from).find(|name| {
        Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

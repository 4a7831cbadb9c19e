//! Loading the meter's BPF programs (`agent/bpf/flows.bpf.c`, compiled by `build.rs` and
//! embedded) and attaching them to the cgroup v2 root.
//!
//! Owns: the embedded object, finding the cgroup v2 mount (from `/proc/self/mountinfo`, never an
//! assumed path), the maps' sizes, the attachments, and why the tier cannot run when it cannot.
//! Every attachment is a BPF link held by this process (`bpf_link_create`, kernels ≥ 5.7): when
//! the meter exits, even by `kill -9`, the kernel closes its descriptors and detaches the
//! programs; nothing is pinned. A link runs beside the cgroup's other programs (another meter's
//! included, as with `BPF_F_ALLOW_MULTI`), and these count into this meter's own maps only.
//! Kernels before 5.7 have no cgroup links; aya attaches there with `BPF_PROG_ATTACH`, which
//! a `kill -9` does not undo: the meter refuses them (see [`OLDEST_KERNEL`]).

use std::path::{Path, PathBuf};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, SockOps};
use aya::{Ebpf, EbpfLoader};

use super::wire::{KEY_LEN, OWNER_LEN, STATS_LEN, VALUE_LEN};
use crate::config::BpfConfig;

/// The compiled programs, when this meter was built with clang (see `agent/build.rs`).
#[cfg(ringflow_bpf_object)]
pub static OBJECT: Option<&[u8]> = Some(aya::include_bytes_aligned!(concat!(
    env!("OUT_DIR"),
    "/flows.bpf.o"
)));
#[cfg(not(ringflow_bpf_object))]
pub static OBJECT: Option<&[u8]> = None;

/// The programs' names, as `bpftool prog` and [`aya::programs::loaded_programs`] list them.
pub const PROGRAM_NAMES: [&str; 5] = [
    "rf_egress",
    "rf_ingress",
    "rf_sock_create",
    "rf_sock_ops",
    "rf_sock_release",
];

/// The loaded and attached programs and their maps. Dropping it detaches everything.
pub struct Programs {
    /// Holds the programs and their links.
    _ebpf: Ebpf,
    pub flows: BpfHashMap<MapData, [u8; KEY_LEN], [u8; VALUE_LEN]>,
    pub owners: BpfHashMap<MapData, [u8; 8], [u8; OWNER_LEN]>,
    pub events: RingBuf<MapData>,
    pub stats: PerCpuArray<MapData, [u8; STATS_LEN]>,
    /// Where cgroup v2 is mounted (the programs are attached to its root).
    pub cgroup_root: PathBuf,
}

/// Why the tier cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("sources.sockets.bpf.mode = \"off\"")]
    Off,
    #[error(
        "this meter was built without clang, so it carries no BPF programs; build it where clang \
         is installed (tests/ensure-bpf-toolchain.sh installs it on Debian)"
    )]
    NotBuilt,
    #[error(
        "no cgroup v2 hierarchy is mounted (/proc/self/mountinfo lists none); mount one \
         (`mount -t cgroup2 none /sys/fs/cgroup/unified`) for the programs to attach to"
    )]
    NoCgroupV2,
    #[error(
        "the meter may not {what} ({error}); run it as root, or with the capabilities CAP_BPF, \
         CAP_NET_ADMIN and CAP_PERFMON (docs/meter.md, \"Capture tiers\")"
    )]
    NotPermitted { what: &'static str, error: String },
    #[error("{what} failed: {error}")]
    Failed { what: &'static str, error: String },
}

impl Unavailable {
    fn of(what: &'static str, error: impl std::error::Error) -> Self {
        let mut text = error.to_string();
        let mut denied = false;
        let mut source = error.source();
        while let Some(e) = source {
            text.push_str(": ");
            text.push_str(&e.to_string());
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                denied |= matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES));
            }
            source = e.source();
        }
        if denied {
            Self::NotPermitted { what, error: text }
        } else {
            Self::Failed { what, error: text }
        }
    }
}

/// The mount point of the cgroup v2 hierarchy in `/proc/self/mountinfo` text.
pub fn cgroup_v2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let fstype = fs.split_whitespace().next()?;
        let point = mount.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape(point)))
    })
}

/// Mount points escape spaces and the like as `\040` (octal).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest
            .get(at + 1..at + 4)
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Cgroup links (5.7: attachments that die with the process), ring buffers (5.8), the socket
/// release hook (5.9), the socket cookie in sock_create programs, and the coarse clock (5.11).
const OLDEST_KERNEL: aya::util::KernelVersion = aya::util::KernelVersion::new(5, 11, 0);

/// Loads the programs with the maps sized by `config` and attaches them to the cgroup v2 root.
pub fn load(config: &BpfConfig) -> Result<Programs, Unavailable> {
    let object = OBJECT.ok_or(Unavailable::NotBuilt)?;
    let kernel =
        aya::util::KernelVersion::current().map_err(|e| Unavailable::of("read the kernel's version", e))?;
    if kernel < OLDEST_KERNEL {
        return Err(Unavailable::Failed {
            what: "the bpf tier",
            error: format!(
                "the kernel ({kernel:?}) is older than 5.11, the first with cgroup links, ring buffers, \
                 socket release hooks and the coarse clock the programs use"
            ),
        });
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Unavailable::of("read /proc/self/mountinfo", e))?;
    let cgroup_root = cgroup_v2_mount(&mountinfo).ok_or(Unavailable::NoCgroupV2)?;
    let mut ebpf = EbpfLoader::new()
        // No CO-RE relocations to make: the kernel's BTF (megabytes) is not read.
        .btf(None)
        .map_max_entries("flows", config.max_flows)
        .map_max_entries("owners", config.max_flows)
        .map_max_entries("listeners", (config.max_flows / 16).max(64))
        .map_max_entries("events", config.ring_bytes)
        .load(object)
        .map_err(|e| Unavailable::of("load BPF programs", e))?;
    attach(&mut ebpf, &cgroup_root)?;
    let map = |ebpf: &mut Ebpf, name: &str| {
        ebpf.take_map(name).ok_or(Unavailable::Failed {
            what: "find the programs' maps",
            error: format!("no map named {name}"),
        })
    };
    let flows = map(&mut ebpf, "flows")?;
    let owners = map(&mut ebpf, "owners")?;
    let events = map(&mut ebpf, "events")?;
    let stats = map(&mut ebpf, "stats")?;
    let wrong = |e| Unavailable::of("open the programs' maps", e);
    Ok(Programs {
        flows: BpfHashMap::try_from(flows).map_err(wrong)?,
        owners: BpfHashMap::try_from(owners).map_err(wrong)?,
        events: RingBuf::try_from(events).map_err(wrong)?,
        stats: PerCpuArray::try_from(stats).map_err(wrong)?,
        cgroup_root,
        _ebpf: ebpf,
    })
}

fn attach(ebpf: &mut Ebpf, cgroup_root: &Path) -> Result<(), Unavailable> {
    let cgroup =
        std::fs::File::open(cgroup_root).map_err(|e| Unavailable::of("open the cgroup v2 root", e))?;
    // A link takes no flags (the kernel refuses BPF_F_ALLOW_MULTI on `bpf_link_create`): links
    // always sit beside the cgroup's other programs, as if attached with it.
    let mode = CgroupAttachMode::Single;
    fn program<'e>(ebpf: &'e mut Ebpf, name: &str) -> Result<&'e mut aya::programs::Program, Unavailable> {
        ebpf.program_mut(name).ok_or(Unavailable::Failed {
            what: "find the programs",
            error: format!("no program named {name}"),
        })
    }
    let load = |e| Unavailable::of("load a BPF program (verifier)", e);
    let attached = |e| Unavailable::of("attach a BPF program to the cgroup v2 root", e);
    for (name, direction) in [
        ("rf_egress", CgroupSkbAttachType::Egress),
        ("rf_ingress", CgroupSkbAttachType::Ingress),
    ] {
        let p: &mut CgroupSkb = program(ebpf, name)?.try_into().map_err(load)?;
        p.load().map_err(load)?;
        p.attach(&cgroup, direction, mode).map_err(attached)?;
    }
    for name in ["rf_sock_create", "rf_sock_release"] {
        let p: &mut CgroupSock = program(ebpf, name)?.try_into().map_err(load)?;
        p.load().map_err(load)?;
        p.attach(&cgroup, mode).map_err(attached)?;
    }
    let p: &mut SockOps = program(ebpf, "rf_sock_ops")?.try_into().map_err(load)?;
    p.load().map_err(load)?;
    p.attach(&cgroup, mode).map_err(attached)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup_v2_mount_is_read_from_mountinfo() {
        let hybrid = "\
25 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
35 33 0:30 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
";
        assert_eq!(
            cgroup_v2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup_v2_mount(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        let escaped = "30 25 0:26 / /mnt/my\\040cgroups rw shared:4 - cgroup2 none rw\n";
        assert_eq!(cgroup_v2_mount(escaped), Some(PathBuf::from("/mnt/my cgroups")));
        let v1_only = "35 33 0:30 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu\n";
        assert_eq!(cgroup_v2_mount(v1_only), None);
    }
}

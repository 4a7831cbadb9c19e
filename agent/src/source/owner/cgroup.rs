//! Where a process runs, from its cgroup: which line of `/proc/PID/cgroup` names it, and what
//! its path says (a container id, a Kubernetes pod uid, a systemd unit).
//!
//! Owns: the choice of cgroup line and the parsing of cgroup paths, as pure functions over
//! strings (tested against a table of real layouts of Docker, containerd/CRI, CRI-O, Podman,
//! Kubernetes and systemd). Must never: read files, or guess an id from a component that does
//! not have one of the known forms (an unknown layout yields empty fields, not wrong ones).

use procfs::ProcessCGroup;

/// What a cgroup path says about where a process runs; every field empty when it says nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// 64 hex digits: a Docker, containerd/CRI, CRI-O or Podman container.
    pub container_id: String,
    /// The Kubernetes pod's uid (with dashes, as the API server shows it).
    pub pod_uid: String,
    /// The innermost systemd unit (`nginx.service`, `session-3.scope`) that is not a
    /// container's own scope.
    pub systemd_unit: String,
}

/// The cgroup path that best says where a process runs, from its `/proc/PID/cgroup` lines:
/// the cgroup v2 path (`0::/path`) unless it is the root; else (a v1-only or hybrid host whose
/// v2 tree is unused) the `name=systemd` hierarchy's path, else the first v1 controller's path
/// that is not the root; else `/` when any line exists. Empty when there are no lines.
pub fn choose(groups: &[ProcessCGroup]) -> String {
    let not_root = |g: &&ProcessCGroup| !g.pathname.is_empty() && g.pathname != "/";
    let v2 = |g: &&ProcessCGroup| g.hierarchy == 0 && g.controllers.iter().all(String::is_empty);
    let named_systemd = |g: &&ProcessCGroup| g.controllers.iter().any(|c| c == "name=systemd");
    groups
        .iter()
        .filter(not_root)
        .find(v2)
        .or_else(|| groups.iter().filter(not_root).find(named_systemd))
        .or_else(|| groups.iter().find(not_root))
        .or_else(|| groups.first())
        .map(|g| g.pathname.clone())
        .unwrap_or_default()
}

/// Parses a cgroup path: the innermost container id and pod uid found in its components (a
/// component may hold several `:`-separated parts, as containerd's systemd-driver paths do),
/// and the innermost unit.
pub fn placement(path: &str) -> Placement {
    let mut out = Placement::default();
    for component in path.split('/').filter(|c| !c.is_empty()) {
        let mut is_container = false;
        for part in component.split(':') {
            if let Some(id) = container_id(part) {
                out.container_id = id.to_owned();
                is_container = true;
            }
            if let Some(uid) = pod_uid(part) {
                out.pod_uid = uid;
            }
        }
        let is_unit = component.ends_with(".service") || component.ends_with(".scope");
        // A runtime's scope (the container's, or its monitor's) is plumbing, not a unit.
        let is_runtime = RUNTIME_PREFIXES.iter().any(|p| component.starts_with(p));
        if is_unit && !is_container && !is_runtime {
            out.systemd_unit = component.to_owned();
        }
    }
    out
}

/// Container runtimes' scope prefixes under systemd (`docker-ID.scope`, ...). The runtimes'
/// monitor processes (`crio-conmon-ID.scope`, `libpod-conmon-ID.scope`) are not in the
/// container and yield no id (what follows the prefix is not one), nor a unit.
const RUNTIME_PREFIXES: [&str; 4] = ["docker-", "cri-containerd-", "crio-", "libpod-"];

/// The container id in one path part: `ID` alone (cgroupfs drivers: `/docker/ID`,
/// `/kubepods/.../ID`) or a runtime's `PREFIX-ID.scope`.
fn container_id(part: &str) -> Option<&str> {
    if is_hex(part, 64) {
        return Some(part);
    }
    let name = part.strip_suffix(".scope").unwrap_or(part);
    RUNTIME_PREFIXES
        .iter()
        .filter_map(|p| name.strip_prefix(p))
        .find(|id| is_hex(id, 64))
}

/// The pod uid in one path part: `pod<uid>` (cgroupfs driver) or
/// `kubepods[-<qos>]-pod<uid with _ for ->.slice` (systemd driver), with the dashes restored.
/// A uid is a UUID, or 32 hex digits (a static pod's uid is a hash of its manifest).
fn pod_uid(part: &str) -> Option<String> {
    let name = part.strip_suffix(".slice").unwrap_or(part);
    let tail = if name.starts_with("kubepods-") {
        name.rsplit('-').next()?
    } else {
        name
    };
    let uid = tail.strip_prefix("pod")?.replace('_', "-");
    (is_uuid(&uid) || is_hex(&uid, 32)).then_some(uid)
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1a6c1e1d2b0f5c3b8a9e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39";
    const UID: &str = "8b0a1f3e-2c4d-4e6f-9a1b-3c5d7e9f1a2b";
    const UID_: &str = "8b0a1f3e_2c4d_4e6f_9a1b_3c5d7e9f1a2b";

    fn check(path: &str, container_id: &str, pod_uid: &str, systemd_unit: &str) {
        let want = Placement {
            container_id: container_id.into(),
            pod_uid: pod_uid.into(),
            systemd_unit: systemd_unit.into(),
        };
        assert_eq!(placement(path), want, "path {path}");
    }

    #[test]
    fn real_cgroup_layouts_are_parsed() {
        let table: Vec<(String, &str, &str, &str)> = vec![
            // Docker, cgroupfs driver (v1 hosts) and systemd driver.
            (format!("/docker/{ID}"), ID, "", ""),
            (format!("/system.slice/docker-{ID}.scope"), ID, "", ""),
            // Kubernetes with containerd/CRI or dockershim, cgroupfs driver.
            (format!("/kubepods/besteffort/pod{UID}/{ID}"), ID, UID, ""),
            (format!("/kubepods/pod{UID}/{ID}"), ID, UID, ""),
            // Kubernetes, systemd driver: containerd and CRI-O; guaranteed QoS has no class.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                ID,
                UID,
                "",
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope"
                ),
                ID,
                UID,
                "",
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-{ID}.scope"),
                ID,
                UID,
                "",
            ),
            // CRI-O's monitor is outside the container; the pod is still the pod.
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope"),
                "",
                UID,
                "",
            ),
            // containerd nested under its own unit (systemd driver, `slice:runtime:id`).
            (
                format!(
                    "/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{ID}"
                ),
                ID,
                UID,
                "containerd.service",
            ),
            // A static pod's uid is a 32-hex hash.
            (
                format!("/kubepods/burstable/pod0c3cd7d93c5f1ec7e8c8a4ddcaad5bb1/{ID}"),
                ID,
                "0c3cd7d93c5f1ec7e8c8a4ddcaad5bb1",
                "",
            ),
            // Podman: rootful, rootless (inside the user's manager), with its inner cgroup.
            (format!("/machine.slice/libpod-{ID}.scope"), ID, "", ""),
            (
                format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
                ID,
                "",
                "user@1000.service",
            ),
            (format!("/machine.slice/libpod-{ID}.scope/container"), ID, "", ""),
            (format!("/machine.slice/libpod-conmon-{ID}.scope"), "", "", ""),
            // systemd units.
            ("/system.slice/nginx.service".into(), "", "", "nginx.service"),
            ("/init.scope".into(), "", "", "init.scope"),
            (
                "/user.slice/user-1000.slice/session-3.scope".into(),
                "",
                "",
                "session-3.scope",
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-4242.scope".into(),
                "",
                "",
                "app-gnome-firefox-4242.scope",
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/init.scope".into(),
                "",
                "",
                "init.scope",
            ),
            // Nothing to say: the root, a plain directory, almost-ids.
            ("/".into(), "", "", ""),
            ("".into(), "", "", ""),
            ("/ringflow-test-1234".into(), "", "", ""),
            (format!("/docker/{}", &ID[1..]), "", "", ""),
            ("/kubepods/besteffort/podnot-a-uid".into(), "", "", ""),
        ];
        for (path, id, uid, unit) in &table {
            check(path, id, uid, unit);
        }
    }

    fn line(hierarchy: u32, controllers: &[&str], path: &str) -> ProcessCGroup {
        ProcessCGroup {
            hierarchy,
            controllers: controllers.iter().map(|c| (*c).to_owned()).collect(),
            pathname: path.into(),
        }
    }

    #[test]
    fn the_v2_path_wins_unless_it_is_the_root() {
        let v2 = [
            line(4, &["memory"], "/docker/x"),
            line(0, &[], "/system.slice/a.service"),
        ];
        assert_eq!(choose(&v2), "/system.slice/a.service");
        // A hybrid host whose unified tree is unused (every process in `0::/`): the v1
        // name=systemd hierarchy, else the first controller with a path.
        let hybrid = [
            line(9, &["name=systemd"], "/system.slice/b.service"),
            line(4, &["memory"], "/other"),
            line(0, &[], "/"),
        ];
        assert_eq!(choose(&hybrid), "/system.slice/b.service");
        let v1 = [
            line(8, &["pids"], "/"),
            line(4, &["memory"], "/docker/y"),
            line(0, &[], "/"),
        ];
        assert_eq!(choose(&v1), "/docker/y");
        assert_eq!(choose(&[line(0, &[], "/")]), "/");
        assert_eq!(choose(&[]), "");
    }
}

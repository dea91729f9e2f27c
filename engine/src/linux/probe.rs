//! Node checks for `berthd check`: what this host must provide for berth to run pods.
//!
//! Each check reads kernel-provided files (or, for nftables, asks the `nft` tool) and never
//! changes the host, except for creating berth's own state directories to test that they
//! are writable.

use std::path::{Path, PathBuf};

use super::cgroups::CgroupLayout;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    pub name: String,
    /// A failed required check makes `berthd check` exit non-zero.
    pub required: bool,
    pub ok: bool,
    pub detail: String,
    /// For a failed check: what to do about it (a package, a sysctl, a kernel option).
    pub fix: Option<String>,
}

impl Check {
    /// Says what fixes this check when it failed.
    fn fix(mut self, how: impl Into<String>) -> Check {
        if !self.ok {
            self.fix = Some(how.into());
        }
        self
    }
}

/// What the checks need to know about the configured node.
#[derive(Debug, Clone)]
pub struct ProbeInput {
    pub root: PathBuf,
    pub state: PathBuf,
    /// Whether the built-in network (which needs nftables) is configured.
    pub builtin_network: bool,
    /// CNI mode's directories, when CNI mode is configured.
    pub cni: Option<berth_cni::plugin::CniSettings>,
    /// The kernel features found by [`kernel_features`], to report.
    pub kernel: Option<KernelFeatures>,
}

/// Runs every check, in a stable order.
pub fn run(input: &ProbeInput) -> Vec<Check> {
    let mut out = vec![overlayfs(), namespaces()];
    out.push(cgroups());
    out.push(netlink());
    out.push(nftables(input.builtin_network));
    out.push(ip_forward());
    if let Some(c) = &input.cni {
        out.push(cni(c));
    }
    out.push(seccomp());
    out.push(
        check("apparmor", false, super::apparmor::describe())
            .fix("apt-get install apparmor (it provides apparmor_parser)"),
    );
    out.push(device_control());
    out.push(user_namespaces());
    out.push(criu());
    if let Some(f) = &input.kernel {
        out.push(
            check(
                "idmap mounts",
                false,
                if f.idmapped_mounts {
                    Ok(format!("{} can be id-mapped: pods with user namespaces run", input.root.display()))
                } else {
                    Err(format!("{} cannot be id-mapped: pods with user namespaces are refused", input.root.display()))
                },
            )
            .fix("Linux 5.19 or newer with berth's root on ext4, xfs, btrfs or tmpfs (6.3+); overlayfs layers need 5.19 for id-mapped lower layers"),
        );
    }
    for (what, dir) in [("root", &input.root), ("state", &input.state)] {
        out.push(writable_dir(what, dir));
    }
    out
}

/// CRIU, for CheckpointContainer: installed, and able to run on this kernel.
fn criu() -> Check {
    let r = criu_usable();
    let fix = if r.as_ref().is_err_and(|e| e.contains("not installed")) {
        "apt-get install criu (needed only for container checkpoints)"
    } else {
        "a newer CRIU (Debian 12's 3.17 does not know this kernel's vDSO layout); needed only for container checkpoints"
    };
    check("criu", false, r).fix(fix)
}

/// Whether CRIU can checkpoint here: its version and `criu check` passing, or why not.
pub fn criu_usable() -> Result<String, String> {
    let run = |args: &[&str]| {
        std::process::Command::new("criu")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
    };
    match run(&["--version"]) {
        Err(_) => Err("criu is not installed: containers cannot be checkpointed".to_owned()),
        Ok(v) => {
            let version = String::from_utf8_lossy(&v.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("Version: "))
                .unwrap_or("?")
                .trim()
                .to_owned();
            match run(&["check"]) {
                Ok(o) if o.status.success() => Ok(format!("criu {version}: `criu check` passes")),
                Ok(o) => {
                    let text = format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                    let first = text
                        .lines()
                        .find(|l| l.contains("Error"))
                        .or_else(|| text.lines().next())
                        .unwrap_or("")
                        .trim()
                        .to_owned();
                    Err(format!("criu {version} cannot run on this kernel: {first}"))
                }
                Err(e) => Err(format!("run criu check: {e}")),
            }
        }
    }
}

fn user_namespaces() -> Check {
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    check(
        "userns",
        false,
        match max {
            Some(0) => {
                Err("user.max_user_namespaces is 0: pods with user namespaces cannot start".into())
            }
            Some(n) => Ok(format!(
                "user namespaces allowed (user.max_user_namespaces = {n})"
            )),
            None => Err("the kernel has no user namespaces (CONFIG_USER_NS)".into()),
        },
    )
    .fix("sysctl -w user.max_user_namespaces=28633, and keep it in /etc/sysctl.d/99-berth.conf")
}

/// What the kernel lets berth offer to pods, beyond what it needs to run at all: read once
/// at start-up and advertised in the CRI `Status` (clients skip features not listed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelFeatures {
    /// Id-mapped mounts on the file system of berth's root (pods with user namespaces).
    pub idmapped_mounts: bool,
    /// mount_setattr(2): recursive read-only mounts.
    pub recursive_read_only: bool,
}

/// Finds the [`KernelFeatures`] by trying them: an id-mapped copy of `root` (or its
/// nearest existing ancestor) is made and dropped, as a pod's layers are id-mapped.
///
/// Must run while the process is single-threaded (berthd calls it before its runtime
/// starts): it clones a child into a new user namespace.
pub fn kernel_features(root: &Path) -> KernelFeatures {
    let dir = root
        .ancestors()
        .find(|p| p.is_dir())
        .unwrap_or(Path::new("/"));
    let idmapped = idmapped_mounts(dir);
    if let Err(e) = &idmapped {
        tracing::info!(dir = %dir.display(), error = %e, "id-mapped mounts unavailable: pods with user namespaces will be refused");
    }
    KernelFeatures {
        idmapped_mounts: idmapped.is_ok(),
        recursive_read_only: super::sys::has_mount_setattr(),
    }
}

/// Whether `dir`'s file system can be id-mapped into a user namespace.
fn idmapped_mounts(dir: &Path) -> Result<(), String> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let w_raw = w.as_raw_fd();
    let mut r = Some(r);
    // The child only holds the namespace open: it waits for the pipe's end and exits.
    let child = super::sys::clone_child(nix::sched::CloneFlags::CLONE_NEWUSER, || {
        let _ = nix::unistd::close(w_raw);
        if let Some(r) = r.take() {
            let mut b = [0u8; 1];
            let _ = std::fs::File::from(r).read(&mut b);
        }
        0
    })
    .map_err(|e| format!("clone a user namespace: {e}"))?;
    drop(r);
    let result = (|| {
        for file in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{child}/{file}"), "0 65534 1\n")
                .map_err(|e| format!("write {file}: {e}"))?;
        }
        let ns = std::fs::File::open(format!("/proc/{child}/ns/user"))
            .map_err(|e| format!("open the user namespace: {e}"))?;
        super::sys::idmapped_tree(dir, &ns, false)
            .map(drop)
            .map_err(|e| format!("id-map {}: {e}", dir.display()))
    })();
    drop(w);
    let _ = nix::sys::wait::waitpid(child, None);
    result
}

fn ip_forward() -> Check {
    check(
        "ip forward",
        false,
        if berth_cni::builtin::node_forwards_ipv4() {
            Ok("net.ipv4.ip_forward is 1".into())
        } else {
            Err("net.ipv4.ip_forward is 0: pods reach the node and each other, nothing beyond it (Kubernetes requires 1)".into())
        },
    )
    .fix("sysctl -w net.ipv4.ip_forward=1, and keep it in /etc/sysctl.d/99-kubernetes.conf")
}

fn cni(settings: &berth_cni::plugin::CniSettings) -> Check {
    let runner = berth_cni::plugin::Cni {
        settings: settings.clone(),
    };
    check(
        "cni config",
        true,
        runner
            .load()
            .map(|l| {
                format!(
                    "network {:?} from {} ({} plugins, all found)",
                    l.name,
                    l.source.display(),
                    l.plugins.len()
                )
            })
            .map_err(|e| e.to_string()),
    )
    .fix(format!(
        "install the CNI plugins (Debian: containernetworking-plugins) into one of {:?} and write a .conflist into {}, or use [network] mode = \"builtin\"",
        settings.bin_dirs,
        settings.conf_dir.display()
    ))
}

fn seccomp() -> Check {
    let actions =
        std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    check(
        "seccomp",
        true,
        if actions.split_whitespace().any(|a| a == "errno") {
            Ok(format!("filters available ({})", actions.trim()))
        } else {
            Err("the kernel offers no seccomp filters (CONFIG_SECCOMP_FILTER): RuntimeDefault profiles cannot be applied".into())
        },
    )
    .fix("a kernel built with CONFIG_SECCOMP and CONFIG_SECCOMP_FILTER (every Debian kernel is)")
}

fn device_control() -> Check {
    let layout = CgroupLayout::detect();
    let v1 = layout
        .as_ref()
        .ok()
        .and_then(|l| l.controllers.get("devices"))
        .is_some_and(|h| matches!(h, super::cgroups::Hierarchy::V1 { .. }));
    let v2 = layout.as_ref().ok().and_then(|l| l.unified.clone());
    check(
        "devices",
        false,
        match (v1, v2) {
            (true, Some(_)) => Ok("v1 devices controller and cgroup2 device programs".into()),
            (true, None) => Ok("v1 devices controller".into()),
            (false, Some(_)) => Ok("cgroup2 device programs".into()),
            (false, None) => Err(
                "neither a devices controller nor cgroup2: device access is not restricted".into(),
            ),
        },
    )
    .fix("mount the v1 devices controller, or boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1)")
}

fn check(name: &str, required: bool, result: Result<String, String>) -> Check {
    let (ok, detail) = match result {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    Check {
        name: name.to_owned(),
        required,
        ok,
        detail,
        fix: None,
    }
}

fn overlayfs() -> Check {
    let r = match std::fs::read_to_string("/proc/filesystems") {
        Ok(s)
            if s.lines()
                .any(|l| l.split_whitespace().last() == Some("overlay")) =>
        {
            Ok("overlay filesystem available".into())
        }
        Ok(_) => Err("overlay is not in /proc/filesystems".into()),
        Err(e) => Err(format!("read /proc/filesystems: {e}")),
    };
    check("overlayfs", true, r)
        .fix("modprobe overlay, and list it in /etc/modules-load.d/berth.conf (kernel: CONFIG_OVERLAY_FS)")
}

fn namespaces() -> Check {
    let wanted = ["mnt", "pid", "net", "ipc", "uts", "user", "cgroup"];
    let missing: Vec<_> = wanted
        .iter()
        .filter(|ns| !Path::new("/proc/self/ns").join(ns).exists())
        .collect();
    let r = if missing.is_empty() {
        Ok(wanted.join(" "))
    } else {
        Err(format!("kernel lacks namespaces: {missing:?}"))
    };
    check("namespaces", true, r)
        .fix("a kernel built with CONFIG_NAMESPACES and each of UTS, IPC, USER, PID, NET and CGROUP namespaces")
}

fn cgroups() -> Check {
    let r = match CgroupLayout::detect() {
        Ok(l) => {
            let missing = l.missing_required();
            let v1: Vec<_> = l
                .controllers
                .iter()
                .filter(|(_, h)| matches!(h, super::cgroups::Hierarchy::V1 { .. }))
                .map(|(c, _)| c.as_str())
                .collect();
            let v2: Vec<_> = l
                .controllers
                .iter()
                .filter(|(_, h)| matches!(h, super::cgroups::Hierarchy::V2 { .. }))
                .map(|(c, _)| c.as_str())
                .collect();
            let desc = format!(
                "{} layout; v1: [{}]; v2: [{}]",
                l.kind(),
                v1.join(" "),
                v2.join(" ")
            );
            if missing.is_empty() {
                Ok(desc)
            } else {
                Err(format!(
                    "{desc}; missing controllers: {}",
                    missing.join(" ")
                ))
            }
        }
        Err(e) => Err(format!("read /proc/self/mountinfo: {e}")),
    };
    check("cgroups", true, r).fix(
        "boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1 on the kernel command line) and enable the cpu, memory, pids and io controllers in cgroup.subtree_control, or mount each v1 controller under /sys/fs/cgroup",
    )
}

fn netlink() -> Check {
    let r = match std::fs::read_to_string("/proc/net/netlink") {
        Ok(_) => Ok("netlink sockets available".into()),
        Err(e) => Err(format!("read /proc/net/netlink: {e}")),
    };
    check("netlink", true, r).fix("mount /proc (berthd needs the host's)")
}

fn nftables(required: bool) -> Check {
    let r = match std::process::Command::new("nft")
        .args(["list", "tables"])
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => Ok("nft can list tables".into()),
        Ok(o) => Err(format!(
            "`nft list tables` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run `nft` ({e})")),
    };
    check("nftables", required, r).fix(
        "apt-get install nftables; if it is installed, modprobe nf_tables (kernel: CONFIG_NF_TABLES)",
    )
}

fn writable_dir(what: &str, dir: &Path) -> Check {
    let r = (|| {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let probe = dir.join(".berth-check");
        std::fs::write(&probe, b"ok").map_err(|e| format!("write {}: {e}", probe.display()))?;
        std::fs::remove_file(&probe).map_err(|e| format!("remove {}: {e}", probe.display()))?;
        Ok(format!("{} is writable", dir.display()))
    })();
    check(&format!("{what} dir"), true, r).fix(format!(
        "run berthd as root, and point `{what}` (config or --{what}) at a writable local directory"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_dir_reports_failure_with_path() {
        let c = writable_dir("root", Path::new("/proc/berth-cannot-exist"));
        assert!(!c.ok);
        assert!(
            c.detail.contains("/proc/berth-cannot-exist"),
            "{}",
            c.detail
        );
        let t = tempfile::tempdir().unwrap();
        let c = writable_dir("root", &t.path().join("a/b"));
        assert!(c.ok, "{}", c.detail);
    }
}

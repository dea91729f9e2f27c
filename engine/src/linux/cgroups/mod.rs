//! cgroup hierarchy detection.
//!
//! Nodes come in three layouts: **unified** (cgroup2 at /sys/fs/cgroup with every
//! controller), **legacy** (only v1 hierarchies) and **hybrid** (v1 hierarchies plus a
//! cgroup2 mount beside them, usually at /sys/fs/cgroup/unified, that may hold few or no
//! controllers). berth uses, for each controller, the hierarchy that actually has it: on a
//! hybrid host whose cgroup2 holds only `hugetlb`, memory, cpu and pids live on v1.
//!
//! # Why not `cgroups-rs`
//!
//! The design card names `cgroups-rs`; we measured 0.5.1 against what berth needs and kept
//! our own code (this module, [`manager`], and `devfilter` for v2 devices):
//!
//! - **Hybrid layout.** `hierarchies::auto()` picks V1 or V2 for the whole host from one
//!   statfs of `/sys/fs/cgroup`; its V1 reads only `cgroup` mounts, so the cgroup2 beside
//!   them (and its controllers) is never seen, and V2 hard-codes `/sys/fs/cgroup`.
//!   `create`, `add_task` and `delete` branch on one `v2()` flag, so no custom hierarchy
//!   can mix v1 and v2 controllers per controller as berth does. The hard-coded paths also
//!   rule out the fake trees our tests run the manager against.
//! - **v2 devices.** It has no BPF device program at all (its devices controller is v1's
//!   `devices.allow`/`deny`); on cgroup2 the device rules are a `BPF_PROG_TYPE_CGROUP_DEVICE`
//!   program, which berth builds itself.
//! - **kubelet's slice names.** Its `expand_slice` does what `spec::pod::cgroup_parent_path`
//!   does; we took its validation rules (no empty dash parts, no root slice) rather than
//!   the crate.
//! - **Cost.** About 12k lines bringing a second `nix` (0.25), `thiserror` 1 and a
//!   non-optional `zbus` (some 38 crates berth does not otherwise build), and 13
//!   `unsafe { MaybeUninit::uninit().assume_init() }` conversions.

pub mod manager;
pub mod stats;

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Moves the calling process into cgroup directory `dir`: it must be single-threaded (a
/// process just cloned, before it execs).
///
/// On a v1 hierarchy it writes `0` to `tasks`, which moves the calling thread, the whole
/// process here; v2 has no `tasks` and takes `0` in `cgroup.procs`. Why not `cgroup.procs`
/// everywhere: moving a thread group takes the kernel's global cgroup thread-group lock
/// for writing, which first waits for an RCU grace period, 7-14 ms measured on this
/// hybrid node per start; moving only the current thread needs no stable thread group,
/// and the kernel skips that lock (0.27 ms for all eight v1 hierarchies).
pub fn join_self(dir: &std::path::Path) -> std::io::Result<()> {
    join_by(&open_join(dir)?)
}

/// The file of cgroup directory `dir` that moves its writer in ([`join_self`]): `tasks`,
/// or `cgroup.procs` where there is none (v2), open for writing (closed on exec). It can
/// be kept and written again: the monitor opens a running container's once, for all the
/// execs into it.
pub fn open_join(dir: &std::path::Path) -> std::io::Result<std::fs::File> {
    let open = |name: &str| std::fs::OpenOptions::new().write(true).open(dir.join(name));
    match open("tasks") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => open("cgroup.procs"),
        r => r,
    }
}

/// Moves the calling single-threaded process into the cgroup whose [`open_join`] file is
/// `f`.
pub fn join_by(f: &std::fs::File) -> std::io::Result<()> {
    use std::io::Write;
    // The file's offset means nothing to cgroupfs (and seq_file refuses pwrite).
    let mut f = f;
    f.write_all(b"0")
}

/// Which cgroup version manages a controller.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Hierarchy {
    V1 { mountpoint: PathBuf },
    V2 { mountpoint: PathBuf },
}

/// The layout of the host's cgroup hierarchies.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CgroupLayout {
    /// Controller name -> the hierarchy that has it.
    pub controllers: BTreeMap<String, Hierarchy>,
    /// The cgroup2 mount, if any (whether or not it holds controllers).
    pub unified: Option<PathBuf>,
}

/// The controllers berth needs to run containers with limits.
pub const REQUIRED_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "cpuset", "memory", "pids"];

impl CgroupLayout {
    /// Builds the layout from `/proc/self/mountinfo` and the cgroup2 root's
    /// `cgroup.controllers` (pass an empty string when there is no cgroup2 mount).
    pub fn from_mountinfo(mountinfo: &str, v2_controllers: &str) -> Self {
        let mut controllers = BTreeMap::new();
        let mut unified = None;
        for line in mountinfo.lines() {
            // mountinfo: id parent maj:min root mountpoint opts [optional...] - fstype source superopts
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mut right = right.split_whitespace();
            let fstype = right.next().unwrap_or_default();
            let _source = right.next();
            let superopts = right.next().unwrap_or_default();
            let Some(mountpoint) = left.split_whitespace().nth(4) else {
                continue;
            };
            let mountpoint = PathBuf::from(super::mountinfo::unescape(mountpoint));
            match fstype {
                "cgroup" => {
                    for opt in superopts.split(',') {
                        if opt.starts_with("name=") || is_mount_flag(opt) {
                            continue;
                        }
                        controllers.insert(
                            opt.to_owned(),
                            Hierarchy::V1 {
                                mountpoint: mountpoint.clone(),
                            },
                        );
                    }
                }
                "cgroup2" => unified = Some(mountpoint),
                _ => {}
            }
        }
        if let Some(mp) = &unified {
            for c in v2_controllers.split_whitespace() {
                // A controller bound to a v1 hierarchy cannot be enabled on v2; keep v1.
                controllers
                    .entry(c.to_owned())
                    .or_insert_with(|| Hierarchy::V2 {
                        mountpoint: mp.clone(),
                    });
            }
        }
        CgroupLayout {
            controllers,
            unified,
        }
    }

    /// Reads the running host's layout.
    pub fn detect() -> std::io::Result<Self> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let probe = Self::from_mountinfo(&mountinfo, "");
        let v2 = match &probe.unified {
            Some(mp) => std::fs::read_to_string(mp.join("cgroup.controllers")).unwrap_or_default(),
            None => String::new(),
        };
        Ok(Self::from_mountinfo(&mountinfo, &v2))
    }

    /// The cgroup2 mount when it is the primary hierarchy (it holds the memory
    /// controller): what freezing, systemd's delegation and checkpoints need.
    pub fn v2_root(&self) -> Option<PathBuf> {
        match self.controllers.get("memory") {
            Some(Hierarchy::V2 { mountpoint }) => Some(mountpoint.clone()),
            _ => None,
        }
    }

    /// A short name for the layout: "unified", "hybrid" or "legacy".
    pub fn kind(&self) -> &'static str {
        let any_v1 = self
            .controllers
            .values()
            .any(|h| matches!(h, Hierarchy::V1 { .. }));
        match (any_v1, self.unified.is_some()) {
            (false, true) => "unified",
            (true, true) => "hybrid",
            _ => "legacy",
        }
    }

    /// Required controllers that no hierarchy provides.
    pub fn missing_required(&self) -> Vec<&'static str> {
        REQUIRED_CONTROLLERS
            .iter()
            .copied()
            .filter(|c| {
                // cgroup2 has no cpuacct: its accounting is part of cpu.
                !(self.controllers.contains_key(*c)
                    || (*c == "cpuacct"
                        && matches!(self.controllers.get("cpu"), Some(Hierarchy::V2 { .. }))))
            })
            .collect()
    }
}

fn is_mount_flag(opt: &str) -> bool {
    matches!(
        opt,
        "rw" | "ro" | "relatime" | "noatime" | "nosuid" | "nodev" | "noexec" | "clone_children"
    ) || opt.starts_with("release_agent=")
        || opt == "xattr"
        || opt == "noprefix"
        || opt == "cpuset_v2_mode"
        || opt == "favordynmods"
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
30 23 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:29 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
34 30 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
36 30 0:32 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
37 30 0:33 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const UNIFIED: &str = "\
25 23 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn hybrid_with_hugetlb_only_on_v2_uses_v1_for_the_rest() {
        let l = CgroupLayout::from_mountinfo(HYBRID, "hugetlb\n");
        assert_eq!(l.kind(), "hybrid");
        assert!(l.missing_required().is_empty());
        assert_eq!(
            l.controllers["memory"],
            Hierarchy::V1 {
                mountpoint: "/sys/fs/cgroup/memory".into()
            }
        );
        assert_eq!(
            l.controllers["hugetlb"],
            Hierarchy::V2 {
                mountpoint: "/sys/fs/cgroup/unified".into()
            }
        );
        assert!(!l.controllers.contains_key("name=systemd"));
    }

    #[test]
    fn unified_has_everything_on_v2() {
        let l =
            CgroupLayout::from_mountinfo(UNIFIED, "cpuset cpu io memory hugetlb pids rdma misc");
        assert_eq!(l.kind(), "unified");
        assert!(
            l.missing_required().is_empty(),
            "{:?}",
            l.missing_required()
        );
    }

    #[test]
    fn missing_controllers_are_named() {
        let l = CgroupLayout::from_mountinfo(UNIFIED, "cpu io");
        assert_eq!(l.missing_required(), vec!["cpuset", "memory", "pids"]);
    }

    /// On a v1 hierarchy `join_self` moves the calling thread only: the other threads of
    /// the process stay where they were (why callers must be single-threaded, and why the
    /// kernel needs no lock on the thread group for it).
    #[test]
    fn joining_a_v1_cgroup_moves_the_calling_thread_only() {
        let Ok(layout) = CgroupLayout::detect() else {
            return;
        };
        let Some(Hierarchy::V1 { mountpoint }) = layout.controllers.get("pids") else {
            return; // no v1 hierarchy on this node
        };
        let name = format!("berth-test-join-self-{}", std::process::id());
        let dir = mountpoint.join(&name);
        if std::fs::create_dir(&dir).is_err() {
            return; // not root
        }
        let line = |text: &str| {
            text.lines()
                .find(|l| l.split(':').nth(1) == Some("pids"))
                .map(str::to_owned)
        };
        let want = Some(format!(
            "{}:pids:/{name}",
            line(&std::fs::read_to_string("/proc/self/cgroup").unwrap())
                .unwrap()
                .split(':')
                .next()
                .unwrap()
        ));
        let joined = std::thread::spawn({
            let dir = dir.clone();
            move || {
                join_self(&dir).map(|()| {
                    line(&std::fs::read_to_string("/proc/thread-self/cgroup").unwrap_or_default())
                })
            }
        })
        .join()
        .unwrap();
        let main_thread = line(&std::fs::read_to_string("/proc/thread-self/cgroup").unwrap());
        // The exited thread may leave the cgroup a moment after the join returns.
        for _ in 0..100 {
            if std::fs::remove_dir(&dir).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(
            joined.unwrap(),
            want,
            "the joining thread is not in {}",
            dir.display()
        );
        assert_ne!(main_thread, want, "another thread of the process moved too");
    }
}

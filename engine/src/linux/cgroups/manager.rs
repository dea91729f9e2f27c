//! Creating cgroups, applying limits, moving processes, reading OOM kills and removing
//! them, on cgroup v1, v2 or a hybrid of both (each controller where the host has it).
//!
//! A cgroup is named by a relative path such as `berth/pod-<id>/<container-id>`; the same
//! relative path is created under every hierarchy that holds a controller berth uses.
//! Everything goes through plain file writes under the hierarchy mount points, so tests run
//! against a fake tree in a temporary directory ([`CgroupManager::with_layout`]).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{CgroupLayout, Hierarchy};
use crate::error::{ErrorKind, IoContext, IoError};
use crate::spec::resources::{Resources, shares_to_weight};

/// Errors of cgroup management.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("cgroup {cgroup}: {message}")]
    Unsupported { cgroup: String, message: String },
    #[error("invalid cgroup path {0:?}")]
    BadPath(String),
}

impl CgroupError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            CgroupError::Io(_) => ErrorKind::Internal,
            CgroupError::Unsupported { .. } | CgroupError::BadPath(_) => ErrorKind::InvalidArgument,
        }
    }
}

/// Controllers berth creates cgroups in (when the host has them).
const CONTROLLERS: &[&str] = &[
    "cpu", "cpuacct", "cpuset", "memory", "pids", "hugetlb", "devices", "freezer", "blkio", "io",
];

/// Manages cgroups on the host's hierarchies.
#[derive(Debug, Clone)]
pub struct CgroupManager {
    layout: CgroupLayout,
}

pub(super) fn check_rel(rel: &str) -> Result<&Path, CgroupError> {
    let p = Path::new(rel);
    let ok = !rel.is_empty()
        && p.is_relative()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if ok {
        Ok(p)
    } else {
        Err(CgroupError::BadPath(rel.to_owned()))
    }
}

impl CgroupManager {
    /// A manager for the running host.
    pub fn detect() -> io::Result<CgroupManager> {
        Ok(CgroupManager {
            layout: CgroupLayout::detect()?,
        })
    }

    /// A manager over a given layout (a fake tree in tests).
    pub fn with_layout(layout: CgroupLayout) -> CgroupManager {
        CgroupManager { layout }
    }

    pub fn layout(&self) -> &CgroupLayout {
        &self.layout
    }

    /// The distinct hierarchy roots berth uses: (root, is_v2).
    fn roots(&self) -> Vec<(PathBuf, bool)> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for c in CONTROLLERS {
            if let Some(h) = self.layout.controllers.get(*c) {
                let (p, v2) = match h {
                    Hierarchy::V1 { mountpoint } => (mountpoint.clone(), false),
                    Hierarchy::V2 { mountpoint } => (mountpoint.clone(), true),
                };
                if seen.insert(p.clone()) {
                    out.push((p, v2));
                }
            }
        }
        out
    }

    /// The mount point of the hierarchy that holds `controller`, and whether it is v2.
    pub(super) fn mount(&self, controller: &str) -> Option<(&Path, bool)> {
        match self.layout.controllers.get(controller)? {
            Hierarchy::V1 { mountpoint } => Some((mountpoint, false)),
            Hierarchy::V2 { mountpoint } => Some((mountpoint, true)),
        }
    }

    /// The directory of `rel` in the hierarchy that holds `controller`.
    pub(super) fn dir(&self, controller: &str, rel: &Path) -> Option<(PathBuf, bool)> {
        match self.layout.controllers.get(controller)? {
            Hierarchy::V1 { mountpoint } => Some((mountpoint.join(rel), false)),
            Hierarchy::V2 { mountpoint } => Some((mountpoint.join(rel), true)),
        }
    }

    /// Creates the cgroup in every hierarchy (parents too). On v1, an empty cpuset is filled
    /// from its parent; on v2, the controllers berth needs are enabled down the path.
    pub fn create(&self, rel: &str) -> Result<(), CgroupError> {
        let relp = check_rel(rel)?;
        for (root, v2) in self.roots() {
            let mut cur = root.clone();
            for comp in relp.components() {
                if v2 {
                    self.enable_v2_controllers(&root, &cur)?;
                }
                cur.push(comp);
                match fs::create_dir(&cur) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(Err(e).at("create cgroup", &cur)?),
                }
                if !v2 && self.is_controller_root(&root, "cpuset") {
                    inherit_cpuset(&cur)?;
                }
            }
        }
        Ok(())
    }

    fn is_controller_root(&self, root: &Path, controller: &str) -> bool {
        matches!(self.layout.controllers.get(controller), Some(Hierarchy::V1 { mountpoint }) if mountpoint == root)
    }

    /// Enables, in `dir`'s cgroup.subtree_control, every v2 controller berth uses.
    fn enable_v2_controllers(&self, root: &Path, dir: &Path) -> Result<(), CgroupError> {
        let wanted: Vec<&str> = CONTROLLERS
            .iter()
            .copied()
            .filter(|c| matches!(self.layout.controllers.get(*c), Some(Hierarchy::V2 { mountpoint }) if mountpoint == root))
            .collect();
        let file = dir.join("cgroup.subtree_control");
        let current = fs::read_to_string(&file).unwrap_or_default();
        for c in wanted {
            if current.split_whitespace().any(|x| x == c) {
                continue;
            }
            write_file(&file, &format!("+{c}"))?;
        }
        Ok(())
    }

    /// The cgroup's directory in every hierarchy berth uses, with a short name for each
    /// (the hierarchy's mount directory name, e.g. `memory` or `unified`).
    /// The names of the cgroups directly under `rel`, in any hierarchy.
    pub fn children(&self, rel: &str) -> Result<BTreeSet<String>, CgroupError> {
        let relp = check_rel(rel)?;
        let mut out = BTreeSet::new();
        for (root, _) in self.roots() {
            for e in fs::read_dir(root.join(relp))
                .into_iter()
                .flatten()
                .flatten()
            {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.insert(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        Ok(out)
    }

    pub fn dirs(&self, rel: &str) -> Result<Vec<(String, PathBuf)>, CgroupError> {
        let relp = check_rel(rel)?;
        Ok(self
            .roots()
            .into_iter()
            .map(|(root, _)| {
                let name = root
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (name, root.join(relp))
            })
            .collect())
    }

    /// The file whose `oom_kill` counter tells OOM kills in this cgroup.
    pub fn oom_file(&self, rel: &str) -> Result<Option<PathBuf>, CgroupError> {
        let relp = check_rel(rel)?;
        Ok(self.dir("memory", relp).map(|(d, v2)| {
            if v2 {
                d.join("memory.events")
            } else {
                d.join("memory.oom_control")
            }
        }))
    }

    /// Writes the limits of `res` into the cgroup.
    pub fn apply(&self, rel: &str, res: &Resources) -> Result<(), CgroupError> {
        let relp = check_rel(rel)?;
        let set = |controller: &str,
                   v1_file: &str,
                   v2_file: &str,
                   v1: Option<String>,
                   v2: Option<String>|
         -> Result<(), CgroupError> {
            let Some((dir, is_v2)) = self.dir(controller, relp) else {
                return Err(CgroupError::Unsupported {
                    cgroup: rel.to_owned(),
                    message: format!("the {controller} controller is not available on this node"),
                });
            };
            match (is_v2, v1, v2) {
                (false, Some(v), _) => write_file(&dir.join(v1_file), &v),
                (true, _, Some(v)) => write_file(&dir.join(v2_file), &v),
                _ => Ok(()),
            }
        };
        if let Some(shares) = res.cpu_shares {
            set(
                "cpu",
                "cpu.shares",
                "cpu.weight",
                Some(shares.to_string()),
                Some(shares_to_weight(shares).to_string()),
            )?;
        }
        if res.cpu_quota.is_some() || res.cpu_period.is_some() {
            let period = res.cpu_period.unwrap_or(100_000);
            if let Some((dir, false)) = self.dir("cpu", relp) {
                write_file(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
                write_file(
                    &dir.join("cpu.cfs_quota_us"),
                    &res.cpu_quota.unwrap_or(-1).to_string(),
                )?;
            } else {
                let quota = res.cpu_quota.map_or("max".to_owned(), |q| q.to_string());
                set(
                    "cpu",
                    "",
                    "cpu.max",
                    None,
                    Some(format!("{quota} {period}")),
                )?;
            }
        }
        if let Some(c) = &res.cpuset_cpus {
            set(
                "cpuset",
                "cpuset.cpus",
                "cpuset.cpus",
                Some(c.clone()),
                Some(c.clone()),
            )?;
        }
        if let Some(m) = &res.cpuset_mems {
            set(
                "cpuset",
                "cpuset.mems",
                "cpuset.mems",
                Some(m.clone()),
                Some(m.clone()),
            )?;
        }
        if let Some(limit) = res.memory_limit {
            match self.dir("memory", relp) {
                Some((dir, false)) => {
                    self.apply_v1_memory(rel, &dir, limit, res.memory_swap_limit)?
                }
                Some((dir, true)) => {
                    write_file(&dir.join("memory.max"), &limit.to_string())?;
                    if let Some(swap) = res.memory_swap_limit {
                        write_file(
                            &dir.join("memory.swap.max"),
                            &(swap - limit).max(0).to_string(),
                        )?;
                    }
                }
                None => {
                    return Err(CgroupError::Unsupported {
                        cgroup: rel.to_owned(),
                        message: "the memory controller is not available on this node".into(),
                    });
                }
            }
        }
        if let Some(p) = res.pids_limit {
            let v = if p > 0 {
                p.to_string()
            } else {
                "max".to_owned()
            };
            set("pids", "pids.max", "pids.max", Some(v.clone()), Some(v))?;
        }
        for (size, limit) in &res.hugepages {
            set(
                "hugetlb",
                &format!("hugetlb.{size}.limit_in_bytes"),
                &format!("hugetlb.{size}.max"),
                Some(limit.to_string()),
                Some(limit.to_string()),
            )?;
        }
        if !res.unified.is_empty() {
            let root = self
                .layout
                .unified
                .clone()
                .ok_or_else(|| CgroupError::Unsupported {
                    cgroup: rel.to_owned(),
                    message: "unified (cgroup v2) settings given but the node has no cgroup v2"
                        .into(),
                })?;
            for (k, v) in &res.unified {
                write_file(&root.join(relp).join(k), v)?;
            }
        }
        Ok(())
    }

    /// v1 memory: memsw must stay >= the limit, so the order of the two writes depends on
    /// whether the limit grows or shrinks.
    fn apply_v1_memory(
        &self,
        rel: &str,
        dir: &Path,
        limit: i64,
        swap: Option<i64>,
    ) -> Result<(), CgroupError> {
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        let Some(swap) = swap else {
            return write_file(&dir.join("memory.limit_in_bytes"), &limit.to_string());
        };
        if !memsw.exists() {
            if swap == limit {
                // No swap accounting on this kernel, and none wanted: the limit alone is exact.
                return write_file(&dir.join("memory.limit_in_bytes"), &limit.to_string());
            }
            return Err(CgroupError::Unsupported {
                cgroup: rel.to_owned(),
                message: "a swap limit was given but this kernel has no swap accounting (boot with swapaccount=1)".into(),
            });
        }
        let current: i64 = fs::read_to_string(dir.join("memory.limit_in_bytes"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(i64::MAX);
        if limit > current {
            write_file(&memsw, &swap.to_string())?;
            write_file(&dir.join("memory.limit_in_bytes"), &limit.to_string())
        } else {
            write_file(&dir.join("memory.limit_in_bytes"), &limit.to_string())?;
            write_file(&memsw, &swap.to_string())
        }
    }

    /// Moves a process into the cgroup in every hierarchy.
    /// Restricts the devices the cgroup's processes may use (v1 devices controller: deny
    /// all, then allow the policy's rules). On v2 the same needs a BPF device program,
    /// which berth does not attach yet: it says so once in its log.
    pub fn set_devices(
        &self,
        rel: &str,
        policy: &crate::spec::devices::DevicePolicy,
    ) -> Result<(), CgroupError> {
        let relp = check_rel(rel)?;
        let mut enforced = false;
        if let Some((dir, false)) = self.dir("devices", relp) {
            write_file(&dir.join("devices.deny"), "a")?;
            if policy.allow_all {
                write_file(&dir.join("devices.allow"), "a")?;
            } else {
                for r in &policy.rules {
                    write_file(&dir.join("devices.allow"), &r.to_string())?;
                }
            }
            enforced = true;
        }
        // On cgroup2 (whether or not it holds controllers) the same rules become a BPF
        // device program on the container's directory there; with the v1 controller too,
        // both must allow an access.
        if let Some(unified) = &self.layout.unified {
            let dir = unified.join(relp);
            if dir.is_dir() && !policy.allow_all {
                let program = crate::linux::devfilter::program(policy);
                let f = fs::File::open(&dir)
                    .at("open cgroup", &dir)
                    .map_err(CgroupError::from)?;
                match crate::linux::sys::attach_device_filter(&f, &program) {
                    Ok(()) => enforced = true,
                    Err(e) if enforced => {
                        tracing::debug!(cgroup = %dir.display(), error = %e, "cannot attach the cgroup2 device program; the v1 devices controller enforces the rules");
                    }
                    Err(e) => {
                        return Err::<(), _>(e)
                            .at("attach the device program to", &dir)
                            .map_err(CgroupError::from);
                    }
                }
            }
        }
        if !enforced && !policy.allow_all {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!("no devices controller and no cgroup2 mount: device access is not restricted by cgroup on this node");
            });
        }
        Ok(())
    }

    pub fn add_process(&self, rel: &str, pid: u32) -> Result<(), CgroupError> {
        let relp = check_rel(rel)?;
        for (root, _) in self.roots() {
            write_file(&root.join(relp).join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Processes in the cgroup (any hierarchy that has it).
    pub fn pids(&self, rel: &str) -> Result<Vec<u32>, CgroupError> {
        let relp = check_rel(rel)?;
        let mut out = BTreeSet::new();
        for (root, _) in self.roots() {
            let f = root.join(relp).join("cgroup.procs");
            if let Ok(s) = fs::read_to_string(&f) {
                out.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
        }
        Ok(out.into_iter().collect())
    }

    /// How many processes the kernel's OOM killer has killed in this cgroup (v2
    /// `memory.events` oom_kill; v1 `memory.oom_control` oom_kill). A container whose count
    /// rose while it ran was OOMKilled, even when its limit equals the pod's.
    pub fn oom_kills(&self, rel: &str) -> Result<u64, CgroupError> {
        let relp = check_rel(rel)?;
        let Some((dir, v2)) = self.dir("memory", relp) else {
            return Ok(0);
        };
        let file = if v2 {
            dir.join("memory.events")
        } else {
            dir.join("memory.oom_control")
        };
        let text = match fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Err(e).at("read", &file)?),
        };
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0))
    }

    /// Removes the cgroup (and any children left in it) from every hierarchy. A cgroup that
    /// does not exist is not an error; one that still holds processes is.
    pub fn remove(&self, rel: &str) -> Result<(), CgroupError> {
        let relp = check_rel(rel)?;
        for (root, _) in self.roots() {
            let dir = root.join(relp);
            // One rmdir where it is empty (a container's, nearly always); only a cgroup
            // with children left in it is walked.
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::DirectoryNotEmpty | io::ErrorKind::ResourceBusy
                    ) =>
                {
                    remove_tree(&dir)?
                }
                Err(e) => return Err(Err(e).at("remove cgroup", &dir)?),
            }
        }
        Ok(())
    }
}

/// Removes cgroup directories depth-first (cgroupfs allows only rmdir, never unlink).
fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path())?;
            }
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        // A fake tree in tests holds regular files; a real cgroupfs never does.
        Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty && !is_cgroupfs(dir) => {
            fs::remove_dir_all(dir).at("remove cgroup", dir)?;
            Ok(())
        }
        Err(e) => Err(Err(e).at("remove cgroup", dir)?),
    }
}

fn is_cgroupfs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|s| {
        let t = s.filesystem_type();
        t == nix::sys::statfs::CGROUP_SUPER_MAGIC || t == nix::sys::statfs::CGROUP2_SUPER_MAGIC
    })
}

/// A new v1 cpuset cgroup starts with empty cpus/mems, which makes adding a process fail:
/// copy them from the parent.
fn inherit_cpuset(dir: &Path) -> Result<(), CgroupError> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let mine = fs::read_to_string(dir.join(f)).unwrap_or_default();
        if mine.trim().is_empty() {
            let from_parent = fs::read_to_string(parent.join(f)).unwrap_or_default();
            if !from_parent.trim().is_empty() {
                write_file(&dir.join(f), from_parent.trim())?;
            }
        }
    }
    Ok(())
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value)
        .at("write", path)
        .map_err(CgroupError::from)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn v1_tree() -> (tempfile::TempDir, CgroupManager) {
        let t = tempfile::tempdir().unwrap();
        let mut controllers = BTreeMap::new();
        for c in ["cpu", "cpuacct", "cpuset", "memory", "pids"] {
            let mp = t.path().join(c);
            fs::create_dir_all(&mp).unwrap();
            controllers.insert(c.to_owned(), Hierarchy::V1 { mountpoint: mp });
        }
        fs::write(t.path().join("cpuset/cpuset.cpus"), "0-1\n").unwrap();
        fs::write(t.path().join("cpuset/cpuset.mems"), "0\n").unwrap();
        let unified = t.path().join("unified");
        fs::create_dir_all(&unified).unwrap();
        controllers.insert(
            "hugetlb".into(),
            Hierarchy::V2 {
                mountpoint: unified.clone(),
            },
        );
        let m = CgroupManager::with_layout(CgroupLayout {
            controllers,
            unified: Some(unified),
        });
        (t, m)
    }

    fn v2_tree() -> (tempfile::TempDir, CgroupManager) {
        let t = tempfile::tempdir().unwrap();
        let mut controllers = BTreeMap::new();
        for c in ["cpu", "cpuset", "memory", "pids", "hugetlb", "io"] {
            controllers.insert(
                c.to_owned(),
                Hierarchy::V2 {
                    mountpoint: t.path().to_owned(),
                },
            );
        }
        let m = CgroupManager::with_layout(CgroupLayout {
            controllers,
            unified: Some(t.path().to_owned()),
        });
        (t, m)
    }

    fn read(p: PathBuf) -> String {
        fs::read_to_string(p).unwrap().trim().to_owned()
    }

    fn res() -> Resources {
        Resources {
            cpu_shares: Some(512),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            memory_limit: Some(64 << 20),
            pids_limit: Some(100),
            hugepages: [("2MB".to_owned(), 4u64 << 20)].into(),
            ..Resources::default()
        }
    }

    /// On the host's cgroupfs: an empty cgroup goes with one rmdir, one with children left
    /// in it is walked, one that is not there is no error, one with a process in it is.
    #[test]
    fn cgroups_are_removed_with_their_children_and_not_with_processes() {
        let Ok(layout) = CgroupLayout::detect() else {
            return;
        };
        let m = CgroupManager::with_layout(layout);
        let top = format!("berth-test-remove-{}", std::process::id());
        if m.create(&format!("{top}/a")).is_err() {
            let _ = m.remove(&top);
            return; // not root
        }
        m.create(&format!("{top}/b/c")).unwrap();
        let dirs = |rel: &str| -> Vec<PathBuf> {
            m.roots()
                .into_iter()
                .map(|(root, _)| root.join(rel))
                .filter(|d| d.exists())
                .collect()
        };
        assert!(!dirs(&format!("{top}/b/c")).is_empty());
        m.remove(&format!("{top}/a")).unwrap();
        assert!(dirs(&format!("{top}/a")).is_empty());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        m.add_process(&format!("{top}/b/c"), child.id()).unwrap();
        let busy = m.remove(&top);
        let _ = child.kill();
        let _ = child.wait();
        assert!(busy.is_err(), "a cgroup with a process in it was removed");
        // The process gone, the whole tree goes (the kernel may take a moment to empty it).
        let mut removed = m.remove(&top);
        for _ in 0..100 {
            if removed.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            removed = m.remove(&top);
        }
        removed.unwrap();
        assert!(dirs(&top).is_empty());
        m.remove(&top).unwrap();
    }

    #[test]
    fn hybrid_v1_with_hugetlb_on_v2() {
        let (t, m) = v1_tree();
        m.create("berth/pod-a/ctr-1").unwrap();
        // cpuset inherited down the path.
        assert_eq!(
            read(t.path().join("cpuset/berth/pod-a/ctr-1/cpuset.cpus")),
            "0-1"
        );
        assert_eq!(
            read(t.path().join("unified/berth/cgroup.subtree_control")),
            "+hugetlb"
        );
        m.apply("berth/pod-a/ctr-1", &res()).unwrap();
        let c = |f: &str| read(t.path().join(f));
        assert_eq!(c("cpu/berth/pod-a/ctr-1/cpu.shares"), "512");
        assert_eq!(c("cpu/berth/pod-a/ctr-1/cpu.cfs_quota_us"), "50000");
        assert_eq!(c("cpu/berth/pod-a/ctr-1/cpu.cfs_period_us"), "100000");
        assert_eq!(
            c("memory/berth/pod-a/ctr-1/memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        assert_eq!(c("pids/berth/pod-a/ctr-1/pids.max"), "100");
        assert_eq!(
            c("unified/berth/pod-a/ctr-1/hugetlb.2MB.max"),
            (4u64 << 20).to_string()
        );
        m.add_process("berth/pod-a/ctr-1", 4242).unwrap();
        assert_eq!(m.pids("berth/pod-a/ctr-1").unwrap(), vec![4242]);
        m.remove("berth/pod-a").unwrap();
        assert!(!t.path().join("memory/berth/pod-a").exists());
        m.remove("berth/pod-a").unwrap();
    }

    #[test]
    fn v2_converts_values() {
        let (t, m) = v2_tree();
        m.create("berth/p/c").unwrap();
        m.apply(
            "berth/p/c",
            &Resources {
                memory_swap_limit: Some(96 << 20),
                unified: [("memory.high".to_owned(), "50000000".to_owned())].into(),
                ..res()
            },
        )
        .unwrap();
        let c = |f: &str| read(t.path().join("berth/p/c").join(f));
        assert_eq!(c("cpu.weight"), "59");
        assert_eq!(c("cpu.max"), "50000 100000");
        assert_eq!(c("memory.max"), (64u64 << 20).to_string());
        assert_eq!(c("memory.swap.max"), (32u64 << 20).to_string());
        assert_eq!(c("hugetlb.2MB.max"), (4u64 << 20).to_string());
        assert_eq!(c("memory.high"), "50000000");
        let sub = read(t.path().join("berth/cgroup.subtree_control"));
        assert!(sub.contains("+memory") || sub.contains("+io"), "{sub}");
    }

    #[test]
    fn oom_kill_counts_on_both_versions() {
        let (t, m) = v2_tree();
        m.create("p").unwrap();
        assert_eq!(m.oom_kills("p").unwrap(), 0);
        fs::write(
            t.path().join("p/memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(m.oom_kills("p").unwrap(), 1);
        let (t, m) = v1_tree();
        m.create("p").unwrap();
        fs::write(
            t.path().join("memory/p/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(m.oom_kills("p").unwrap(), 2);
    }

    #[test]
    fn refuses_bad_paths_and_missing_features() {
        let (_t, m) = v1_tree();
        for bad in ["", "/abs", "a/../b", "./a"] {
            assert!(
                matches!(m.create(bad), Err(CgroupError::BadPath(_))),
                "{bad}"
            );
        }
        m.create("p").unwrap();
        let e = m
            .apply(
                "p",
                &Resources {
                    memory_limit: Some(64 << 20),
                    memory_swap_limit: Some(128 << 20),
                    ..Resources::default()
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("swap accounting"), "{e}");
        // Equal memory and memory+swap needs no swap accounting.
        m.apply(
            "p",
            &Resources {
                memory_limit: Some(64 << 20),
                memory_swap_limit: Some(64 << 20),
                ..Resources::default()
            },
        )
        .unwrap();
    }
}

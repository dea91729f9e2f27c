//! berth's own pods (no cgroup parent named) with the cgroupfs driver on a systemd node:
//! their cgroups go under a delegated subtree of berth's, never at the root of the tree
//! systemd manages (CGROUP_DELEGATION.md's single-writer rule).
//!
//! That subtree is a transient scope, `<parent>-pods.scope` in `<parent>.slice`, made with
//! `Delegate=yes` over D-Bus, rather than berthd.service's own cgroup. A service's new main
//! process always starts in the unit's root cgroup, and once berth had enabled controllers
//! there for live pods below, `systemctl restart berthd` would fail (219/CGROUP, EBUSY: the
//! no-internal-process rule) on systemd before 254's `DelegateSubgroup=` — Debian 12 has
//! 252. A scope outlives berthd's restarts. It needs a process to be made with, and one to
//! stay alive when it holds no pod: a keeper, berthd re-executed under [`KEEPER_NAME`],
//! asleep in `<scope>/keeper`. The scope goes (its keeper with it) when the last of
//! berth's own pods goes.

use std::path::PathBuf;

use crate::Engine;
use crate::error::{Error, Result};

/// The name the keeper runs under (argv[0] of berthd re-executed): it only sleeps, in the
/// scope's `keeper` cgroup, so that the scope lives while it holds no pod.
pub const KEEPER_NAME: &str = "berth-pods-keeper";

/// The keeper's cgroup, under the scope.
const KEEPER_CGROUP: &str = "keeper";

/// The keeper: sleeps until a signal ends it (systemd's SIGTERM when the scope stops).
pub fn keeper() -> ! {
    loop {
        nix::unistd::pause();
    }
}

/// The units and cgroup of the scope for a configured cgroup parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnScope {
    /// The slice unit the scope is in (`berth.slice`).
    pub slice: String,
    /// The scope unit (`berth-pods.scope`).
    pub unit: String,
    /// Its cgroup, relative to the cgroup2 root (`berth.slice/berth-pods.scope`).
    pub path: String,
}

impl OwnScope {
    /// The scope for the configured cgroup parent (`berth` → `berth.slice/berth-pods.scope`;
    /// `a/b` → `a.slice/a-b.slice/a-b-pods.scope`).
    pub(crate) fn for_parent(parent: &str) -> Result<OwnScope> {
        let stem = crate::spec::pod::slice_stem(parent);
        let stem = if stem.is_empty() {
            "berth".into()
        } else {
            stem
        };
        let slice = format!("{stem}.slice");
        let slice_path =
            crate::spec::pod::cgroup_parent_path(crate::CgroupDriver::Systemd, &slice)?;
        let unit = format!("{stem}-pods.scope");
        Ok(OwnScope {
            path: format!("{slice_path}/{unit}"),
            slice,
            unit,
        })
    }
}

/// Whether systemd manages this node's cgroup tree: it runs as PID 1 (sd_booted's test) and
/// the memory controller is on cgroup2 (the unified layout systemd 252 defaults to).
pub fn systemd_manages_cgroups(layout: Option<&crate::linux::cgroups::CgroupLayout>) -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
        && layout.and_then(|l| l.v2_root()).is_some()
}

impl Engine {
    /// The delegated scope berth's own pods go under, when it is used: driver cgroupfs on a
    /// node whose cgroups systemd manages.
    pub(crate) fn own_scope(&self) -> Option<OwnScope> {
        if self.cfg.cgroup_driver != crate::CgroupDriver::Cgroupfs
            || !systemd_manages_cgroups(self.cgroups.as_ref())
        {
            return None;
        }
        OwnScope::for_parent(&self.cfg.cgroup_parent).ok()
    }

    /// The cgroup berth's own pods go under with the cgroupfs driver: the delegated scope on
    /// a systemd node, else the configured parent.
    pub(crate) fn own_pods_parent(&self) -> String {
        match self.own_scope() {
            Some(s) => s.path,
            None => self.cfg.cgroup_parent.trim_matches('/').to_owned(),
        }
    }

    /// Makes sure the delegated scope exists, with its keeper, and holds it: a pod's cgroup
    /// made while the guard lives keeps the scope from being stopped by the removal of
    /// another pod. A no-op guard where no scope is used.
    pub(crate) async fn hold_own_scope(&self) -> Result<tokio::sync::MutexGuard<'_, ()>> {
        let guard = self.own_scope_lock.lock().await;
        if let Some(s) = self.own_scope() {
            self.ensure_own_scope(&s).await?;
        }
        Ok(guard)
    }

    async fn ensure_own_scope(&self, s: &OwnScope) -> Result<()> {
        let dir = self.unified_dir(&s.path)?;
        let keeper_dir = dir.join(KEEPER_CGROUP);
        let keeper_pids =
            std::fs::read_to_string(keeper_dir.join("cgroup.procs")).unwrap_or_default();
        if keeper_pids.lines().any(|l| !l.trim().is_empty()) {
            return Ok(());
        }
        let mut child = tokio::process::Command::new(&self.cfg.monitor_exe)
            .arg0(KEEPER_NAME)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| {
                Error::Internal(format!(
                    "start the keeper of {} ({}): {e}",
                    s.unit,
                    self.cfg.monitor_exe.display()
                ))
            })?;
        let pid = child
            .id()
            .ok_or_else(|| Error::Internal("the keeper exited at once".into()))?;
        let placed = async {
            if !dir.is_dir() {
                let sd = self.systemd().await?;
                sd.ensure_slice(&s.slice, "berth's own pods".into()).await?;
                sd.start_scope(
                    &s.unit,
                    &s.slice,
                    pid,
                    "berth's own pods (cgroup driver cgroupfs), delegated to berthd".into(),
                    &Default::default(),
                )
                .await?;
            }
            // Out of the scope's root before any controller is enabled in it (a cgroup with
            // processes cannot give controllers to its children). A scope that outlived
            // its keeper (its pods hold it) is ours to write into directly.
            match std::fs::create_dir(&keeper_dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(Error::Internal(format!(
                        "make {}: {e}",
                        keeper_dir.display()
                    )));
                }
            }
            std::fs::write(keeper_dir.join("cgroup.procs"), pid.to_string()).map_err(|e| {
                Error::Internal(format!(
                    "move the keeper into {}: {e}",
                    keeper_dir.display()
                ))
            })
        }
        .await;
        if let Err(e) = placed {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(e);
        }
        tracing::info!(unit = %s.unit, cgroup = %s.path, keeper = pid, "made the delegated scope of berth's own pods");
        // Reaped here while berthd lives; systemd's after a restart.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(())
    }

    /// Stops the scope (its keeper with it) once it holds none of berth's pods, and the
    /// slice it was in once that is empty too. Called after an own pod's cgroup went.
    pub(crate) async fn release_own_scope(&self) -> Result<()> {
        let Some(s) = self.own_scope() else {
            return Ok(());
        };
        let _guard = self.own_scope_lock.lock().await;
        let dir = self.unified_dir(&s.path)?;
        // Stopping the scope kills all in it: only when it is known to hold no pod.
        match subdirs(&dir) {
            Ok(d) if d.iter().all(|d| d == KEEPER_CGROUP) => {}
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(Error::Internal(format!(
                    "read {} (the scope is kept): {e}",
                    dir.display()
                )));
            }
        }
        self.stop_unit_of(&s.path).await?;
        if let Some(slice_dir) = dir.parent()
            && subdirs(slice_dir).is_ok_and(|d| d.is_empty())
        {
            self.stop_unit_of(&s.slice).await?;
        }
        tracing::info!(unit = %s.unit, "stopped the delegated scope of berth's own pods: none is left");
        Ok(())
    }

    /// `rel`'s directory in the cgroup2 hierarchy.
    fn unified_dir(&self, rel: &str) -> Result<PathBuf> {
        let root = self
            .cgroups
            .as_ref()
            .and_then(|l| l.v2_root())
            .ok_or_else(|| Error::FailedPrecondition("the node has no cgroup2 mount".into()))?;
        Ok(root.join(rel))
    }
}

/// The names of the directories in `dir`.
fn subdirs(dir: &std::path::Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_sits_in_a_slice_named_after_the_parent() {
        assert_eq!(
            OwnScope::for_parent("berth").unwrap(),
            OwnScope {
                slice: "berth.slice".into(),
                unit: "berth-pods.scope".into(),
                path: "berth.slice/berth-pods.scope".into(),
            }
        );
        assert_eq!(
            OwnScope::for_parent("/berth-e2e-x1").unwrap().path,
            "berth.slice/berth-e2e.slice/berth-e2e-x1.slice/berth-e2e-x1-pods.scope"
        );
        assert_eq!(OwnScope::for_parent("/").unwrap().unit, "berth-pods.scope");
    }
}

//! Containers: create, start, stop, remove, status, list, exec, updates, and exits.
//!
//! CreateContainer turns the CRI config into a [`LaunchSpec`](crate::linux::spawn::LaunchSpec)
//! (`spec`: pure where it can be, in `crate::spec`), creates the container's cgroup and
//! writable layer, and records it; StartContainer hands the spec to the pod's monitor,
//! which creates the process. The life cycle is drawn on [`ContainerState`]; every state
//! change goes through [`Engine::transition_container`].

pub(crate) mod checkpoint;
mod create;
mod exec;
mod exit;
pub mod image_volumes;
pub(crate) mod remove;
pub(crate) mod restore;
pub(crate) mod scope;
mod spec;
mod start;
mod stop;
mod update;

use std::path::PathBuf;
use std::sync::Arc;

use crate::api;

use crate::Engine;
use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::spec::resources;
use crate::state::records::{ContainerRecord, ContainerState};

/// CRI's LinuxContainerResources as the spec module reads them.
pub(crate) fn resource_request(r: &api::LinuxContainerResources) -> resources::ResourceRequest {
    resources::ResourceRequest {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| (h.page_size.clone(), h.limit))
            .collect(),
        unified: r.unified.clone().into_iter().collect(),
    }
}

/// Reads a file from an image's layers (top layer first), honouring whiteouts.
fn image_file(layers_top_first: &[PathBuf], rel: &str) -> Option<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for l in layers_top_first {
        let p = l.join(rel);
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            if m.file_type().is_char_device() && m.rdev() == 0 {
                return None; // whited out
            }
            return std::fs::read_to_string(&p).ok();
        }
    }
    None
}

/// A signal given as `SIGTERM`, `TERM` or `15`.
pub fn parse_signal(s: &str) -> Option<nix::sys::signal::Signal> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).ok();
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse().ok()
}

/// The name of the signal that stops a container whose record says `name` (empty or
/// unknown: SIGTERM), e.g. `SIGQUIT`.
pub fn effective_stop_signal(name: &str) -> &'static str {
    parse_signal(name)
        .unwrap_or(nix::sys::signal::Signal::SIGTERM)
        .as_str()
}

pub(crate) fn reason_for(code: i32, oom: bool) -> &'static str {
    if oom {
        "OOMKilled"
    } else if code == 0 {
        "Completed"
    } else {
        "Error"
    }
}

impl Engine {
    fn container(&self, id: &str) -> Result<ContainerRecord> {
        self.db.container_get(id)?.ok_or_else(|| Error::NotFound {
            what: "container",
            id: id.to_owned(),
        })
    }

    /// Moves a container to `to` at time `at` (started_at for RUNNING, finished_at for
    /// EXITED; the caller has set the exit's code and reason), saves it and tells event
    /// subscribers. The moves: CREATED to RUNNING, CREATED to EXITED (stopped or failed
    /// before it ran), RUNNING to EXITED. False (and nothing changed) when it is there
    /// already.
    pub(crate) fn transition_container(
        &self,
        c: &mut ContainerRecord,
        to: ContainerState,
        at: i64,
    ) -> Result<bool> {
        use ContainerState::{Created, Exited, Running};
        let event = match (c.state, to) {
            (Created, Running) => {
                c.started_at = at;
                EventKind::Started
            }
            (Created | Running, Exited) => {
                c.finished_at = at;
                EventKind::Stopped
            }
            (from, to) if from == to => return Ok(false),
            (from, to) => {
                return Err(Error::Internal(format!(
                    "container {}: no move from {from:?} to {to:?}",
                    c.id
                )));
            }
        };
        c.state = to;
        self.db.container_put(c)?;
        self.events.emit(&c.id, &c.pod_id, event, at);
        if to == Exited {
            self.exits.notify_waiters();
        }
        Ok(true)
    }

    /// ContainerStatus (the record, with any exit the monitor recorded applied first).
    pub fn container_status(&self, id: &str) -> Result<ContainerRecord> {
        let c = self.container(id)?;
        if c.state == ContainerState::Running && self.apply_exit_file(&c)? {
            return self.container(id);
        }
        Ok(c)
    }

    /// The record of container `id` if it is running (FailedPrecondition otherwise), for
    /// what needs its processes: ExecSync, exec and attach sessions. Shared with the
    /// state's cache, not copied (a record carries its compiled seccomp programs).
    pub fn running_container(&self, id: &str) -> Result<Arc<ContainerRecord>> {
        let shared = |id: &str| {
            self.db
                .container_shared(id)?
                .ok_or_else(|| Error::NotFound {
                    what: "container",
                    id: id.to_owned(),
                })
        };
        let mut c = shared(id)?;
        // A followed pod's exits come as events, and its monitor refuses a process in a
        // container that is no longer running: no exit record is looked for on disk at
        // every probe (two failed opens of deep paths, a fifth of berthd's CPU under
        // kubelet's probes).
        if c.state == ContainerState::Running
            && !self.is_followed(&c.pod_id)
            && self.apply_exit_file(&c)?
        {
            c = shared(id)?;
        }
        if c.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        Ok(c)
    }

    /// ListContainers.
    pub fn list_containers(&self) -> Result<Vec<Arc<ContainerRecord>>> {
        let mut out = Vec::new();
        // Exits of followed pods come as events; only the others' are looked for on disk.
        for c in self.db.container_list()? {
            if c.state == ContainerState::Running
                && !self.is_followed(&c.pod_id)
                && self.apply_exit_file(&c)?
            {
                out.push(Arc::new(self.container(&c.id)?));
            } else {
                out.push(c);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_in_every_spelling() {
        use nix::sys::signal::Signal;
        assert_eq!(parse_signal("SIGUSR1"), Some(Signal::SIGUSR1));
        assert_eq!(parse_signal("term"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal(""), None);
        assert_eq!(parse_signal("SIGFOO"), None);
        assert_eq!(reason_for(0, false), "Completed");
        assert_eq!(reason_for(137, true), "OOMKilled");
    }

    #[test]
    fn image_files_honour_whiteouts() {
        let t = tempfile::tempdir().unwrap();
        let (top, bottom) = (t.path().join("top"), t.path().join("bottom"));
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::create_dir_all(bottom.join("etc")).unwrap();
        std::fs::write(bottom.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::write(bottom.join("etc/group"), "root:x:0:\n").unwrap();
        nix::sys::stat::mknod(
            &top.join("etc/group"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        let layers = vec![top, bottom];
        assert!(
            image_file(&layers, "etc/passwd")
                .unwrap()
                .starts_with("root")
        );
        assert_eq!(image_file(&layers, "etc/group"), None);
        assert_eq!(image_file(&layers, "etc/shadow"), None);
    }
}

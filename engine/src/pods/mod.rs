//! Pod sandboxes: run, stop, remove, status, list, and what happens when a monitor dies or
//! berthd starts again.
//!
//! A pod is a run directory (`<state>/pods/<id>`: hostname, hosts, resolv.conf, /dev/shm,
//! the monitor's socket and exit records), a cgroup, and a monitor process that holds the
//! pod's namespaces (the network one bind-mounted at `<state>/netns/<id>`). The life cycle
//! is drawn on [`PodState`]; every state change goes through [`Engine::transition_pod`].
//!
//! - `run`: RunPodSandbox, with one [`crate::rollback::Rollback`] whose undo is the
//!   teardown;
//! - `teardown`: [`Engine::teardown_pod`], the one way a pod's processes, network, mounts,
//!   cgroups and files go away — used by a failed create, StopPodSandbox,
//!   RemovePodSandbox, a monitor's death, start-up recovery and the sweep of pods a crash
//!   left half made;
//! - `stop`, `remove`: StopPodSandbox and RemovePodSandbox;
//! - `recover`: following monitors, their deaths, and start-up recovery.

pub mod own_scope;
mod recover;
mod remove;
mod run;
mod stop;
mod teardown;
mod update;

use std::path::PathBuf;

use crate::Engine;
use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::linux::cgroups::manager::CgroupManager;
use crate::state::records::{NsMode, PodRecord, PodState};

pub(crate) use teardown::{Scope, empty_cgroup};

/// The cgroup (under the pod's) of a shared pid namespace's init.
pub const POD_INIT_CGROUP: &str = "pod-init";

/// A random 64-hex-digit id, like containerd's and CRI-O's. Fails rather than hand out a
/// predictable one when the kernel's random source cannot be read.
pub fn new_id() -> Result<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)
        .map_err(|e| Error::Internal(format!("read random bytes for an id: {e}")))?;
    Ok(hex::encode(b))
}

/// A CRI namespace mode number as berth's.
pub(crate) fn ns_mode(v: i32) -> NsMode {
    match v {
        0 => NsMode::Pod,
        1 => NsMode::Container,
        2 => NsMode::Node,
        _ => NsMode::Target,
    }
}

impl Engine {
    pub(crate) fn cgroup_manager(&self) -> Result<CgroupManager> {
        self.cgroups
            .clone()
            .map(CgroupManager::with_layout)
            .ok_or_else(|| {
                Error::FailedPrecondition("the node's cgroup hierarchies could not be read".into())
            })
    }

    pub(crate) fn pod(&self, id: &str) -> Result<PodRecord> {
        self.db.pod_get(id)?.ok_or_else(|| Error::NotFound {
            what: "pod sandbox",
            id: id.to_owned(),
        })
    }

    /// The protocol pod `id`'s monitor speaks.
    pub(crate) fn monitor_protocol(&self, id: &str) -> Result<u32> {
        self.db
            .pod_shared(id)?
            .map(|p| p.monitor_protocol)
            .ok_or_else(|| Error::NotFound {
                what: "pod sandbox",
                id: id.to_owned(),
            })
    }

    pub(crate) fn pod_dir(&self, id: &str) -> PathBuf {
        self.cfg.state.join("pods").join(id)
    }

    /// PodSandboxStatus (the record; the agent converts it).
    pub fn pod_status(&self, id: &str) -> Result<PodRecord> {
        self.pod(id)
    }

    /// ListPodSandbox.
    pub fn list_pods(&self) -> Result<Vec<std::sync::Arc<PodRecord>>> {
        Ok(self.db.pod_list()?)
    }

    /// Moves a pod to `to` (the only move there is: READY to NOTREADY, with `reason`),
    /// saves it and tells event subscribers. False (and nothing changed) when the pod is
    /// already there.
    pub(crate) fn transition_pod(
        &self,
        pod: &mut PodRecord,
        to: PodState,
        reason: &str,
    ) -> Result<bool> {
        match (pod.state, to) {
            (PodState::Ready, PodState::NotReady) => {}
            (from, to) if from == to => return Ok(false),
            (from, to) => {
                return Err(Error::Internal(format!(
                    "pod sandbox {}: no move from {from:?} to {to:?}",
                    pod.id
                )));
            }
        }
        pod.state = to;
        pod.reason = reason.to_owned();
        self.db.pod_put(pod)?;
        self.events.emit(
            &pod.id,
            &pod.id,
            EventKind::Stopped,
            crate::clock::now_nanos(),
        );
        Ok(true)
    }
}

/// Whether `pid` is the monitor of pod `pod_id` (not a reused pid).
pub(crate) fn process_is(pid: u32, pod_id: &str) -> bool {
    if pid == 0 {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(pod_id))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_hex() {
        let (a, b) = (new_id().unwrap(), new_id().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}

//! The one teardown of a pod: what it holds on the host, released in an order that works
//! and idempotently, whatever state it is in (fully made, half made by a failed or crashed
//! create, stopped already, its monitor dead, its run directory emptied by a reboot).

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::{POD_INIT_CGROUP, process_is};
use crate::Engine;
use crate::error::Result;
use crate::linux::cgroups::manager::CgroupManager;
use crate::linux::namespaces;
use crate::state::records::PodRecord;

/// How far a teardown goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The pod stops: its processes end and its network, leases and mounts are released;
    /// its cgroups and run directory stay until it is removed.
    Stop,
    /// The pod goes: also its cgroups and its run directory.
    Remove,
}

/// How long a monitor has to exit after Shutdown before it is SIGKILLed, and then to be
/// gone.
const MONITOR_GRACE: Duration = Duration::from_secs(5);
const MONITOR_GONE: Duration = Duration::from_secs(5);

impl Engine {
    /// Releases everything pod `pod` holds on the host, as far as `scope` says. Every step
    /// is idempotent and runs even when an earlier one failed (what is already gone, or was
    /// never made, is fine); the first failure is returned after all of them ran. The
    /// record is not saved here (its `net` is cleared once the network is released):
    /// callers own the pod's state.
    ///
    /// Order: the network first, while the namespace exists (CNI DEL needs it, and a veth
    /// goes with its namespace); then the monitor — asked to shut down, SIGKILLed if it
    /// does not, and waited for — and everything left in the pod's cgroups (the shared pid
    /// namespace's init, a container's leftovers), waited for too; then the namespace and
    /// pod-file mounts; then, for [`Scope::Remove`], the cgroups and the run directory.
    pub(crate) async fn teardown_pod(&self, pod: &mut PodRecord, scope: Scope) -> Result<()> {
        let id = pod.id.clone();
        let mut first = None;
        let mut note = |step: &'static str, r: Result<()>| {
            if let Err(e) = r {
                tracing::warn!(pod_id = %id, step, error = %e, "pod teardown step failed");
                first.get_or_insert(e);
            }
        };
        let started = std::time::Instant::now();
        note("network", self.release_pod_network(pod));
        let network_us = started.elapsed().as_micros();
        self.end_monitor(pod).await;
        let monitor_us = started.elapsed().as_micros() - network_us;
        match self.cgroup_manager() {
            Ok(cg) => {
                for c in self.db.container_list().unwrap_or_default() {
                    if c.pod_id == pod.id {
                        empty_cgroup(&cg, &c.cgroup).await;
                    }
                }
                let init = format!("{}/{POD_INIT_CGROUP}", pod.cgroup);
                empty_cgroup(&cg, &init).await;
                if scope == Scope::Remove {
                    if pod.cgroup_owned && pod.cgroup.ends_with(".slice") {
                        // Our own slice (systemd driver): its unit goes first.
                        note("slice", self.stop_unit_of(&pod.cgroup).await);
                    }
                    // Kubelet's cgroup stays; the init's, under it, is ours.
                    let ours = if pod.cgroup_owned { &pod.cgroup } else { &init };
                    note("cgroups", cg.remove(ours).map_err(Into::into));
                    if pod.cgroup_owned && !pod.cgroup.ends_with(".slice") {
                        note("own pods' scope", self.release_own_scope().await);
                    }
                }
            }
            Err(e) => note("cgroups", Err(e)),
        }
        let cgroups_us = started.elapsed().as_micros() - network_us - monitor_us;
        if let Some(n) = &pod.netns {
            namespaces::unbind_namespace(n);
        }
        unmount_pod_files(&pod.dir);
        tracing::debug!(
            pod_id = %id,
            ?scope,
            network_us,
            monitor_us,
            cgroups_us,
            mounts_us = started.elapsed().as_micros() - network_us - monitor_us - cgroups_us,
            "pod torn down"
        );
        if scope == Scope::Remove && pod.dir.exists() {
            note(
                "run directory",
                std::fs::remove_dir_all(&pod.dir).map_err(|e| {
                    crate::Error::Internal(format!("remove {}: {e}", pod.dir.display()))
                }),
            );
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Ends the pod's monitor: Shutdown, then SIGKILL after [`MONITOR_GRACE`], and waits
    /// until it is gone. A pod whose monitor's pid is not known (a crash before it was
    /// recorded) has its monitors found by their command line, which names the pod.
    async fn end_monitor(&self, pod: &PodRecord) {
        let _ = crate::monitor::client::request(
            &pod.dir,
            berth_proto::monitor::frame::Body::Shutdown(berth_proto::monitor::Shutdown {}),
        )
        .await;
        let pids: Vec<u32> = if pod.monitor_pid != 0 {
            vec![pod.monitor_pid]
        } else {
            monitors_of(&pod.id)
        };
        for pid in pids {
            wait_gone(pid, &pod.id).await;
        }
    }
}

/// Waits for monitor `pid` of `pod_id` to exit: finely at first (it exits within a
/// millisecond or two of Shutdown), SIGKILL after the grace, then until it is gone.
async fn wait_gone(pid: u32, pod_id: &str) {
    // Told by a pidfd the moment it exits where the kernel has them (no polling delay: a
    // pod's stop waited 2-4 ms longer than its monitor took, at the poll's steps).
    if let Ok(fd) = crate::linux::sys::pidfd_open(pid)
        && process_is(pid, pod_id)
        && let Ok(fd) = crate::linux::sys::async_fd(fd)
    {
        if tokio::time::timeout(MONITOR_GRACE, fd.readable())
            .await
            .is_ok()
        {
            return;
        }
        crate::linux::process::signal(pid, Signal::SIGKILL);
        if tokio::time::timeout(MONITOR_GONE, fd.readable())
            .await
            .is_err()
        {
            tracing::warn!(pod_id, pid, "the pod's monitor does not die");
        }
        return;
    }
    let start = tokio::time::Instant::now();
    let mut killed = false;
    let mut delay = Duration::from_micros(500);
    while process_is(pid, pod_id) {
        if !killed && start.elapsed() > MONITOR_GRACE {
            crate::linux::process::signal(pid, Signal::SIGKILL);
            killed = true;
        }
        if start.elapsed() > MONITOR_GRACE + MONITOR_GONE {
            tracing::warn!(pod_id, pid, "the pod's monitor does not die");
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

/// Processes whose command line names pod `pod_id`: its monitors (not berthd itself).
fn monitors_of(pod_id: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| *pid != std::process::id() && process_is(*pid, pod_id))
        .collect()
}

/// Kills what is still in cgroup `rel` and waits (a second at most) until it is empty, so
/// that it can be removed.
pub(crate) async fn empty_cgroup(cg: &CgroupManager, rel: &str) {
    let start = tokio::time::Instant::now();
    // A killed process is gone within a millisecond or so: looked at again soon at first
    // (a pod's stop often finds its init still dying), then every 10 ms.
    let mut delay = Duration::from_micros(500);
    while start.elapsed() < Duration::from_secs(1) {
        let pids = cg.pids(rel).unwrap_or_default();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            crate::linux::process::signal(pid, Signal::SIGKILL);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(10));
    }
    tracing::warn!(cgroup = rel, "processes are left in a cgroup after SIGKILL");
}

/// Unmounts what a pod's monitor mounted in its run directory: /dev/shm and the user
/// namespace.
fn unmount_pod_files(dir: &Path) {
    namespaces::detach(&dir.join("shm"));
    namespaces::unbind_namespace(&dir.join(crate::monitor::entry::USERNS_FILE));
}

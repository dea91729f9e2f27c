//! Following pod monitors, a monitor's death, and what berthd finds when it starts: pods
//! whose monitors still run, pods whose monitors are gone, and pods a crash left half
//! made.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{Scope, process_is};
use crate::Engine;
use crate::clock::now_nanos;
use crate::error::Result;
use crate::monitor::client;
use crate::state::records::{ContainerState, NsMode, PodRecord, PodState, RECORD_VERSION};

impl Engine {
    /// Follows a pod monitor's exit events; when the monitor goes away, the pod is no
    /// longer ready and its running containers are reported exited.
    pub(crate) fn watch_pod(self: &Arc<Self>, pod: &PodRecord) {
        let engine = self.clone();
        let dir = pod.dir.clone();
        let pod_id = pod.id.clone();
        tokio::spawn(async move {
            let (e2, e3, id2, id3) = (
                engine.clone(),
                engine.clone(),
                pod_id.clone(),
                pod_id.clone(),
            );
            let r = client::watch(&dir, move || e3.exits_followed(&id2), move |ev| {
                if let Err(err) = e2.record_exit(&ev.container_id, ev.exit_code, ev.signal, ev.finished_at, ev.oom_killed) {
                    tracing::warn!(container_id = %ev.container_id, error = %err, "cannot record exit");
                    // Not recorded: lists look for its exit record on disk again.
                    e2.follow(&id3, false);
                }
            })
            .await;
            engine.follow(&pod_id, false);
            if let Err(e) = r {
                tracing::debug!(pod_id = %pod_id, error = %e, "monitor watch ended");
            }
            engine
                .monitor_gone(&pod_id, "the pod's monitor process died")
                .await;
        });
    }

    /// A pod's monitor now sends every exit as an event: the exits it recorded on disk
    /// before (while berthd was away, or before the watch began) are applied once, and from
    /// here on lists need not look for exit records of its containers. (An exit reported
    /// while its container's start is still being recorded is caught by StartContainer,
    /// which looks for the exit record once it has written Running.)
    fn exits_followed(&self, pod_id: &str) {
        let Ok(containers) = self.db.container_list() else {
            return; // not swept: lists keep looking on disk
        };
        for c in containers {
            if c.pod_id == pod_id
                && c.state == ContainerState::Running
                && let Err(e) = self.apply_exit_file(&c)
            {
                tracing::warn!(container_id = %c.id, error = %e, "cannot apply a recorded exit");
                return;
            }
        }
        self.follow(pod_id, true);
    }

    /// Whether the exits of `pod_id` come as events (see `follow`).
    pub(crate) fn is_followed(&self, pod_id: &str) -> bool {
        self.followed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(pod_id)
    }

    /// Marks whether the exits of `pod_id` come as events (lists then skip its exit
    /// records) or must be looked for on disk.
    pub(crate) fn follow(&self, pod_id: &str, followed: bool) {
        let mut f = self
            .followed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if followed {
            f.insert(pod_id.to_owned());
        } else {
            f.remove(pod_id);
        }
    }

    /// The monitor of a ready pod is gone (it died, or was gone when berthd started): its
    /// running containers are exited (with the exit its monitor recorded, if any), the pod
    /// is torn down as far as a stop goes, and it is not ready any more. Nothing happens to
    /// a pod that was stopped on purpose.
    async fn monitor_gone(&self, pod_id: &str, why: &str) {
        let _g = self.locks.lock(pod_id).await;
        let Ok(Some(mut pod)) = self.db.pod_get(pod_id) else {
            return;
        };
        if pod.state != PodState::Ready {
            return;
        }
        tracing::warn!(
            pod_id,
            why,
            "pod monitor is gone; the pod is not ready any more"
        );
        self.reap_orphaned_containers(&pod, why).await;
        if let Err(e) = self.teardown_pod(&mut pod, Scope::Stop).await {
            tracing::warn!(pod_id, error = %e, "tearing down a pod whose monitor is gone left something");
        }
        if let Err(e) = self.transition_pod(&mut pod, PodState::NotReady, "MonitorGone") {
            tracing::warn!(pod_id, error = %e, "cannot record that the pod is not ready");
        }
    }

    /// Ends what is left in the containers of a pod whose monitor is gone and marks them
    /// exited, with the exit recorded on disk when the monitor had written one.
    pub(crate) async fn reap_orphaned_containers(&self, pod: &PodRecord, why: &str) {
        let cg = self.cgroup_manager().ok();
        for c in self.db.container_list().unwrap_or_default() {
            if c.pod_id != pod.id || c.state != ContainerState::Running {
                continue;
            }
            let mut c = Arc::unwrap_or_clone(c);
            if self.apply_exit_file(&c).unwrap_or(false) {
                continue;
            }
            if let Some(cg) = &cg {
                super::empty_cgroup(cg, &c.cgroup).await;
            }
            c.exit_code = 137;
            c.reason = "Unknown".into();
            c.message = why.to_owned();
            if let Err(e) = self.transition_container(&mut c, ContainerState::Exited, now_nanos()) {
                tracing::warn!(container_id = %c.id, error = %e, "cannot record a container of a dead monitor as exited");
            }
        }
    }

    /// At start-up: pods a crash left half made are removed; the monitors of ready pods
    /// are reconnected to; a ready pod whose monitor is gone (crash, or a reboot emptied
    /// the run directory) becomes not ready, its containers exited. Then the network.
    pub async fn recover_pods(self: &Arc<Self>) -> Result<()> {
        // An upgraded berth's default AppArmor profile replaces the one loaded before.
        if crate::spec::security::host_apparmor()
            && let Err(e) = crate::linux::apparmor::load_default()
        {
            tracing::warn!(error = %e, "cannot load berth's default AppArmor profile; containers asking for it will be refused");
        }
        // Checkpoints being made and archives being unpacked for a restore when berthd
        // last stopped: unfinished, and holding containers' memory.
        for d in [
            crate::containers::checkpoint::WORK_DIR,
            crate::containers::restore::STAGING_DIR,
        ] {
            let dir = self.cfg.root.join(d);
            if dir.exists()
                && let Err(e) = std::fs::remove_dir_all(&dir)
            {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove unfinished checkpoints");
            }
        }
        self.sweep_unrecorded_pods().await?;
        self.sweep_unrecorded_containers().await?;
        for pod in self.db.pod_list()? {
            if pod.state != PodState::Ready {
                continue;
            }
            let alive =
                process_is(pod.monitor_pid, &pod.id) && client::connect(&pod.dir).await.is_ok();
            if alive {
                self.reconcile_containers(&pod).await?;
                self.watch_pod(&pod);
                tracing::info!(pod_id = %pod.id, "reconnected to pod monitor");
            } else {
                self.monitor_gone(&pod.id, "the pod's monitor was gone when berthd started")
                    .await;
            }
        }
        self.recover_network()?;
        // A delegated scope of own pods left holding none (berthd died as the last went).
        if let Err(e) = self.release_own_scope().await {
            tracing::warn!(error = %e, "cannot stop the emptied scope of berth's own pods");
        }
        Ok(())
    }

    /// A live monitor's view of its containers against the records, after berthd was down:
    /// exits that happened meanwhile are applied, and a container the monitor runs whose
    /// start was not recorded (berthd died between the monitor's answer and the record)
    /// is recorded running.
    async fn reconcile_containers(&self, pod: &PodRecord) -> Result<()> {
        use berth_proto::monitor::{List, frame::Body};
        let running = match client::request(&pod.dir, Body::List(List {})).await {
            Ok(Body::Processes(p)) => p.processes,
            Ok(other) => {
                tracing::warn!(pod_id = %pod.id, answer = ?other, "unexpected answer to List");
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(pod_id = %pod.id, error = %e, "cannot list the monitor's processes");
                Vec::new()
            }
        };
        for c in self.db.container_list()? {
            if c.pod_id != pod.id {
                continue;
            }
            let mut c = Arc::unwrap_or_clone(c);
            match c.state {
                ContainerState::Running => {
                    let _ = self.apply_exit_file(&c);
                }
                ContainerState::Created => {
                    if let Some(p) = running.iter().find(|p| p.container_id == c.id) {
                        tracing::warn!(container_id = %c.id, pid = p.pid, "a start berthd did not record: the container runs");
                        c.pid = p.pid;
                        self.transition_container(&mut c, ContainerState::Running, p.started_at)?;
                    }
                }
                ContainerState::Exited => {}
            }
        }
        Ok(())
    }

    /// Pods whose RunPodSandbox a crash cut short: a run directory, maybe a monitor, a
    /// namespace mount and a cgroup, but no record, so nothing can refer to them. Torn down
    /// before anything else happens, so that their addresses are free for new pods.
    async fn sweep_unrecorded_pods(&self) -> Result<()> {
        let known: BTreeSet<String> = self.db.pod_list()?.iter().map(|p| p.id.clone()).collect();
        let mut orphans = BTreeSet::new();
        for d in [self.cfg.state.join("pods"), self.cfg.state.join("netns")] {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !known.contains(&name) {
                    orphans.insert(name);
                }
            }
        }
        for id in orphans {
            tracing::warn!(pod_id = %id, "removing a pod that a crash left half made");
            let mut pod = self.unrecorded_pod(&id);
            self.teardown_pod(&mut pod, Scope::Remove).await?;
        }
        Ok(())
    }

    /// Containers whose CreateContainer a crash cut short: a writable layer, a run
    /// directory, a cgroup under their pod's, but no record. Removed, with anything left
    /// in their cgroups.
    async fn sweep_unrecorded_containers(&self) -> Result<()> {
        let known: BTreeSet<String> = self
            .db
            .container_list()?
            .iter()
            .map(|c| c.id.clone())
            .collect();
        for d in [
            self.cfg.root.join("containers"),
            self.cfg.state.join("containers"),
        ] {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !known.contains(&name) {
                    tracing::warn!(container_id = %name, "removing a container that a crash left half made");
                    crate::linux::image_volume::unmount_all(&e.path());
                    std::fs::remove_dir_all(e.path()).map_err(|err| {
                        crate::Error::Internal(format!("remove {}: {err}", e.path().display()))
                    })?;
                }
            }
        }
        let Ok(cg) = self.cgroup_manager() else {
            return Ok(());
        };
        for pod in self.db.pod_list()? {
            for child in cg.children(&pod.cgroup).unwrap_or_default() {
                // Container cgroups are named by their 64-hex-digit ids, or are their
                // systemd scopes, `berth-<id>.scope`.
                let scope = child
                    .strip_prefix("berth-")
                    .and_then(|c| c.strip_suffix(".scope"));
                let id = scope.unwrap_or(&child);
                let is_id = id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
                if is_id && !known.contains(id) {
                    let rel = format!("{}/{child}", pod.cgroup);
                    super::empty_cgroup(&cg, &rel).await;
                    if scope.is_some() {
                        self.remove_scope(&rel).await?;
                    } else {
                        cg.remove(&rel)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// What a pod without a record can have had, for its teardown: berth's own cgroup, its
    /// run directory, a network namespace, monitors to be found by their command line.
    fn unrecorded_pod(&self, id: &str) -> PodRecord {
        let netns = self.cfg.state.join("netns").join(id);
        PodRecord {
            schema_version: RECORD_VERSION,
            id: id.to_owned(),
            name: String::new(),
            namespace: String::new(),
            uid: String::new(),
            attempt: 0,
            state: PodState::NotReady,
            created_at: 0,
            labels: Default::default(),
            annotations: Default::default(),
            hostname: String::new(),
            log_directory: String::new(),
            runtime_handler: String::new(),
            network: NsMode::Pod,
            pid: NsMode::Pod,
            ipc: NsMode::Pod,
            netns: netns.exists().then_some(netns),
            dir: self.pod_dir(id),
            cgroup: if self.cfg.cgroup_driver == crate::CgroupDriver::Systemd {
                crate::spec::pod::own_pod_slice(&self.cfg.cgroup_parent, id)
                    .unwrap_or_else(|_| format!("{}/pod-{id}", self.cfg.cgroup_parent))
            } else {
                format!("{}/pod-{id}", self.own_pods_parent())
            },
            cgroup_owned: true,
            monitor_pid: 0,
            sysctls: Default::default(),
            privileged: false,
            reason: String::new(),
            resources: None,
            net: None,
            userns: None,
            monitor_protocol: crate::monitor::wire::PROTOCOL,
        }
    }
}

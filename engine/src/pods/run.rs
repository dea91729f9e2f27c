//! RunPodSandbox.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::api;

use super::{Scope, new_id, ns_mode};
use crate::Engine;
use crate::clock::now_nanos;
use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::monitor::{client, entry::MonitorArgs};
use crate::rollback::Rollback;
use crate::spec::metadata;
use crate::spec::pod::{
    cgroup_parent_path, check_dns_config, check_log_directory, hosts_file, pod_hostname,
    resolv_conf,
};
use crate::state::records::{NsMode, PodRecord, PodState, RECORD_VERSION};

impl Engine {
    /// RunPodSandbox: checks everything it can before it changes anything, then makes the
    /// run directory and its files, the cgroup, the monitor (which makes the namespaces)
    /// and the network, and records the pod. A step that fails (or a call that is
    /// cancelled) has [`Engine::teardown_pod`] undo what the steps before it made.
    pub async fn run_pod(
        self: &Arc<Self>,
        config: &api::PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String> {
        let md = config
            .metadata
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("config.metadata is required".into()))?;
        if md.name.is_empty() || md.namespace.is_empty() {
            return Err(Error::InvalidArgument(
                "config.metadata.name and .namespace are required".into(),
            ));
        }
        if !runtime_handler.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "runtime handler {runtime_handler:?} is not configured; berth has only the default handler"
            )));
        }
        let meta = metadata::check_object("config", &config.labels, &config.annotations)?;
        let _names = self.locks.lock("pod-names").await;
        let all = self.db.pod_list()?;
        metadata::check_node_budget(
            "pods",
            all.iter()
                .map(|p| metadata::size(&p.labels, &p.annotations))
                .sum(),
            meta,
        )?;
        if let Some(p) = all.into_iter().find(|p| {
            p.name == md.name
                && p.namespace == md.namespace
                && p.uid == md.uid
                && p.attempt == md.attempt
        }) {
            return Err(Error::AlreadyExists(format!(
                "pod sandbox {}/{} (uid {}, attempt {}) already exists as {}",
                md.namespace, md.name, md.uid, md.attempt, p.id
            )));
        }
        let linux = config.linux.clone().unwrap_or_default();
        let sc = linux.security_context.clone().unwrap_or_default();
        let ns = sc.namespace_options.clone().unwrap_or_default();
        // Absent namespace options mean the CRI's defaults (mode POD for each), as in
        // containerd. The pod's pid mode only says whether it lives in the node's pid
        // namespace: its shared one is made when a container of mode POD first needs it.
        let (network, pid, ipc) = (ns_mode(ns.network), ns_mode(ns.pid), ns_mode(ns.ipc));
        crate::spec::security::check_sysctls(
            &linux.sysctls,
            network == NsMode::Node,
            ipc == NsMode::Node,
        )?;
        let userns = crate::spec::userns::IdMappings::from_cri(
            ns.userns_options.as_ref(),
            &[
                ("network", network == NsMode::Node),
                ("pid", pid == NsMode::Node),
                ("IPC", ipc == NsMode::Node),
            ],
        )?;
        let node_name = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let hostname = pod_hostname(&config.hostname, network == NsMode::Node, || {
            node_name.clone()
        })?;
        check_dns_config(config.dns_config.as_ref())?;
        check_log_directory(&config.log_directory)?;
        let cg = self.cgroup_manager()?;

        let id = new_id()?;
        // The pod cgroup: kubelet's when it names one, else ours under the configured parent.
        let systemd = self.cfg.cgroup_driver == crate::CgroupDriver::Systemd;
        let (cgroup, cgroup_owned) = if linux.cgroup_parent.is_empty() {
            if systemd {
                (
                    crate::spec::pod::own_pod_slice(&self.cfg.cgroup_parent, &id)?,
                    true,
                )
            } else {
                (format!("{}/pod-{id}", self.own_pods_parent()), true)
            }
        } else {
            (
                cgroup_parent_path(self.cfg.cgroup_driver, &linux.cgroup_parent)?,
                false,
            )
        };
        // The record as far as the steps have got: what the teardown undoes.
        let draft = Arc::new(Mutex::new(PodRecord {
            schema_version: RECORD_VERSION,
            id: id.clone(),
            name: md.name.clone(),
            namespace: md.namespace.clone(),
            uid: md.uid.clone(),
            attempt: md.attempt,
            state: PodState::Ready,
            created_at: 0,
            labels: config.labels.clone().into_iter().collect(),
            annotations: config.annotations.clone().into_iter().collect(),
            hostname: hostname.clone(),
            log_directory: config.log_directory.clone(),
            runtime_handler: runtime_handler.to_owned(),
            network,
            pid,
            ipc,
            netns: (network == NsMode::Pod).then(|| self.cfg.state.join("netns").join(&id)),
            dir: self.pod_dir(&id),
            cgroup,
            cgroup_owned,
            monitor_pid: 0,
            sysctls: linux
                .sysctls
                .clone()
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
            privileged: sc.privileged,
            reason: String::new(),
            resources: None,
            net: None,
            userns: userns.clone(),
            monitor_protocol: crate::monitor::wire::PROTOCOL,
        }));
        let snapshot = |d: &Arc<Mutex<PodRecord>>| {
            d.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        };
        let mut undo = Rollback::new();
        {
            let (engine, draft) = (self.clone(), draft.clone());
            undo.push_async(move || async move {
                let mut pod = snapshot(&draft);
                if let Err(e) = engine.teardown_pod(&mut pod, Scope::Remove).await {
                    tracing::warn!(pod_id = %pod.id, error = %e, "undoing a pod that failed to start left something");
                }
            });
        }
        let made = async {
            let pod = snapshot(&draft);
            crate::durable::create_dir_all(&pod.dir, 0o711)?;
            let shown = if hostname.is_empty() {
                &node_name
            } else {
                &hostname
            };
            std::fs::write(pod.dir.join("hostname"), format!("{shown}\n"))
                .map_err(|e| Error::Internal(format!("write hostname: {e}")))?;
            std::fs::write(pod.dir.join("hosts"), hosts_file(&hostname))
                .map_err(|e| Error::Internal(format!("write hosts: {e}")))?;
            std::fs::write(
                pod.dir.join("resolv.conf"),
                resolv_conf(config.dns_config.as_ref()),
            )
            .map_err(|e| Error::Internal(format!("write resolv.conf: {e}")))?;
            crate::fail_point!("run_pod.dir_made");
            if systemd && pod.cgroup.ends_with(".slice") {
                // Kubelet's slice exists (it makes it before RunPodSandbox); ours, or one a
                // client named without making it, is made as a transient slice.
                self.systemd()
                    .await?
                    .ensure_slice(
                        crate::systemd::unit_of(&pod.cgroup),
                        format!("berth pod {}/{} ({id})", md.namespace, md.name),
                    )
                    .await?;
            }
            {
                // Under the delegated scope (cgroupfs on a systemd node), made if it is not.
                let _scope = if pod.cgroup_owned && !systemd {
                    Some(self.hold_own_scope().await?)
                } else {
                    None
                };
                cg.create(&pod.cgroup)?;
            }
            crate::fail_point!("run_pod.cgroup_made");
            let args = MonitorArgs {
                pod_id: id.clone(),
                dir: pod.dir.clone(),
                new_net: pod.netns.clone(),
                new_ipc: ipc == NsMode::Pod,
                hostname: hostname.clone(),
                userns: userns.clone(),
                pod_init: self.pod_init_program.clone(),
            };
            let monitor_pid = client::spawn(&self.cfg.monitor_exe, &args).await?;
            draft
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .monitor_pid = monitor_pid;
            crate::fail_point!("run_pod.monitor_started");
            // The network, once the namespace exists (CRI sets it up in RunPodSandbox).
            if let Some(n) = &pod.netns {
                let net = self
                    .setup_pod_network(&id, n, md, &config.port_mappings)
                    .await?;
                draft
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .net = Some(net);
                crate::fail_point!("run_pod.network_set_up");
            }
            let mut rec = snapshot(&draft);
            rec.created_at = now_nanos();
            self.db.pod_put(&rec)?;
            crate::fail_point!("run_pod.recorded");
            Ok::<_, Error>(rec)
        }
        .await;
        let rec = match made {
            Ok(rec) => rec,
            Err(e) => {
                undo.run().await;
                return Err(e);
            }
        };
        undo.disarm();
        self.events
            .emit(&id, &id, EventKind::Created, rec.created_at);
        self.events.emit(&id, &id, EventKind::Started, now_nanos());
        self.watch_pod(&rec);
        tracing::info!(pod_id = %id, name = %rec.name, namespace = %rec.namespace, "pod sandbox running");
        Ok(id)
    }
}

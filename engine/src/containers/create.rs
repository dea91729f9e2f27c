//! CreateContainer.

use crate::spec::metadata;
use std::path::PathBuf;

use crate::api;

use crate::Engine;
use crate::clock::now_nanos;
use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::linux::spawn::{LaunchSpec, Rootfs};
use crate::pods::{POD_INIT_CGROUP, new_id};
use crate::rollback::Rollback;
use crate::state::records::{ContainerRecord, ContainerState, NsMode, PodState, RECORD_VERSION};

impl Engine {
    /// CreateContainer: plans the container (checking everything it can first), loads
    /// berth's AppArmor profile if it is asked for and missing, then makes the writable
    /// layer and the cgroup (with its limits and device rules) and records the container.
    /// A step that fails (or a call that is cancelled) has the steps before it undone.
    pub async fn create_container(
        &self,
        pod_id: &str,
        config: &api::ContainerConfig,
        sandbox_config: Option<&api::PodSandboxConfig>,
    ) -> Result<String> {
        let _g = self.locks.lock(pod_id).await;
        let pod = self.pod(pod_id)?;
        if pod.state != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {pod_id} is not ready"
            )));
        }
        let md = config
            .metadata
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("config.metadata is required".into()))?;
        if md.name.is_empty() {
            return Err(Error::InvalidArgument(
                "config.metadata.name is required".into(),
            ));
        }
        let meta = metadata::check_object("config", &config.labels, &config.annotations)?;
        let all = self.db.container_list()?;
        metadata::check_node_budget(
            "containers",
            all.iter()
                .map(|c| metadata::size(&c.labels, &c.annotations))
                .sum(),
            meta,
        )?;
        if let Some(c) = all
            .into_iter()
            .find(|c| c.pod_id == pod_id && c.name == md.name && c.attempt == md.attempt)
        {
            return Err(Error::AlreadyExists(format!(
                "container {} (attempt {}) already exists in pod {pod_id} as {}",
                md.name, md.attempt, c.id
            )));
        }
        // A checkpoint archive as the image: the container is made of the checkpoint's
        // image and writable layer, and its start restores the checkpointed processes.
        let restore = self.restore_source(&config.image)?;
        let _staged = Staged(restore.as_ref().map(|r| r.dir.clone()));
        let restored_config;
        let config = match &restore {
            Some(r) => {
                restored_config = r.config(config);
                &restored_config
            }
            None => config,
        };
        let mut plan = self.plan_container(&pod, config, sandbox_config)?;
        if let Some(r) = &restore {
            let refuse = |why: &str| {
                Err(Error::FailedPrecondition(format!(
                    "cannot restore checkpoint {} as container {}: {why}",
                    r.dir.display(),
                    md.name
                )))
            };
            if pod.monitor_protocol < 5 {
                return refuse(&format!(
                    "pod {pod_id}'s monitor speaks protocol {} (started by an older berthd), and restoring needs 5; recreate the pod",
                    pod.monitor_protocol
                ));
            }
            if plan.stdio.tty {
                return refuse("a restored container cannot have a terminal (tty)");
            }
            if plan.userns.is_some() {
                return refuse("the pod has a user namespace (hostUsers: false)");
            }
            if !plan.new_pid_namespace {
                return refuse(
                    "the container would share a pid namespace; a restored one has its own",
                );
            }
        }
        if plan.hooks.is_some() && pod.monitor_protocol < 3 {
            return Err(Error::FailedPrecondition(format!(
                "CDI devices of container {}: their OCI hooks need a pod monitor of protocol 3, and pod {pod_id}'s speaks {} (it was started by an older berthd); recreate the pod",
                md.name, pod.monitor_protocol
            )));
        }
        if plan.load_apparmor {
            tokio::task::spawn_blocking(crate::linux::apparmor::load_default)
                .await
                .map_err(|e| Error::Internal(format!("load the AppArmor profile: {e}")))?
                .map_err(|e| {
                    Error::FailedPrecondition(format!(
                        "cannot load berth's default AppArmor profile {}: {e}; fix that, or run the container with AppArmor unconfined",
                        crate::spec::apparmor::DEFAULT_PROFILE
                    ))
                })?;
        }
        let cg = self.cgroup_manager()?;
        let id = new_id()?;
        let dir = self.cfg.root.join("containers").join(&id);
        // With the systemd driver, a container is a scope made at its start (with its
        // first process in it), for pods whose monitor can wait for that (protocol 4).
        let scoped = self.cfg.cgroup_driver == crate::CgroupDriver::Systemd
            && pod.monitor_protocol >= 4
            && pod.cgroup.ends_with(".slice");
        let cgroup = if scoped {
            format!("{}/{}", pod.cgroup, crate::systemd::container_scope(&id))
        } else {
            format!("{}/{id}", pod.cgroup)
        };
        let mut undo = Rollback::new();
        let made = async {
            {
                let d = dir.clone();
                undo.push(move || {
                    let _ = std::fs::remove_dir_all(&d);
                });
            }
            for d in ["upper", "work"] {
                crate::durable::create_dir_all(&dir.join(d), 0o755)?;
            }
            if let Some(r) = &restore {
                r.apply_rootfs_diff(&dir.join("upper"))?;
                std::fs::rename(&r.dir, dir.join(super::restore::CHECKPOINT_DIR)).map_err(|e| {
                    Error::Internal(format!("keep the checkpoint in {}: {e}", dir.display()))
                })?;
            }
            crate::fail_point!("create_container.layer_made");
            // Image volumes: each image's layers read-only in the container's directory
            // (unmounted before the directory goes, here on failure as at removal).
            {
                let d = dir.clone();
                undo.push(move || crate::linux::image_volume::unmount_all(&d));
            }
            let userns = match &pod.userns {
                Some(_) if !plan.image_volumes.is_empty() => Some(
                    std::fs::File::open(pod.dir.join(crate::monitor::entry::USERNS_FILE)).map_err(
                        |e| Error::Internal(format!("open the pod's user namespace: {e}")),
                    )?,
                ),
                _ => None,
            };
            for (n, v) in plan.image_volumes.iter().enumerate() {
                let at = crate::linux::image_volume::host_dir(&dir, n);
                crate::linux::image_volume::mount(&v.layers, &at, userns.as_ref())
                    .map_err(|e| Error::Internal(e.to_string()))?;
                let source = if v.sub_path.is_empty() {
                    at
                } else {
                    at.join(&v.sub_path)
                };
                for m in plan
                    .mounts
                    .iter_mut()
                    .chain(plan.volume_mounts.iter_mut())
                    .filter(|m| m.destination == v.destination)
                {
                    m.source = source.display().to_string();
                    if userns.is_some() {
                        // Mapped already: the container's bind must not map it again.
                        m.options.push(crate::spec::mounts::PREMAPPED.into());
                    }
                }
            }
            {
                let (cg, c) = (cg.clone(), cgroup.clone());
                undo.push(move || {
                    let _ = cg.remove(&c);
                });
            }
            if !scoped {
                cg.create(&cgroup)?;
                cg.apply(&cgroup, &plan.res)?;
                cg.set_devices(&cgroup, &plan.device_policy)?;
            }
            crate::fail_point!("create_container.cgroup_made");
            let cgroup_dirs = cg.dirs(&cgroup)?;
            let oom_file = cg
                .oom_file(&cgroup)?
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            // The pod's shared pid namespace's init gets a cgroup of its own under the
            // pod's (it stays with the pod: other containers may use it).
            let pod_pid_namespace = if plan.joins_pod_pid_namespace {
                let rel = format!("{}/{POD_INIT_CGROUP}", pod.cgroup);
                cg.create(&rel)?;
                Some(
                    cg.dirs(&rel)?
                        .into_iter()
                        .map(|(_, d)| d)
                        .collect::<Vec<PathBuf>>(),
                )
            } else {
                None
            };
            let hooks = plan.hooks.take().map(|mut h| {
                h.bundle = dir.display().to_string();
                h.annotations = config.annotations.clone().into_iter().collect();
                h
            });
            let launch = LaunchSpec {
                hooks,
                stdio: plan.stdio,
                userns: plan.userns.clone(),
                devices: plan.devices.clone(),
                id: id.clone(),
                rootfs: Rootfs {
                    lowerdirs: plan.layers.clone(),
                    upperdir: dir.join("upper"),
                    workdir: dir.join("work"),
                    target: self.cfg.state.join("containers").join(&id).join("rootfs"),
                    readonly: plan.readonly_rootfs,
                },
                process: plan.process.clone(),
                oom_score_adj: plan.res.oom_score_adj,
                mounts: plan.mounts.clone(),
                masked_paths: plan.masked_paths.clone(),
                readonly_paths: plan.readonly_paths.clone(),
                cgroup_dirs: cgroup_dirs.iter().map(|(_, d)| d.clone()).collect(),
                cgroup_view: cgroup_dirs,
                cgroup_park: scoped.then(|| self.park_socket(&id)),
                new_pid_namespace: plan.new_pid_namespace,
                pid_target: plan.pid_target.clone(),
                pod_pid_namespace,
                sysctls: if pod.network == NsMode::Node {
                    Default::default()
                } else {
                    pod.sysctls.clone()
                },
            };
            if let Some(r) = &restore {
                let missing = r.missing_mounts(&launch);
                if !missing.is_empty() {
                    return Err(Error::InvalidArgument(format!(
                        "the checkpointed container had mounts from the node at {missing:?}; the new container must ask for them too"
                    )));
                }
            }
            // The bundle the hooks are told of: an OCI config.json that says what berth
            // will do (hooks read the root's path from it).
            if let Some(h) = &launch.hooks {
                let spec = crate::spec::runtime_spec::render(
                    &launch,
                    Some(&pod.hostname)
                        .filter(|h| !h.is_empty())
                        .map(String::as_str),
                    &h.annotations,
                    Some(h),
                );
                crate::durable::write_atomic(
                    &dir.join("config.json"),
                    spec.to_string().as_bytes(),
                )?;
            }
            let rec = ContainerRecord {
                schema_version: RECORD_VERSION,
                id: id.clone(),
                pod_id: pod_id.to_owned(),
                name: md.name.clone(),
                attempt: md.attempt,
                state: ContainerState::Created,
                created_at: now_nanos(),
                started_at: 0,
                finished_at: 0,
                exit_code: 0,
                reason: String::new(),
                message: String::new(),
                image: plan.image_name.clone(),
                image_id: plan.image_id.clone(),
                labels: config.labels.clone().into_iter().collect(),
                annotations: config.annotations.clone().into_iter().collect(),
                log_path: plan.log_path.clone(),
                pid: 0,
                cgroup: cgroup.clone(),
                oom_file,
                dir: dir.clone(),
                stop_signal: plan.stop_signal.clone(),
                mounts: plan.volume_mounts.clone(),
                resources: plan.res.clone(),
                device_policy: scoped.then(|| plan.device_policy.clone()),
                image_volume_layers: plan
                    .image_volumes
                    .iter()
                    .flat_map(|v| v.layers.iter().cloned())
                    .collect(),
                launch,
                restore_from: restore
                    .as_ref()
                    .map(|_| dir.join(super::restore::CHECKPOINT_DIR)),
            };
            self.db.container_put(&rec)?;
            crate::fail_point!("create_container.recorded");
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
        self.measure_new_container(&rec);
        self.events
            .emit(&id, pod_id, EventKind::Created, rec.created_at);
        tracing::info!(container_id = %id, pod_id, name = %rec.name, "container created");
        Ok(id)
    }
}

/// An unpacked checkpoint not (yet) moved into its container's directory: removed when
/// the create ends, whichever way.
struct Staged(Option<PathBuf>);

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

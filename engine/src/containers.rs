//! Containers: create, start, stop, remove, status, list, and exits.
//!
//! CreateContainer turns the CRI config into a [`LaunchSpec`] (pure, in `spec/`), creates
//! the container's cgroup and writable layer, and records it; StartContainer hands the spec
//! to the pod's monitor, which creates the process. The life cycle is drawn on
//! [`ContainerState`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_proto::cri;
use berth_proto::monitor::{self as mproto, frame::Body};

use crate::monitor::wire;

use crate::Engine;
use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::linux::spawn::{LaunchSpec, Rootfs};
use crate::monitor::client;
use crate::pods::{new_id, now_nanos};
use crate::spec::{mounts, process, resources, security};
use crate::state::records::{ContainerRecord, ContainerState, NsMode, PodState, RECORD_VERSION};

/// CRI's LinuxContainerResources as the spec module reads them.
fn resource_request(r: &cri::LinuxContainerResources) -> resources::ResourceRequest {
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

fn reason_for(code: i32, oom: bool) -> &'static str {
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

    /// CreateContainer.
    pub async fn create_container(
        &self,
        pod_id: &str,
        config: &cri::ContainerConfig,
        sandbox_config: Option<&cri::PodSandboxConfig>,
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
        if let Some(c) = self
            .db
            .container_list()?
            .into_iter()
            .find(|c| c.pod_id == pod_id && c.name == md.name && c.attempt == md.attempt)
        {
            return Err(Error::AlreadyExists(format!(
                "container {} (attempt {}) already exists in pod {pod_id} as {}",
                md.name, md.attempt, c.id
            )));
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        let image = self
            .resolve_image(&image_name)?
            .ok_or_else(|| Error::NotFound {
                what: "image",
                id: format!("{image_name:?} (pull it first)"),
            })?;
        let layers: Vec<PathBuf> = image
            .layers
            .iter()
            .rev()
            .map(|l| self.snapshot_dir(&l.chain_id))
            .collect();
        let linux = config.linux.clone().unwrap_or_default();
        let sc = linux.security_context.clone().unwrap_or_default();
        if sc.privileged && !pod.privileged {
            return Err(Error::InvalidArgument(
                "security_context.privileged: a privileged container needs a privileged pod".into(),
            ));
        }
        // No namespace options mean the CRI's default, mode POD, as in containerd.
        let pid_mode = sc.namespace_options.as_ref().map_or(0, |n| n.pid);
        let pid_target = if pid_mode == 3 {
            let target = sc
                .namespace_options
                .as_ref()
                .map(|n| n.target_id.clone())
                .unwrap_or_default();
            match self.db.container_get(&target)? {
                Some(t) if t.pod_id == pod_id => Some(target),
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "security_context.namespace_options.target_id: {target:?} is not a container of pod {pod_id}"
                    )));
                }
            }
        } else {
            None
        };
        if pid_mode == 2 && pod.userns.is_some() {
            return Err(Error::InvalidArgument(
                "security_context.namespace_options.pid: mode NODE cannot be used in a pod with a user namespace".into(),
            ));
        }
        let new_pid_namespace = match pid_mode {
            1 => true,
            0..=3 => false,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "security_context.namespace_options.pid: {other} is not a namespace mode"
                )));
            }
        };
        // Mode POD joins the pod's shared pid namespace, whose init the monitor starts in
        // a cgroup of its own under the pod's; in a pod of the node's pid namespace, POD
        // means the node's, as it does for containerd's sandbox.
        let pod_pid_namespace = if pid_mode == 0 && pod.pid != NsMode::Node {
            let cg = self.cgroup_manager()?;
            let rel = format!("{}/{}", pod.cgroup, crate::pods::POD_INIT_CGROUP);
            cg.create(&rel)?;
            Some(cg.dirs(&rel)?.into_iter().map(|(_, d)| d).collect())
        } else {
            None
        };

        // The process.
        let argv = process::command_line(&image.config, &config.command, &config.args)?;
        let envs: Vec<(String, String)> = config
            .envs
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        let env = process::environment(&image.config.env, &envs, &pod.hostname)?;
        let cwd = process::working_dir(&image.config, &config.working_dir)?;
        let passwd = image_file(&layers, "etc/passwd").unwrap_or_default();
        let group = image_file(&layers, "etc/group").unwrap_or_default();
        let user = process::resolve_user(
            &image.config.user,
            &process::UserRequest {
                run_as_user: sc.run_as_user.map(|v| v.value),
                run_as_username: sc.run_as_username.clone(),
                run_as_group: sc.run_as_group.map(|v| v.value),
                supplemental_groups: sc.supplemental_groups.clone(),
                strict_groups: sc.supplemental_groups_policy
                    == cri::SupplementalGroupsPolicy::Strict as i32,
            },
            &passwd,
            &group,
        )?;
        if let Some(m) = &pod.userns {
            m.check_identity(user.uid, user.gid, &user.additional_gids)?;
        }
        let caps_req = sc.capabilities.clone().unwrap_or_default();
        let capabilities = security::capabilities(
            &security::CapabilityRequest {
                add: caps_req.add_capabilities,
                drop: caps_req.drop_capabilities,
                add_ambient: caps_req.add_ambient_capabilities,
                privileged: sc.privileged,
            },
            user.uid,
        )?;
        let (masked_paths, readonly_paths) =
            security::masked_and_readonly(&sc.masked_paths, &sc.readonly_paths, sc.privileged);
        // The node's LSMs: a named AppArmor profile or SELinux options are applied where
        // the node runs them and refused where it does not.
        #[allow(deprecated)]
        let legacy_apparmor = &sc.apparmor_profile;
        let apparmor = if sc.privileged {
            security::AppArmor::Unconfined
        } else {
            security::apparmor_profile(
                sc.apparmor.as_ref(),
                legacy_apparmor,
                security::host_apparmor(),
                security::apparmor_loaded,
            )?
        };
        if apparmor == security::AppArmor::Default
            && !security::apparmor_loaded(crate::spec::apparmor::DEFAULT_PROFILE)
        {
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
        let apparmor = apparmor.profile();
        let pod_selinux = sandbox_config
            .and_then(|p| p.linux.as_ref())
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.selinux_options.as_ref());
        let selinux_label = security::selinux_label(
            pod_selinux,
            sc.selinux_options.as_ref(),
            security::host_selinux(),
        )?;
        // Devices: the requested ones on top of the standard set, everything else denied;
        // a privileged container gets every device of the node.
        let (device_nodes, device_policy) = if sc.privileged {
            (
                crate::spec::devices::host_devices(),
                crate::spec::devices::DevicePolicy {
                    allow_all: true,
                    rules: Vec::new(),
                },
            )
        } else {
            let (nodes, extra) = crate::spec::devices::requested(&config.devices)?;
            let mut rules = crate::spec::devices::default_rules();
            rules.extend(extra);
            (
                nodes,
                crate::spec::devices::DevicePolicy {
                    allow_all: false,
                    rules,
                },
            )
        };
        // A privileged container runs unconfined, whatever it asks.
        let seccomp = if sc.privileged {
            Vec::new()
        } else {
            // Older kubelets still send the deprecated path form.
            #[allow(deprecated)]
            let legacy = &sc.seccomp_profile_path;
            let choice = crate::spec::seccomp::choice(sc.seccomp.as_ref(), legacy)?;
            crate::spec::seccomp::filters(&choice, &capabilities.bounding)?
        };
        let r = linux.resources.clone().unwrap_or_default();
        let res = resources::resources(&resource_request(&r))?;
        let vols: Vec<mounts::VolumeRequest> = config
            .mounts
            .iter()
            .map(|m| mounts::VolumeRequest {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                propagation: m.propagation,
                image: m.image.as_ref().is_some_and(|i| !i.image.is_empty()),
                recursive_read_only: m.recursive_read_only,
            })
            .collect();
        let volume_mounts = mounts::volume_mounts(&vols, |p| p.exists())?;
        check_host_propagation(&volume_mounts)?;
        if !self.cfg.kernel.recursive_read_only && vols.iter().any(|v| v.recursive_read_only) {
            return Err(Error::InvalidArgument(
                "config.mounts: recursive read-only mounts need Linux 5.12 or newer (mount_setattr), which this node lacks".into(),
            ));
        }
        let host_shm = PathBuf::from("/dev/shm");
        let pod_shm = pod.dir.join("shm");
        let (hosts, resolv, hostname) = (
            pod.dir.join("hosts"),
            pod.dir.join("resolv.conf"),
            pod.dir.join("hostname"),
        );
        let pod_files = mounts::PodFiles {
            hosts: Some(&hosts),
            resolv_conf: Some(&resolv),
            hostname: Some(&hostname),
            shm: Some(if pod.ipc == NsMode::Pod {
                &pod_shm
            } else {
                &host_shm
            }),
        };
        let all_mounts = mounts::merge(
            mounts::default_mounts(&pod_files, sc.privileged),
            volume_mounts.clone(),
        );

        // The writable layer and the cgroup.
        let id = new_id();
        let dir = self.cfg.root.join("containers").join(&id);
        for d in ["upper", "work"] {
            crate::durable::create_dir_all(&dir.join(d), 0o755)?;
        }
        let cg = self.cgroup_manager()?;
        let cgroup = format!("{}/{id}", pod.cgroup);
        let created = (|| -> Result<(Vec<(String, PathBuf)>, String)> {
            cg.create(&cgroup)?;
            cg.apply(&cgroup, &res)?;
            cg.set_devices(&cgroup, &device_policy)?;
            let dirs = cg.dirs(&cgroup)?;
            let oom = cg
                .oom_file(&cgroup)?
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            Ok((dirs, oom))
        })();
        let (cgroup_dirs, oom_file) = match created {
            Ok(x) => x,
            Err(e) => {
                let _ = cg.remove(&cgroup);
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let log_path = if pod.log_directory.is_empty() || config.log_path.is_empty() {
            String::new()
        } else {
            Path::new(&pod.log_directory)
                .join(&config.log_path)
                .display()
                .to_string()
        };
        // In a pod's user namespace the mounts and device nodes that berth makes (as root
        // of the host) are owned by the host ids of the container's ones.
        let (all_mounts, device_nodes, userns) = match &pod.userns {
            None => (all_mounts, device_nodes, None),
            Some(m) => {
                let (root_uid, root_gid) = (
                    m.host_uid(0).unwrap_or(crate::spec::userns::OVERFLOW_ID),
                    m.host_gid(0).unwrap_or(crate::spec::userns::OVERFLOW_ID),
                );
                let mounts = all_mounts
                    .into_iter()
                    .map(|mut mt| {
                        if matches!(mt.kind.as_str(), "tmpfs" | "devpts" | "mqueue") {
                            if mt.destination == "/dev" {
                                mt.options.extend(["uid=0".to_owned(), "gid=0".to_owned()]);
                            }
                            mt.options = m.map_mount_options(&mt.options);
                        }
                        mt
                    })
                    .collect();
                let devices = device_nodes
                    .into_iter()
                    .map(|mut d| {
                        d.uid = m
                            .host_uid(d.uid)
                            .unwrap_or(crate::spec::userns::OVERFLOW_ID);
                        d.gid = m
                            .host_gid(d.gid)
                            .unwrap_or(crate::spec::userns::OVERFLOW_ID);
                        d
                    })
                    .collect();
                let ns = crate::linux::spawn::UserNamespace {
                    path: pod.dir.join(crate::monitor::entry::USERNS_FILE),
                    root_uid,
                    root_gid,
                };
                (mounts, devices, Some(ns))
            }
        };
        let launch = LaunchSpec {
            stdio: crate::linux::spawn::StdioMode {
                stdin: config.stdin,
                stdin_once: config.stdin && config.stdin_once,
                tty: config.tty,
            },
            userns,
            devices: device_nodes,
            id: id.clone(),
            rootfs: Rootfs {
                lowerdirs: layers,
                upperdir: dir.join("upper"),
                workdir: dir.join("work"),
                target: self.cfg.state.join("containers").join(&id).join("rootfs"),
                readonly: sc.readonly_rootfs,
            },
            process: crate::linux::spawn::ProcessSpec {
                args: argv,
                env,
                cwd,
                user,
                capabilities,
                no_new_privs: sc.no_new_privs,
                seccomp,
                apparmor,
                selinux_label,
            },
            oom_score_adj: res.oom_score_adj,
            mounts: all_mounts,
            masked_paths,
            readonly_paths,
            cgroup_dirs: cgroup_dirs.iter().map(|(_, d)| d.clone()).collect(),
            cgroup_view: cgroup_dirs,
            new_pid_namespace,
            pid_target,
            pod_pid_namespace,
            sysctls: if pod.network == NsMode::Node {
                Default::default()
            } else {
                pod.sysctls.clone()
            },
        };
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
            image: image_name,
            image_id: image.id.to_string(),
            labels: config.labels.clone().into_iter().collect(),
            annotations: config.annotations.clone().into_iter().collect(),
            log_path,
            pid: 0,
            cgroup,
            oom_file,
            dir,
            stop_signal: image.config.stop_signal.clone(),
            mounts: volume_mounts,
            resources: res.clone(),
            launch,
        };
        if let Err(e) = self.db.container_put(&rec) {
            let _ = self.remove_container_files(&rec);
            return Err(e.into());
        }
        self.events
            .emit(&id, pod_id, EventKind::Created, rec.created_at);
        tracing::info!(container_id = %id, pod_id, name = %rec.name, "container created");
        Ok(id)
    }

    /// StartContainer.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        let c = self.container(id)?;
        let _pg = self.locks.lock(&c.pod_id).await;
        let _g = self.locks.lock(id).await;
        let mut c = self.container(id)?;
        if !c.state.can_start() {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is {:?}, not Created",
                c.state
            )));
        }
        let pod = self.pod(&c.pod_id)?;
        if pod.state != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        let start = wire::start_request(
            pod.monitor_protocol,
            &c.launch,
            c.log_path.clone(),
            c.oom_file.clone(),
        )
        .map_err(|e| Error::Internal(e.to_string()))?;
        let r = client::request(&pod.dir, Body::Start(start)).await;
        match r {
            Ok(Body::Started(s)) => {
                c.state = ContainerState::Running;
                c.pid = s.pid;
                c.started_at = s.started_at;
                self.db.container_put(&c)?;
                self.events
                    .emit(id, &c.pod_id, EventKind::Started, c.started_at);
                tracing::info!(container_id = %id, pid = s.pid, "container started");
                Ok(())
            }
            Ok(other) => Err(Error::Internal(format!(
                "monitor answered {other:?} to Start"
            ))),
            Err(e) => {
                let msg = e.to_string();
                c.state = ContainerState::Exited;
                c.exit_code = 128;
                c.reason = "StartError".into();
                c.message = msg.clone();
                let now = now_nanos();
                c.started_at = now;
                c.finished_at = now;
                self.db.container_put(&c)?;
                self.events
                    .emit(id, &c.pod_id, EventKind::Stopped, c.finished_at);
                tracing::warn!(container_id = %id, error = %msg, "container failed to start");
                Err(Error::FailedPrecondition(format!(
                    "container {id}: start failed: {msg}"
                )))
            }
        }
    }

    /// Records an exit reported by a monitor (or found in its exit records).
    pub fn record_exit(
        &self,
        id: &str,
        exit_code: i32,
        _signal: i32,
        finished_at: i64,
        oom_killed: bool,
    ) -> Result<()> {
        // The monitor's report and the exit file can both bring the same exit at once:
        // only one of them may record it (and emit its event).
        let _one = self
            .exit_record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(mut c) = self.db.container_get(id)? else {
            return Ok(());
        };
        if c.state != ContainerState::Running {
            return Ok(());
        }
        c.state = ContainerState::Exited;
        c.exit_code = exit_code;
        c.finished_at = finished_at;
        c.reason = reason_for(exit_code, oom_killed).into();
        self.db.container_put(&c)?;
        self.events
            .emit(id, &c.pod_id, EventKind::Stopped, finished_at);
        if oom_killed {
            self.metrics.oom_kills.inc();
        }
        self.exits.notify_waiters();
        tracing::info!(container_id = %id, exit_code, oom_killed, "container exited");
        Ok(())
    }

    /// Applies the monitor's exit record of a running container, if it wrote one.
    pub(crate) fn apply_exit_file(&self, c: &ContainerRecord) -> Result<bool> {
        let exits = crate::monitor::entry::exits_dir(&self.pod_dir(&c.pod_id));
        let Some(e) = wire::read_exit(&exits, &c.id).map_err(|e| Error::Internal(e.to_string()))?
        else {
            return Ok(false);
        };
        self.record_exit(&c.id, e.exit_code, e.signal, e.finished_at, e.oom_killed)?;
        Ok(true)
    }

    /// StopContainer: the stop signal, then SIGKILL after `timeout` seconds. Idempotent.
    /// StopContainer. Idempotent: a stopped or unknown container is not an error (kubelet
    /// retries stops after crashes, of containers that may be gone).
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let Some(c) = self.db.container_get(id)? else {
            return Ok(());
        };
        let _pg = self.locks.lock(&c.pod_id).await;
        self.stop_container_locked(id, timeout).await
    }

    pub(crate) async fn stop_container_locked(&self, id: &str, timeout: i64) -> Result<()> {
        let _g = self.locks.lock(id).await;
        let Some(mut c) = self.db.container_get(id)? else {
            return Ok(()); // removed while we waited for the lock
        };
        match c.state {
            ContainerState::Exited => return Ok(()),
            ContainerState::Created => {
                c.state = ContainerState::Exited;
                c.reason = "Stopped".into();
                c.finished_at = now_nanos();
                self.db.container_put(&c)?;
                self.events
                    .emit(id, &c.pod_id, EventKind::Stopped, c.finished_at);
                return Ok(());
            }
            ContainerState::Running => {}
        }
        let pod = self.pod(&c.pod_id)?;
        let sig = parse_signal(&c.stop_signal).unwrap_or(nix::sys::signal::Signal::SIGTERM);
        let send = |s: nix::sys::signal::Signal| {
            client::request(
                &pod.dir,
                Body::Signal(mproto::Signal {
                    container_id: id.to_owned(),
                    signal: s as i32,
                }),
            )
        };
        if timeout > 0 {
            let _ = send(sig).await;
            if self
                .wait_exited(&c, Duration::from_secs(u64::try_from(timeout).unwrap_or(0)))
                .await
            {
                return Ok(());
            }
        }
        let _ = send(nix::sys::signal::Signal::SIGKILL).await;
        if self.wait_exited(&c, Duration::from_secs(10)).await {
            return Ok(());
        }
        // The monitor did not answer: kill through the cgroup and record it ourselves.
        if let Ok(cg) = self.cgroup_manager() {
            for pid in cg.pids(&c.cgroup).unwrap_or_default() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(0)),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if !self.apply_exit_file(&c)? {
            self.record_exit(id, 137, 9, now_nanos(), false)?;
        }
        Ok(())
    }

    async fn wait_exited(&self, c: &ContainerRecord, d: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            // Registered before the check, so an exit recorded in between still wakes us.
            let notified = self.exits.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Ok(Some(now)) = self.db.container_get(&c.id)
                && now.state == ContainerState::Exited
            {
                return true;
            }
            if self.apply_exit_file(c).unwrap_or(false) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            // Exit events wake us at once; the timer covers a monitor that cannot send one.
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }

    /// RemoveContainer: kills it if running, then removes its cgroup, writable layer and
    /// record. Idempotent.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let Some(c) = self.db.container_get(id)? else {
            return Ok(());
        };
        if c.state == ContainerState::Running {
            self.stop_container(id, 0).await?;
        }
        let _pg = self.locks.lock(&c.pod_id).await;
        let _g = self.locks.lock(id).await;
        let Some(c) = self.db.container_get(id)? else {
            return Ok(());
        };
        // Processes its main process left (it shared a pid namespace) go with it.
        crate::pods::empty_cgroup(&self.cgroup_manager()?, &c.cgroup).await;
        self.remove_container_files(&c)?;
        self.db.container_remove(id)?;
        self.events
            .emit(id, &c.pod_id, EventKind::Deleted, now_nanos());
        tracing::info!(container_id = %id, "container removed");
        // Its layers may have been held only by it (its image removed meanwhile).
        self.collect_garbage()?;
        Ok(())
    }

    pub(crate) fn remove_container_files(&self, c: &ContainerRecord) -> Result<()> {
        if let Ok(cg) = self.cgroup_manager() {
            cg.remove(&c.cgroup)?;
        }
        for d in [c.dir.clone(), self.cfg.state.join("containers").join(&c.id)] {
            if d.exists() {
                std::fs::remove_dir_all(&d)
                    .map_err(|e| Error::Internal(format!("remove {}: {e}", d.display())))?;
            }
        }
        wire::remove_exit(
            &crate::monitor::entry::exits_dir(&self.pod_dir(&c.pod_id)),
            &c.id,
        );
        Ok(())
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
    /// what needs its processes: ExecSync, exec and attach sessions.
    pub fn running_container(&self, id: &str) -> Result<ContainerRecord> {
        let c = self.container_status(id)?;
        if c.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        Ok(c)
    }

    /// ListContainers.
    pub fn list_containers(&self) -> Result<Vec<ContainerRecord>> {
        let mut out = Vec::new();
        for c in self.db.container_list()? {
            if c.state == ContainerState::Running && self.apply_exit_file(&c)? {
                out.push(self.container(&c.id)?);
            } else {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// ExecSync: runs `cmd` in the running container; (exit code, stdout, stderr).
    /// Each output stream is kept up to 8 MiB, so that a reply fits a gRPC message.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout_secs: i64,
    ) -> Result<(i32, Vec<u8>, Vec<u8>)> {
        const OUTPUT_LIMIT: u64 = 8 << 20;
        let c = self.running_container(id)?;
        if cmd.is_empty() || cmd[0].is_empty() {
            return Err(Error::InvalidArgument("cmd is empty".into()));
        }
        let spec = crate::linux::spawn::ExecSpec::for_container(&c.launch, cmd.to_vec());
        let protocol = self.pod(&c.pod_id)?.monitor_protocol;
        let (exec_spec, exec_spec_json) =
            wire::exec_request(protocol, &spec).map_err(|e| Error::Internal(e.to_string()))?;
        let r = client::request(
            &self.pod_dir(&c.pod_id),
            Body::Exec(mproto::Exec {
                container_id: id.to_owned(),
                exec_spec_json,
                timeout_ms: timeout_secs.saturating_mul(1000).max(0),
                output_limit: OUTPUT_LIMIT,
                exec_spec,
            }),
        )
        .await?;
        match r {
            Body::ExecResult(x) if x.timed_out => Err(Error::DeadlineExceeded(format!(
                "exec in container {id} timed out after {timeout_secs}s; the process and its children were killed"
            ))),
            Body::ExecResult(x) => Ok((x.exit_code, x.stdout, x.stderr)),
            other => Err(Error::Internal(format!(
                "monitor answered {other:?} to Exec"
            ))),
        }
    }

    /// UpdateContainerResources: applies new limits to the container's cgroup at once and
    /// keeps them in its record.
    pub async fn update_container_resources(
        &self,
        id: &str,
        r: &cri::LinuxContainerResources,
    ) -> Result<()> {
        let _g = self.locks.lock(id).await;
        let mut c = self.container(id)?;
        if c.state == ContainerState::Exited {
            return Err(Error::FailedPrecondition(format!(
                "container {id} has exited"
            )));
        }
        let res = resources::resources(&resource_request(r))?;
        self.cgroup_manager()?.apply(&c.cgroup, &res)?;
        c.launch.oom_score_adj = res.oom_score_adj;
        // Unset fields keep their previous values, as in the cgroup.
        let old = std::mem::take(&mut c.resources);
        c.resources = crate::spec::resources::Resources {
            cpu_shares: res.cpu_shares.or(old.cpu_shares),
            cpu_quota: res.cpu_quota.or(old.cpu_quota),
            cpu_period: res.cpu_period.or(old.cpu_period),
            cpuset_cpus: res.cpuset_cpus.clone().or(old.cpuset_cpus),
            cpuset_mems: res.cpuset_mems.clone().or(old.cpuset_mems),
            memory_limit: res.memory_limit.or(old.memory_limit),
            memory_swap_limit: res.memory_swap_limit.or(old.memory_swap_limit),
            pids_limit: res.pids_limit.or(old.pids_limit),
            hugepages: if res.hugepages.is_empty() {
                old.hugepages
            } else {
                res.hugepages.clone()
            },
            unified: if res.unified.is_empty() {
                old.unified
            } else {
                res.unified.clone()
            },
            oom_score_adj: res.oom_score_adj.or(old.oom_score_adj),
        };
        self.db.container_put(&c)?;
        tracing::info!(container_id = %id, "container resources updated");
        Ok(())
    }

    /// ReopenContainerLog.
    pub async fn reopen_container_log(&self, id: &str) -> Result<()> {
        let c = self.container(id)?;
        if c.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        client::request(
            &self.pod_dir(&c.pod_id),
            Body::ReopenLog(mproto::ReopenLog {
                container_id: id.to_owned(),
            }),
        )
        .await?;
        Ok(())
    }
}

/// Propagation from a volume's host path needs the host's mount to propagate: a shared
/// mount for BIDIRECTIONAL, shared or slave for HOST_TO_CONTAINER (as containerd checks),
/// else the container would silently see nothing.
fn check_host_propagation(volumes: &[mounts::Mount]) -> Result<()> {
    use mounts::Propagation;
    for m in volumes {
        let (needs_shared, what) = match m.propagation {
            Some(Propagation::RShared) => (true, "PROPAGATION_BIDIRECTIONAL"),
            Some(Propagation::RSlave) => (false, "PROPAGATION_HOST_TO_CONTAINER"),
            _ => continue,
        };
        let host = crate::linux::mountinfo::mount_of(Path::new(&m.source))
            .map_err(|e| Error::Internal(format!("find the mount of {}: {e}", m.source)))?;
        let ok = host.shared || (!needs_shared && host.slave);
        if !ok {
            return Err(Error::FailedPrecondition(format!(
                "volume {} asks for {what}, but its host path {} is on mount {}, which is not {}; make it so (mount --make-rshared {})",
                m.destination,
                m.source,
                host.mount_point.display(),
                if needs_shared {
                    "shared"
                } else {
                    "shared or slave"
                },
                host.mount_point.display()
            )));
        }
    }
    Ok(())
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

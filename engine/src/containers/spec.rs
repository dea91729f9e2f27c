//! What CreateContainer makes of its request before it touches the host: the image, the
//! process (command, environment, identity, confinement), devices, limits and mounts, all
//! checked. Reads the image's files; changes nothing.

use std::path::{Path, PathBuf};

use crate::api;

use super::{image_file, resource_request};
use crate::Engine;
use crate::error::{Error, Result};
use crate::linux::spawn::{ProcessSpec, StdioMode, UserNamespace};
use crate::spec::devices::{DeviceNode, DevicePolicy};
use crate::spec::hooks::Hooks;
use crate::spec::mounts::{self, Mount};
use crate::spec::resources::{self, Resources};
use crate::spec::{process, security};
use crate::state::records::{NsMode, PodRecord};

/// A container as CreateContainer plans it.
#[derive(Debug)]
pub(super) struct Plan {
    pub image_name: String,
    pub image_id: String,
    pub stop_signal: String,
    /// The image's layer directories, top first.
    pub layers: Vec<PathBuf>,
    pub process: ProcessSpec,
    /// berth's default AppArmor profile is asked for and not loaded yet.
    pub load_apparmor: bool,
    pub devices: Vec<DeviceNode>,
    pub device_policy: DevicePolicy,
    pub res: Resources,
    /// The CRI volumes (for ContainerStatus), and every mount.
    pub volume_mounts: Vec<Mount>,
    /// Image volumes, mounted on the host when the container is created.
    pub image_volumes: Vec<super::image_volumes::ImageVolume>,
    pub mounts: Vec<Mount>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub readonly_rootfs: bool,
    pub new_pid_namespace: bool,
    pub pid_target: Option<String>,
    /// It joins the pod's shared pid namespace (whose init's cgroup is made with it).
    pub joins_pod_pid_namespace: bool,
    pub userns: Option<UserNamespace>,
    pub log_path: String,
    pub stdio: StdioMode,
    /// OCI hooks its CDI devices asked for (bundle and annotations filled in at create).
    pub hooks: Option<Hooks>,
}

impl Engine {
    /// Checks a CreateContainer request against pod `pod` and the node, and plans it.
    pub(super) fn plan_container(
        &self,
        pod: &PodRecord,
        config: &api::ContainerConfig,
        sandbox_config: Option<&api::PodSandboxConfig>,
    ) -> Result<Plan> {
        let image_name = config.image.clone();
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
        if !config.stop_signal.is_empty() && super::parse_signal(&config.stop_signal).is_none() {
            return Err(Error::InvalidArgument(format!(
                "config.stop_signal {:?}: not a signal berth can send (real-time signals are not supported)",
                config.stop_signal
            )));
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
                Some(t) if t.pod_id == pod.id => Some(target),
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "security_context.namespace_options.target_id: {target:?} is not a container of pod {}",
                        pod.id
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
        let joins_pod_pid_namespace = pid_mode == 0 && pod.pid != NsMode::Node;

        // CDI devices: their edits (environment, device nodes, mounts, groups).
        let (cdi, hooks) = self.cdi_edits(config)?;

        // The process.
        let argv = process::command_line(&image.config, &config.command, &config.args)?;
        let envs: Vec<(String, String)> = config
            .envs
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .chain(cdi.env.iter().filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            }))
            .collect();
        let env = process::environment(&image.config.env, &envs, &pod.hostname)?;
        let cwd = process::working_dir(&image.config, &config.working_dir)?;
        let passwd = image_file(&layers, "etc/passwd").unwrap_or_default();
        let group = image_file(&layers, "etc/group").unwrap_or_default();
        let user = process::resolve_user(
            &image.config.user,
            &process::UserRequest {
                run_as_user: sc.run_as_user,
                run_as_username: sc.run_as_username.clone(),
                run_as_group: sc.run_as_group,
                supplemental_groups: sc
                    .supplemental_groups
                    .iter()
                    .copied()
                    .chain(cdi.additional_gids.iter().map(|g| i64::from(*g)))
                    .collect(),
                strict_groups: sc.supplemental_groups_strict,
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
            let host = crate::linux::apparmor::host_state();
            let a = security::apparmor_profile(
                sc.apparmor.as_ref(),
                legacy_apparmor,
                host,
                security::apparmor_loaded,
            )?;
            if host == security::HostAppArmor::NoParser && a == security::AppArmor::Unconfined {
                tracing::warn!(
                    container = %config.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or(""),
                    "AppArmor is enabled but apparmor_parser is missing: the container runs unconfined (install the apparmor package)"
                );
            }
            a
        };
        let load_apparmor = apparmor == security::AppArmor::Default
            && !security::apparmor_loaded(crate::spec::apparmor::DEFAULT_PROFILE);
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
            let devices: Vec<api::Device> = config
                .devices
                .iter()
                .cloned()
                .chain(cdi.device_nodes.iter().map(|n| api::Device {
                    container_path: n.path.clone(),
                    host_path: n.host_path.clone().unwrap_or_else(|| n.path.clone()),
                    permissions: n.permissions.clone().unwrap_or_default(),
                }))
                .collect();
            let (mut nodes, extra) = crate::spec::devices::requested(&devices)?;
            // A CDI node's own mode and owner, where its spec gives them.
            for n in &cdi.device_nodes {
                if let Some(node) = nodes.iter_mut().find(|d| d.path == n.path) {
                    node.mode = n.file_mode.unwrap_or(node.mode);
                    node.uid = n.uid.unwrap_or(node.uid);
                    node.gid = n.gid.unwrap_or(node.gid);
                }
            }
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
        let (image_vols, host_vols): (Vec<_>, Vec<_>) =
            config.mounts.iter().partition(|m| !m.image.is_empty());
        let image_volumes = self.image_volumes(&image_vols)?;
        let vols: Vec<mounts::VolumeRequest> = host_vols
            .iter()
            .map(|m| mounts::VolumeRequest {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                propagation: m.propagation,
                recursive_read_only: m.recursive_read_only,
            })
            .collect();
        let mut volume_mounts = mounts::volume_mounts(&vols, |p| p.exists())?;
        // Image volumes are read-only binds of what create mounts in the container's
        // directory (their source is set there).
        for v in &image_volumes {
            if volume_mounts.iter().any(|m| m.destination == v.destination) {
                return Err(Error::InvalidArgument(format!(
                    "config.mounts: {} is mounted twice",
                    v.destination
                )));
            }
            volume_mounts.push(Mount::bind(&v.destination, Path::new(""), true));
        }
        for m in &cdi.mounts {
            if !Path::new(&m.host_path).exists() {
                return Err(Error::InvalidArgument(format!(
                    "CDI mount {} -> {}: the host path does not exist",
                    m.host_path, m.container_path
                )));
            }
            let mut mount = Mount::bind(
                &m.container_path,
                Path::new(&m.host_path),
                m.options.iter().any(|o| o == "ro"),
            );
            mount.options.extend(
                m.options
                    .iter()
                    .filter(|o| !matches!(o.as_str(), "bind" | "rbind" | "ro" | "rw"))
                    .cloned(),
            );
            mount.options.dedup();
            volume_mounts.push(mount);
        }
        check_host_propagation(&volume_mounts)?;
        if !sc.privileged {
            self.check_protected_paths(&vols)?;
        }
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

        let log_path = container_log_path(&pod.log_directory, &config.log_path)?;
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
        Ok(Plan {
            image_name,
            image_id: image.id.to_string(),
            stop_signal: if config.stop_signal.is_empty() {
                image.config.stop_signal.clone()
            } else {
                config.stop_signal.clone()
            },
            layers,
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
            load_apparmor,
            devices: device_nodes,
            device_policy,
            res,
            volume_mounts,
            image_volumes,
            mounts: all_mounts,
            masked_paths,
            readonly_paths,
            readonly_rootfs: sc.readonly_rootfs,
            new_pid_namespace,
            pid_target,
            joins_pod_pid_namespace,
            userns,
            log_path,
            hooks,
            stdio: crate::linux::spawn::StdioMode {
                stdin: config.stdin,
                stdin_once: config.stdin && config.stdin_once,
                tty: config.tty,
            },
        })
    }
}

impl Engine {
    /// The CDI edits of the devices a request names (`CDI_devices` and `cdi.k8s.io/`
    /// annotations), with their hooks sorted by OCI point; none when it names none.
    fn cdi_edits(
        &self,
        config: &api::ContainerConfig,
    ) -> Result<(crate::spec::cdi::ContainerEdits, Option<Hooks>)> {
        use crate::spec::cdi;
        let names = cdi::requested(&config.cdi_devices, &config.annotations);
        if names.is_empty() {
            return Ok(Default::default());
        }
        let edits = cdi::Registry::load(&self.cfg.cdi_spec_dirs).resolve(&names)?;
        if edits.hooks.is_empty() {
            return Ok((edits, None));
        }
        let mut hooks = Hooks::default();
        for h in &edits.hooks {
            hooks.add(&h.hook_name, h.hook.clone()).map_err(|e| {
                Error::InvalidArgument(format!("CDI devices {}: {e}", names.join(", ")))
            })?;
        }
        Ok((edits, Some(hooks)))
    }

    /// Refuses hostPath volumes that expose berth's own root, state or socket (the rule
    /// `[security] protect_runtime_paths`), comparing real paths so that a symlink to them
    /// is caught too.
    fn check_protected_paths(&self, vols: &[mounts::VolumeRequest]) -> Result<()> {
        let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
        let protected: Vec<PathBuf> = self.cfg.protected_paths.iter().map(|p| real(p)).collect();
        for (i, v) in vols.iter().enumerate() {
            let host = real(Path::new(&v.host_path));
            if let Some(p) = mounts::protected_overlap(&host, v.readonly, &protected) {
                return Err(Error::InvalidArgument(format!(
                    "config.mounts[{i}].host_path {}: it would give a non-privileged container {} berth's own {} (rule [security] protect_runtime_paths)",
                    v.host_path,
                    if v.readonly {
                        "read access to"
                    } else {
                        "write access to"
                    },
                    p.display()
                )));
            }
        }
        Ok(())
    }
}

/// The container's log file: `log_path` (relative, no `..`) beneath the pod's log directory;
/// none when either is empty (kubelet always sends both; crictl may not).
pub fn container_log_path(log_directory: &str, log_path: &str) -> Result<String> {
    if log_directory.is_empty() || log_path.is_empty() {
        return Ok(String::new());
    }
    let rel = Path::new(log_path);
    let bad = rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        || log_path.ends_with('/')
        || log_path.chars().any(char::is_control);
    if bad {
        return Err(Error::InvalidArgument(format!(
            "config.log_path {:?}: must be a relative file path beneath the pod's log directory, without '.' or '..' components",
            log_path.chars().take(200).collect::<String>()
        )));
    }
    Ok(Path::new(log_directory).join(rel).display().to_string())
}

/// Propagation from a volume's host path needs the host's mount to propagate: a shared
/// mount for BIDIRECTIONAL, shared or slave for HOST_TO_CONTAINER (as containerd checks),
/// else the container would silently see nothing.
fn check_host_propagation(volumes: &[Mount]) -> Result<()> {
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

//! Pod sandboxes: run, stop, remove, status, list.
//!
//! A pod is a run directory (`<state>/pods/<id>`: hostname, hosts, resolv.conf, /dev/shm,
//! the monitor's socket and exit records), a cgroup, and a monitor process that holds the
//! pod's namespaces (the network one bind-mounted at `<state>/netns/<id>`). The life cycle
//! is drawn on [`PodState`]. Every multi-step operation undoes what it did when a later
//! step fails, so no failed call leaves anything behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_proto::cri;
use nix::mount::{MntFlags, umount2};

use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::linux::cgroups::manager::CgroupManager;
use crate::monitor::{client, entry::MonitorArgs};
use crate::state::records::{ContainerState, NsMode, PodRecord, PodState, RECORD_VERSION};
use crate::{CgroupDriver, Engine};

/// The cgroup (under the pod's) of a shared pid namespace's init.
pub const POD_INIT_CGROUP: &str = "pod-init";

/// A random 64-hex-digit id, like containerd's and CRI-O's.
pub fn new_id() -> String {
    let mut b = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    hex::encode(b)
}

pub(crate) fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn ns_mode(v: i32) -> NsMode {
    match v {
        0 => NsMode::Pod,
        1 => NsMode::Container,
        2 => NsMode::Node,
        _ => NsMode::Target,
    }
}

/// kubelet's cgroup parent as a relative cgroupfs path. With the systemd driver kubelet
/// names slices (`kubepods-burstable-pod123.slice`); they nest by their dashes.
pub fn cgroup_parent_path(driver: CgroupDriver, parent: &str) -> String {
    let p = parent.trim_matches('/');
    if driver == CgroupDriver::Systemd && p.ends_with(".slice") && !p.contains('/') {
        let name = p.trim_end_matches(".slice");
        let mut out = Vec::new();
        let mut acc = String::new();
        for part in name.split('-') {
            if !acc.is_empty() {
                acc.push('-');
            }
            acc.push_str(part);
            out.push(format!("{acc}.slice"));
        }
        return out.join("/");
    }
    p.to_owned()
}

/// The kernel's limit on a host name (HOST_NAME_MAX).
const HOST_NAME_MAX: usize = 64;

/// Checks a pod's explicit hostname: what the kernel takes (1 to 64 bytes) and what DNS
/// names are made of (letters, digits, '-' and '.', starting and ending with a letter or
/// digit), so that it can go into /etc/hostname and /etc/hosts as one word.
pub fn check_hostname(h: &str) -> Result<()> {
    let valid_chars = h
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    let ends = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if h.is_empty()
        || h.len() > HOST_NAME_MAX
        || !valid_chars
        || !ends(h.bytes().next())
        || !ends(h.bytes().last())
        || h.contains("..")
    {
        let shown: String = h.chars().take(80).collect();
        return Err(Error::InvalidArgument(format!(
            "config.hostname {shown:?}{}: a hostname is 1 to {HOST_NAME_MAX} bytes of letters, digits, '-' and '.', starting and ending with a letter or digit (leave it empty for the node's hostname)",
            if h.chars().count() > 80 { "..." } else { "" }
        )));
    }
    Ok(())
}

/// The hostname a pod gets: none (the node's UTS namespace) with the node's network; the
/// one asked for; or, when none was asked for, the node's own, as containerd and CRI-O do
/// (crictl's and critest's pod configs leave it empty).
pub fn pod_hostname(
    asked: &str,
    node_network: bool,
    node_name: impl FnOnce() -> String,
) -> Result<String> {
    if node_network {
        return Ok(String::new());
    }
    if asked.is_empty() {
        let node = node_name();
        // A node whose own name the kernel holds is always a valid UTS name; anything odd
        // (empty, unreadable) falls back to a name every tool accepts.
        return Ok(if node.is_empty() {
            "localhost".into()
        } else {
            node
        });
    }
    check_hostname(asked)?;
    Ok(asked.to_owned())
}

/// Checks kubelet's DNS config before it becomes lines of resolv.conf: servers are IP
/// addresses, search domains and options single words without control characters.
pub fn check_dns_config(dns: Option<&cri::DnsConfig>) -> Result<()> {
    let Some(d) = dns else { return Ok(()) };
    for s in &d.servers {
        if s.parse::<std::net::IpAddr>().is_err() {
            return Err(Error::InvalidArgument(format!(
                "config.dns_config.servers: {:?} is not an IP address",
                s.chars().take(80).collect::<String>()
            )));
        }
    }
    let word = |w: &str| {
        !w.is_empty() && w.len() <= 253 && w.chars().all(|c| !c.is_whitespace() && !c.is_control())
    };
    for (field, items) in [("searches", &d.searches), ("options", &d.options)] {
        if let Some(bad) = items.iter().find(|w| !word(w)) {
            return Err(Error::InvalidArgument(format!(
                "config.dns_config.{field}: {:?} is not a single word of at most 253 bytes",
                bad.chars().take(80).collect::<String>()
            )));
        }
    }
    Ok(())
}

/// The pod's /etc/resolv.conf: kubelet's DNS config, or the node's file.
pub fn resolv_conf(dns: Option<&cri::DnsConfig>) -> String {
    match dns {
        Some(d) if !d.servers.is_empty() || !d.searches.is_empty() || !d.options.is_empty() => {
            let mut s = String::new();
            if !d.searches.is_empty() {
                s.push_str(&format!("search {}\n", d.searches.join(" ")));
            }
            for n in &d.servers {
                s.push_str(&format!("nameserver {n}\n"));
            }
            if !d.options.is_empty() {
                s.push_str(&format!("options {}\n", d.options.join(" ")));
            }
            s
        }
        _ => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    }
}

/// The pod's /etc/hosts.
pub fn hosts_file(hostname: &str) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    if !hostname.is_empty() {
        s.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    s
}

/// Undo steps, run in reverse unless disarmed.
struct Rollback(Vec<Box<dyn FnOnce() + Send>>);

impl Rollback {
    fn push(&mut self, f: impl FnOnce() + Send + 'static) {
        self.0.push(Box::new(f));
    }
    fn disarm(mut self) {
        self.0.clear();
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        while let Some(f) = self.0.pop() {
            f();
        }
    }
}

/// Unmounts what a pod's monitor mounted in its run directory: /dev/shm and the user
/// namespace.
fn unmount_pod_files(dir: &Path) {
    let _ = umount2(&dir.join("shm"), MntFlags::MNT_DETACH);
    unmount_file(&dir.join(crate::monitor::entry::USERNS_FILE));
}

fn unmount_file(p: &Path) {
    let _ = umount2(p, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(p);
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

    /// RunPodSandbox.
    pub async fn run_pod(
        self: &std::sync::Arc<Self>,
        config: &cri::PodSandboxConfig,
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
        let _names = self.locks.lock("pod-names").await;
        if let Some(p) = self.db.pod_list()?.into_iter().find(|p| {
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
        let id = new_id();
        let dir = self.cfg.state.join("pods").join(&id);
        let mut undo = Rollback(Vec::new());
        crate::durable::create_dir_all(&dir, 0o711)?;
        {
            let d = dir.clone();
            undo.push(move || {
                unmount_pod_files(&d);
                let _ = std::fs::remove_dir_all(&d);
            });
        }
        std::fs::write(
            dir.join("hostname"),
            format!(
                "{}\n",
                if hostname.is_empty() {
                    &node_name
                } else {
                    &hostname
                }
            ),
        )
        .map_err(|e| Error::Internal(format!("write hostname: {e}")))?;
        std::fs::write(dir.join("hosts"), hosts_file(&hostname))
            .map_err(|e| Error::Internal(format!("write hosts: {e}")))?;
        std::fs::write(
            dir.join("resolv.conf"),
            resolv_conf(config.dns_config.as_ref()),
        )
        .map_err(|e| Error::Internal(format!("write resolv.conf: {e}")))?;

        // The pod cgroup: kubelet's when it names one, else ours under the configured parent.
        let cg = self.cgroup_manager()?;
        let (cgroup, cgroup_owned) = if linux.cgroup_parent.is_empty() {
            (format!("{}/pod-{id}", self.cfg.cgroup_parent), true)
        } else {
            (
                cgroup_parent_path(self.cfg.cgroup_driver, &linux.cgroup_parent),
                false,
            )
        };
        cg.create(&cgroup)?;
        if cgroup_owned {
            let (cg2, c) = (cg.clone(), cgroup.clone());
            undo.push(move || {
                let _ = cg2.remove(&c);
            });
        }

        let netns = (network == NsMode::Pod).then(|| self.cfg.state.join("netns").join(&id));
        if let Some(n) = &netns {
            let n = n.clone();
            undo.push(move || unmount_file(&n));
        }
        let args = MonitorArgs {
            pod_id: id.clone(),
            dir: dir.clone(),
            new_net: netns.clone(),
            new_ipc: ipc == NsMode::Pod,
            hostname: hostname.clone(),
            userns: userns.clone(),
        };
        let monitor_pid = client::spawn(&self.cfg.monitor_exe, &args).await?;
        undo.push(move || {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(monitor_pid).unwrap_or(0)),
                nix::sys::signal::Signal::SIGKILL,
            );
        });
        // The network, once the namespace exists (CRI sets it up in RunPodSandbox).
        let net = match &netns {
            Some(n) => {
                let net = self
                    .setup_pod_network(&id, n, md, &config.port_mappings)
                    .await?;
                let (engine, pod_id, n2) = (self.clone(), id.clone(), net.clone());
                undo.push(move || {
                    let _ = engine.teardown_pod_network(&pod_id, &n2);
                });
                Some(net)
            }
            None => None,
        };
        let rec = PodRecord {
            schema_version: RECORD_VERSION,
            id: id.clone(),
            name: md.name.clone(),
            namespace: md.namespace.clone(),
            uid: md.uid.clone(),
            attempt: md.attempt,
            state: PodState::Ready,
            created_at: now_nanos(),
            labels: config.labels.clone().into_iter().collect(),
            annotations: config.annotations.clone().into_iter().collect(),
            hostname,
            log_directory: config.log_directory.clone(),
            runtime_handler: runtime_handler.to_owned(),
            network,
            pid,
            ipc,
            netns,
            dir,
            cgroup,
            cgroup_owned,
            monitor_pid,
            sysctls: linux
                .sysctls
                .clone()
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
            privileged: sc.privileged,
            reason: String::new(),
            net,
            userns,
            monitor_protocol: crate::monitor::wire::PROTOCOL,
        };
        self.db.pod_put(&rec)?;
        undo.disarm();
        self.events
            .emit(&id, &id, EventKind::Created, rec.created_at);
        self.events.emit(&id, &id, EventKind::Started, now_nanos());
        self.watch_pod(&rec);
        tracing::info!(pod_id = %id, name = %rec.name, namespace = %rec.namespace, "pod sandbox running");
        Ok(id)
    }

    /// Follows a pod monitor's exit events; when the monitor goes away, the pod is no
    /// longer ready and its running containers are reported exited.
    pub(crate) fn watch_pod(self: &std::sync::Arc<Self>, pod: &PodRecord) {
        let engine = self.clone();
        let dir = pod.dir.clone();
        let pod_id = pod.id.clone();
        tokio::spawn(async move {
            let e2 = engine.clone();
            let r = client::watch(&dir, move |ev| {
                if let Err(err) = e2.record_exit(&ev.container_id, ev.exit_code, ev.signal, ev.finished_at, ev.oom_killed) {
                    tracing::warn!(container_id = %ev.container_id, error = %err, "cannot record exit");
                }
            })
            .await;
            if let Err(e) = r {
                tracing::debug!(pod_id = %pod_id, error = %e, "monitor watch ended");
            }
            engine.monitor_gone(&pod_id).await;
        });
    }

    /// The monitor's connection closed: if the pod was not stopped on purpose, it died.
    async fn monitor_gone(&self, pod_id: &str) {
        let _g = self.locks.lock(pod_id).await;
        let Ok(Some(mut pod)) = self.db.pod_get(pod_id) else {
            return;
        };
        if pod.state != PodState::Ready {
            return;
        }
        tracing::warn!(pod_id, "pod monitor is gone; the pod is not ready any more");
        self.reap_orphaned_containers(&pod, "the pod's monitor process died");
        if let Err(e) = self.release_pod_network(&mut pod) {
            tracing::warn!(pod_id, error = %e, "cannot tear down the network of a pod whose monitor died");
        }
        pod.state = PodState::NotReady;
        pod.reason = "MonitorGone".into();
        if self.db.pod_put(&pod).is_ok() {
            self.events
                .emit(pod_id, pod_id, EventKind::Stopped, now_nanos());
        }
    }

    /// Kills what is left in the containers of a pod whose monitor is gone and marks them
    /// exited, with the exit recorded on disk when the monitor had written one.
    pub(crate) fn reap_orphaned_containers(&self, pod: &PodRecord, why: &str) {
        let Ok(cg) = self.cgroup_manager() else {
            return;
        };
        for c in self.db.container_list().unwrap_or_default() {
            if c.pod_id != pod.id || c.state != ContainerState::Running {
                continue;
            }
            if self.apply_exit_file(&c).unwrap_or(false) {
                continue;
            }
            for pid in cg.pids(&c.cgroup).unwrap_or_default() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(0)),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let mut c = c;
            c.state = ContainerState::Exited;
            c.finished_at = now_nanos();
            c.exit_code = 137;
            c.reason = "Unknown".into();
            c.message = why.to_owned();
            if self.db.container_put(&c).is_ok() {
                self.events
                    .emit(&c.id, &pod.id, EventKind::Stopped, c.finished_at);
            }
        }
    }

    /// StopPodSandbox: kills the pod's containers, ends its monitor, releases its
    /// namespaces. Idempotent; an unknown id is not an error.
    pub async fn stop_pod(&self, id: &str) -> Result<()> {
        let _g = self.locks.lock(id).await;
        let Some(mut pod) = self.db.pod_get(id)? else {
            return Ok(());
        };
        for c in self.db.container_list()? {
            if c.pod_id == pod.id && c.state == ContainerState::Running {
                self.stop_container_locked(&c.id, 0).await?;
            }
        }
        // The network goes first, while the namespace still exists; its leases are
        // released (CRI tears the network down on stop, not on remove).
        let had_net = pod.net.is_some();
        self.release_pod_network(&mut pod)?;
        if had_net {
            self.db.pod_put(&pod)?;
        }
        self.end_monitor(&pod).await;
        if let Some(n) = &pod.netns {
            unmount_file(n);
        }
        unmount_pod_files(&pod.dir);
        if pod.state == PodState::Ready {
            pod.state = PodState::NotReady;
            pod.reason = String::new();
            self.db.pod_put(&pod)?;
            self.events.emit(id, id, EventKind::Stopped, now_nanos());
        }
        tracing::info!(pod_id = %id, "pod sandbox stopped");
        Ok(())
    }

    /// Asks the monitor to shut down and waits for it to exit (SIGKILL after 5 s).
    async fn end_monitor(&self, pod: &PodRecord) {
        let _ = client::request(
            &pod.dir,
            berth_proto::monitor::frame::Body::Shutdown(berth_proto::monitor::Shutdown {}),
        )
        .await;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pod.monitor_pid).unwrap_or(0));
        if pod.monitor_pid == 0 {
            return;
        }
        // The monitor exits within a millisecond or two of Shutdown: poll finely, then back
        // off; SIGKILL after 5 s.
        let start = tokio::time::Instant::now();
        let mut killed = false;
        let mut delay = Duration::from_micros(500);
        while start.elapsed() < Duration::from_secs(10) {
            if !process_is(pod.monitor_pid, &pod.id) {
                return;
            }
            if !killed && start.elapsed() > Duration::from_secs(5) {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                killed = true;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }

    /// RemovePodSandbox: stops the pod if needed, removes its containers and everything
    /// the pod had on the node. Idempotent.
    pub async fn remove_pod(&self, id: &str) -> Result<()> {
        if self.db.pod_get(id)?.is_none() {
            return Ok(());
        }
        self.stop_pod(id).await?;
        let _g = self.locks.lock(id).await;
        let Some(pod) = self.db.pod_get(id)? else {
            return Ok(());
        };
        for c in self.db.container_list()? {
            if c.pod_id == pod.id {
                // Processes its main process left (it shared a pid namespace) go with it.
                empty_cgroup(&self.cgroup_manager()?, &c.cgroup).await;
                self.remove_container_files(&c)?;
                self.db.container_remove(&c.id)?;
                self.events.emit(&c.id, id, EventKind::Deleted, now_nanos());
            }
        }
        let cg = self.cgroup_manager()?;
        // The shared pid namespace's init dies with its monitor; one left by a monitor that
        // was killed before its init was set to die with it is killed here.
        let init = format!("{}/{POD_INIT_CGROUP}", pod.cgroup);
        empty_cgroup(&cg, &init).await;
        if pod.cgroup_owned {
            cg.remove(&pod.cgroup)?;
        } else {
            // The init had a cgroup of its own under kubelet's.
            cg.remove(&init)?;
        }
        if pod.dir.exists() {
            std::fs::remove_dir_all(&pod.dir)
                .map_err(|e| Error::Internal(format!("remove {}: {e}", pod.dir.display())))?;
        }
        self.db.pod_remove(id)?;
        self.events.emit(id, id, EventKind::Deleted, now_nanos());
        tracing::info!(pod_id = %id, "pod sandbox removed");
        self.collect_garbage()?;
        Ok(())
    }

    /// PodSandboxStatus (the record; the agent converts it).
    pub fn pod_status(&self, id: &str) -> Result<PodRecord> {
        self.pod(id)
    }

    /// ListPodSandbox.
    pub fn list_pods(&self) -> Result<Vec<PodRecord>> {
        Ok(self.db.pod_list()?)
    }

    /// At start-up: reconnect to the monitors of ready pods; a pod whose monitor is gone
    /// (crash, or a reboot emptied the run directory) becomes not ready, its containers
    /// exited; leftover namespace mounts are released.
    pub async fn recover_pods(self: &std::sync::Arc<Self>) -> Result<()> {
        // An upgraded berth's default AppArmor profile replaces the one loaded before.
        if crate::spec::security::host_apparmor()
            && let Err(e) = crate::linux::apparmor::load_default()
        {
            tracing::warn!(error = %e, "cannot load berth's default AppArmor profile; containers asking for it will be refused");
        }
        self.sweep_unrecorded_pods().await?;
        for mut pod in self.db.pod_list()? {
            if pod.state != PodState::Ready {
                continue;
            }
            let alive =
                process_is(pod.monitor_pid, &pod.id) && client::connect(&pod.dir).await.is_ok();
            if alive {
                // Exits that happened while berthd was down.
                for c in self.db.container_list()? {
                    if c.pod_id == pod.id && c.state == ContainerState::Running {
                        let _ = self.apply_exit_file(&c);
                    }
                }
                self.watch_pod(&pod);
                tracing::info!(pod_id = %pod.id, "reconnected to pod monitor");
            } else {
                tracing::warn!(pod_id = %pod.id, "pod monitor is gone (crash or reboot); marking the pod not ready");
                self.reap_orphaned_containers(
                    &pod,
                    "the pod's monitor was gone when berthd started",
                );
                // Release the network while the namespace mount still exists (CNI
                // plugins DEL best with it; the built-in veth goes with it).
                if let Err(e) = self.release_pod_network(&mut pod) {
                    tracing::warn!(pod_id = %pod.id, error = %e, "cannot release the network of a pod whose monitor is gone");
                    pod.net = None;
                }
                if let Some(n) = &pod.netns {
                    unmount_file(n);
                }
                unmount_pod_files(&pod.dir);
                pod.state = PodState::NotReady;
                pod.reason = "MonitorGone".into();
                self.db.pod_put(&pod)?;
                self.events
                    .emit(&pod.id, &pod.id, EventKind::Stopped, now_nanos());
            }
        }
        self.recover_network()?;
        Ok(())
    }

    /// Pods whose RunPodSandbox a crash cut short: a run directory, maybe a monitor, a
    /// namespace mount and a cgroup, but no record, so nothing can refer to them. Removed
    /// before anything else happens, so that their addresses are free for new pods.
    async fn sweep_unrecorded_pods(&self) -> Result<()> {
        let known: std::collections::BTreeSet<String> =
            self.db.pod_list()?.into_iter().map(|p| p.id).collect();
        let mut orphans = std::collections::BTreeSet::new();
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
            let dir = self.pod_dir(&id);
            let _ = client::request(
                &dir,
                berth_proto::monitor::frame::Body::Shutdown(berth_proto::monitor::Shutdown {}),
            )
            .await;
            for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if pid != std::process::id() && process_is(pid, &id) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(0)),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            unmount_file(&self.cfg.state.join("netns").join(&id));
            unmount_pod_files(&dir);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .map_err(|e| Error::Internal(format!("remove {}: {e}", dir.display())))?;
            }
            if let Ok(cg) = self.cgroup_manager() {
                let own = format!("{}/pod-{id}", self.cfg.cgroup_parent);
                // The monitor may take a moment to leave the cgroup after SIGKILL.
                for _ in 0..50 {
                    if cg.remove(&own).is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        Ok(())
    }

    pub(crate) fn pod_dir(&self, id: &str) -> PathBuf {
        self.cfg.state.join("pods").join(id)
    }
}

/// Kills what is still in cgroup `rel` and waits (a second at most) until it is empty, so
/// that it can be removed.
pub(crate) async fn empty_cgroup(cg: &CgroupManager, rel: &str) {
    for _ in 0..100 {
        let pids = cg.pids(rel).unwrap_or_default();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            if let Ok(p) = i32::try_from(pid)
                && p > 0
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
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
    fn systemd_slices_nest_by_dashes() {
        assert_eq!(
            cgroup_parent_path(CgroupDriver::Systemd, "kubepods-burstable-pod12.slice"),
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12.slice"
        );
        assert_eq!(
            cgroup_parent_path(CgroupDriver::Cgroupfs, "/kubepods/burstable/pod12"),
            "kubepods/burstable/pod12"
        );
    }

    #[test]
    fn resolv_conf_from_dns_config() {
        let d = cri::DnsConfig {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&d)),
            "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n"
        );
        assert!(hosts_file("web-0").ends_with("127.0.1.1\tweb-0\n"));
        assert_eq!(new_id().len(), 64);
        assert_ne!(new_id(), new_id());
    }
}

//! berth-engine: all of berth's runtime state and behaviour, with no gRPC types inside.
//!
//! Module map (grows issue by issue; see `../shared/design.md`):
//! - [`state`]: the redb state db, single source of truth, schema and migrations
//! - [`durable`]: atomic, fsynced file writes
//! - [`linux`]: the kernel-facing layer (cgroup layout, node probes; later namespaces,
//!   mounts, spawn)
//! - [`error`]: the engine's error type and its [`ErrorKind`] classification
//!
//! The [`Engine`] facade is what the agent calls. It owns the root lock: one berthd per root.
#![deny(unsafe_code)]

pub mod api;
pub mod clock;
pub mod containers;
pub mod content;
pub mod durable;
pub mod error;
pub mod events;
pub mod failpoints;
pub mod gc;
pub mod id;
pub mod images;
pub mod linux;
pub mod monitor;
pub mod network;
pub mod pods;
mod rollback;
pub mod snapshots;
pub mod spec;
pub mod state;
pub mod stats;
pub mod streams;
pub mod systemd;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use berth_cni::{PodCidr, Readiness};
use error::IoContext;
pub use error::{Error, ErrorKind, Result};
use linux::cgroups::CgroupLayout;
use state::StateDb;
use state::schema::NODE_POD_CIDR;

/// The build's version, as reported by CRI Version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How cgroups are managed: directly through cgroupfs, or through systemd slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    #[default]
    Cgroupfs,
    Systemd,
}

/// What the engine needs from the daemon's configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Persistent state: state db, content store, snapshots.
    pub root: PathBuf,
    /// Run state: monitor sockets, netns binds, exit files (a tmpfs, emptied by reboot).
    pub state: PathBuf,
    pub cgroup_driver: CgroupDriver,
    pub cgroup_parent: String,
    /// Pod networking: mode, bridge, MTU, nft table.
    pub network: network::NetworkConfig,
    /// Pod CIDRs from the config file; kubelet's UpdateRuntimeConfig takes precedence.
    pub pod_cidrs: Vec<PodCidr>,
    /// Registry hosts: mirrors, plain HTTP, CA files.
    pub registry: images::registry::RegistryConfig,
    /// Layers fetched at once per pull.
    pub max_concurrent_downloads: usize,
    /// Images reported as pinned (kubelet never garbage-collects them).
    pub pinned_images: Vec<String>,
    /// Flush every unpacked layer to disk before committing it (power-loss safety).
    pub sync_layers: bool,
    /// The berthd binary, re-executed as `berthd monitor` for each pod.
    pub monitor_exe: PathBuf,
    /// What the kernel offers (found by berthd at start-up, before it has threads).
    pub kernel: linux::probe::KernelFeatures,
    /// Where CDI device specs are read, in rising priority.
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// berth's own paths (root, state, CRI socket) that no non-privileged container may
    /// mount, nor mount a directory holding them writable; empty: no such rule.
    pub protected_paths: Vec<PathBuf>,
}

/// A CRI runtime condition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Condition {
    pub kind: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// The runtime facade.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    db: Arc<StateDb>,
    content: Arc<content::ContentStore>,
    snapshots: Arc<snapshots::SnapshotStore>,
    puller: images::pull::Puller,
    /// Normalised names of pinned images.
    pinned: Vec<String>,
    cgroups: Option<CgroupLayout>,
    /// Per-pod and per-container locks (pod before container).
    locks: Arc<images::lease::Inflight>,
    /// Woken whenever a container exit is recorded.
    exits: tokio::sync::Notify,
    pod_cidrs: RwLock<Vec<PodCidr>>,
    /// Leases, port mappings and the node network's state.
    net: std::sync::Mutex<network::NetState>,
    /// The MTU of pod interfaces (configured, or the uplink's).
    mtu: u32,
    /// CPU samples and writable-layer sizes between stats calls.
    stats: stats::StatsCache,
    /// The metric families recorded as things happen.
    metrics: Arc<berth_metrics::Metrics>,
    /// Lifecycle events for GetContainerEvents.
    events: events::Events,
    /// Serialises the recording of container exits (check-then-write on the record).
    exit_record: std::sync::Mutex<()>,
    /// Pods whose monitor's exit events berthd follows (see `exits_followed`).
    followed: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The connection to systemd (driver `systemd`), made at first use.
    systemd: tokio::sync::OnceCell<systemd::Systemd>,
    /// Serialises making and stopping the delegated scope of berth's own pods
    /// (`pods::own_scope`) against the making of their cgroups.
    own_scope_lock: tokio::sync::Mutex<()>,
    /// Whether CRIU can checkpoint on this node (asked at the first checkpoint).
    criu: tokio::sync::OnceCell<std::result::Result<String, String>>,
    /// The pod init program written into the run directory at open (None: each monitor
    /// runs the init's loop in a confined copy of itself).
    pod_init_program: Option<PathBuf>,
    started: SystemTime,
    // Held for the life of the engine; dropping it releases the root lock.
    _lock: File,
}

impl Engine {
    /// Opens the engine on its root: creates the directories, takes the root lock (refusing
    /// if another berthd holds it), opens and migrates the state db.
    pub fn open(cfg: EngineConfig) -> Result<Engine> {
        durable::create_dir_all(&cfg.root, 0o711)?;
        durable::create_dir_all(&cfg.state, 0o711)?;
        let lock = lock_root(&cfg.root)?;
        let db = Arc::new(StateDb::open(&cfg.root.join("state.redb"))?);
        let content = Arc::new(content::ContentStore::open(&cfg.root.join("content"))?);
        let snapshots = Arc::new(snapshots::SnapshotStore::open(&cfg.root.join("snapshots"))?);
        let leases = Arc::new(images::lease::Leases::default());
        let puller = images::pull::Puller {
            db: db.clone(),
            content: content.clone(),
            snapshots: snapshots.clone(),
            leases,
            inflight: Arc::default(),
            registry: Arc::new(cfg.registry.clone()),
            max_concurrent_downloads: cfg.max_concurrent_downloads.max(1),
            limits: snapshots::apply::Limits::default(),
            stats: Arc::default(),
            platform: images::manifest::Platform::host(),
            sync_layers: cfg.sync_layers,
        };
        let pinned = cfg
            .pinned_images
            .iter()
            .map(|p| {
                p.parse::<images::reference::ImageRef>()
                    .map(|r| r.to_string())
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        images::service::recover(&db, &content, &snapshots, &puller.leases)?;
        let stored = match db.node_get(NODE_POD_CIDR)? {
            Some(s) => match PodCidr::parse_list(&s) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring stored pod CIDR");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let pod_cidrs = if stored.is_empty() {
            cfg.pod_cidrs.clone()
        } else {
            stored
        };
        let cgroups = match CgroupLayout::detect() {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the cgroup layout");
                None
            }
        };
        if let Some(l) = &cgroups {
            tracing::info!(layout = l.kind(), "cgroup hierarchies detected");
        }
        let metrics = Arc::new(
            berth_metrics::Metrics::new()
                .map_err(|e| Error::Internal(format!("metrics registry: {e}")))?,
        );
        let mtu = match cfg.network.mtu {
            0 => berth_cni::builtin::default_mtu(),
            m => m,
        };
        let pod_init_program = match monitor::podinit::install(&cfg.state) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "cannot write the pod init program; pods' inits will be copies of their monitors"
                );
                None
            }
        };
        Ok(Engine {
            cfg,
            pod_init_program,
            db,
            content,
            snapshots,
            puller,
            pinned,
            cgroups,
            locks: Arc::default(),
            exits: tokio::sync::Notify::new(),
            pod_cidrs: RwLock::new(pod_cidrs),
            net: std::sync::Mutex::default(),
            mtu,
            stats: stats::StatsCache::default(),
            metrics,
            events: events::Events::default(),
            exit_record: std::sync::Mutex::new(()),
            followed: Default::default(),
            systemd: tokio::sync::OnceCell::new(),
            own_scope_lock: tokio::sync::Mutex::new(()),
            criu: tokio::sync::OnceCell::new(),
            started: SystemTime::now(),
            _lock: lock,
        })
    }

    /// The metric families recorded as things happen (the agent renders them).
    pub fn metrics(&self) -> Arc<berth_metrics::Metrics> {
        self.metrics.clone()
    }

    /// Lifecycle events: those of the last minute, then a live receiver.
    pub fn subscribe_events(
        &self,
    ) -> (
        Vec<events::ContainerEvent>,
        tokio::sync::broadcast::Receiver<events::ContainerEvent>,
    ) {
        self.events.subscribe()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn cgroup_driver(&self) -> CgroupDriver {
        self.cfg.cgroup_driver
    }

    /// The pod CIDRs in force.
    pub fn pod_cidrs(&self) -> Vec<PodCidr> {
        self.pod_cidrs.read().map(|g| g.clone()).unwrap_or_default()
    }

    /// Records kubelet's pod CIDR (comma-separated for dual stack). An empty value is
    /// ignored, as kubelet sends one before the node has a range.
    pub fn update_pod_cidr(&self, value: &str) -> Result<()> {
        let cidrs = PodCidr::parse_list(value)?;
        // Empty, or what is in force already (kubelet may send it again): nothing to do.
        if cidrs.is_empty() || cidrs == self.pod_cidrs() {
            return Ok(());
        }
        let canonical = cidrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        self.db.node_set(NODE_POD_CIDR, &canonical)?;
        if let Ok(mut g) = self.pod_cidrs.write() {
            *g = cidrs;
        }
        tracing::info!(pod_cidr = %canonical, "pod CIDR updated");
        self.network_cidrs_changed();
        Ok(())
    }

    /// The RuntimeReady and NetworkReady conditions, computed now.
    pub fn conditions(&self) -> Vec<Condition> {
        let runtime = match self.runtime_health() {
            Ok(()) => Condition {
                kind: "RuntimeReady",
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            Err((reason, message)) => Condition {
                kind: "RuntimeReady",
                status: false,
                reason,
                message,
            },
        };
        let network = match berth_cni::readiness(
            self.cfg.network.mode,
            &self.pod_cidrs(),
            self.network_error().as_deref(),
        ) {
            Readiness::Ready => Condition {
                kind: "NetworkReady",
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            Readiness::NotReady { reason, message } => Condition {
                kind: "NetworkReady",
                status: false,
                reason,
                message,
            },
        };
        let mut all = vec![runtime, network];
        // Only where the kernel runs AppArmor: whether RuntimeDefault can confine.
        match crate::linux::apparmor::host_state() {
            crate::spec::security::HostAppArmor::Off => {}
            crate::spec::security::HostAppArmor::On => all.push(Condition {
                kind: "AppArmorDefaultProfile",
                status: true,
                reason: String::new(),
                message: String::new(),
            }),
            crate::spec::security::HostAppArmor::NoParser => all.push(Condition {
                kind: "AppArmorDefaultProfile",
                status: false,
                reason: "ApparmorParserMissing".into(),
                message: format!(
                    "AppArmor is enabled but apparmor_parser is missing: containers that choose no profile run unconfined, RuntimeDefault is refused; install the apparmor package ({} is then loaded)",
                    crate::spec::apparmor::DEFAULT_PROFILE
                ),
            }),
        }
        all
    }

    fn runtime_health(&self) -> std::result::Result<(), (String, String)> {
        self.db
            .schema_version()
            .map_err(|e| ("StateDbUnavailable".to_owned(), e.to_string()))?;
        if let Some(why) = self.db.write_failure() {
            // Writes failed last (a full disk): try one now; it clears the failure when it
            // works, so that the node comes back as soon as space does.
            let now = clock::now_nanos().to_string();
            if self.db.node_set("health_probe", &now).is_err() {
                return Err((
                    "StateDbNotWritable".to_owned(),
                    format!(
                        "the state db {} cannot be written: {why}; free space under {}",
                        self.db.path().display(),
                        self.cfg.root.display()
                    ),
                ));
            }
        }
        if !self.cfg.state.is_dir() {
            return Err((
                "RunDirMissing".to_owned(),
                format!("run directory {} is gone", self.cfg.state.display()),
            ));
        }
        match &self.cgroups {
            None => Err((
                "CgroupsUnavailable".to_owned(),
                "cannot read the host's cgroup layout".to_owned(),
            )),
            Some(l) if !l.missing_required().is_empty() => Err((
                "CgroupsUnavailable".to_owned(),
                format!(
                    "missing cgroup controllers: {}",
                    l.missing_required().join(" ")
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// Verbose status information, as a JSON value (CRI Status `verbose`).
    pub fn verbose_info(&self) -> serde_json::Value {
        let uptime = self.started.elapsed().map(|d| d.as_secs()).unwrap_or(0);
        let (leases, host_ports) = self.network_holdings();
        serde_json::json!({
            "version": VERSION,
            "root": self.cfg.root,
            "state": self.cfg.state,
            "stateDb": {
                "path": self.db.path(),
                "schemaVersion": self.db.schema_version().ok(),
                "tables": self.db.table_sizes().ok(),
            },
            "cgroupDriver": self.cfg.cgroup_driver,
            "cgroupParent": self.cfg.cgroup_parent,
            "cgroups": self.cgroups,
            "network": {
                "mode": self.cfg.network.mode,
                "bridge": self.cfg.network.bridge,
                "mtu": self.mtu,
                "nftTable": self.cfg.network.nft_table,
                "podCIDRs": self.pod_cidrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
                "addressesLeased": leases,
                "hostPortsMapped": host_ports,
            },
            "uptimeSeconds": uptime,
            "kernel": self.cfg.kernel,
            // Compiled in for the workspace's test builds only (failpoints.rs).
            "failpoints": cfg!(feature = "failpoints"),
        })
    }
}

/// Takes `<root>/berth.lock` exclusively and writes our pid into it.
fn lock_root(root: &Path) -> Result<File> {
    let path = root.join("berth.lock");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .at("open", &path)?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            tracing::debug!(holder = holder.trim(), "root lock is held");
            return Err(Error::RootLocked {
                root: root.to_owned(),
                lock: path,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(Err(e).at("lock", &path)?),
    }
    f.set_len(0).at("truncate", &path)?;
    f.rewind().at("seek", &path)?;
    writeln!(f, "{}", std::process::id()).at("write", &path)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> EngineConfig {
        EngineConfig {
            root: dir.join("root"),
            state: dir.join("run"),
            cgroup_driver: CgroupDriver::Cgroupfs,
            cgroup_parent: "berth".into(),
            // Unit tests never touch the host's network: CNI mode sets nothing up until a
            // pod asks.
            network: network::NetworkConfig {
                mode: berth_cni::NetworkMode::Cni,
                ..network::NetworkConfig::default()
            },
            pod_cidrs: Vec::new(),
            registry: Default::default(),
            max_concurrent_downloads: 3,
            pinned_images: Vec::new(),
            sync_layers: true,
            monitor_exe: PathBuf::from("/proc/self/exe"),
            kernel: Default::default(),
            protected_paths: Vec::new(),
            cdi_spec_dirs: Vec::new(),
        }
    }

    #[test]
    fn second_engine_on_same_root_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let _a = Engine::open(cfg(t.path())).unwrap();
        let err = Engine::open(cfg(t.path())).unwrap_err();
        assert!(matches!(err, Error::RootLocked { .. }), "{err}");
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    }

    #[test]
    fn pod_cidr_from_kubelet_survives_restart() {
        let t = tempfile::tempdir().unwrap();
        {
            let e = Engine::open(cfg(t.path())).unwrap();
            e.update_pod_cidr("10.88.0.0/16").unwrap();
            assert!(e.update_pod_cidr("nonsense").is_err());
            e.update_pod_cidr("").unwrap();
        }
        let e = Engine::open(cfg(t.path())).unwrap();
        assert_eq!(e.pod_cidrs()[0].to_string(), "10.88.0.0/16");
    }
}

//! Records kept in the state db: engine-owned serde structs with their own schema version.

use serde::{Deserialize, Serialize};

use crate::id::Digest;
use crate::images::manifest::{LayerCompression, RunConfig};
use crate::snapshots::Usage;

/// Version of the record encodings below.
pub const RECORD_VERSION: u32 = 1;

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as stored (compressed).
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub compression: LayerCompression,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Names the snapshot of this layer and all below it.
    pub chain_id: Digest,
}

/// A pulled image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub schema_version: u32,
    /// The image id: the digest of its config.
    pub id: Digest,
    /// `registry/repo:tag` names pointing at this image.
    pub repo_tags: Vec<String>,
    /// `registry/repo@sha256:...` names of its manifest (or index).
    pub repo_digests: Vec<String>,
    /// The index the image was selected from, if it was pulled through one.
    pub index_digest: Option<Digest>,
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    pub manifest_size: u64,
    pub config_size: u64,
    pub layers: Vec<LayerRecord>,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub config: RunConfig,
    /// Unix time in nanoseconds of the last pull.
    pub pulled_at: i64,
}

impl ImageRecord {
    /// Size as CRI reports it: the bytes of its manifest, config and layer blobs.
    pub fn size(&self) -> u64 {
        self.manifest_size + self.config_size + self.layers.iter().map(|l| l.size).sum::<u64>()
    }

    /// Every blob this image references.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        self.index_digest
            .iter()
            .chain(std::iter::once(&self.manifest_digest))
            .chain(std::iter::once(&self.id))
            .chain(self.layers.iter().map(|l| &l.digest))
    }
}

/// An unpacked layer in the layer store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub schema_version: u32,
    pub chain_id: Digest,
    pub parent: Option<Digest>,
    pub diff_id: Digest,
    pub usage: Usage,
    pub created_at: i64,
}

/// Lifecycle of a pod.
///
/// ```text
///   RunPodSandbox          StopPodSandbox           RemovePodSandbox
///  ───────────────> Ready ────────────────> NotReady ────────────────> (gone)
///                     │   monitor died / reboot  ^
///                     └──────────────────────────┘
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodState {
    Ready,
    NotReady,
}

/// How a namespace is shared (CRI NamespaceMode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NsMode {
    Pod,
    Container,
    Node,
    Target,
}

/// A pod sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    pub schema_version: u32,
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
    pub state: PodState,
    pub created_at: i64,
    pub labels: std::collections::BTreeMap<String, String>,
    pub annotations: std::collections::BTreeMap<String, String>,
    pub hostname: String,
    pub log_directory: String,
    pub runtime_handler: String,
    pub network: NsMode,
    pub pid: NsMode,
    pub ipc: NsMode,
    /// The bind-mounted network namespace, when the pod has its own.
    pub netns: Option<std::path::PathBuf>,
    /// The pod's run directory (monitor socket, files, exits).
    pub dir: std::path::PathBuf,
    /// The pod cgroup (relative path) and whether berth created it.
    pub cgroup: String,
    pub cgroup_owned: bool,
    pub monitor_pid: u32,
    pub sysctls: std::collections::BTreeMap<String, String>,
    pub privileged: bool,
    /// Why the pod is not ready, when it is not.
    pub reason: String,
    /// The pod's network while it is set up (its addresses are the IPAM leases).
    #[serde(default)]
    pub net: Option<PodNet>,
    /// The pod's own user namespace (CRI userns_options mode POD); None: the host's.
    #[serde(default)]
    pub userns: Option<crate::spec::userns::IdMappings>,
}

/// A pod's network attachment: what StopPodSandbox must undo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNet {
    /// Which backend set it up.
    pub mode: berth_cni::NetworkMode,
    /// The host end of the veth pair (built-in mode).
    #[serde(default)]
    pub host_ifname: String,
    /// The pod's addresses, primary first; in built-in mode these are its leases.
    pub ips: Vec<std::net::IpAddr>,
    /// hostPort mappings in force (built-in mode; CNI's portmap keeps its own).
    #[serde(default)]
    pub port_mappings: Vec<berth_cni::builtin::nft::PortMapping>,
    /// The CNI network the pod was added to (CNI mode), for DEL and CHECK.
    #[serde(default)]
    pub cni_network: String,
}

/// Lifecycle of a container.
///
/// ```text
///   CreateContainer            StartContainer            exit / StopContainer
///  ─────────────────> Created ────────────────> Running ──────────────────────> Exited
///                        │          start failed (exit code 128)                  ^
///                        └────────────────────────────────────────────────────────┘
///  RemoveContainer from any state (a running container is killed first).
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
}

impl ContainerState {
    pub fn can_start(self) -> bool {
        self == ContainerState::Created
    }
}

/// A container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub schema_version: u32,
    pub id: String,
    pub pod_id: String,
    pub name: String,
    pub attempt: u32,
    pub state: ContainerState,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    /// The image as the user named it, and the image id.
    pub image: String,
    pub image_id: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub annotations: std::collections::BTreeMap<String, String>,
    pub log_path: String,
    pub pid: u32,
    /// The container cgroup (relative path) and the file with its oom_kill counter.
    pub cgroup: String,
    pub oom_file: String,
    /// Persistent writable layer (upper and work dirs live here).
    pub dir: std::path::PathBuf,
    pub stop_signal: String,
    /// CRI mounts, for ContainerStatus.
    pub mounts: Vec<crate::spec::mounts::Mount>,
    /// The limits in force (as created, or as last updated).
    #[serde(default)]
    pub resources: crate::spec::resources::Resources,
    pub launch: crate::linux::spawn::LaunchSpec,
}

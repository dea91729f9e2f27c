//! Records kept in the state db: engine-owned serde structs with their own schema version.
//!
//! A record holds only types defined here or plain values: a type of another module or
//! crate (a linux:: spec, a cni:: struct) changing shape must not change what is on disk.
//! The container's launch spec is stored as the monitor contract's own message
//! (`berth.monitor.v1.LaunchSpec`, encoded): a durable format with numbered fields.

use serde::{Deserialize, Serialize};

use crate::id::Digest;
use crate::images::manifest::{LayerCompression, RunConfig};
use crate::snapshots::Usage;

/// Version of the record encodings below. 2: a container's launch spec as the encoded
/// monitor message (1: berth's LaunchSpec as JSON); pods record their monitor's protocol;
/// a pod's network is in record-owned types.
pub const RECORD_VERSION: u32 = 2;

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
    /// Pod-level resources from UpdatePodSandboxResources (containers' sum plus overhead),
    /// as applied to the pod cgroup; None until kubelet sends them.
    #[serde(default)]
    pub resources: Option<crate::spec::resources::Resources>,
    /// The pod's network while it is set up (its addresses are the IPAM leases).
    #[serde(default)]
    pub net: Option<PodNet>,
    /// The pod's own user namespace (CRI userns_options mode POD); None: the host's.
    #[serde(default)]
    pub userns: Option<crate::spec::userns::IdMappings>,
    /// The protocol its monitor speaks (records from before it was kept: 1).
    #[serde(default = "protocol_1")]
    pub monitor_protocol: u32,
}

fn protocol_1() -> u32 {
    1
}

/// How a pod's network was set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetBackend {
    /// berth's own bridge, veth and IPAM.
    Builtin,
    /// CNI plugins.
    Cni,
}

/// A hostPort in force: traffic to `host_ip` (any local address when None) on `host_port`
/// goes to `pod_ip:container_port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPortRecord {
    /// "tcp", "udp" or "sctp".
    pub protocol: String,
    pub host_ip: Option<std::net::IpAddr>,
    pub host_port: u16,
    pub pod_ip: std::net::IpAddr,
    pub container_port: u16,
}

/// A pod's network attachment: what StopPodSandbox must undo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNet {
    /// Which backend set it up.
    pub mode: NetBackend,
    /// The host end of the veth pair (built-in mode).
    #[serde(default)]
    pub host_ifname: String,
    /// The pod's addresses, primary first; in built-in mode these are its leases.
    pub ips: Vec<std::net::IpAddr>,
    /// hostPort mappings in force (built-in mode; CNI's portmap keeps its own).
    #[serde(default)]
    pub port_mappings: Vec<HostPortRecord>,
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
    /// The devices it may use, kept for a cgroup made at its start (a systemd scope).
    #[serde(default)]
    pub device_policy: Option<crate::spec::devices::DevicePolicy>,
    /// The layers of the container's image volumes (GC roots while it exists).
    #[serde(default)]
    pub image_volume_layers: Vec<std::path::PathBuf>,
    /// What its monitor starts (stored encoded, see the module's docs).
    #[serde(with = "launch_record")]
    pub launch: crate::linux::spawn::LaunchSpec,
    /// A container made from a checkpoint: the unpacked checkpoint its start restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<std::path::PathBuf>,
}

/// A container's launch spec in its record: base64 of the encoded
/// `berth.monitor.v1.LaunchSpec`. Records of version 1 held berth's LaunchSpec as a JSON
/// object; those are still read (the v3→v4 state migration rewrites them).
mod launch_record {
    use base64::Engine as _;
    use berth_proto::monitor as proto;
    use berth_proto::prost::Message;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::linux::spawn::LaunchSpec;

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    pub fn serialize<S: Serializer>(l: &LaunchSpec, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(proto::LaunchSpec::from(l).encode_to_vec()))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Encoded(String),
        Version1(Box<LaunchSpec>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LaunchSpec, D::Error> {
        use serde::de::Error;
        match Stored::deserialize(d)? {
            Stored::Encoded(b) => {
                let bytes = B64.decode(b).map_err(D::Error::custom)?;
                let m = proto::LaunchSpec::decode(bytes.as_slice()).map_err(D::Error::custom)?;
                LaunchSpec::try_from(m).map_err(D::Error::custom)
            }
            Stored::Version1(l) => Ok(*l),
        }
    }
}

/// A container record as a berth of record version 1 wrote it: the launch spec a JSON
/// object (these fields and no more).
#[cfg(test)]
pub(crate) fn version_1_container() -> serde_json::Value {
    let text = r#"{
        "schema_version": 1, "id": "c1", "pod_id": "p1", "name": "app", "attempt": 0,
        "state": "Running", "created_at": 1, "started_at": 2, "finished_at": 0,
        "exit_code": 0, "reason": "", "message": "", "image": "busybox",
        "image_id": "sha256:0000000000000000000000000000000000000000000000000000000000000001",
        "labels": {}, "annotations": {}, "log_path": "/l/app.log", "pid": 42,
        "cgroup": "berth/pod-p1/c1", "oom_file": "", "dir": "/r/containers/c1",
        "stop_signal": "", "mounts": [],
        "resources": {"cpu_shares": 2, "cpu_quota": null, "cpu_period": null,
                      "cpuset_cpus": null, "cpuset_mems": null, "memory_limit": null,
                      "memory_swap_limit": null, "pids_limit": null, "hugepages": {},
                      "unified": {}, "oom_score_adj": 1000},
        "launch": {
            "id": "c1",
            "rootfs": {"lowerdirs": ["/s/1/fs"], "upperdir": "/r/c1/upper", "workdir": "/r/c1/work",
                       "target": "/run/c1/rootfs", "readonly": false},
            "args": ["sleep", "1000"], "env": ["PATH=/bin"], "cwd": "/",
            "user": {"uid": 0, "gid": 0, "additional_gids": [], "name": "root", "home": "/root"},
            "capabilities": {"bounding": [0, 1], "effective": [0, 1], "permitted": [0, 1],
                             "inheritable": [], "ambient": []},
            "no_new_privs": false, "seccomp": [[[32, 0, 0, 4], [6, 0, 0, 2147418112]]],
            "apparmor": null, "selinux_label": null,
            "devices": [], "oom_score_adj": null, "mounts": [
                {"destination": "/proc", "source": "proc", "kind": "proc",
                 "options": ["nosuid"], "propagation": null}],
            "masked_paths": [], "readonly_paths": [],
            "cgroup_dirs": ["/sys/fs/cgroup/memory/berth/pod-p1/c1"],
            "cgroup_view": [["memory", "/sys/fs/cgroup/memory/berth/pod-p1/c1"]],
            "new_pid_namespace": true, "pid_target": null, "sysctls": {},
            "userns": null, "stdio": {"stdin": false, "stdin_once": false, "tty": false}
        }
    }"#;
    serde_json::from_str(text).expect("fixture")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_container_records_are_read_and_written_as_version_2() {
        let old = version_1_container();
        let c: ContainerRecord = serde_json::from_value(old).unwrap();
        assert_eq!(c.launch.process.args, vec!["sleep", "1000"]);
        assert_eq!(c.launch.process.seccomp[0].0[1], (6, 0, 0, 0x7fff_0000));
        assert!(c.launch.new_pid_namespace);
        assert_eq!(c.launch.pod_pid_namespace, None);
        let new = serde_json::to_value(&c).unwrap();
        // Now the encoded monitor message.
        assert!(new["launch"].is_string(), "{new}");
        let again: ContainerRecord = serde_json::from_value(new).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn version_1_pod_records_are_read_with_protocol_1() {
        let old = serde_json::json!({
            "schema_version": 1, "id": "p1", "name": "web", "namespace": "default", "uid": "u",
            "attempt": 0, "state": "Ready", "created_at": 1, "labels": {}, "annotations": {},
            "hostname": "web", "log_directory": "/l", "runtime_handler": "",
            "network": "Pod", "pid": "Container", "ipc": "Pod",
            "netns": "/run/berth/netns/p1", "dir": "/run/berth/pods/p1",
            "cgroup": "berth/pod-p1", "cgroup_owned": true, "monitor_pid": 7, "sysctls": {},
            "privileged": false, "reason": "",
            "net": {"mode": "builtin", "host_ifname": "veth1", "ips": ["10.88.0.2"],
                    "port_mappings": [{"protocol": "tcp", "host_ip": null, "host_port": 8080,
                                       "pod_ip": "10.88.0.2", "container_port": 80}],
                    "cni_network": ""},
            "userns": null
        });
        let p: PodRecord = serde_json::from_value(old).unwrap();
        assert_eq!(
            p.monitor_protocol, 1,
            "its monitor was started by an older berth"
        );
        let net = p.net.unwrap();
        assert_eq!(net.mode, NetBackend::Builtin);
        assert_eq!(net.port_mappings[0].protocol, "tcp");
        assert_eq!(net.port_mappings[0].container_port, 80);
    }
}

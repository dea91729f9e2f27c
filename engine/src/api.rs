//! What the engine is asked to do, in its own types: the parts of RunPodSandbox's and
//! CreateContainer's configs (and of the stats filters) that berth reads.
//!
//! They keep the CRI's field names and its enum numbers (validated where they are used,
//! with the messages kubelet users see), so that the agent's conversion
//! (`agent/src/server/convert.rs`) is a plain copy and no CRI binding reaches the engine:
//! a new CRI version changes the agent alone.

use std::collections::BTreeMap;

/// CRI NamespaceMode numbers.
pub mod namespace_mode {
    pub const POD: i32 = 0;
    pub const CONTAINER: i32 = 1;
    pub const NODE: i32 = 2;
    pub const TARGET: i32 = 3;
}

/// CRI SecurityProfile.ProfileType numbers.
pub mod profile_type {
    pub const RUNTIME_DEFAULT: i32 = 0;
    pub const UNCONFINED: i32 = 1;
    pub const LOCALHOST: i32 = 2;
}

/// CRI Protocol numbers.
pub mod protocol {
    pub const TCP: i32 = 0;
    pub const UDP: i32 = 1;
    pub const SCTP: i32 = 2;
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSandboxMetadata {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortMapping {
    /// A [`protocol`] number.
    pub protocol: i32,
    pub container_port: i32,
    pub host_port: i32,
    pub host_ip: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMapping {
    pub host_id: u32,
    pub container_id: u32,
    pub length: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserNamespace {
    /// A [`namespace_mode`] number.
    pub mode: i32,
    pub uids: Vec<IdMapping>,
    pub gids: Vec<IdMapping>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceOption {
    /// [`namespace_mode`] numbers.
    pub network: i32,
    pub pid: i32,
    pub ipc: i32,
    pub target_id: String,
    pub userns_options: Option<UserNamespace>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeLinuxOption {
    pub user: String,
    pub role: String,
    pub r#type: String,
    pub level: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityProfile {
    /// A [`profile_type`] number.
    pub profile_type: i32,
    pub localhost_ref: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinuxSandboxSecurityContext {
    pub namespace_options: Option<NamespaceOption>,
    pub selinux_options: Option<SeLinuxOption>,
    pub privileged: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinuxPodSandboxConfig {
    pub cgroup_parent: String,
    pub security_context: Option<LinuxSandboxSecurityContext>,
    pub sysctls: BTreeMap<String, String>,
}

/// RunPodSandbox's config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSandboxConfig {
    pub metadata: Option<PodSandboxMetadata>,
    pub hostname: String,
    pub log_directory: String,
    pub dns_config: Option<DnsConfig>,
    pub port_mappings: Vec<PortMapping>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub linux: Option<LinuxPodSandboxConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerMetadata {
    pub name: String,
    pub attempt: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mount {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    pub recursive_read_only: bool,
    /// A CRI MountPropagation number (0 private, 1 host to container, 2 bidirectional).
    pub propagation: i32,
    /// The image of an image volume (empty: a host path volume).
    pub image: String,
    /// The directory of the image to mount (empty: all of it).
    pub image_sub_path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Device {
    pub container_path: String,
    pub host_path: String,
    pub permissions: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HugepageLimit {
    pub page_size: String,
    pub limit: u64,
}

/// LinuxContainerResources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinuxContainerResources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
    pub oom_score_adj: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    pub hugepage_limits: Vec<HugepageLimit>,
    pub unified: BTreeMap<String, String>,
    pub memory_swap_limit_in_bytes: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capability {
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    pub add_ambient_capabilities: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinuxContainerSecurityContext {
    pub capabilities: Option<Capability>,
    pub privileged: bool,
    pub namespace_options: Option<NamespaceOption>,
    pub selinux_options: Option<SeLinuxOption>,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_username: String,
    pub readonly_rootfs: bool,
    pub supplemental_groups: Vec<i64>,
    /// SupplementalGroupsPolicy Strict (else Merge).
    pub supplemental_groups_strict: bool,
    /// The deprecated `apparmor_profile` string.
    pub apparmor_profile: String,
    /// The deprecated `seccomp_profile_path` string.
    pub seccomp_profile_path: String,
    pub no_new_privs: bool,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub seccomp: Option<SecurityProfile>,
    pub apparmor: Option<SecurityProfile>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinuxContainerConfig {
    pub resources: Option<LinuxContainerResources>,
    pub security_context: Option<LinuxContainerSecurityContext>,
}

/// CreateContainer's config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerConfig {
    pub metadata: Option<ContainerMetadata>,
    /// The image as the client named it.
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: String,
    pub envs: Vec<KeyValue>,
    pub mounts: Vec<Mount>,
    pub devices: Vec<Device>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub log_path: String,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    pub linux: Option<LinuxContainerConfig>,
    /// The signal that stops the container, by name (`SIGQUIT`); empty: the image's
    /// STOPSIGNAL, else SIGTERM.
    pub stop_signal: String,
    /// Fully qualified CDI device names (`vendor.com/class=name`).
    pub cdi_devices: Vec<String>,
}

/// Which containers a stats call is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerStatsFilter {
    pub id: String,
    pub pod_sandbox_id: String,
    pub label_selector: BTreeMap<String, String>,
}

/// Which pods a stats call is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSandboxStatsFilter {
    pub id: String,
    pub label_selector: BTreeMap<String, String>,
}

/// Whether `labels` carry every key of `selector` with its value (CRI label selectors).
pub fn labels_match<'a>(
    labels: &BTreeMap<String, String>,
    selector: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> bool {
    selector.into_iter().all(|(k, v)| labels.get(k) == Some(v))
}

//! Both directions between the CRI and the engine: CRI requests as the engine's own types
//! (`berth_engine::api`, a plain copy of the fields berth reads), and engine records as CRI
//! messages. No CRI binding goes further than this module and `stats`.

use std::collections::HashMap;

use berth_engine::api;
use berth_engine::state::records::{ContainerRecord, ContainerState, NsMode, PodRecord, PodState};
use berth_proto::cri;

fn map(m: &std::collections::BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub fn pod_state(s: PodState) -> i32 {
    match s {
        PodState::Ready => cri::PodSandboxState::SandboxReady as i32,
        PodState::NotReady => cri::PodSandboxState::SandboxNotready as i32,
    }
}

pub fn container_state(s: ContainerState) -> i32 {
    match s {
        ContainerState::Created => cri::ContainerState::ContainerCreated as i32,
        ContainerState::Running => cri::ContainerState::ContainerRunning as i32,
        ContainerState::Exited => cri::ContainerState::ContainerExited as i32,
    }
}

fn ns(m: NsMode) -> i32 {
    match m {
        NsMode::Pod => cri::NamespaceMode::Pod as i32,
        NsMode::Container => cri::NamespaceMode::Container as i32,
        NsMode::Node => cri::NamespaceMode::Node as i32,
        NsMode::Target => cri::NamespaceMode::Target as i32,
    }
}

fn pod_metadata(p: &PodRecord) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: p.name.clone(),
        uid: p.uid.clone(),
        namespace: p.namespace.clone(),
        attempt: p.attempt,
    }
}

pub fn pod_sandbox(p: &PodRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: p.id.clone(),
        metadata: Some(pod_metadata(p)),
        state: pod_state(p.state),
        created_at: p.created_at,
        labels: map(&p.labels),
        annotations: map(&p.annotations),
        runtime_handler: p.runtime_handler.clone(),
    }
}

pub fn pod_status(p: &PodRecord) -> cri::PodSandboxStatus {
    cri::PodSandboxStatus {
        id: p.id.clone(),
        metadata: Some(pod_metadata(p)),
        state: pod_state(p.state),
        created_at: p.created_at,
        network: Some(pod_network(p)),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(cri::NamespaceOption {
                    network: ns(p.network),
                    pid: ns(p.pid),
                    ipc: ns(p.ipc),
                    userns_options: Some(userns_options(p.userns.as_ref())),
                    ..Default::default()
                }),
            }),
        }),
        labels: map(&p.labels),
        annotations: map(&p.annotations),
        runtime_handler: p.runtime_handler.clone(),
    }
}

fn metadata(c: &ContainerRecord) -> cri::ContainerMetadata {
    cri::ContainerMetadata {
        name: c.name.clone(),
        attempt: c.attempt,
    }
}

pub fn container(c: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: c.id.clone(),
        pod_sandbox_id: c.pod_id.clone(),
        metadata: Some(metadata(c)),
        image: Some(cri::ImageSpec {
            image: c.image.clone(),
            ..Default::default()
        }),
        image_ref: c.image_id.clone(),
        state: container_state(c.state),
        created_at: c.created_at,
        labels: map(&c.labels),
        annotations: map(&c.annotations),
        image_id: c.image_id.clone(),
    }
}

pub fn container_status(c: &ContainerRecord) -> cri::ContainerStatus {
    use berth_engine::spec::mounts::Propagation;
    cri::ContainerStatus {
        id: c.id.clone(),
        metadata: Some(metadata(c)),
        state: container_state(c.state),
        created_at: c.created_at,
        started_at: c.started_at,
        finished_at: c.finished_at,
        exit_code: c.exit_code,
        image: Some(cri::ImageSpec {
            image: c.image.clone(),
            ..Default::default()
        }),
        image_ref: c.image_id.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        labels: map(&c.labels),
        annotations: map(&c.annotations),
        mounts: c
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.destination.clone(),
                host_path: m.source.clone(),
                readonly: m.options.iter().any(|o| o == "ro"),
                propagation: match m.propagation {
                    Some(Propagation::RSlave) => {
                        cri::MountPropagation::PropagationHostToContainer as i32
                    }
                    Some(Propagation::RShared) => {
                        cri::MountPropagation::PropagationBidirectional as i32
                    }
                    _ => cri::MountPropagation::PropagationPrivate as i32,
                },
                ..Default::default()
            })
            .collect(),
        log_path: c.log_path.clone(),
        stop_signal: stop_signal(&c.stop_signal),
        resources: Some(resources(&c.resources)),
        image_id: c.image_id.clone(),
        user: Some(cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: i64::from(c.launch.process.user.uid),
                gid: i64::from(c.launch.process.user.gid),
                supplemental_groups: c
                    .launch
                    .process
                    .user
                    .groups()
                    .into_iter()
                    .map(i64::from)
                    .collect(),
            }),
        }),
    }
}

pub use berth_engine::api::labels_match;

/// The limits in force, as CRI reports them.
pub fn resources(r: &berth_engine::spec::resources::Resources) -> cri::ContainerResources {
    cri::ContainerResources {
        linux: Some(cri::LinuxContainerResources {
            cpu_period: r
                .cpu_period
                .and_then(|v| i64::try_from(v).ok())
                .unwrap_or(0),
            cpu_quota: r.cpu_quota.unwrap_or(0),
            cpu_shares: r
                .cpu_shares
                .and_then(|v| i64::try_from(v).ok())
                .unwrap_or(0),
            memory_limit_in_bytes: r.memory_limit.unwrap_or(0),
            memory_swap_limit_in_bytes: r.memory_swap_limit.unwrap_or(0),
            oom_score_adj: r.oom_score_adj.map(i64::from).unwrap_or(0),
            cpuset_cpus: r.cpuset_cpus.clone().unwrap_or_default(),
            cpuset_mems: r.cpuset_mems.clone().unwrap_or_default(),
            hugepage_limits: r
                .hugepages
                .iter()
                .map(|(k, v)| cri::HugepageLimit {
                    page_size: k.clone(),
                    limit: *v,
                })
                .collect(),
            unified: r
                .unified
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }),
        windows: None,
    }
}

/// The pod's addresses: the primary first, the others (dual stack) as additional IPs.
fn pod_network(p: &PodRecord) -> cri::PodSandboxNetworkStatus {
    let ips: Vec<String> = p
        .net
        .iter()
        .flat_map(|n| n.ips.iter().map(ToString::to_string))
        .collect();
    cri::PodSandboxNetworkStatus {
        ip: ips.first().cloned().unwrap_or_default(),
        additional_ips: ips
            .iter()
            .skip(1)
            .map(|ip| cri::PodIp { ip: ip.clone() })
            .collect(),
    }
}

/// The pod's user namespace as CRI reports it: its mappings, or mode NODE.
fn userns_options(m: Option<&berth_engine::spec::userns::IdMappings>) -> cri::UserNamespace {
    let conv = |v: &[berth_engine::spec::userns::IdRange]| {
        v.iter()
            .map(|r| cri::IdMapping {
                host_id: r.host_id,
                container_id: r.container_id,
                length: r.size,
            })
            .collect()
    };
    match m {
        Some(m) => cri::UserNamespace {
            mode: cri::NamespaceMode::Pod as i32,
            uids: conv(&m.uids),
            gids: conv(&m.gids),
        },
        None => cri::UserNamespace {
            mode: cri::NamespaceMode::Node as i32,
            ..Default::default()
        },
    }
}

// ---- CRI requests as the engine's types

fn btree(m: &HashMap<String, String>) -> std::collections::BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn userns(u: &cri::UserNamespace) -> api::UserNamespace {
    let ids = |v: &[cri::IdMapping]| {
        v.iter()
            .map(|m| api::IdMapping {
                host_id: m.host_id,
                container_id: m.container_id,
                length: m.length,
            })
            .collect()
    };
    api::UserNamespace {
        mode: u.mode,
        uids: ids(&u.uids),
        gids: ids(&u.gids),
    }
}

fn namespace_options(n: &cri::NamespaceOption) -> api::NamespaceOption {
    api::NamespaceOption {
        network: n.network,
        pid: n.pid,
        ipc: n.ipc,
        target_id: n.target_id.clone(),
        userns_options: n.userns_options.as_ref().map(userns),
    }
}

fn selinux(o: &cri::SeLinuxOption) -> api::SeLinuxOption {
    api::SeLinuxOption {
        user: o.user.clone(),
        role: o.role.clone(),
        r#type: o.r#type.clone(),
        level: o.level.clone(),
    }
}

fn profile(p: &cri::SecurityProfile) -> api::SecurityProfile {
    api::SecurityProfile {
        profile_type: p.profile_type,
        localhost_ref: p.localhost_ref.clone(),
    }
}

/// RunPodSandbox's config.
pub fn pod_config(c: &cri::PodSandboxConfig) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: c.metadata.as_ref().map(|m| api::PodSandboxMetadata {
            name: m.name.clone(),
            uid: m.uid.clone(),
            namespace: m.namespace.clone(),
            attempt: m.attempt,
        }),
        hostname: c.hostname.clone(),
        log_directory: c.log_directory.clone(),
        dns_config: c.dns_config.as_ref().map(|d| api::DnsConfig {
            servers: d.servers.clone(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        }),
        port_mappings: c
            .port_mappings
            .iter()
            .map(|p| api::PortMapping {
                protocol: p.protocol,
                container_port: p.container_port,
                host_port: p.host_port,
                host_ip: p.host_ip.clone(),
            })
            .collect(),
        labels: btree(&c.labels),
        annotations: btree(&c.annotations),
        linux: c.linux.as_ref().map(|l| api::LinuxPodSandboxConfig {
            cgroup_parent: l.cgroup_parent.clone(),
            security_context: l.security_context.as_ref().map(|s| {
                api::LinuxSandboxSecurityContext {
                    namespace_options: s.namespace_options.as_ref().map(namespace_options),
                    selinux_options: s.selinux_options.as_ref().map(selinux),
                    privileged: s.privileged,
                }
            }),
            sysctls: btree(&l.sysctls),
        }),
    }
}

/// UpdateContainerResources' and CreateContainer's limits.
pub fn resources_request(r: &cri::LinuxContainerResources) -> api::LinuxContainerResources {
    api::LinuxContainerResources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| api::HugepageLimit {
                page_size: h.page_size.clone(),
                limit: h.limit,
            })
            .collect(),
        unified: btree(&r.unified),
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
    }
}

/// CreateContainer's config.
pub fn container_config(c: &cri::ContainerConfig) -> api::ContainerConfig {
    #[allow(deprecated)]
    let security = |s: &cri::LinuxContainerSecurityContext| api::LinuxContainerSecurityContext {
        capabilities: s.capabilities.as_ref().map(|c| api::Capability {
            add_capabilities: c.add_capabilities.clone(),
            drop_capabilities: c.drop_capabilities.clone(),
            add_ambient_capabilities: c.add_ambient_capabilities.clone(),
        }),
        privileged: s.privileged,
        namespace_options: s.namespace_options.as_ref().map(namespace_options),
        selinux_options: s.selinux_options.as_ref().map(selinux),
        run_as_user: s.run_as_user.as_ref().map(|v| v.value),
        run_as_group: s.run_as_group.as_ref().map(|v| v.value),
        run_as_username: s.run_as_username.clone(),
        readonly_rootfs: s.readonly_rootfs,
        supplemental_groups: s.supplemental_groups.clone(),
        supplemental_groups_strict: s.supplemental_groups_policy
            == cri::SupplementalGroupsPolicy::Strict as i32,
        apparmor_profile: s.apparmor_profile.clone(),
        seccomp_profile_path: s.seccomp_profile_path.clone(),
        no_new_privs: s.no_new_privs,
        masked_paths: s.masked_paths.clone(),
        readonly_paths: s.readonly_paths.clone(),
        seccomp: s.seccomp.as_ref().map(profile),
        apparmor: s.apparmor.as_ref().map(profile),
    };
    api::ContainerConfig {
        metadata: c.metadata.as_ref().map(|m| api::ContainerMetadata {
            name: m.name.clone(),
            attempt: m.attempt,
        }),
        image: c
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default(),
        command: c.command.clone(),
        args: c.args.clone(),
        working_dir: c.working_dir.clone(),
        envs: c
            .envs
            .iter()
            .map(|kv| api::KeyValue {
                key: kv.key.clone(),
                value: kv.value.clone(),
            })
            .collect(),
        mounts: c
            .mounts
            .iter()
            .map(|m| api::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                recursive_read_only: m.recursive_read_only,
                propagation: m.propagation,
                image: m
                    .image
                    .as_ref()
                    .map(|i| i.image.clone())
                    .unwrap_or_default(),
                image_sub_path: m.image_sub_path.clone(),
            })
            .collect(),
        devices: c
            .devices
            .iter()
            .map(|d| api::Device {
                container_path: d.container_path.clone(),
                host_path: d.host_path.clone(),
                permissions: d.permissions.clone(),
            })
            .collect(),
        labels: btree(&c.labels),
        annotations: btree(&c.annotations),
        log_path: c.log_path.clone(),
        stdin: c.stdin,
        stdin_once: c.stdin_once,
        tty: c.tty,
        linux: c.linux.as_ref().map(|l| api::LinuxContainerConfig {
            resources: l.resources.as_ref().map(resources_request),
            security_context: l.security_context.as_ref().map(security),
        }),
        stop_signal: signal_name(c.stop_signal),
        cdi_devices: c.cdi_devices.iter().map(|d| d.name.clone()).collect(),
    }
}

/// A CRI stop signal as the engine names it: "" for RUNTIME_DEFAULT, `SIGRTMIN+3` style
/// for the real-time ones, else the signal's own name (an unknown number passes through
/// as a number, which the engine refuses).
pub fn signal_name(v: i32) -> String {
    match cri::Signal::try_from(v) {
        Ok(cri::Signal::RuntimeDefault) => String::new(),
        Ok(s) => s.as_str_name().replace("PLUS", "+").replace("MINUS", "-"),
        Err(_) => v.to_string(),
    }
}

/// The CRI enum value of the signal that stops a container (its record's, else SIGTERM).
pub fn stop_signal(name: &str) -> i32 {
    cri::Signal::from_str_name(berth_engine::containers::effective_stop_signal(name))
        .map_or(cri::Signal::Sigterm as i32, |s| s as i32)
}

/// ListContainerStats' filter.
pub fn container_stats_filter(f: &cri::ContainerStatsFilter) -> api::ContainerStatsFilter {
    api::ContainerStatsFilter {
        id: f.id.clone(),
        pod_sandbox_id: f.pod_sandbox_id.clone(),
        label_selector: btree(&f.label_selector),
    }
}

/// ListPodSandboxStats' filter.
pub fn pod_stats_filter(f: &cri::PodSandboxStatsFilter) -> api::PodSandboxStatsFilter {
    api::PodSandboxStatsFilter {
        id: f.id.clone(),
        label_selector: btree(&f.label_selector),
    }
}

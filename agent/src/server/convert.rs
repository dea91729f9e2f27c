//! Engine records -> CRI messages.

use std::collections::HashMap;

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

/// Whether labels match a selector (every selector key present with the same value).
pub fn labels_match(
    labels: &std::collections::BTreeMap<String, String>,
    selector: &HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

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

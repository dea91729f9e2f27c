//! The engine's figures as CRI stats and cAdvisor-style metrics (ListPodSandboxMetrics).

use berth_engine::Engine;
use berth_engine::linux::cgroups::stats::{CgroupStats, InterfaceStats};
use berth_engine::stats::{ContainerFigures, PodFigures};
use berth_proto::cri;

fn u64v(v: Option<u64>) -> Option<cri::UInt64Value> {
    v.map(|value| cri::UInt64Value { value })
}

fn cpu(ts: i64, s: &CgroupStats, nano_cores: Option<u64>) -> Option<cri::CpuUsage> {
    Some(cri::CpuUsage {
        timestamp: ts,
        usage_core_nano_seconds: u64v(s.cpu_usage_ns),
        usage_nano_cores: u64v(nano_cores),
        // Pressure (PSI): absent where the cgroup has none.
        psi: psi(s.cpu_pressure),
    })
}

fn memory(ts: i64, s: &CgroupStats) -> Option<cri::MemoryUsage> {
    Some(cri::MemoryUsage {
        timestamp: ts,
        working_set_bytes: u64v(s.working_set),
        available_bytes: u64v(
            s.memory_limit
                .zip(s.working_set)
                .map(|(l, w)| l.saturating_sub(w)),
        ),
        usage_bytes: u64v(s.memory_usage),
        rss_bytes: u64v(s.rss),
        page_faults: u64v(s.page_faults),
        major_page_faults: u64v(s.major_page_faults),
        psi: psi(s.memory_pressure),
    })
}

/// A container's figures as CRI ContainerStats.
pub fn container_stats(f: &ContainerFigures, mountpoint: &str) -> cri::ContainerStats {
    let c = &f.container;
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: c.id.clone(),
            metadata: Some(cri::ContainerMetadata {
                name: c.name.clone(),
                attempt: c.attempt,
            }),
            labels: c.labels.clone().into_iter().collect(),
            annotations: c.annotations.clone().into_iter().collect(),
        }),
        cpu: cpu(f.timestamp, &f.cgroup, f.nano_cores),
        memory: memory(f.timestamp, &f.cgroup),
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: f.timestamp,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: mountpoint.to_owned(),
            }),
            used_bytes: u64v(Some(f.layer.bytes)),
            inodes_used: u64v(Some(f.layer.inodes)),
        }),
        swap: Some(cri::SwapUsage {
            timestamp: f.timestamp,
            swap_available_bytes: u64v(
                f.cgroup
                    .swap_limit
                    .zip(f.cgroup.swap_usage)
                    .map(|(l, u)| l.saturating_sub(u)),
            ),
            swap_usage_bytes: u64v(f.cgroup.swap_usage),
        }),
        io: io(f.timestamp, &f.cgroup),
    }
}

fn interface(i: &InterfaceStats) -> cri::NetworkInterfaceUsage {
    cri::NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: u64v(Some(i.rx_bytes)),
        rx_errors: u64v(Some(i.rx_errors)),
        tx_bytes: u64v(Some(i.tx_bytes)),
        tx_errors: u64v(Some(i.tx_errors)),
    }
}

/// A pod's figures as CRI PodSandboxStats.
pub fn pod_stats(f: &PodFigures, mountpoint: &str) -> cri::PodSandboxStats {
    let p = &f.pod;
    let default = f
        .interfaces
        .iter()
        .find(|i| i.name == "eth0")
        .or_else(|| f.interfaces.first());
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: p.id.clone(),
            metadata: Some(cri::PodSandboxMetadata {
                name: p.name.clone(),
                uid: p.uid.clone(),
                namespace: p.namespace.clone(),
                attempt: p.attempt,
            }),
            labels: p.labels.clone().into_iter().collect(),
            annotations: p.annotations.clone().into_iter().collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            io: io(f.timestamp, &f.cgroup),
            cpu: cpu(f.timestamp, &f.cgroup, f.nano_cores),
            memory: memory(f.timestamp, &f.cgroup),
            network: (!f.interfaces.is_empty()).then(|| cri::NetworkUsage {
                timestamp: f.timestamp,
                default_interface: default.map(interface),
                interfaces: f.interfaces.iter().map(interface).collect(),
            }),
            process: Some(cri::ProcessUsage {
                timestamp: f.timestamp,
                process_count: u64v(f.cgroup.pids),
            }),
            containers: f
                .containers
                .iter()
                .map(|c| container_stats(c, mountpoint))
                .collect(),
        }),
        windows: None,
    }
}

/// The label keys every cAdvisor-style metric starts with (kubelet adds namespace, pod
/// and container from the sandbox and container metadata).
const BASE_LABELS: [&str; 3] = ["id", "name", "image"];

/// The cAdvisor metrics berth reports through ListPodSandboxMetrics, with the names and
/// label keys kubelet's /metrics/cadvisor serves: (name, help, extra label keys, counter).
const DESCRIPTORS: &[(&str, &str, &[&str], bool)] = &[
    (
        "container_pressure_cpu_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to CPU congestion.",
        &[],
        true,
    ),
    (
        "container_pressure_cpu_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to CPU congestion.",
        &[],
        true,
    ),
    (
        "container_pressure_memory_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to memory congestion.",
        &[],
        true,
    ),
    (
        "container_pressure_memory_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to memory congestion.",
        &[],
        true,
    ),
    (
        "container_pressure_io_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to IO congestion.",
        &[],
        true,
    ),
    (
        "container_pressure_io_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to IO congestion.",
        &[],
        true,
    ),
    (
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        &["cpu"],
        true,
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        &[],
        false,
    ),
    (
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        &[],
        false,
    ),
    ("container_memory_rss", "Size of RSS in bytes.", &[], false),
    (
        "container_memory_swap",
        "Container swap usage in bytes.",
        &[],
        false,
    ),
    (
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
        &[],
        false,
    ),
    (
        "container_processes",
        "Number of processes running inside the container.",
        &[],
        false,
    ),
    (
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        &["device"],
        false,
    ),
    (
        "container_fs_inodes_total",
        "Number of Inodes",
        &["device"],
        false,
    ),
    (
        "container_oom_events_total",
        "Count of out of memory events observed for the container",
        &[],
        true,
    ),
    (
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        &[],
        false,
    ),
    (
        "container_last_seen",
        "Last time a container was seen by the exporter",
        &[],
        false,
    ),
    (
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received",
        &["interface"],
        true,
    ),
    (
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving",
        &["interface"],
        true,
    ),
    (
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted",
        &["interface"],
        true,
    ),
    (
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting",
        &["interface"],
        true,
    ),
];

/// ListMetricDescriptors.
pub fn metric_descriptors() -> Vec<cri::MetricDescriptor> {
    DESCRIPTORS
        .iter()
        .map(|(name, help, extra, _)| cri::MetricDescriptor {
            name: (*name).to_owned(),
            help: (*help).to_owned(),
            label_keys: BASE_LABELS
                .iter()
                .chain(extra.iter())
                .map(|s| (*s).to_owned())
                .collect(),
        })
        .collect()
}

fn metric(
    name: &str,
    ts: i64,
    base: &[String],
    extra: &[&str],
    value: Option<u64>,
) -> Option<cri::Metric> {
    let counter = DESCRIPTORS
        .iter()
        .find(|d| d.0 == name)
        .is_some_and(|d| d.3);
    Some(cri::Metric {
        name: name.to_owned(),
        timestamp: ts,
        metric_type: if counter {
            cri::MetricType::Counter
        } else {
            cri::MetricType::Gauge
        } as i32,
        label_values: base
            .iter()
            .cloned()
            .chain(extra.iter().map(|s| (*s).to_owned()))
            .collect(),
        value: Some(cri::UInt64Value { value: value? }),
    })
}

/// cAdvisor's pressure counters (whole seconds of stall) where the cgroup has PSI.
fn pressure_metrics(ts: i64, base: &[String], s: &CgroupStats) -> Vec<Option<cri::Metric>> {
    let secs = |us: u64| us / 1_000_000;
    [
        ("cpu", s.cpu_pressure),
        ("memory", s.memory_pressure),
        ("io", s.io_pressure),
    ]
    .into_iter()
    .filter_map(|(what, p)| Some((what, p?)))
    .flat_map(|(what, p)| {
        [
            metric(
                &format!("container_pressure_{what}_waiting_seconds_total"),
                ts,
                base,
                &[],
                Some(secs(p.some.total_us)),
            ),
            metric(
                &format!("container_pressure_{what}_stalled_seconds_total"),
                ts,
                base,
                &[],
                Some(secs(p.full.total_us)),
            ),
        ]
    })
    .collect()
}

/// CRI's PSI figures of one `*.pressure` file (totals in nanoseconds).
fn psi(p: Option<berth_engine::linux::cgroups::stats::Pressure>) -> Option<cri::PsiStats> {
    let line = |l: berth_engine::linux::cgroups::stats::PressureLine| cri::PsiData {
        total: l.total_us.saturating_mul(1000),
        avg10: l.avg10,
        avg60: l.avg60,
        avg300: l.avg300,
    };
    p.map(|p| cri::PsiStats {
        full: Some(line(p.full)),
        some: Some(line(p.some)),
    })
}

/// CRI IO usage: only its pressure, where the cgroup has PSI.
fn io(ts: i64, s: &CgroupStats) -> Option<cri::IoUsage> {
    s.io_pressure.map(|p| cri::IoUsage {
        timestamp: ts,
        psi: psi(Some(p)),
    })
}

/// ListPodSandboxMetrics: every ready pod's network counters, and its running containers'
/// CPU, memory, processes, writable layer and OOM events.
pub fn pod_sandbox_metrics(engine: &Engine) -> berth_engine::Result<Vec<cri::PodSandboxMetrics>> {
    {
        let mp = engine.writable_layer_mountpoint();
        let mut out = Vec::new();
        for f in engine.pod_figures_list(None)? {
            let ts = f.timestamp;
            let pod_base = vec![f.pod.id.clone(), "POD".to_owned(), String::new()];
            let mut metrics = Vec::new();
            for i in &f.interfaces {
                let l = [i.name.as_str()];
                metrics.extend(
                    [
                        ("container_network_receive_bytes_total", i.rx_bytes),
                        ("container_network_receive_errors_total", i.rx_errors),
                        ("container_network_transmit_bytes_total", i.tx_bytes),
                        ("container_network_transmit_errors_total", i.tx_errors),
                    ]
                    .into_iter()
                    .filter_map(|(n, v)| metric(n, ts, &pod_base, &l, Some(v))),
                );
            }
            let container_metrics = f
                .containers
                .iter()
                .map(|c| {
                    let r = &c.container;
                    let base = vec![r.id.clone(), r.name.clone(), r.image.clone()];
                    let s = &c.cgroup;
                    let oom = engine.container_oom_kills(r);
                    let secs = |ns: i64| u64::try_from(ns / 1_000_000_000).ok();
                    let metrics = [
                        metric(
                            "container_cpu_usage_seconds_total",
                            ts,
                            &base,
                            &["total"],
                            s.cpu_usage_ns.map(|n| n / 1_000_000_000),
                        ),
                        metric(
                            "container_memory_usage_bytes",
                            ts,
                            &base,
                            &[],
                            s.memory_usage,
                        ),
                        metric(
                            "container_memory_working_set_bytes",
                            ts,
                            &base,
                            &[],
                            s.working_set,
                        ),
                        metric("container_memory_rss", ts, &base, &[], s.rss),
                        metric("container_memory_swap", ts, &base, &[], s.swap_usage),
                        metric(
                            "container_spec_memory_limit_bytes",
                            ts,
                            &base,
                            &[],
                            Some(s.memory_limit.unwrap_or(0)),
                        ),
                        metric("container_processes", ts, &base, &[], s.pids),
                        metric(
                            "container_fs_usage_bytes",
                            ts,
                            &base,
                            &[&mp],
                            Some(c.layer.bytes),
                        ),
                        metric(
                            "container_fs_inodes_total",
                            ts,
                            &base,
                            &[&mp],
                            Some(c.layer.inodes),
                        ),
                        metric("container_oom_events_total", ts, &base, &[], oom),
                        metric(
                            "container_start_time_seconds",
                            ts,
                            &base,
                            &[],
                            secs(r.started_at),
                        ),
                        metric("container_last_seen", ts, &base, &[], secs(ts)),
                    ]
                    .into_iter()
                    .chain(pressure_metrics(ts, &base, s))
                    .flatten()
                    .collect();
                    cri::ContainerMetrics {
                        container_id: r.id.clone(),
                        metrics,
                    }
                })
                .collect();
            out.push(cri::PodSandboxMetrics {
                pod_sandbox_id: f.pod.id.clone(),
                metrics,
                container_metrics,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_carry_the_base_labels_first() {
        let d = metric_descriptors();
        let cpu = d
            .iter()
            .find(|m| m.name == "container_cpu_usage_seconds_total")
            .unwrap();
        assert_eq!(cpu.label_keys, vec!["id", "name", "image", "cpu"]);
        assert!(d.iter().all(|m| m.label_keys[..3] == BASE_LABELS));
        let m = metric(
            "container_oom_events_total",
            1,
            &["a".into(), "b".into(), "c".into()],
            &[],
            Some(2),
        )
        .unwrap();
        assert_eq!(m.metric_type, cri::MetricType::Counter as i32);
        assert_eq!(m.label_values.len(), 3);
        assert!(metric("container_memory_rss", 1, &[], &[], None).is_none());
    }
}

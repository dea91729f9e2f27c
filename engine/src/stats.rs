//! CRI stats: what kubelet schedules and evicts on, read from the cgroups, the writable
//! layers and the pods' network namespaces (through `/proc/<monitor>/net/dev`), with no
//! process spawned. The Prometheus endpoint reads the same figures.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_proto::cri;

use crate::Engine;
use crate::clock::now_nanos;
use crate::error::Result;
use crate::linux::cgroups::stats::{CgroupStats, InterfaceStats, net_dev_of};
use crate::snapshots::Usage;
use crate::state::records::{ContainerRecord, ContainerState, NsMode, PodRecord, PodState};

/// How long a writable layer's measured size is reused (a walk of the upper directory).
const LAYER_USAGE_TTL: Duration = Duration::from_secs(2);

/// What the stats calls remember between calls.
#[derive(Debug, Default)]
pub(crate) struct StatsCache {
    /// The previous CPU sample of each cgroup: (timestamp ns, cumulative usage ns).
    cpu: Mutex<HashMap<String, (i64, u64)>>,
    layers: Mutex<HashMap<String, (Instant, Usage)>>,
    /// When samples of removed containers and pods were last dropped.
    swept: Mutex<Option<Instant>>,
}

/// How often the samples of removed containers and pods are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// One container's figures, as both CRI and Prometheus use them.
#[derive(Debug, Clone)]
pub struct ContainerFigures {
    pub container: ContainerRecord,
    pub timestamp: i64,
    pub cgroup: CgroupStats,
    /// CPU use over the time since the previous sample, in nanocores.
    pub nano_cores: Option<u64>,
    pub layer: Usage,
}

/// One pod's figures.
#[derive(Debug, Clone)]
pub struct PodFigures {
    pub pod: PodRecord,
    pub timestamp: i64,
    pub cgroup: CgroupStats,
    pub nano_cores: Option<u64>,
    pub interfaces: Vec<InterfaceStats>,
    pub containers: Vec<ContainerFigures>,
}

fn matches_labels(
    labels: &std::collections::BTreeMap<String, String>,
    selector: &HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl Engine {
    /// nanocores from the previous sample of `key`; the sample is replaced.
    fn cpu_rate(&self, key: &str, ts: i64, usage: Option<u64>) -> Option<u64> {
        let usage = usage?;
        let mut g = self
            .stats
            .cpu
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let prev = g.insert(key.to_owned(), (ts, usage));
        let (pts, pusage) = prev?;
        let dt = u64::try_from(ts - pts).ok().filter(|d| *d > 0)?;
        let du = usage.checked_sub(pusage)?;
        Some(u64::try_from(u128::from(du) * 1_000_000_000 / u128::from(dt)).unwrap_or(u64::MAX))
    }

    fn layer_usage(&self, c: &ContainerRecord) -> Usage {
        let mut g = self
            .stats
            .layers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, u)) = g.get(&c.id)
            && at.elapsed() < LAYER_USAGE_TTL
        {
            return *u;
        }
        let u = crate::snapshots::usage(&c.dir.join("upper")).unwrap_or_default();
        g.insert(c.id.clone(), (Instant::now(), u));
        u
    }

    fn container_figures(&self, c: ContainerRecord) -> ContainerFigures {
        let ts = now_nanos();
        let running = c.state == ContainerState::Running;
        let cgroup = match (running, self.cgroup_manager()) {
            (true, Ok(cg)) => cg.stats(&c.cgroup),
            _ => CgroupStats::default(),
        };
        let nano_cores = if running {
            self.cpu_rate(&c.id, ts, cgroup.cpu_usage_ns)
        } else {
            None
        };
        let layer = self.layer_usage(&c);
        ContainerFigures {
            container: c,
            timestamp: ts,
            cgroup,
            nano_cores,
            layer,
        }
    }

    /// The figures of the containers that pass the filter (running ones, unless one is
    /// asked for by id).
    pub fn container_figures_list(
        &self,
        filter: Option<&cri::ContainerStatsFilter>,
    ) -> Result<Vec<ContainerFigures>> {
        let mut out = Vec::new();
        for c in self.db.container_list()? {
            if let Some(f) = filter {
                if !f.id.is_empty() && !c.id.starts_with(&f.id) {
                    continue;
                }
                if !f.pod_sandbox_id.is_empty() && !c.pod_id.starts_with(&f.pod_sandbox_id) {
                    continue;
                }
                if !matches_labels(&c.labels, &f.label_selector) {
                    continue;
                }
            }
            if c.state != ContainerState::Running {
                continue;
            }
            out.push(self.container_figures(c));
        }
        // Forget samples of containers that are gone.
        self.forget_gone_samples()?;
        Ok(out)
    }

    fn forget_gone_samples(&self) -> Result<()> {
        {
            let mut swept = self
                .stats
                .swept
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if swept.is_some_and(|t| t.elapsed() < SWEEP_EVERY) {
                return Ok(());
            }
            *swept = Some(Instant::now());
        }
        let live: std::collections::HashSet<String> = self
            .db
            .container_list()?
            .into_iter()
            .map(|c| c.id)
            .chain(self.db.pod_list()?.into_iter().map(|p| p.id))
            .collect();
        self.stats
            .cpu
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|k, _| live.contains(k));
        self.stats
            .layers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|k, _| live.contains(k));
        Ok(())
    }

    /// ContainerStats: one container, running or not.
    pub fn container_stats(&self, id: &str) -> Result<cri::ContainerStats> {
        let c = self.container_status(id)?;
        Ok(container_stats(
            &self.container_figures(c),
            &self.writable_layer_mountpoint(),
        ))
    }

    /// ListContainerStats.
    pub fn list_container_stats(
        &self,
        filter: Option<&cri::ContainerStatsFilter>,
    ) -> Result<Vec<cri::ContainerStats>> {
        let mp = self.writable_layer_mountpoint();
        Ok(self
            .container_figures_list(filter)?
            .iter()
            .map(|f| container_stats(f, &mp))
            .collect())
    }

    fn pod_figures(&self, pod: PodRecord, containers: &[ContainerRecord]) -> PodFigures {
        let ts = now_nanos();
        let ready = pod.state == PodState::Ready;
        let cgroup = match (ready, self.cgroup_manager()) {
            (true, Ok(cg)) => cg.stats(&pod.cgroup),
            _ => CgroupStats::default(),
        };
        let nano_cores = if ready {
            self.cpu_rate(&pod.id, ts, cgroup.cpu_usage_ns)
        } else {
            None
        };
        let interfaces = if ready && pod.network == NsMode::Pod {
            net_dev_of(pod.monitor_pid)
        } else {
            Vec::new()
        };
        let containers = containers
            .iter()
            .filter(|c| c.pod_id == pod.id && c.state == ContainerState::Running)
            .map(|c| self.container_figures(c.clone()))
            .collect();
        PodFigures {
            pod,
            timestamp: ts,
            cgroup,
            nano_cores,
            interfaces,
            containers,
        }
    }

    /// The figures of the pods that pass the filter (ready ones, unless one is asked for
    /// by id).
    pub fn pod_figures_list(
        &self,
        filter: Option<&cri::PodSandboxStatsFilter>,
    ) -> Result<Vec<PodFigures>> {
        let out = self.pod_figures_of(self.db.pod_list()?, &self.db.container_list()?, filter);
        self.forget_gone_samples()?;
        Ok(out)
    }

    /// The figures of the ready `pods` that pass the filter.
    fn pod_figures_of(
        &self,
        pods: Vec<PodRecord>,
        containers: &[ContainerRecord],
        filter: Option<&cri::PodSandboxStatsFilter>,
    ) -> Vec<PodFigures> {
        let mut out = Vec::new();
        for p in pods {
            if let Some(f) = filter {
                if !f.id.is_empty() && !p.id.starts_with(&f.id) {
                    continue;
                }
                if !matches_labels(&p.labels, &f.label_selector) {
                    continue;
                }
            }
            if p.state != PodState::Ready {
                continue;
            }
            out.push(self.pod_figures(p, containers));
        }
        out
    }

    /// PodSandboxStats.
    pub fn pod_stats(&self, id: &str) -> Result<cri::PodSandboxStats> {
        let pod = self.pod(id)?;
        let containers = self.db.container_list()?;
        Ok(pod_stats(
            &self.pod_figures(pod, &containers),
            &self.writable_layer_mountpoint(),
        ))
    }

    /// ListPodSandboxStats.
    pub fn list_pod_stats(
        &self,
        filter: Option<&cri::PodSandboxStatsFilter>,
    ) -> Result<Vec<cri::PodSandboxStats>> {
        let mp = self.writable_layer_mountpoint();
        Ok(self
            .pod_figures_list(filter)?
            .iter()
            .map(|f| pod_stats(f, &mp))
            .collect())
    }

    /// Where writable layers live (the filesystem kubelet accounts them to).
    pub fn writable_layer_mountpoint(&self) -> String {
        self.cfg.root.join("containers").display().to_string()
    }
}

fn u64v(v: Option<u64>) -> Option<cri::UInt64Value> {
    v.map(|value| cri::UInt64Value { value })
}

fn cpu(ts: i64, s: &CgroupStats, nano_cores: Option<u64>) -> Option<cri::CpuUsage> {
    Some(cri::CpuUsage {
        timestamp: ts,
        usage_core_nano_seconds: u64v(s.cpu_usage_ns),
        usage_nano_cores: u64v(nano_cores),
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

impl Engine {
    /// What the metrics endpoint reports at scrape time: pods and containers by state,
    /// live monitors, pull totals, and every ready pod's and running container's usage.
    pub fn metrics_snapshot(&self) -> Result<berth_metrics::Snapshot> {
        use std::sync::atomic::Ordering;
        let pods = self.db.pod_list()?;
        let containers = self.db.container_list()?;
        let count = |states: &[(&str, usize)]| {
            states
                .iter()
                .map(|(s, n)| ((*s).to_owned(), u64::try_from(*n).unwrap_or(u64::MAX)))
                .collect::<Vec<_>>()
        };
        let pods_in = |s: PodState| pods.iter().filter(|p| p.state == s).count();
        let ctrs_in = |s: ContainerState| containers.iter().filter(|c| c.state == s).count();
        let monitors = pods
            .iter()
            .filter(|p| p.state == PodState::Ready && crate::pods::process_is(p.monitor_pid, &p.id))
            .count();
        let mut snap = berth_metrics::Snapshot {
            pods: count(&[
                ("ready", pods_in(PodState::Ready)),
                ("notready", pods_in(PodState::NotReady)),
            ]),
            containers: count(&[
                ("created", ctrs_in(ContainerState::Created)),
                ("running", ctrs_in(ContainerState::Running)),
                ("exited", ctrs_in(ContainerState::Exited)),
            ]),
            monitors: u64::try_from(monitors).unwrap_or(u64::MAX),
            pulls: self.puller.stats.pulls.load(Ordering::Relaxed),
            pull_failures: self.puller.stats.failures.load(Ordering::Relaxed),
            pull_bytes: self.puller.stats.bytes.load(Ordering::Relaxed),
            ..Default::default()
        };
        let secs = |ns: Option<u64>| ns.map(|v| v as f64 / 1e9);
        // The lists read above serve the usage figures too: one read of the db per scrape.
        let figures = self.pod_figures_of(pods, &containers, None);
        self.forget_gone_samples()?;
        for f in figures {
            let (ns, pod) = (f.pod.namespace.clone(), f.pod.name.clone());
            for c in &f.containers {
                snap.container_samples.push(berth_metrics::ContainerSample {
                    namespace: ns.clone(),
                    pod: pod.clone(),
                    container: c.container.name.clone(),
                    cpu_seconds: secs(c.cgroup.cpu_usage_ns),
                    memory_usage_bytes: c.cgroup.memory_usage,
                    memory_working_set_bytes: c.cgroup.working_set,
                    memory_rss_bytes: c.cgroup.rss,
                    memory_limit_bytes: c.cgroup.memory_limit,
                    writable_layer_bytes: c.layer.bytes,
                    processes: c.cgroup.pids,
                });
            }
            snap.pod_samples.push(berth_metrics::PodSample {
                namespace: ns,
                pod,
                cpu_seconds: secs(f.cgroup.cpu_usage_ns),
                memory_working_set_bytes: f.cgroup.working_set,
                processes: f.cgroup.pids,
                interfaces: f
                    .interfaces
                    .iter()
                    .map(|i| berth_metrics::InterfaceSample {
                        name: i.name.clone(),
                        rx_bytes: i.rx_bytes,
                        rx_errors: i.rx_errors,
                        tx_bytes: i.tx_bytes,
                        tx_errors: i.tx_errors,
                    })
                    .collect(),
            });
        }
        Ok(snap)
    }
}

/// The label keys every cAdvisor-style metric starts with (kubelet adds namespace, pod
/// and container from the sandbox and container metadata).
const BASE_LABELS: [&str; 3] = ["id", "name", "image"];

/// The cAdvisor metrics berth reports through ListPodSandboxMetrics, with the names and
/// label keys kubelet's /metrics/cadvisor serves: (name, help, extra label keys, counter).
const DESCRIPTORS: &[(&str, &str, &[&str], bool)] = &[
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

impl Engine {
    /// ListPodSandboxMetrics: every ready pod's network counters, and its running
    /// containers' CPU, memory, processes, writable layer and OOM events.
    pub fn pod_sandbox_metrics(&self) -> Result<Vec<cri::PodSandboxMetrics>> {
        let mp = self.writable_layer_mountpoint();
        let cg = self.cgroup_manager().ok();
        let mut out = Vec::new();
        for f in self.pod_figures_list(None)? {
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
                    let oom = cg.as_ref().and_then(|cg| cg.oom_kills(&r.cgroup).ok());
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

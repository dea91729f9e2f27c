//! CRI stats: what kubelet schedules and evicts on, read from the cgroups, the writable
//! layers and the pods' network namespaces (through `/proc/<monitor>/net/dev`), with no
//! process spawned. The Prometheus endpoint reads the same figures.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
        filter: Option<&crate::api::ContainerStatsFilter>,
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
                if !crate::api::labels_match(&c.labels, &f.label_selector) {
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

    /// ContainerStats: one container's figures, running or not.
    pub fn container_stats(&self, id: &str) -> Result<ContainerFigures> {
        let c = self.container_status(id)?;
        Ok(self.container_figures(c))
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
        filter: Option<&crate::api::PodSandboxStatsFilter>,
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
        filter: Option<&crate::api::PodSandboxStatsFilter>,
    ) -> Vec<PodFigures> {
        let mut out = Vec::new();
        for p in pods {
            if let Some(f) = filter {
                if !f.id.is_empty() && !p.id.starts_with(&f.id) {
                    continue;
                }
                if !crate::api::labels_match(&p.labels, &f.label_selector) {
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

    /// PodSandboxStats: one pod's figures, ready or not.
    pub fn pod_stats(&self, id: &str) -> Result<PodFigures> {
        let pod = self.pod(id)?;
        let containers = self.db.container_list()?;
        Ok(self.pod_figures(pod, &containers))
    }

    /// How many processes the kernel's OOM killer killed in a container's cgroup.
    pub fn container_oom_kills(&self, c: &ContainerRecord) -> Option<u64> {
        self.cgroup_manager()
            .ok()
            .and_then(|cg| cg.oom_kills(&c.cgroup).ok())
    }

    /// Where writable layers live (the filesystem kubelet accounts them to).
    pub fn writable_layer_mountpoint(&self) -> String {
        self.cfg.root.join("containers").display().to_string()
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
                    pressure: [
                        ("cpu", c.cgroup.cpu_pressure),
                        ("memory", c.cgroup.memory_pressure),
                        ("io", c.cgroup.io_pressure),
                    ]
                    .into_iter()
                    .filter_map(|(r, p)| {
                        let p = p?;
                        Some((
                            r,
                            p.some.total_us as f64 / 1e6,
                            p.full.total_us as f64 / 1e6,
                        ))
                    })
                    .collect(),
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

//! CRI stats: what kubelet schedules and evicts on, read from the cgroups, the writable
//! layers and the pods' network namespaces (through `/proc/<monitor>/net/dev`), with no
//! process spawned. The Prometheus endpoint reads the same figures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::Engine;
use crate::clock::now_nanos;
use crate::error::Result;
use crate::linux::cgroups::stats::{CgroupStats, InterfaceStats, net_dev_of};
use crate::snapshots::Usage;
use crate::state::records::{ContainerRecord, ContainerState, NsMode, PodRecord, PodState};

/// How long a writable layer's measured size is reused (a walk of the upper directory).
const LAYER_USAGE_TTL: Duration = Duration::from_secs(2);

/// How long a container's cgroup figures read by one list call serve the next list call.
/// kubelet asks ListPodSandboxStats (which holds every container's figures) and
/// ListContainerStats back to back each round: the second reuses what the first read a
/// moment before, where reading again would double a round's cost at a few hundred
/// containers and give a CPU rate over a few milliseconds. Calls about one container
/// (ContainerStats, PodSandboxStats) always read afresh.
const ROUND_TTL: Duration = Duration::from_secs(1);

/// What the stats calls remember between calls.
#[derive(Debug, Default)]
pub(crate) struct StatsCache {
    /// The previous CPU sample of each cgroup: (timestamp ns, cumulative usage ns).
    cpu: Mutex<HashMap<String, (i64, u64)>>,
    layers: Mutex<HashMap<String, (Instant, Usage)>>,
    /// Each container's last cgroup figures, for the next list call of the round.
    recent: Mutex<HashMap<String, Recent>>,
    /// When samples of removed containers and pods were last dropped.
    swept: Mutex<Option<Instant>>,
}

/// A container's cgroup figures as read at `at` (timestamp `ts`).
#[derive(Debug, Clone)]
struct Recent {
    at: Instant,
    ts: i64,
    cgroup: CgroupStats,
    nano_cores: Option<u64>,
}

/// How often the samples of removed containers and pods are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// One container's figures, as both CRI and Prometheus use them.
#[derive(Debug, Clone)]
pub struct ContainerFigures {
    pub container: Arc<ContainerRecord>,
    pub timestamp: i64,
    pub cgroup: CgroupStats,
    /// CPU use over the time since the previous sample, in nanocores.
    pub nano_cores: Option<u64>,
    pub layer: Usage,
}

/// One pod's figures.
#[derive(Debug, Clone)]
pub struct PodFigures {
    pub pod: Arc<PodRecord>,
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
        let lock = || {
            self.stats
                .layers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some((at, u)) = lock().get(&c.id)
            && at.elapsed() < LAYER_USAGE_TTL
        {
            return *u;
        }
        // Walked without the lock: the stats threads walk their layers side by side. A
        // walk that fails is not kept (ImageFsInfo would take it as the layer's size).
        match crate::snapshots::usage(&c.dir.join("upper")) {
            Ok(u) => {
                lock().insert(c.id.clone(), (Instant::now(), u));
                u
            }
            Err(_) => Usage::default(),
        }
    }

    /// Bytes and inodes under `dir` (the containers' directories, for ImageFsInfo): each
    /// container's directory is walked, except a writable layer measured within
    /// [`LAYER_USAGE_TTL`] (kubelet's stats calls come just before ImageFsInfo in a round),
    /// whose figure is taken as it is.
    pub(crate) fn containers_usage(&self, dir: &std::path::Path) -> Result<Usage> {
        let fresh: HashMap<String, Usage> = self
            .stats
            .layers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(_, (at, _))| at.elapsed() < LAYER_USAGE_TTL)
            .map(|(id, (_, u))| (id.clone(), *u))
            .collect();
        let mut total = crate::snapshots::usage_of_entry(dir)?;
        let entries = match std::fs::read_dir(dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(total),
            Err(e) => {
                return Err(crate::Error::Internal(format!(
                    "read {}: {e}",
                    dir.display()
                )));
            }
        };
        for e in entries.flatten() {
            let path = e.path();
            let Some(layer) = e.file_name().to_str().and_then(|id| fresh.get(id)) else {
                total += crate::snapshots::usage(&path)?;
                continue;
            };
            total += crate::snapshots::usage_of_entry(&path)?;
            total += *layer;
            for child in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                if child.file_name() != "upper" {
                    total += crate::snapshots::usage(&child.path())?;
                }
            }
        }
        Ok(total)
    }

    /// A container's figures: read afresh, or (`listed`) reused from the round's previous
    /// list call if it read them within [`ROUND_TTL`].
    fn container_figures(&self, c: Arc<ContainerRecord>, listed: bool) -> ContainerFigures {
        let layer = self.layer_usage(&c);
        if c.state != ContainerState::Running {
            return ContainerFigures {
                container: c,
                timestamp: now_nanos(),
                cgroup: CgroupStats::default(),
                nano_cores: None,
                layer,
            };
        }
        let lock = || {
            self.stats
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if listed && let Some(r) = lock().get(&c.id).filter(|r| r.at.elapsed() < ROUND_TTL) {
            return ContainerFigures {
                timestamp: r.ts,
                cgroup: r.cgroup.clone(),
                nano_cores: r.nano_cores,
                container: c,
                layer,
            };
        }
        let (at, ts) = (Instant::now(), now_nanos());
        let cgroup = match self.cgroup_manager() {
            Ok(cg) => cg.stats(&c.cgroup),
            Err(_) => CgroupStats::default(),
        };
        let nano_cores = self.cpu_rate(&c.id, ts, cgroup.cpu_usage_ns);
        lock().insert(
            c.id.clone(),
            Recent {
                at,
                ts,
                cgroup: cgroup.clone(),
                nano_cores,
            },
        );
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
        let listed: Vec<Arc<ContainerRecord>> = self
            .db
            .container_list()?
            .into_iter()
            .filter(|c| {
                filter.is_none_or(|f| {
                    (f.id.is_empty() || c.id.starts_with(&f.id))
                        && (f.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&f.pod_sandbox_id))
                        && crate::api::labels_match(&c.labels, &f.label_selector)
                })
            })
            .filter(|c| c.state == ContainerState::Running)
            .collect();
        let out = parallel(listed, |c| self.container_figures(c, true));
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
            .iter()
            .map(|c| c.id.clone())
            .chain(self.db.pod_list()?.iter().map(|p| p.id.clone()))
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
        self.stats
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|k, _| live.contains(k));
        Ok(())
    }

    /// ContainerStats: one container's figures, running or not.
    pub fn container_stats(&self, id: &str) -> Result<ContainerFigures> {
        let c = self.container_status(id)?;
        Ok(self.container_figures(Arc::new(c), false))
    }

    /// A pod's figures, with those of its running `containers` (reused from the round's
    /// previous list call when `listed`).
    fn pod_figures(
        &self,
        pod: Arc<PodRecord>,
        containers: &[&Arc<ContainerRecord>],
        listed: bool,
    ) -> PodFigures {
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
            .filter(|c| c.state == ContainerState::Running)
            .map(|c| self.container_figures(Arc::clone(c), listed))
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
        pods: Vec<Arc<PodRecord>>,
        containers: &[Arc<ContainerRecord>],
        filter: Option<&crate::api::PodSandboxStatsFilter>,
    ) -> Vec<PodFigures> {
        let mut by_pod: HashMap<&str, Vec<&Arc<ContainerRecord>>> = HashMap::new();
        for c in containers {
            by_pod.entry(c.pod_id.as_str()).or_default().push(c);
        }
        let pods: Vec<Arc<PodRecord>> = pods
            .into_iter()
            .filter(|p| {
                filter.is_none_or(|f| {
                    (f.id.is_empty() || p.id.starts_with(&f.id))
                        && crate::api::labels_match(&p.labels, &f.label_selector)
                })
            })
            .filter(|p| p.state == PodState::Ready)
            .collect();
        parallel(pods, |p| {
            let mine = by_pod.get(p.id.as_str()).map_or(&[][..], Vec::as_slice);
            self.pod_figures(p, mine, true)
        })
    }

    /// PodSandboxStats: one pod's figures, ready or not.
    pub fn pod_stats(&self, id: &str) -> Result<PodFigures> {
        let pod = Arc::new(self.pod(id)?);
        let containers = self.db.container_list()?;
        let mine: Vec<&Arc<ContainerRecord>> =
            containers.iter().filter(|c| c.pod_id == pod.id).collect();
        Ok(self.pod_figures(pod, &mine, false))
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

/// `f` over `items` on up to as many threads as the machine has cores, in order: the
/// figures are file reads of a few tens of microseconds each, and a node of a few hundred
/// pods has as many of them per call.
fn parallel<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(items.len().div_ceil(PER_THREAD));
    if threads <= 1 {
        return items.into_iter().map(f).collect();
    }
    let per = items.len().div_ceil(threads);
    let mut chunks = Vec::with_capacity(threads);
    let mut items = items.into_iter();
    loop {
        let chunk: Vec<T> = items.by_ref().take(per).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(chunk);
    }
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| s.spawn(move || chunk.into_iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// Fewer items than this per thread are read on the calling thread.
const PER_THREAD: usize = 32;

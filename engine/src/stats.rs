//! CRI stats: what kubelet schedules and evicts on, read from the cgroups, the writable
//! layers and the pods' network namespaces (through `/proc/<monitor>/net/dev`), with no
//! process spawned. The Prometheus endpoint reads the same figures.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::Engine;
use crate::clock::now_nanos;
use crate::error::Result;
use crate::linux::cgroups::stats::{CgroupStats, HierarchyRoots, InterfaceStats, net_dev_of};
use crate::snapshots::Usage;
use crate::state::records::{ContainerRecord, ContainerState, NsMode, PodRecord, PodState};

/// How often the disk usage of every container's directory is measured in the background
/// (its writable layer and the rest: a walk of each), as containerd's CRI measures its
/// snapshots' usage every `stats_collect_period` (10 s). List calls and ImageFsInfo take
/// these figures as they are, so a stats round walks no directory; calls about one
/// container or pod measure it afresh.
pub const DISK_USAGE_PERIOD: Duration = Duration::from_secs(10);

/// The least pause between two directories measured in the background.
const DISK_USAGE_MIN_GAP: Duration = Duration::from_millis(5);

/// How old a measured disk usage may be and still be served to a list call; an older one
/// (the background measuring is not running, or is behind) is measured again.
const DISK_USAGE_MAX_AGE: Duration = Duration::from_secs(25);

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
    /// Each container directory's disk usage, by container id.
    disk: Mutex<HashMap<String, DirUsage>>,
    /// Each container's last cgroup figures, for the next list call of the round.
    recent: Mutex<HashMap<String, Recent>>,
    /// Tells the background measuring of disk usage about a new container (see
    /// [`Engine::spawn_disk_usage_sync`]).
    new_dirs: Mutex<Option<std::sync::mpsc::Sender<(String, std::path::PathBuf)>>>,
    /// The cgroup hierarchies' mount points, opened at the first stats call.
    roots: std::sync::OnceLock<HierarchyRoots>,
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

/// A container directory's disk usage when it was measured.
#[derive(Debug, Clone, Copy)]
struct DirUsage {
    at: Instant,
    /// The writable layer (`upper`).
    layer: Usage,
    /// The directory itself and everything in it but the writable layer (overlayfs's
    /// work directory, the spec, the mount points of its files).
    rest: Usage,
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

    /// The disk usage of container directory `dir` (of container `id`): reused when
    /// `cached` and measured within [`DISK_USAGE_MAX_AGE`], else measured and kept. A
    /// measure that fails is not kept (ImageFsInfo would take it as the directory's size).
    fn dir_usage(&self, id: &str, dir: &Path, cached: bool) -> Option<DirUsage> {
        let lock = || {
            self.stats
                .disk
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if cached
            && let Some(u) = lock().get(id)
            && u.at.elapsed() < DISK_USAGE_MAX_AGE
        {
            return Some(*u);
        }
        // Walked without the lock: the stats threads walk their directories side by side.
        let u = measure_dir(dir).ok()?;
        lock().insert(id.to_owned(), u);
        Some(u)
    }

    /// The usage of cgroup `rel` (none without cgroups).
    fn cgroup_stats(&self, rel: &str) -> CgroupStats {
        let Ok(cg) = self.cgroup_manager() else {
            return CgroupStats::default();
        };
        let roots = self
            .stats
            .roots
            .get_or_init(|| HierarchyRoots::open(cg.layout()));
        cg.stats(rel, Some(roots))
    }

    fn layer_usage(&self, c: &ContainerRecord, cached: bool) -> Usage {
        self.dir_usage(&c.id, &c.dir, cached)
            .map(|u| u.layer)
            .unwrap_or_default()
    }

    /// Bytes and inodes under `dir` (the containers' directories, for ImageFsInfo), from
    /// each container directory's measured usage (see [`DISK_USAGE_PERIOD`]).
    pub(crate) fn containers_usage(&self, dir: &Path) -> Result<Usage> {
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
            let u = match e.file_name().to_str() {
                Some(id) => self.dir_usage(id, &path, true),
                None => None,
            };
            match u {
                Some(u) => {
                    total += u.layer;
                    total += u.rest;
                }
                // Gone since it was listed, or not a container's: walked as it is.
                None => total += crate::snapshots::usage(&path)?,
            }
        }
        Ok(total)
    }

    /// Measures, one after the other and spread over [`DISK_USAGE_PERIOD`], the disk usage
    /// of every container's directory, for as long as the engine lives (on a thread of
    /// its own, `berth-du`); a new container's at once, so that the first stats round
    /// after a burst of new pods walks nothing either.
    pub fn spawn_disk_usage_sync(engine: &Arc<Engine>) -> std::io::Result<()> {
        use std::sync::mpsc::RecvTimeoutError;
        let weak = Arc::downgrade(engine);
        let (tx, rx) = std::sync::mpsc::channel::<(String, std::path::PathBuf)>();
        std::thread::Builder::new()
            .name("berth-du".into())
            .spawn(move || {
                let _ = crate::linux::sys::lower_thread_priority(BACKGROUND_NICE);
                let mut queue = std::collections::VecDeque::new();
                let mut round = Instant::now();
                loop {
                    let Some(engine) = weak.upgrade() else {
                        return;
                    };
                    if queue.is_empty() {
                        // A new round: every container, spread over the period (a state db
                        // that cannot be read now is tried again at the next).
                        if let Ok(all) = engine.db.container_list() {
                            queue.extend(all.iter().map(|c| (c.id.clone(), c.dir.clone())));
                        }
                        round = Instant::now();
                    }
                    // Never back to back, even when a round runs late (a slow disk).
                    let left = DISK_USAGE_PERIOD.saturating_sub(round.elapsed());
                    let gap = (left / u32::try_from(queue.len() + 1).unwrap_or(u32::MAX))
                        .max(DISK_USAGE_MIN_GAP);
                    drop(engine);
                    let next = match rx.recv_timeout(gap) {
                        Ok(new) => Some(new),
                        Err(RecvTimeoutError::Timeout) => queue.pop_front(),
                        Err(RecvTimeoutError::Disconnected) => return,
                    };
                    let Some(engine) = weak.upgrade() else {
                        return;
                    };
                    if let Some((id, dir)) = next {
                        engine.dir_usage(&id, &dir, false);
                    }
                }
            })?;
        *engine
            .stats
            .new_dirs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
        Ok(())
    }

    /// A container was created: its directory's usage is measured soon, off the call's
    /// path.
    pub(crate) fn measure_new_container(&self, c: &ContainerRecord) {
        if let Some(tx) = self
            .stats
            .new_dirs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            let _ = tx.send((c.id.clone(), c.dir.clone()));
        }
    }

    /// A container's figures: read afresh, or (`listed`) reused from the round's previous
    /// list call if it read them within [`ROUND_TTL`].
    fn container_figures(&self, c: Arc<ContainerRecord>, listed: bool) -> ContainerFigures {
        let layer = self.layer_usage(&c, listed);
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
        let cgroup = self.cgroup_stats(&c.cgroup);
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
            .disk
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
        let cgroup = if ready {
            self.cgroup_stats(&pod.cgroup)
        } else {
            CgroupStats::default()
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

/// The disk usage of a container's directory: its writable layer and the rest.
fn measure_dir(dir: &Path) -> Result<DirUsage> {
    let at = Instant::now();
    let layer = crate::snapshots::usage(&dir.join("upper"))?;
    let mut rest = crate::snapshots::usage_of_entry(dir)?;
    let children = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(crate::Error::NotFound {
                what: "container directory",
                id: dir.display().to_string(),
            });
        }
        Err(e) => {
            return Err(crate::Error::Internal(format!(
                "read {}: {e}",
                dir.display()
            )));
        }
    };
    for child in children.flatten() {
        if child.file_name() != "upper" {
            rest += crate::snapshots::usage(&child.path())?;
        }
    }
    Ok(DirUsage { at, layer, rest })
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
    let mut slots = Vec::with_capacity(threads);
    let mut items = items.into_iter();
    loop {
        let chunk: Vec<T> = items.by_ref().take(per).collect();
        if chunk.is_empty() {
            break;
        }
        slots.push(Mutex::new(Some(chunk)));
    }
    let run = |slot: &Mutex<Option<Vec<T>>>| -> Vec<R> {
        let chunk = slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        chunk.into_iter().flatten().map(&f).collect()
    };
    let (run, slots) = (&run, &slots);
    std::thread::scope(|s| {
        let spawned: Vec<_> = (1..slots.len())
            .map(|i| {
                std::thread::Builder::new()
                    .name("berth-stats".into()) // for `top -H` and a profile
                    .spawn_scoped(s, move || run(&slots[i]))
                    .ok()
            })
            .collect();
        // The first chunk is read on the calling thread.
        let mut parts = vec![run(&slots[0])];
        for h in spawned {
            parts.push(h.map_or_else(Vec::new, |h| {
                h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
            }));
        }
        // A chunk whose thread could not be had (a task limit) is still in its slot.
        for (part, slot) in parts.iter_mut().zip(slots) {
            if part.is_empty() {
                *part = run(slot);
            }
        }
        parts.into_iter().flatten().collect()
    })
}

/// Fewer items than this per thread are read on the calling thread.
const PER_THREAD: usize = 32;

/// The nice value of `berth-du`, which measures container directories in the background
/// with no caller waiting: beside busy threads at nice 0 it gets a share of about 1.5 %
/// (CFS weight 15 against 1024), not nothing, so it still finishes its rounds. (The stats
/// threads of a list call keep the caller's priority: at 250 pods on two cores, a
/// ListContainers running beside back-to-back stats calls took the same 1.3-1.6 ms p50
/// whether they ran at nice 10 or 0 — what it waits for there is not the CPU.)
const BACKGROUND_NICE: i32 = 19;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_directory_is_measured_as_its_writable_layer_and_the_rest() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("c1");
        std::fs::create_dir_all(dir.join("upper/etc")).unwrap();
        std::fs::create_dir_all(dir.join("work/work")).unwrap();
        std::fs::write(dir.join("upper/etc/big"), vec![1u8; 64 * 1024]).unwrap();
        std::fs::write(dir.join("spec"), b"{}").unwrap();
        let u = measure_dir(&dir).unwrap();
        // upper, etc, big.
        assert_eq!(u.layer.inodes, 3);
        assert!(u.layer.bytes >= 64 * 1024, "{:?}", u.layer);
        // c1, work, work/work, spec.
        assert_eq!(u.rest.inodes, 4);
        assert!(u.rest.bytes < 64 * 1024, "{:?}", u.rest);
        assert!(measure_dir(&t.path().join("gone")).is_err());
    }

    #[test]
    fn parallel_keeps_the_order_of_its_items() {
        for n in [0, 1, PER_THREAD, PER_THREAD + 1, 10 * PER_THREAD + 7] {
            let items: Vec<usize> = (0..n).collect();
            let out = parallel(items, |i| i * 2);
            assert_eq!(out, (0..n).map(|i| i * 2).collect::<Vec<_>>());
        }
    }
}

//! A full node, measured the same way for any CRI runtime (`berth-bench compare --scale`):
//! filling it with pods, kubelet's polling with the node full (PLEG relists every second,
//! stats every 10 s, ExecSync probes), the runtime's CPU and memory meanwhile, a new pod's
//! lifecycle on the full node, and the daemon's restart with every pod running. Figures
//! come from the runtime's answers and from /proc and cgroupfs, never estimated.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::cri;
use nix::sys::signal::Signal;

use crate::Cri;
use crate::suite::{CpuCgroup, Percentiles, fd_count, percentiles, pss_kib, rss_kib, thread_count};

/// A runtime under test, as the scale suite drives it.
pub trait Node {
    fn daemon_pid(&self) -> u32;
    /// The processes it adds per pod (berth's monitors; containerd's shims and pauses).
    fn overhead_pids(&self) -> Vec<u32>;
    /// Sends `sig` to the daemon, waits until it is gone, and starts it again on the same
    /// state without waiting for it to answer.
    fn kill_and_spawn(&mut self, sig: Signal);
    fn socket(&self) -> std::path::PathBuf;
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ScalePlan {
    pub image: String,
    /// Node sizes to fill to, smallest first; the largest stays for the rest.
    pub sizes: Vec<usize>,
    /// Clients filling and emptying the node at once.
    pub concurrency: usize,
    /// The steady-state window.
    pub steady: Duration,
    /// ExecSync probes per second over the pods.
    pub exec_rate: u32,
    /// New-pod lifecycles measured on the full node under load.
    pub lifecycles: usize,
    /// A long steady-state run for growth (`--soak`), if any.
    pub soak: Option<Duration>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Fill {
    pub pods: usize,
    pub up_s: f64,
    pub down_s: f64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Memory {
    pub pods: usize,
    pub daemon_rss_kib: u64,
    /// Summed PSS of the daemon and the per-pod processes.
    pub node_pss_kib: u64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Steady {
    pub pods: usize,
    pub seconds: f64,
    /// The runtime's CPU (daemon and its helpers) in % of one core.
    pub cpu_pct: f64,
    /// Latency of each call kubelet makes, ms.
    pub calls: Vec<(String, Percentiles)>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Restart {
    pub signal: String,
    /// Until Version answers.
    pub answer_s: f64,
    /// Until ListContainers shows every container running, with the same ids.
    pub complete_s: f64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Growth {
    pub seconds: f64,
    pub rss_kib: (u64, u64),
    pub fds: (usize, usize),
    pub threads: (usize, usize),
    pub cpu_pct: f64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ScaleReport {
    pub runtime: String,
    pub fills: Vec<Fill>,
    pub memory: Vec<Memory>,
    pub steady: Steady,
    /// Lifecycle steps of a new pod on the full node while kubelet's load runs.
    pub new_pod: Vec<(String, Percentiles)>,
    pub restarts: Vec<Restart>,
    pub soak: Option<Growth>,
}

fn memory(node: &dyn Node, pods: usize) -> Memory {
    let mut pids = node.overhead_pids();
    pids.push(node.daemon_pid());
    Memory {
        pods,
        daemon_rss_kib: rss_kib(node.daemon_pid()),
        node_pss_kib: pss_kib(&pids),
    }
}

/// Starts `n` pods with one container each over `concurrency` clients; (pod id, container
/// id) of each.
async fn fill(
    c: &Cri,
    image: &str,
    prefix: &str,
    n: usize,
    concurrency: usize,
) -> Vec<(String, String)> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (mut c, next, image, prefix) =
            (c.clone(), next.clone(), image.to_owned(), prefix.to_owned());
        set.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return out;
                }
                let sandbox = crate::suite::pod_config(&prefix, i);
                let pod = c.run_pod(sandbox.clone()).await;
                let id = crate::suite::run_container(&mut c, &pod, &sandbox, &image).await;
                out.push((pod, id));
            }
        });
    }
    set.join_all().await.into_iter().flatten().collect()
}

/// Stops and removes pods over `concurrency` clients.
async fn empty(c: &Cri, pods: Vec<String>, concurrency: usize) {
    let queue = Arc::new(Mutex::new(pods));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (mut c, queue) = (c.clone(), queue.clone());
        set.spawn(async move {
            loop {
                let Some(pod) = queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .pop()
                else {
                    return;
                };
                c.stop_and_remove_pod(&pod).await;
            }
        });
    }
    set.join_all().await;
}

/// Latencies of kubelet's calls, by name.
#[derive(Debug, Default, Clone)]
struct Calls {
    ms: Arc<Mutex<HashMap<String, Vec<f64>>>>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Calls {
    fn record<T, E: std::fmt::Display>(
        &self,
        name: &str,
        t: Instant,
        r: Result<T, E>,
    ) -> Option<T> {
        let ms = t.elapsed().as_secs_f64() * 1e3;
        match r {
            Ok(v) => {
                self.ms
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(name.to_owned())
                    .or_default()
                    .push(ms);
                Some(v)
            }
            Err(e) => {
                let mut errs = self
                    .errors
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if errs.len() < 20 {
                    errs.push(format!("{name}: {e}"));
                }
                None
            }
        }
    }

    fn summary(&self) -> Vec<(String, Percentiles)> {
        let mut all: Vec<(String, Percentiles)> = self
            .ms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter_mut()
            .map(|(k, v)| (k.clone(), percentiles(v)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// Kubelet's polling until `stop` is set: every second ListPodSandbox and ListContainers
/// and ContainerStatus of each container whose state changed; every 10 s the stats calls
/// and ImageFsInfo (their sum is "stats round"); `exec_rate` ExecSync probes per second,
/// spread over `containers`.
async fn kubelet_load(
    c: Cri,
    containers: Vec<String>,
    exec_rate: u32,
    stop: Arc<std::sync::atomic::AtomicBool>,
    calls: Calls,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let relist = {
        let (mut c, stop, calls) = (c.clone(), stop.clone(), calls.clone());
        async move {
            let mut states: HashMap<String, i32> = HashMap::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while !stop.load(Relaxed) {
                tick.tick().await;
                let t = Instant::now();
                let r = c
                    .runtime
                    .list_pod_sandbox(cri::ListPodSandboxRequest::default())
                    .await;
                calls.record("ListPodSandbox", t, r);
                let t = Instant::now();
                let r = c
                    .runtime
                    .list_containers(cri::ListContainersRequest::default())
                    .await;
                let Some(list) = calls.record("ListContainers", t, r) else {
                    continue;
                };
                for ctr in list.into_inner().containers {
                    if states.insert(ctr.id.clone(), ctr.state) != Some(ctr.state) {
                        let t = Instant::now();
                        let r = c
                            .runtime
                            .container_status(cri::ContainerStatusRequest {
                                container_id: ctr.id.clone(),
                                verbose: false,
                            })
                            .await;
                        calls.record("ContainerStatus", t, r);
                    }
                }
            }
        }
    };
    let stats = {
        let (mut c, stop, calls) = (c.clone(), stop.clone(), calls.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            while !stop.load(Relaxed) {
                tick.tick().await;
                let round = Instant::now();
                let t = Instant::now();
                let r = c
                    .runtime
                    .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest::default())
                    .await;
                calls.record("ListPodSandboxStats", t, r);
                let t = Instant::now();
                let r = c
                    .runtime
                    .list_container_stats(cri::ListContainerStatsRequest::default())
                    .await;
                calls.record("ListContainerStats", t, r);
                let t = Instant::now();
                let r = c
                    .image
                    .image_fs_info(cri::ImageFsInfoRequest::default())
                    .await;
                calls.record("ImageFsInfo", t, r);
                calls.record::<(), String>("stats round", round, Ok(()));
            }
        }
    };
    let probes = {
        let (c, stop, calls) = (c.clone(), stop.clone(), calls.clone());
        async move {
            if containers.is_empty() || exec_rate == 0 {
                return;
            }
            let inflight = Arc::new(tokio::sync::Semaphore::new(256));
            let mut tick = tokio::time::interval(Duration::from_secs(1) / exec_rate);
            let mut i = 0usize;
            let mut set = tokio::task::JoinSet::new();
            while !stop.load(Relaxed) {
                tick.tick().await;
                let Ok(permit) = inflight.clone().acquire_owned().await else {
                    break;
                };
                let (mut c, calls, id) = (
                    c.clone(),
                    calls.clone(),
                    containers[i % containers.len()].clone(),
                );
                i += 1;
                set.spawn(async move {
                    let t = Instant::now();
                    let r = c.exec(&id, &["true"], 10).await;
                    calls.record("ExecSync", t, r);
                    drop(permit);
                });
                while set.try_join_next().is_some() {}
            }
            set.join_all().await;
        }
    };
    tokio::join!(relist, stats, probes);
}

/// Runs kubelet's load for `window`, measuring the runtime's CPU meanwhile.
async fn steady(
    c: &Cri,
    containers: &[String],
    plan: &ScalePlan,
    window: Duration,
    cpu: &dyn Fn() -> u64,
) -> (Steady, Calls) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = Calls::default();
    let load = tokio::spawn(kubelet_load(
        c.clone(),
        containers.to_vec(),
        plan.exec_rate,
        stop.clone(),
        calls.clone(),
    ));
    let (t, cpu0) = (Instant::now(), cpu());
    tokio::time::sleep(window).await;
    let (secs, used) = (t.elapsed().as_secs_f64(), cpu().saturating_sub(cpu0));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = load.await;
    let steady = Steady {
        pods: containers.len(),
        seconds: secs,
        cpu_pct: used as f64 / 1e9 / secs * 100.0,
        calls: calls.summary(),
        errors: calls
            .errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone(),
    };
    (steady, calls)
}

/// Kills the daemon with `sig`, starts it again, and times it until it answers and until
/// its container list is complete: every one of `ids` running.
async fn restart(node: &mut dyn Node, sig: Signal, ids: &[String]) -> Restart {
    node.kill_and_spawn(sig);
    let t = Instant::now();
    let deadline = t + Duration::from_secs(120);
    let socket = node.socket();
    let mut c = loop {
        if let Ok(mut c) = Cri::connect(&socket).await
            && c.runtime
                .version(cri::VersionRequest::default())
                .await
                .is_ok()
        {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "the runtime did not answer within 120 s of its restart"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let answer_s = t.elapsed().as_secs_f64();
    let want: std::collections::BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    loop {
        if let Ok(r) = c
            .runtime
            .list_containers(cri::ListContainersRequest::default())
            .await
        {
            let running: std::collections::BTreeSet<String> = r
                .into_inner()
                .containers
                .into_iter()
                .filter(|x| x.state == cri::ContainerState::ContainerRunning as i32)
                .map(|x| x.id)
                .collect();
            if want.iter().all(|id| running.contains(*id)) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the container list was not complete within 120 s of the restart"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Restart {
        signal: format!("{sig:?}"),
        answer_s,
        complete_s: t.elapsed().as_secs_f64(),
    }
}

/// The whole suite against one runtime. `cpu` reads the runtime's CPU time so far (ns).
pub async fn run(
    runtime: &str,
    node: &mut dyn Node,
    cpu_cgroup: impl Fn() -> Option<CpuCgroup>,
    plan: &ScalePlan,
) -> ScaleReport {
    let _ = std::fs::create_dir_all("/tmp/berth-bench-logs");
    let mut report = ScaleReport {
        runtime: runtime.to_owned(),
        ..Default::default()
    };
    let connect = |node: &dyn Node| {
        let s = node.socket();
        async move { Cri::connect(&s).await.expect("connect") }
    };
    let c = connect(node).await;
    report.memory.push(memory(node, 0));
    let largest = plan.sizes.iter().copied().max().unwrap_or(0);
    let mut full = Vec::new();
    for &n in &plan.sizes {
        let t = Instant::now();
        let made = fill(
            &c,
            &plan.image,
            &format!("{runtime}-scale{n}"),
            n,
            plan.concurrency,
        )
        .await;
        let up_s = t.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        report.memory.push(memory(node, n));
        if n == largest {
            report.fills.push(Fill {
                pods: n,
                up_s,
                down_s: 0.0,
            });
            full = made;
            break;
        }
        let t = Instant::now();
        empty(
            &c,
            made.into_iter().map(|(p, _)| p).collect(),
            plan.concurrency,
        )
        .await;
        report.fills.push(Fill {
            pods: n,
            up_s,
            down_s: t.elapsed().as_secs_f64(),
        });
    }
    let ids: Vec<String> = full.iter().map(|(_, id)| id.clone()).collect();
    // CPU of the daemon and of everything it started (moved into a cpuacct cgroup of the
    // bench's now; its helpers started before follow it only if they are in its cgroup,
    // so helpers are counted through their own cgroup membership below).
    let cg = cpu_cgroup();
    if let Some(cg) = &cg {
        for pid in node.overhead_pids() {
            cg.add(pid);
        }
    }
    let cpu = || cg.as_ref().map_or(0, CpuCgroup::usage_ns);
    let (s, _) = steady(&c, &ids, plan, plan.steady, &cpu).await;
    report.steady = s;
    // A new pod on the full node, under the same load.
    {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = tokio::spawn(kubelet_load(
            c.clone(),
            ids.clone(),
            plan.exec_rate,
            stop.clone(),
            Calls::default(),
        ));
        let mut lc = c.clone();
        report.new_pod = crate::suite::lifecycle(
            &mut lc,
            &plan.image,
            &format!("{runtime}-newpod"),
            plan.lifecycles,
            || {},
        )
        .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = load.await;
    }
    if let Some(window) = plan.soak {
        let pid = node.daemon_pid();
        let before = (rss_kib(pid), fd_count(pid), thread_count(pid));
        let (s, _) = steady(&c, &ids, plan, window, &cpu).await;
        report.soak = Some(Growth {
            seconds: s.seconds,
            rss_kib: (before.0, rss_kib(pid)),
            fds: (before.1, fd_count(pid)),
            threads: (before.2, thread_count(pid)),
            cpu_pct: s.cpu_pct,
        });
    }
    drop(cg);
    drop(c);
    for sig in [Signal::SIGKILL, Signal::SIGTERM] {
        report.restarts.push(restart(node, sig, &ids).await);
    }
    let c = connect(node).await;
    let t = Instant::now();
    empty(
        &c,
        full.into_iter().map(|(p, _)| p).collect(),
        plan.concurrency,
    )
    .await;
    if let Some(f) = report.fills.iter_mut().find(|f| f.pods == largest) {
        f.down_s = t.elapsed().as_secs_f64();
    }
    let _ = std::fs::remove_dir_all("/tmp/berth-bench-logs");
    report
}

/// A berthd under test: its per-pod processes are its monitors (the processes whose
/// command line names the daemon's directory) and their pod inits.
impl Node for crate::Daemon {
    fn daemon_pid(&self) -> u32 {
        self.pid().map_or(0, |p| p.as_raw().unsigned_abs())
    }
    fn overhead_pids(&self) -> Vec<u32> {
        let dir = self.dir().to_string_lossy().into_owned();
        let all = processes();
        let monitors: std::collections::HashSet<u32> = all
            .iter()
            .filter(|(_, cmd)| cmd.contains(" monitor ") && cmd.contains(&dir))
            .map(|(pid, _)| *pid)
            .collect();
        // A pod whose containers share its pid namespace (mode POD, what a config that
        // leaves the mode out gets) has an init as well, a child of its monitor: a process
        // berth adds per pod, as containerd adds its pause.
        let inits: Vec<u32> = all
            .iter()
            .filter(|(pid, cmd)| {
                cmd.trim_end() == berth_engine::monitor::podinit::POD_INIT_NAME
                    && parent_of(*pid).is_some_and(|p| monitors.contains(&p))
            })
            .map(|(pid, _)| *pid)
            .collect();
        monitors.into_iter().chain(inits).collect()
    }
    fn kill_and_spawn(&mut self, sig: Signal) {
        crate::Daemon::kill_and_spawn(self, sig);
    }
    fn socket(&self) -> std::path::PathBuf {
        self.socket.clone()
    }
}

impl Node for crate::containerd::Containerd {
    fn daemon_pid(&self) -> u32 {
        self.pid().unwrap_or(0)
    }
    fn overhead_pids(&self) -> Vec<u32> {
        crate::containerd::Containerd::overhead_pids(self)
    }
    fn kill_and_spawn(&mut self, sig: Signal) {
        crate::containerd::Containerd::kill_and_spawn(self, sig);
    }
    fn socket(&self) -> std::path::PathBuf {
        self.socket.clone()
    }
}

/// The parent of process `pid` (field 4 of /proc/<pid>/stat, after the command's
/// parenthesis).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Every process: (pid, command line with spaces).
pub fn processes() -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")))
        })
        .collect()
}

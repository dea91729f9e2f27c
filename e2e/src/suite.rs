//! The runtime-neutral benchmark suite berth-bench runs against any CRI endpoint with the
//! same calls, images and configs: lifecycle latency per step, ExecSync round trip, a
//! burst of pods started and removed at once, the daemon's memory idle and under load,
//! the per-pod overhead (summed PSS of the processes the runtime adds per pod), and the
//! daemon's CPU time per lifecycle. Everything is read from the runtime's answers and from
//! /proc, never estimated.

use std::time::Instant;

use berth_proto::cri;

use crate::Cri;

/// The lifecycle steps, in order.
pub const STEPS: [&str; 8] = [
    "run_pod",
    "create",
    "start",
    "stop",
    "remove",
    "stop_pod",
    "remove_pod",
    "total",
];

/// p50/p90/p99 of a sample, in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

/// The percentile of a sorted sample (the element at the rounded fractional rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn percentiles(v: &mut [f64]) -> Percentiles {
    v.sort_by(f64::total_cmp);
    Percentiles {
        p50: percentile(v, 0.5),
        p90: percentile(v, 0.9),
        p99: percentile(v, 0.99),
    }
}

/// What one runtime measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub runtime: String,
    pub lifecycle: Vec<(String, Percentiles)>,
    pub exec: Percentiles,
    pub burst_pods: usize,
    pub burst_up_s: f64,
    pub burst_down_s: f64,
    pub idle_rss_kib: u64,
    pub loaded_rss_kib: u64,
    pub loaded_pods: usize,
    pub per_pod_overhead_kib: u64,
    pub cpu_ms_per_lifecycle: f64,
    /// Cold pull time per image (seconds): removed, garbage-collected, pulled again.
    pub pulls: Vec<(String, Percentiles)>,
}

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a> {
    /// The image of every container (a shell).
    pub image: &'a str,
    /// Lifecycles and execs measured (after 2 warm-up runs).
    pub runs: usize,
    /// Pods started at once.
    pub burst: usize,
    /// Running pods for the memory figures.
    pub loaded: usize,
    /// Images to pull cold: (name, reference).
    pub pulls: &'a [(String, String)],
    pub pull_runs: usize,
}

/// Where the suite reads the runtime's processes.
#[allow(missing_debug_implementations)]
pub struct Probes<'a> {
    /// The daemon.
    pub daemon_pid: u32,
    /// The processes the runtime adds for its pods (monitors, or shims and pause).
    pub overhead_pids: &'a dyn Fn() -> Vec<u32>,
    /// The cgroup holding the daemon and its helpers, when it could be made.
    pub cpu: Option<&'a CpuCgroup>,
}

/// Summed proportional set size of processes, in KiB.
pub fn pss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("Pss:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                })
                .unwrap_or(0)
        })
        .sum()
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Open descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Threads of a process.
pub fn thread_count(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A cpuacct cgroup that holds a runtime's daemon and, by inheritance, the helpers it
/// starts (berth's monitors, containerd's shims), so that their CPU counts too. Containers
/// run in their pods' cgroups and are not counted.
#[derive(Debug)]
pub struct CpuCgroup {
    dir: std::path::PathBuf,
    v2: bool,
}

impl CpuCgroup {
    /// Creates `berth-bench-<name>` in the cpuacct (v1) or unified (v2) hierarchy and
    /// moves `pid` into it.
    pub fn adopt(name: &str, pid: u32) -> Option<CpuCgroup> {
        let (root, v2) = ["/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup/cpu,cpuacct"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.join("cpuacct.usage").exists())
            .map(|p| (p, false))
            .or_else(|| {
                let p = std::path::PathBuf::from("/sys/fs/cgroup");
                p.join("cgroup.controllers").exists().then_some((p, true))
            })?;
        let dir = root.join(format!("berth-bench-{name}"));
        std::fs::create_dir_all(&dir).ok()?;
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).ok()?;
        Some(CpuCgroup { dir, v2 })
    }

    /// Moves one more process in (a helper the daemon started before it was adopted).
    pub fn add(&self, pid: u32) {
        let _ = std::fs::write(self.dir.join("cgroup.procs"), pid.to_string());
    }

    /// CPU time used in the cgroup so far, in nanoseconds.
    pub fn usage_ns(&self) -> u64 {
        if self.v2 {
            std::fs::read_to_string(self.dir.join("cpu.stat"))
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("usage_usec "))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
                .map_or(0, |us| us * 1000)
        } else {
            std::fs::read_to_string(self.dir.join("cpuacct.usage"))
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        }
    }
}

impl Drop for CpuCgroup {
    fn drop(&mut self) {
        // Whatever is still inside goes back to the root, then the cgroup goes.
        let root = self.dir.parent().map(|p| p.join("cgroup.procs"));
        for p in std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
        {
            if let Some(r) = &root {
                let _ = std::fs::write(r, p);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// CPU time (user + system) of a process and its waited-for children, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            // After the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
            Some(f.get(11)? + f.get(12)? + f.get(13)? + f.get(14)?)
        })
        .unwrap_or(0)
}

/// Pod `i` of a series: its logs go under /tmp/berth-bench-logs.
pub fn pod_config(prefix: &str, i: usize) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: format!("{prefix}-{i}"),
            uid: format!("uid-{prefix}-{i}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: format!("{prefix}-{i}"),
        log_directory: format!("/tmp/berth-bench-logs/{prefix}-{i}"),
        ..Default::default()
    }
}

/// The container of every pod: a shell that waits.
pub fn container_config(image: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "main".into(),
            attempt: 0,
        }),
        image: Some(crate::cri::spec(image)),
        // A shell that exits at once on SIGTERM, so that stop measures the runtime.
        command: vec![
            "sh".into(),
            "-c".into(),
            "trap 'exit 0' TERM; sleep 1000 & wait".into(),
        ],
        log_path: "main.log".into(),
        ..Default::default()
    }
}

/// CreateContainer (with the sandbox config, as kubelet sends it) and StartContainer.
pub async fn run_container(
    c: &mut Cri,
    pod: &str,
    sandbox: &cri::PodSandboxConfig,
    image: &str,
) -> String {
    let id = c
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(container_config(image)),
            sandbox_config: Some(sandbox.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    c.start(&id).await.expect("StartContainer");
    id
}

/// `runs` full pod lifecycles (run pod, create, start, stop, remove, stop pod, remove pod)
/// after 2 warm-up runs; percentiles per step of [`STEPS`] (total: the sum of the steps).
/// `measuring` is called when the measured runs begin.
pub async fn lifecycle(
    c: &mut Cri,
    image: &str,
    prefix: &str,
    runs: usize,
    mut measuring: impl FnMut(),
) -> Vec<(String, Percentiles)> {
    let _ = std::fs::create_dir_all("/tmp/berth-bench-logs");
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); STEPS.len()];
    for i in 0..runs + 2 {
        if i == 2 {
            measuring();
        }
        let sandbox = pod_config(prefix, i);
        let mut lap = Instant::now();
        let mut rec = Vec::new();
        let mut step = |k: usize, lap: &mut Instant| {
            rec.push((k, lap.elapsed().as_secs_f64() * 1e3));
            *lap = Instant::now();
        };
        let pod = c.run_pod(sandbox.clone()).await;
        step(0, &mut lap);
        let id = c
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config(image)),
                sandbox_config: Some(sandbox.clone()),
            })
            .await
            .expect("CreateContainer")
            .into_inner()
            .container_id;
        step(1, &mut lap);
        c.start(&id).await.expect("StartContainer");
        step(2, &mut lap);
        // Let the shell install its TERM trap (a pid 1 ignores an untrapped SIGTERM);
        // this pause is not counted.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        lap = Instant::now();
        c.runtime
            .stop_container(cri::StopContainerRequest {
                container_id: id.clone(),
                timeout: 10,
            })
            .await
            .expect("StopContainer");
        step(3, &mut lap);
        c.runtime
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await
            .expect("RemoveContainer");
        step(4, &mut lap);
        c.runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .expect("StopPodSandbox");
        step(5, &mut lap);
        c.runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .expect("RemovePodSandbox");
        step(6, &mut lap);
        let total = rec.iter().map(|(_, v)| v).sum();
        rec.push((7, total));
        if i >= 2 {
            // The first two runs warm up caches and are not counted.
            for (k, v) in rec {
                times[k].push(v);
            }
        }
    }
    STEPS
        .iter()
        .zip(times.iter_mut())
        .map(|(s, v)| ((*s).to_owned(), percentiles(v)))
        .collect()
}

/// Runs the suite of `plan` against one runtime.
pub async fn run(runtime: &str, c: &mut Cri, probes: &Probes<'_>, plan: &Plan<'_>) -> Report {
    let Plan {
        image,
        runs,
        burst,
        loaded,
        pulls,
        pull_runs,
    } = *plan;
    let mut report = Report {
        runtime: runtime.to_owned(),
        idle_rss_kib: rss_kib(probes.daemon_pid),
        burst_pods: burst,
        loaded_pods: loaded,
        ..Report::default()
    };
    let _ = std::fs::create_dir_all("/tmp/berth-bench-logs");

    // Lifecycle.
    let cpu_now = || match probes.cpu {
        Some(cg) => cg.usage_ns(),
        // Without a cgroup: the daemon alone, from its clock ticks (USER_HZ = 100).
        None => cpu_ticks(probes.daemon_pid) * 10_000_000,
    };
    let mut cpu_start = 0;
    report.lifecycle = lifecycle(c, image, &format!("{runtime}-life"), runs, || {
        cpu_start = cpu_now();
    })
    .await;
    let ns = cpu_now().saturating_sub(cpu_start);
    report.cpu_ms_per_lifecycle = ns as f64 / 1e6 / runs.max(1) as f64;

    // ExecSync round trip of a trivial command.
    let sandbox = pod_config(&format!("{runtime}-exec"), 0);
    let pod = c.run_pod(sandbox.clone()).await;
    let id = run_container(c, &pod, &sandbox, image).await;
    let mut execs = Vec::new();
    for i in 0..runs + 2 {
        let t = Instant::now();
        let r = c.exec(&id, &["true"], 10).await.expect("ExecSync");
        assert_eq!(r.exit_code, 0);
        if i >= 2 {
            execs.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    report.exec = percentiles(&mut execs);
    c.stop_and_remove_pod(&pod).await;

    // Burst: `burst` pods with one container each, all at once.
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..burst {
        let mut c = c.clone();
        let image = image.to_owned();
        let runtime = runtime.to_owned();
        set.spawn(async move {
            let sandbox = pod_config(&format!("{runtime}-burst"), i);
            let pod = c.run_pod(sandbox.clone()).await;
            run_container(&mut c, &pod, &sandbox, &image).await;
            pod
        });
    }
    let pods: Vec<String> = set.join_all().await;
    report.burst_up_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for pod in pods {
        let mut c = c.clone();
        set.spawn(async move { c.stop_and_remove_pod(&pod).await });
    }
    set.join_all().await;
    report.burst_down_s = t.elapsed().as_secs_f64();

    // Cold pulls: remove the image, give the runtime a second to collect its content,
    // pull again.
    for (name, reference) in pulls {
        let mut secs = Vec::new();
        for _ in 0..pull_runs {
            let _ = c.remove_image(reference).await;
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let t = Instant::now();
            c.pull(reference, None).await.expect("PullImage");
            secs.push(t.elapsed().as_secs_f64());
        }
        let _ = c.remove_image(reference).await;
        report.pulls.push((name.clone(), percentiles(&mut secs)));
    }

    // Memory with `loaded` running pods.
    let mut pods = Vec::new();
    for i in 0..loaded {
        let sandbox = pod_config(&format!("{runtime}-load"), i);
        let pod = c.run_pod(sandbox.clone()).await;
        run_container(c, &pod, &sandbox, image).await;
        pods.push(pod);
    }
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    report.loaded_rss_kib = rss_kib(probes.daemon_pid);
    report.per_pod_overhead_kib = pss_kib(&(probes.overhead_pids)()) / loaded.max(1) as u64;
    for pod in pods {
        c.stop_and_remove_pod(&pod).await;
    }
    report
}

//! The soak run (`berth-bench soak`, and a short one in the tests): many pod lifecycles,
//! cold pulls and ExecSyncs at once against one berthd, then a check that nothing of what
//! was removed remains (processes, mounts, cgroups, veths, nft elements, address leases,
//! files, image content) and that berthd's descriptors, threads and memory are back near
//! where they started.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_proto::cri;

use crate::images::{Entry, Layer, TestImage, catalog};
use crate::{Cri, Daemon, Registry, suite};

/// How much a soak run does.
#[derive(Debug, Clone, Copy)]
pub struct SoakOptions {
    /// Full pod lifecycles (run, create, start, exec, stop, remove, stop and remove pod).
    pub lifecycles: usize,
    /// Pulls of an image the node does not have (each followed by its removal).
    pub pulls: usize,
    /// ExecSyncs in two long-lived containers.
    pub execs: usize,
    /// Lifecycle workers at once (plus one puller and two exec workers).
    pub concurrency: usize,
}

impl Default for SoakOptions {
    fn default() -> Self {
        SoakOptions {
            lifecycles: 10_000,
            pulls: 500,
            execs: 10_000,
            concurrency: 4,
        }
    }
}

/// What a soak run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SoakReport {
    pub lifecycles: usize,
    pub pulls: usize,
    pub execs: usize,
    pub seconds: f64,
    pub errors: Vec<String>,
    pub leftovers: Vec<String>,
    pub fds: (usize, usize),
    pub threads: (usize, usize),
    pub rss_kib: (u64, u64),
    pub rss_peak_kib: u64,
    pub content_blobs: (usize, usize),
    pub addresses_leased: u64,
    pub host_ports_mapped: u64,
}

impl SoakReport {
    /// What is wrong, if anything: errors of calls, leftovers, and growth beyond the
    /// bounds (fds and threads back to their start, RSS within `rss_bound_kib`).
    pub fn failures(&self, rss_bound_kib: u64) -> Vec<String> {
        let mut out: Vec<String> = self.errors.iter().take(20).cloned().collect();
        out.extend(self.leftovers.iter().cloned());
        if self.fds.1 > self.fds.0 {
            out.push(format!("descriptors {} -> {}", self.fds.0, self.fds.1));
        }
        if self.threads.1 > self.threads.0 {
            out.push(format!("threads {} -> {}", self.threads.0, self.threads.1));
        }
        if self.rss_kib.1 > self.rss_kib.0 + rss_bound_kib {
            out.push(format!(
                "RSS {} -> {} KiB, over the bound of +{rss_bound_kib} KiB",
                self.rss_kib.0, self.rss_kib.1
            ));
        }
        if self.content_blobs.1 != self.content_blobs.0 {
            out.push(format!(
                "content blobs {} -> {}",
                self.content_blobs.0, self.content_blobs.1
            ));
        }
        if self.addresses_leased != 0 || self.host_ports_mapped != 0 {
            out.push(format!(
                "{} addresses leased and {} hostPorts mapped with no pod",
                self.addresses_leased, self.host_ports_mapped
            ));
        }
        out
    }
}

fn blobs(d: &Daemon) -> usize {
    walk_files(&d.root.join("content"))
}

fn walk_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => walk_files(&e.path()),
                    Ok(_) => 1,
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

async fn network_holdings(c: &mut Cri) -> (u64, u64) {
    let info = c
        .runtime
        .status(cri::StatusRequest { verbose: true })
        .await
        .map(|r| r.into_inner().info)
        .unwrap_or_default();
    let v: serde_json::Value = info
        .get("engine")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    (
        v["network"]["addressesLeased"].as_u64().unwrap_or(u64::MAX),
        v["network"]["hostPortsMapped"].as_u64().unwrap_or(u64::MAX),
    )
}

/// An image of its own for the cold pulls (no layer shared with busybox).
fn pull_image() -> TestImage {
    let data: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    TestImage::new(vec![
        Layer::new(vec![Entry::dir("data"), Entry::file("data/blob", data)]),
        Layer::new(vec![Entry::file("data/small", b"soak".to_vec())]),
    ])
}

/// Runs a soak against a fresh berthd; panics only when the environment is missing.
pub async fn run(opts: SoakOptions) -> SoakReport {
    assert!(catalog::available(), "busybox-static is needed");
    let reg = Registry::start().expect("docker-registry is needed");
    reg.push_image("busybox", "latest", &catalog::busybox().build());
    reg.push_image("soak-pull", "latest", &pull_image().build());
    let d = Daemon::start().await;
    let pid = d.pid().map(|p| p.as_raw() as u32).unwrap_or(0);
    let mut c = d.cri().await;
    let image = format!("{}/busybox:latest", reg.host());
    let cold = format!("{}/soak-pull:latest", reg.host());
    c.pull(&image, None).await.expect("pull busybox");
    let _ = std::fs::create_dir_all("/tmp/berth-bench-logs");
    // Two long-lived pods for the ExecSyncs; a warm-up of every kind of call.
    let mut exec_pods = Vec::new();
    let mut exec_targets = Vec::new();
    for i in 0..2 {
        let cfg = suite::pod_config("soak-exec", i);
        let pod = c.run_pod(cfg.clone()).await;
        exec_targets.push(suite::run_container(&mut c, &pod, &cfg, &image).await);
        exec_pods.push(pod);
    }
    let _ = suite::lifecycle(&mut c, &image, "soak-warm", 1, || {}).await;
    c.pull(&cold, None).await.expect("pull");
    c.remove_image(&cold).await.expect("remove image");
    // Let the warm-up's blocking threads and drained veths settle.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let start = (
        suite::fd_count(pid),
        suite::thread_count(pid),
        suite::rss_kib(pid),
        blobs(&d),
    );
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let note = |errors: &Arc<std::sync::Mutex<Vec<String>>>, e: String| {
        if let Ok(mut g) = errors.lock() {
            g.push(e);
        }
    };
    let began = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(start.2));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..opts.concurrency.max(1) {
        let (mut c, image, next, errors) =
            (d.cri().await, image.clone(), next.clone(), errors.clone());
        let peak = peak.clone();
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= opts.lifecycles {
                    break;
                }
                if let Err(e) = lifecycle_once(&mut c, &image, w, i).await {
                    note(&errors, format!("lifecycle {i}: {e}"));
                }
                if i % 100 == 0 {
                    peak.fetch_max(suite::rss_kib(pid), Ordering::Relaxed);
                }
            }
        });
    }
    {
        let (mut c, cold, errors) = (d.cri().await, cold.clone(), errors.clone());
        tasks.spawn(async move {
            for i in 0..opts.pulls {
                if let Err(e) = c.pull(&cold, None).await {
                    note(&errors, format!("pull {i}: {}", e.message()));
                    continue;
                }
                if let Err(e) = c.remove_image(&cold).await {
                    note(&errors, format!("remove image {i}: {}", e.message()));
                }
            }
        });
    }
    for (w, target) in exec_targets.iter().enumerate() {
        let (mut c, target, errors) = (d.cri().await, target.clone(), errors.clone());
        let share = opts.execs / 2 + if w == 0 { opts.execs % 2 } else { 0 };
        tasks.spawn(async move {
            for i in 0..share {
                match c.exec(&target, &["echo", "soak"], 10).await {
                    Ok(r) if r.exit_code == 0 && r.stdout == b"soak\n" => {}
                    Ok(r) => note(&errors, format!("exec {i}: {r:?}")),
                    Err(e) => note(&errors, format!("exec {i}: {}", e.message())),
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            note(&errors, format!("worker: {e}"));
        }
    }
    let seconds = began.elapsed().as_secs_f64();
    for pod in exec_pods {
        c.stop_and_remove_pod(&pod).await;
    }
    // Blocking threads idle out and berthd trims its heap within 10 s.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let (addresses_leased, host_ports_mapped) = network_holdings(&mut c).await;
    let end = (
        suite::fd_count(pid),
        suite::thread_count(pid),
        suite::rss_kib(pid),
        blobs(&d),
    );
    let _ = std::fs::remove_dir_all("/tmp/berth-bench-logs");
    let errors = errors.lock().map(|g| g.clone()).unwrap_or_default();
    // What is left once berthd is gone too (its own process and socket aside, nothing).
    drop(c);
    let mut d = d;
    let stopped = d.stop();
    let mut leftovers = d.leftovers();
    if !stopped.success() {
        leftovers.push(format!("berthd stopped with {stopped}"));
    }
    SoakReport {
        lifecycles: opts.lifecycles,
        pulls: opts.pulls,
        execs: opts.execs,
        seconds,
        errors,
        leftovers,
        fds: (start.0, end.0),
        threads: (start.1, end.1),
        rss_kib: (start.2, end.2),
        rss_peak_kib: peak.load(Ordering::Relaxed).max(end.2),
        content_blobs: (start.3, end.3),
        addresses_leased,
        host_ports_mapped,
    }
}

/// One pod's whole life, with an ExecSync while it runs.
async fn lifecycle_once(c: &mut Cri, image: &str, worker: usize, i: usize) -> Result<(), String> {
    let err = |what: &str, e: tonic::Status| format!("{what}: {}", e.message());
    let cfg = suite::pod_config(&format!("soak-{worker}"), i);
    let pod = c
        .try_run_pod(cfg.clone())
        .await
        .map_err(|e| err("run pod", e))?;
    let id = c
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(suite::container_config(image)),
            sandbox_config: Some(cfg),
        })
        .await
        .map_err(|e| err("create", e))?
        .into_inner()
        .container_id;
    c.start(&id).await.map_err(|e| err("start", e))?;
    c.exec(&id, &["true"], 10)
        .await
        .map_err(|e| err("exec", e))?;
    c.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 10,
        })
        .await
        .map_err(|e| err("stop", e))?;
    c.runtime
        .remove_container(cri::RemoveContainerRequest { container_id: id })
        .await
        .map_err(|e| err("remove", e))?;
    c.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .map_err(|e| err("stop pod", e))?;
    c.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .map_err(|e| err("remove pod", e))?;
    Ok(())
}

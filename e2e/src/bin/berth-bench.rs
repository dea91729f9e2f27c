//! berth-bench: measures berth on this machine against a local registry.
//!
//! `berth-bench pull [--runs N]` builds two images, pushes them to a local docker-registry
//! and pulls each cold N times through a real berthd (removing it and collecting garbage
//! between runs):
//! - `multilayer`: 6 layers, 250 MB uncompressed, half of each layer incompressible;
//! - `smallfiles`: one layer of 20,000 small files.
//!
//! `berth-bench lifecycle [--runs N]` runs N full pod lifecycles (run pod, create, start,
//! stop, remove container, stop and remove pod) and reports p50/p90/p99 per step and in
//! total, then the memory (PSS) of one pod's monitor with one running container and the
//! daemon's RSS.
//!
//! It prints a table and one JSON line per image. Build it in release mode:
//! `cargo build --release -p berth-agent -p berth-e2e && target/release/berth-bench pull`.
#![forbid(unsafe_code)]
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::time::Instant;

use berth_e2e::images::{Compression, Entry, Layer, TestImage, catalog};
use berth_e2e::net;
use berth_e2e::{Daemon, DaemonOptions, Registry};

/// Deterministic incompressible bytes (xorshift64*).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Compressible bytes: repeated text with a counter.
fn text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!("berth benchmark line {i:012} lorem ipsum dolor sit amet\n").as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

fn multilayer() -> TestImage {
    const TOTAL: usize = 250_000_000;
    let per_layer = TOTAL / 6;
    let layers = (0..6)
        .map(|i| {
            Layer::new(vec![
                Entry::dir(&format!("layer{i}")),
                Entry::file(
                    &format!("layer{i}/random.bin"),
                    noise(per_layer / 2, 7 + i as u64),
                ),
                Entry::file(&format!("layer{i}/text.txt"), text(per_layer / 2)),
            ])
            .compressed(Compression::Gzip)
        })
        .collect();
    TestImage::new(layers)
}

fn smallfiles() -> TestImage {
    let mut entries = vec![Entry::dir("files")];
    for d in 0..100 {
        entries.push(Entry::dir(&format!("files/d{d:03}")));
        for f in 0..200 {
            let size = 512 + ((d * 200 + f) % 7) * 512;
            entries.push(Entry::file(
                &format!("files/d{d:03}/f{f:03}.txt"),
                text(size),
            ));
        }
    }
    TestImage::new(vec![Layer::new(entries).compressed(Compression::Gzip)])
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn bench_pull(runs: usize) {
    assert!(catalog::available(), "busybox-static is needed");
    let reg = Registry::start().expect("docker-registry is needed");
    let d = Daemon::start().await;
    let mut cri = d.cri().await;
    println!(
        "{:<12} {:>6} {:>10} {:>10} {:>9} {:>9} {:>11}",
        "image", "runs", "blob MB", "tar MB", "p50 s", "max s", "MB/s (tar)"
    );
    for (name, img) in [("multilayer", multilayer()), ("smallfiles", smallfiles())] {
        let t = Instant::now();
        let built = img.build();
        let blob_bytes: u64 = built.blobs.iter().map(|(_, b)| b.len() as u64).sum();
        let tar_bytes: u64 = img.layers.iter().map(|l| l.tar().len() as u64).sum();
        reg.push_image(name, "latest", &built);
        eprintln!(
            "built and pushed {name} in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        let reference = format!("{}/{name}:latest", reg.host());
        let mut secs = Vec::new();
        for _ in 0..runs {
            let start = Instant::now();
            cri.pull(&reference, None).await.expect("pull");
            secs.push(start.elapsed().as_secs_f64());
            cri.remove_image(&reference).await.expect("remove");
        }
        secs.sort_by(f64::total_cmp);
        let p50 = percentile(&secs, 0.5);
        let mb = |b: u64| b as f64 / 1e6;
        println!(
            "{:<12} {:>6} {:>10.1} {:>10.1} {:>9.3} {:>9.3} {:>11.1}",
            name,
            runs,
            mb(blob_bytes),
            mb(tar_bytes),
            p50,
            secs.last().copied().unwrap_or(f64::NAN),
            mb(tar_bytes) / p50
        );
        println!(
            "{}",
            serde_json::json!({"bench": "pull", "image": name, "runs": runs, "blob_bytes": blob_bytes,
                "tar_bytes": tar_bytes, "seconds": secs, "p50_seconds": p50,
                "blob_mb_per_s": mb(blob_bytes) / p50, "tar_mb_per_s": mb(tar_bytes) / p50})
        );
    }
}

fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

async fn bench_lifecycle(runs: usize) {
    use berth_proto::cri;
    assert!(catalog::available(), "busybox-static is needed");
    let reg = Registry::start().expect("docker-registry is needed");
    reg.push_image("busybox", "latest", &catalog::busybox().build());
    let d = Daemon::start().await;
    let mut c = d.cri().await;
    let image = format!("{}/busybox:latest", reg.host());
    c.pull(&image, None).await.expect("pull");
    let steps = [
        "run_pod",
        "create",
        "start",
        "stop",
        "remove",
        "stop_pod",
        "remove_pod",
        "total",
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); steps.len()];
    let pod_config = |i: usize| cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: format!("bench-{i}"),
            uid: format!("uid-{i}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: format!("bench-{i}"),
        ..Default::default()
    };
    let ctr_config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "main".into(),
            attempt: 0,
        }),
        image: Some(berth_e2e::cri::spec(&image)),
        command: vec![
            "sh".into(),
            "-c".into(),
            "trap 'exit 0' TERM; sleep 1000 & wait".into(),
        ],
        ..Default::default()
    };
    let mut pss = 0;
    for i in 0..runs + 2 {
        let t0 = Instant::now();
        let mut lap = Instant::now();
        let step = |k: usize, lap: &mut Instant| {
            let s = lap.elapsed().as_secs_f64() * 1e3;
            *lap = Instant::now();
            (k, s)
        };
        let mut rec = Vec::new();
        let pod = c
            .runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod_config(i)),
                runtime_handler: String::new(),
            })
            .await
            .expect("run pod")
            .into_inner()
            .pod_sandbox_id;
        rec.push(step(0, &mut lap));
        let id = c
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(ctr_config.clone()),
                sandbox_config: Some(pod_config(i)),
            })
            .await
            .expect("create")
            .into_inner()
            .container_id;
        rec.push(step(1, &mut lap));
        c.runtime
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .expect("start");
        rec.push(step(2, &mut lap));
        if i == 0 {
            // Memory of one pod's monitor with one running container.
            let st = c
                .runtime
                .pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: pod.clone(),
                    verbose: true,
                })
                .await
                .expect("status")
                .into_inner();
            let info: serde_json::Value = serde_json::from_str(&st.info["info"]).expect("info");
            pss = pss_kib(u32::try_from(info["pid"].as_u64().unwrap_or(0)).unwrap_or(0));
        }
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
            .expect("stop");
        rec.push(step(3, &mut lap));
        c.runtime
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await
            .expect("remove");
        rec.push(step(4, &mut lap));
        c.runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .expect("stop pod");
        rec.push(step(5, &mut lap));
        c.runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .expect("remove pod");
        rec.push(step(6, &mut lap));
        let _ = t0;
        let total: f64 = rec.iter().map(|(_, v)| v).sum();
        rec.push((7, total));
        if i >= 2 {
            // The first two runs warm up caches and are not counted.
            for (k, v) in rec {
                times[k].push(v);
            }
        }
    }
    // Per-pod memory at scale: N pods, each with one running container; the average PSS of
    // their monitors (what berth adds per pod; the container itself is the workload).
    const SCALE: usize = 20;
    let mut pods = Vec::new();
    let mut monitors = Vec::new();
    for i in 0..SCALE {
        let cfg = pod_config(1000 + i);
        let pod = c
            .runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await
            .expect("run pod")
            .into_inner()
            .pod_sandbox_id;
        let id = c
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(ctr_config.clone()),
                sandbox_config: Some(cfg),
            })
            .await
            .expect("create")
            .into_inner()
            .container_id;
        c.runtime
            .start_container(cri::StartContainerRequest { container_id: id })
            .await
            .expect("start");
        let st = c
            .runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: true,
            })
            .await
            .expect("status")
            .into_inner();
        let info: serde_json::Value = serde_json::from_str(&st.info["info"]).expect("info");
        monitors.push(u32::try_from(info["pid"].as_u64().unwrap_or(0)).unwrap_or(0));
        pods.push(pod);
    }
    let scale_pss: u64 = monitors.iter().map(|m| pss_kib(*m)).sum::<u64>() / SCALE as u64;
    let daemon_rss = d
        .pid()
        .map(|p| rss_kib(u32::try_from(p.as_raw()).unwrap_or(0)))
        .unwrap_or(0);
    for pod in pods {
        c.stop_and_remove_pod(&pod).await;
    }
    println!("{:<11} {:>9} {:>9} {:>9}", "step (ms)", "p50", "p90", "p99");
    let mut json = serde_json::Map::new();
    for (k, name) in steps.iter().enumerate() {
        let v = &mut times[k];
        v.sort_by(f64::total_cmp);
        let (p50, p90, p99) = (percentile(v, 0.5), percentile(v, 0.9), percentile(v, 0.99));
        println!("{name:<11} {p50:>9.2} {p90:>9.2} {p99:>9.2}");
        json.insert(
            (*name).into(),
            serde_json::json!({"p50_ms": p50, "p90_ms": p90, "p99_ms": p99}),
        );
    }
    println!(
        "monitor PSS with one running container: {pss} KiB (1 pod), {scale_pss} KiB average over {SCALE} pods; berthd RSS with {SCALE} pods: {daemon_rss} KiB"
    );
    json.insert("runs".into(), serde_json::json!(runs));
    json.insert("monitor_pss_kib".into(), serde_json::json!(pss));
    json.insert(
        "monitor_pss_kib_at_20_pods".into(),
        serde_json::json!(scale_pss),
    );
    json.insert("berthd_rss_kib".into(), serde_json::json!(daemon_rss));
    println!(
        "{}",
        serde_json::json!({"bench": "lifecycle", "results": json})
    );
}

/// The `elapsed_us` of every berthd log line with `message`, in milliseconds.
fn logged_ms(log: &str, message: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains(message))
        .filter_map(|l| {
            let v = l.split("elapsed_us=").nth(1)?;
            let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<f64>().ok().map(|us| us / 1e3)
        })
        .collect()
}

/// The time pod networking adds to RunPodSandbox (and to StopPodSandbox): host-network
/// pods as the baseline, then the built-in mode, then CNI mode with Debian's plugins.
async fn bench_network(runs: usize) {
    use berth_proto::cri;
    println!(
        "{:<26} {:>9} {:>9} {:>9} {:>9}",
        "RunPodSandbox (ms)", "p50", "p99", "net p50", "net p99"
    );
    let mut json = serde_json::Map::new();
    for mode in ["host-network", "builtin", "cni"] {
        let conf = tempfile::tempdir().expect("tempdir");
        let _nat = (mode == "cni").then(net::HostNatGuard::new);
        let network = match mode {
            "cni" => {
                let cidr = format!("{}/24", net::free_slash24([10, 213]));
                let bridge = format!("bb{}", std::process::id() % 100_000);
                net::write_bridge_conflist(
                    &conf.path().join("net.d"),
                    "berth-bench",
                    &bridge,
                    &cidr,
                    &conf.path().join("ipam"),
                );
                format!(
                    "mode = \"cni\"\ncni_conf_dir = {:?}\nbridge = \"{bridge}\"",
                    conf.path().join("net.d")
                )
            }
            _ => String::new(),
        };
        let d = Daemon::start_with(DaemonOptions {
            network,
            ..DaemonOptions::default()
        })
        .await;
        let mut c = d.cri().await;
        let mut run = Vec::new();
        let mut stop = Vec::new();
        for i in 0..runs + 2 {
            let mut config = cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: format!("net-{i}"),
                    uid: format!("uid-net-{i}"),
                    namespace: "bench".into(),
                    attempt: 0,
                }),
                ..Default::default()
            };
            if mode == "host-network" {
                config.linux = Some(cri::LinuxPodSandboxConfig {
                    security_context: Some(cri::LinuxSandboxSecurityContext {
                        namespace_options: Some(cri::NamespaceOption {
                            network: cri::NamespaceMode::Node as i32,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
            let t = Instant::now();
            let id = c.run_pod(config).await;
            let r = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            c.stop_and_remove_pod(&id).await;
            if i >= 2 {
                run.push(r);
                stop.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let log = d.log();
        let mut setup = logged_ms(&log, "pod network set up");
        setup = setup.split_off(setup.len().min(2));
        let mut teardown = logged_ms(&log, "pod network torn down");
        teardown = teardown.split_off(teardown.len().min(2));
        let mut row = serde_json::Map::new();
        for (what, v, net) in [
            ("RunPodSandbox", &mut run, &mut setup),
            ("StopPodSandbox+Remove", &mut stop, &mut teardown),
        ] {
            v.sort_by(f64::total_cmp);
            net.sort_by(f64::total_cmp);
            let (n50, n99) = if net.is_empty() {
                (0.0, 0.0)
            } else {
                (percentile(net, 0.5), percentile(net, 0.99))
            };
            println!(
                "{:<26} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                format!("{mode} {what}"),
                percentile(v, 0.5),
                percentile(v, 0.99),
                n50,
                n99
            );
            row.insert(
                what.into(),
                serde_json::json!({
                    "p50_ms": percentile(v, 0.5),
                    "p99_ms": percentile(v, 0.99),
                    "network_p50_ms": n50,
                    "network_p99_ms": n99,
                }),
            );
        }
        json.insert(mode.into(), serde_json::Value::Object(row));
    }
    println!("{}", serde_json::Value::Object(json));
}

/// What reading the node's figures costs with 100 running containers: ListContainerStats,
/// ListPodSandboxStats, ListPodSandboxMetrics and a scrape of /metrics.
async fn bench_stats(runs: usize) {
    use berth_proto::cri;
    assert!(catalog::available(), "busybox-static is needed");
    let reg = Registry::start().expect("docker-registry is needed");
    reg.push_image("busybox", "latest", &catalog::busybox().build());
    let d = Daemon::start().await;
    let mut c = d.cri().await;
    let image = format!("{}/busybox:latest", reg.host());
    c.pull(&image, None).await.expect("pull");
    let mut pods = Vec::new();
    for p in 0..10 {
        let pod = c
            .run_pod(cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: format!("stats-{p}"),
                    uid: format!("uid-stats-{p}"),
                    namespace: "bench".into(),
                    attempt: 0,
                }),
                ..Default::default()
            })
            .await;
        for k in 0..10 {
            c.run_container(
                &pod,
                cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: format!("c{k}"),
                        attempt: 0,
                    }),
                    image: Some(berth_e2e::cri::spec(&image)),
                    command: vec!["sleep".into(), "3600".into()],
                    ..Default::default()
                },
            )
            .await;
        }
        pods.push(pod);
    }
    let url = format!("http://{}/metrics", d.metrics_addr());
    let mut times: Vec<(&str, Vec<f64>)> = vec![
        ("ListContainerStats", Vec::new()),
        ("ListPodSandboxStats", Vec::new()),
        ("ListPodSandboxMetrics", Vec::new()),
        ("GET /metrics", Vec::new()),
    ];
    let mut sizes = (0, 0);
    for i in 0..runs + 2 {
        let t = Instant::now();
        let n = c
            .runtime
            .list_container_stats(cri::ListContainerStatsRequest::default())
            .await
            .expect("ListContainerStats")
            .into_inner()
            .stats
            .len();
        let a = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        c.runtime
            .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest::default())
            .await
            .expect("ListPodSandboxStats");
        let b = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        c.runtime
            .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
            .await
            .expect("ListPodSandboxMetrics");
        let m = t.elapsed().as_secs_f64() * 1e3;
        let u = url.clone();
        let t = Instant::now();
        let body = tokio::task::spawn_blocking(move || {
            ureq::get(&u)
                .call()
                .expect("scrape")
                .body_mut()
                .read_to_string()
                .expect("body")
        })
        .await
        .expect("scrape task");
        let s = t.elapsed().as_secs_f64() * 1e3;
        sizes = (n, body.len());
        if i >= 2 {
            for (k, v) in [a, b, m, s].into_iter().enumerate() {
                times[k].1.push(v);
            }
        }
    }
    println!(
        "{} running containers in {} pods; a scrape is {} bytes",
        sizes.0,
        pods.len(),
        sizes.1
    );
    println!("{:<24} {:>9} {:>9}", "call (ms)", "p50", "p99");
    let mut json = serde_json::Map::new();
    for (name, v) in &mut times {
        v.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
        println!("{name:<24} {p50:>9.2} {p99:>9.2}");
        json.insert(
            (*name).into(),
            serde_json::json!({"p50_ms": p50, "p99_ms": p99}),
        );
    }
    println!("{}", serde_json::Value::Object(json));
    for pod in pods {
        c.stop_and_remove_pod(&pod).await;
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match args.first().map(String::as_str) {
        Some("pull") => {
            rt.block_on(bench_pull(runs));
            std::process::ExitCode::SUCCESS
        }
        Some("lifecycle") => {
            rt.block_on(bench_lifecycle(runs));
            std::process::ExitCode::SUCCESS
        }
        Some("network") => {
            rt.block_on(bench_network(runs));
            std::process::ExitCode::SUCCESS
        }
        Some("stats") => {
            rt.block_on(bench_stats(runs));
            std::process::ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: berth-bench pull|lifecycle|network|stats [--runs N]");
            std::process::ExitCode::from(2)
        }
    }
}

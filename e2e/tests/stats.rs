//! CRI stats end to end: a container that holds a known amount of memory, burns CPU and
//! writes to its writable layer, in a pod with its own network.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use berth_e2e::env::BusyboxEnv;
use berth_e2e::require;
use berth_proto::cri;

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn stats_of_a_busy_container_come_out_in_range() {
    let Some(BusyboxEnv {
        d,
        reg: _reg,
        mut c,
        image,
        logs,
    }) = BusyboxEnv::start().await
    else {
        return;
    };
    let pod = c
        .run_pod(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "busy".into(),
                uid: "uid-busy".into(),
                namespace: "stats".into(),
                attempt: 0,
            }),
            log_directory: logs.path().display().to_string(),
            labels: HashMap::from([("app".to_owned(), "busy".to_owned())]),
            ..Default::default()
        })
        .await;
    // 64 MiB in tmpfs (charged to the writer's cgroup, never reclaimable as inactive
    // file), 8 MiB in the writable layer, one busy loop.
    let script = "dd if=/dev/zero of=/dev/shm/fill bs=1M count=64 2>/dev/null; \
                  dd if=/dev/zero of=/tmp/layer bs=1M count=8 2>/dev/null; \
                  touch /tmp/ready; while :; do :; done";
    let id = c
        .run_container(
            &pod,
            cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "burner".into(),
                    attempt: 0,
                }),
                image: Some(berth_e2e::cri::spec(&image)),
                command: vec!["sh".into(), "-c".into(), script.into()],
                labels: HashMap::from([("role".to_owned(), "burner".to_owned())]),
                log_path: "burner.log".into(),
                ..Default::default()
            },
        )
        .await;
    for _ in 0..100 {
        if c.exec(&id, &["test", "-e", "/tmp/ready"], 5)
            .await
            .unwrap()
            .exit_code
            == 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = |c: &mut berth_e2e::Cri| {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            c.runtime
                .container_stats(cri::ContainerStatsRequest { container_id: id })
                .await
                .unwrap()
                .into_inner()
                .stats
                .unwrap()
        }
    };
    let first = stats(&mut c).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = stats(&mut c).await;
    assert_eq!(s.attributes.as_ref().unwrap().id, id);
    assert_eq!(
        s.attributes
            .as_ref()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .name,
        "burner"
    );
    let cpu = s.cpu.unwrap();
    let used = cpu.usage_core_nano_seconds.unwrap().value;
    assert!(used > first.cpu.unwrap().usage_core_nano_seconds.unwrap().value);
    let cores = cpu.usage_nano_cores.unwrap().value;
    // One busy loop on a 2-core machine that also runs the test: between 0.3 and 1.1 cores.
    assert!(
        (300_000_000..1_100_000_000).contains(&cores),
        "nano cores {cores}"
    );
    let mem = s.memory.unwrap();
    let ws = mem.working_set_bytes.unwrap().value;
    assert!((64 * MIB..128 * MIB).contains(&ws), "working set {ws}");
    assert!(mem.usage_bytes.unwrap().value >= ws);
    assert!(mem.page_faults.unwrap().value > 0);
    let layer = s.writable_layer.unwrap();
    let used_bytes = layer.used_bytes.unwrap().value;
    assert!(
        (8 * MIB..16 * MIB).contains(&used_bytes),
        "writable layer {used_bytes}"
    );
    assert!(layer.inodes_used.unwrap().value >= 2);
    // ImageFsInfo's container filesystem holds that writable layer: with the layer's
    // figure just measured (taken as it is) and once it is stale (walked again).
    for wait in [0, 2500] {
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let r = c
            .image
            .image_fs_info(cri::ImageFsInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        let fs = r.container_filesystems.first().cloned().unwrap_or_default();
        let bytes = fs.used_bytes.unwrap().value;
        assert!(
            (used_bytes..used_bytes + 4 * MIB).contains(&bytes),
            "container filesystem {bytes} bytes, the one writable layer {used_bytes}"
        );
        assert!(fs.inodes_used.unwrap().value >= 4);
    }
    assert!(
        layer
            .fs_id
            .unwrap()
            .mountpoint
            .starts_with(d.root.to_str().unwrap())
    );

    // Listing, with filters.
    let list = |filter: cri::ContainerStatsFilter| {
        let mut c = c.clone();
        async move {
            c.runtime
                .list_container_stats(cri::ListContainerStatsRequest {
                    filter: Some(filter),
                })
                .await
                .unwrap()
                .into_inner()
                .stats
        }
    };
    assert_eq!(
        list(cri::ContainerStatsFilter {
            pod_sandbox_id: pod.clone(),
            ..Default::default()
        })
        .await
        .len(),
        1
    );
    assert_eq!(
        list(cri::ContainerStatsFilter {
            label_selector: HashMap::from([("role".to_owned(), "other".to_owned())]),
            ..Default::default()
        })
        .await
        .len(),
        0
    );

    // The pod: its cgroup holds the container's figures, its network has eth0.
    let p = c
        .runtime
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let linux = p.linux.unwrap();
    assert!(linux.memory.unwrap().working_set_bytes.unwrap().value >= 64 * MIB);
    assert_eq!(linux.containers.len(), 1);
    assert!(linux.process.unwrap().process_count.unwrap().value >= 1);
    let net = linux.network.unwrap();
    let eth0 = net.default_interface.unwrap();
    assert_eq!(eth0.name, "eth0");
    assert!(net.interfaces.iter().all(|i| i.name != "lo"));
    let listed = c
        .runtime
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
            filter: Some(cri::PodSandboxStatsFilter {
                label_selector: HashMap::from([("app".to_owned(), "busy".to_owned())]),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);

    // The cAdvisor-named metrics kubelet's /metrics/cadvisor serves from the runtime.
    let descriptors = c
        .runtime
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors;
    let ws_desc = descriptors
        .iter()
        .find(|d| d.name == "container_memory_working_set_bytes")
        .expect("working set descriptor");
    assert_eq!(ws_desc.label_keys, vec!["id", "name", "image"]);
    let metrics = c
        .runtime
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let pm = metrics.iter().find(|m| m.pod_sandbox_id == pod).unwrap();
    assert!(
        pm.metrics
            .iter()
            .any(|m| m.name == "container_network_receive_bytes_total"
                && m.label_values.last().map(String::as_str) == Some("eth0")),
        "{pm:?}"
    );
    let cm = pm
        .container_metrics
        .iter()
        .find(|m| m.container_id == id)
        .unwrap();
    let value = |name: &str| {
        cm.metrics
            .iter()
            .find(|m| m.name == name)
            .and_then(|m| m.value)
            .map(|v| v.value)
    };
    assert!(value("container_memory_working_set_bytes").unwrap() >= 64 * MIB);
    assert_eq!(value("container_oom_events_total"), Some(0));
    for m in &cm.metrics {
        let d = descriptors.iter().find(|d| d.name == m.name).unwrap();
        assert_eq!(m.label_values.len(), d.label_keys.len(), "{m:?}");
    }

    // An unknown id is NotFound.
    let err = c
        .runtime
        .container_stats(cri::ContainerStatsRequest {
            container_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    c.stop_and_remove_pod(&pod).await;
}

/// GET `url`; (status, body).
fn get(url: &str) -> (u16, String) {
    match ureq::get(url).call() {
        Ok(mut r) => (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(ureq::Error::StatusCode(code)) => (code, String::new()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// The busybox environment with one pod running a sleeping container; the pod's id.
async fn busy_env() -> Option<(BusyboxEnv, String)> {
    let mut env = BusyboxEnv::start().await?;
    let c = &mut env.c;
    let pod = c
        .run_pod(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "scraped".into(),
                uid: "uid-scraped".into(),
                namespace: "metrics".into(),
                attempt: 0,
            }),
            log_directory: env.logs.path().display().to_string(),
            ..Default::default()
        })
        .await;
    let image = env.image.clone();
    env.c
        .run_container(
            &pod,
            cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "sleeper".into(),
                    attempt: 0,
                }),
                image: Some(berth_e2e::cri::spec(&image)),
                command: vec!["sleep".into(), "3600".into()],
                log_path: "sleeper.log".into(),
                ..Default::default()
            },
        )
        .await;
    Some((env, pod))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_endpoint_serves_berth_series_that_promtool_accepts() {
    let Some((
        BusyboxEnv {
            d,
            reg: _reg,
            mut c,
            logs: _logs,
            ..
        },
        pod,
    )) = busy_env().await
    else {
        return;
    };
    let base = format!("http://{}", d.metrics_addr());
    let (code, text) = tokio::task::spawn_blocking({
        let url = format!("{base}/metrics");
        move || get(&url)
    })
    .await
    .unwrap();
    assert_eq!(code, 200);
    let labels = "container=\"sleeper\",namespace=\"metrics\",pod=\"scraped\"";
    for want in [
        "berth_cri_requests_total{code=\"OK\",method=\"RunPodSandbox\"} 1".to_owned(),
        "berth_cri_request_duration_seconds_count{method=\"PullImage\"} 1".to_owned(),
        "berth_pods{state=\"ready\"} 1".to_owned(),
        "berth_containers{state=\"running\"} 1".to_owned(),
        "berth_monitor_processes 1".to_owned(),
        "berth_image_pulls_total{result=\"success\"} 1".to_owned(),
        "berth_pod_network_setup_duration_seconds_count{mode=\"builtin\"} 1".to_owned(),
        format!("berth_container_memory_working_set_bytes{{{labels}}}"),
        format!("berth_container_cpu_usage_seconds_total{{{labels}}}"),
        "berth_pod_network_receive_bytes_total{interface=\"eth0\",namespace=\"metrics\",pod=\"scraped\"}".to_owned(),
        "process_resident_memory_bytes".to_owned(),
    ] {
        assert!(text.contains(&want), "missing {want} in:\n{text}");
    }
    let (code, _) = tokio::task::spawn_blocking({
        let url = format!("{base}/other");
        move || get(&url)
    })
    .await
    .unwrap();
    assert_eq!(code, 404);

    // promtool (Debian's prometheus package) lints the exposition and berth's rules.
    if let Some(promtool) = require::need_binary("promtool", "prometheus") {
        let mut child = std::process::Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let rules = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/prometheus/berth-rules.yml"
        );
        let out = std::process::Command::new(&promtool)
            .args(["check", "rules", rules])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    c.stop_and_remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_berth_and_answers_promql() {
    let Some(prometheus) = require::need_binary("prometheus", "prometheus") else {
        return;
    };
    let Some((
        BusyboxEnv {
            d,
            reg: _reg,
            mut c,
            logs: _logs,
            ..
        },
        pod,
    )) = busy_env().await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: berthd\n    static_configs:\n      - targets: [\"{}\"]\n",
            d.metrics_addr()
        ),
    )
    .unwrap();
    let mut prom = std::process::Command::new("setsid")
        .arg(&prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    let query = format!(
        "http://127.0.0.1:{port}/api/v1/query?query=berth_container_memory_working_set_bytes%7Bpod%3D%22scraped%22%7D"
    );
    let mut answer = String::new();
    for _ in 0..150 {
        let q = query.clone();
        let r = tokio::task::spawn_blocking(move || {
            ureq::get(&q)
                .call()
                .ok()
                .map(|mut r| r.body_mut().read_to_string().unwrap_or_default())
        })
        .await
        .unwrap();
        if let Some(body) = r
            && body.contains("\"container\":\"sleeper\"")
        {
            answer = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = prom.kill();
    let _ = prom.wait();
    assert!(
        answer.contains("\"status\":\"success\"") && answer.contains("\"namespace\":\"metrics\""),
        "Prometheus never returned berth's series: {answer}\n{}",
        std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
    );
    c.stop_and_remove_pod(&pod).await;
}

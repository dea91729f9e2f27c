//! What CRI 1.36 added, through the real calls: the Stream list calls past a client's
//! message limit, stop signals, and UpdatePodSandboxResources on the pod cgroup.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use berth_e2e::env::BusyboxEnv;
use berth_proto::cri;
use futures_util::StreamExt;
use tonic::Code;

#[tokio::test]
async fn stream_calls_deliver_what_a_list_cannot_fit() {
    let Some(mut env) = BusyboxEnv::start().await else {
        return;
    };
    let p = env.c.run_pod(env.pod_config("cri136", "big")).await;
    // 14 containers with 400 KB of annotations each: ListContainers is over 5 MiB, past the
    // 4 MiB a gRPC client receives by default.
    let mut ids = BTreeSet::new();
    for i in 0..14 {
        let mut c = env.container_config(&format!("c{i}"), &["true"]);
        c.annotations = HashMap::from([("bulk".to_string(), "x".repeat(400_000))]);
        ids.insert(env.c.create(&p, c).await.unwrap());
    }
    let e = env
        .c
        .runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{e:?}"
    );
    let mut stream = env
        .c
        .runtime
        .stream_containers(cri::StreamContainersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    let mut messages = 0;
    while let Some(m) = stream.next().await {
        messages += 1;
        seen.extend(m.unwrap().containers.into_iter().map(|c| c.id));
    }
    assert!(messages > 1);
    assert_eq!(seen.len(), ids.len(), "every container exactly once");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), ids);
    // The filters are the List call's.
    let one = ids.iter().next().unwrap().clone();
    let mut stream = env
        .c
        .runtime
        .stream_containers(cri::StreamContainersRequest {
            filter: Some(cri::ContainerFilter {
                id: one.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let m = stream.next().await.unwrap().unwrap();
    assert_eq!(m.containers.len(), 1);
    assert_eq!(m.containers[0].id, one);
    assert!(stream.next().await.is_none());
    // The other Stream calls answer as their List calls.
    let pods: Vec<_> = env
        .c
        .runtime
        .stream_pod_sandboxes(cri::StreamPodSandboxesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .map(|m| m.unwrap().pod_sandboxes)
        .collect()
        .await;
    assert_eq!(
        pods.concat().iter().map(|p| &p.id).collect::<Vec<_>>(),
        [&p]
    );
    let images: Vec<_> = env
        .c
        .image
        .stream_images(cri::StreamImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .map(|m| m.unwrap().images)
        .collect()
        .await;
    assert_eq!(images.concat().len(), 1);
    let stats: Vec<_> = env
        .c
        .runtime
        .stream_pod_sandbox_stats(cri::StreamPodSandboxStatsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .map(|m| m.unwrap().pod_sandbox_stats)
        .collect()
        .await;
    assert_eq!(stats.concat().len(), 1);
    env.c.stop_and_remove_pod(&p).await;
}

#[tokio::test]
async fn stop_signals_override_the_image_and_are_reported() {
    let Some(mut env) = BusyboxEnv::start().await else {
        return;
    };
    let p = env.c.run_pod(env.pod_config("cri136", "sig")).await;
    let script = "trap 'exit 7' USR1; trap '' TERM; while true; do sleep 0.1; done";
    let mut c = env.container_config("usr1", &["sh", "-c", script]);
    c.stop_signal = cri::Signal::Sigusr1 as i32;
    let id = env.c.run_container(&p, c).await;
    assert_eq!(
        env.c.status(&id).await.stop_signal,
        cri::Signal::Sigusr1 as i32
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    env.c
        .runtime
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 20,
        })
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(env.c.status(&id).await.exit_code, 7);
    // Without one: the image's (none here), so SIGTERM.
    let plain = env
        .c
        .run_container(&p, env.container_config("plain", &["sleep", "1000"]))
        .await;
    assert_eq!(
        env.c.status(&plain).await.stop_signal,
        cri::Signal::Sigterm as i32
    );
    // A real-time signal is refused, and nothing is created.
    let mut rt = env.container_config("rt", &["true"]);
    rt.stop_signal = cri::Signal::Sigrtminplus3 as i32;
    let e = env.c.create(&p, rt).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("stop_signal"), "{e:?}");
    env.c.stop_and_remove_pod(&p).await;
}

fn pod_memory_limit(pod_id: &str) -> Option<u64> {
    let root = std::path::Path::new("/sys/fs/cgroup/memory");
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy() == format!("pod-{pod_id}"))
            {
                return std::fs::read_to_string(path.join("memory.limit_in_bytes"))
                    .ok()?
                    .trim()
                    .parse()
                    .ok();
            }
            if path.components().count() < 9 {
                stack.push(path);
            }
        }
    }
    None
}

#[tokio::test]
async fn pod_resources_are_applied_to_the_pod_cgroup() {
    let Some(mut env) = BusyboxEnv::start().await else {
        return;
    };
    if !std::path::Path::new("/sys/fs/cgroup/memory").is_dir() {
        return; // the v2 path is exercised in the VM lane
    }
    let p = env.c.run_pod(env.pod_config("cri136", "res")).await;
    env.c
        .run_container(&p, env.container_config("main", &["sleep", "1000"]))
        .await;
    let mem = |bytes: i64| cri::LinuxContainerResources {
        memory_limit_in_bytes: bytes,
        cpu_period: 100_000,
        cpu_quota: 50_000,
        ..Default::default()
    };
    env.c
        .runtime
        .update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: p.clone(),
            overhead: Some(mem(32 << 20)),
            resources: Some(mem(256 << 20)),
        })
        .await
        .unwrap();
    assert_eq!(pod_memory_limit(&p), Some(288 << 20));
    // PodSandboxStatus (verbose) says what the pod was given.
    let st = env
        .c
        .runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: p.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    assert_eq!(info["resources"]["memory_limit"], 288 << 20, "{info}");
    assert_eq!(info["resources"]["cpu_quota"], 100_000, "{info}");
    // Nonsense is refused and changes nothing.
    let e = env
        .c
        .runtime
        .update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: p.clone(),
            overhead: None,
            resources: Some(mem(-7)),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(pod_memory_limit(&p), Some(288 << 20));
    // An unknown pod is NotFound.
    let e = env
        .c
        .runtime
        .update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: "nope".into(),
            overhead: None,
            resources: Some(mem(64 << 20)),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    env.c.stop_and_remove_pod(&p).await;
}

#[tokio::test]
async fn pressure_stall_figures_come_out_where_the_node_has_them() {
    let Some(mut env) = BusyboxEnv::start().await else {
        return;
    };
    let psi = std::path::Path::new("/proc/pressure/cpu").exists()
        && (std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
            || std::path::Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists());
    let p = env.c.run_pod(env.pod_config("cri136", "psi")).await;
    let id = env
        .c
        .run_container(
            &p,
            env.container_config("busy", &["sh", "-c", "while true; do :; done"]),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = env
        .c
        .runtime
        .container_stats(cri::ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let (cpu, mem) = (s.cpu.unwrap(), s.memory.unwrap());
    if !psi {
        // Absent, not zero, where the node has no PSI.
        assert!(cpu.psi.is_none() && mem.psi.is_none() && s.io.is_none());
        env.c.stop_and_remove_pod(&p).await;
        return;
    }
    let cpu_psi = cpu.psi.expect("cpu PSI");
    assert!(cpu_psi.some.unwrap().total > 0 || cpu_psi.some.unwrap().avg10 >= 0.0);
    assert!(mem.psi.is_some());
    assert!(s.io.unwrap().psi.is_some());
    let pod_stats = env
        .c
        .runtime
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: p.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!(pod_stats.linux.unwrap().cpu.unwrap().psi.is_some());
    let metrics = env
        .c
        .runtime
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let names: BTreeSet<String> = metrics
        .iter()
        .flat_map(|m| m.container_metrics.iter())
        .flat_map(|c| c.metrics.iter().map(|m| m.name.clone()))
        .collect();
    for n in [
        "container_pressure_cpu_waiting_seconds_total",
        "container_pressure_memory_stalled_seconds_total",
        "container_pressure_io_waiting_seconds_total",
    ] {
        assert!(names.contains(n), "{n} missing from {names:?}");
    }
    let body = ureq::get(&format!("http://{}/metrics", env.d.metrics_addr()))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(
        body.contains("berth_container_pressure_waiting_seconds_total{")
            && body.contains("resource=\"cpu\""),
        "{body}"
    );
    env.c.stop_and_remove_pod(&p).await;
}

#[tokio::test]
async fn image_volumes_mount_an_image_read_only_whole_or_a_sub_path() {
    use berth_e2e::images::{Entry, Layer, TestImage};
    let Some(mut env) = BusyboxEnv::start().await else {
        return;
    };
    let data = TestImage::new(vec![
        Layer::new(vec![
            Entry::dir("models"),
            Entry::dir("models/a"),
            Entry::file("models/a/weights", "first layer\n"),
            Entry::dir("gone"),
        ]),
        Layer::new(vec![
            Entry::dir("models/b"),
            Entry::file("models/b/weights", "second layer\n"),
        ]),
    ]);
    env.reg.push_image("data", "v1", &data.build());
    let data_ref = format!("{}/data:v1", env.reg.host());
    env.c.pull(&data_ref, None).await.unwrap();
    let p = env.c.run_pod(env.pod_config("cri136", "imgvol")).await;
    let vol = |path: &str, image: &str, sub: &str| cri::Mount {
        container_path: path.into(),
        image: Some(berth_e2e::cri::spec(image)),
        image_sub_path: sub.into(),
        readonly: true,
        ..Default::default()
    };
    let mut c = env.container_config("reader", &["sleep", "1000"]);
    c.mounts = vec![
        vol("/data", &data_ref, ""),
        vol("/b", &data_ref, "models/b"),
    ];
    let id = env.c.run_container(&p, c).await;
    let out = env
        .c
        .exec(
            &id,
            &[
                "cat",
                "/data/models/a/weights",
                "/data/models/b/weights",
                "/b/weights",
            ],
            10,
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "first layer\nsecond layer\nsecond layer\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let w = env
        .c
        .exec(&id, &["sh", "-c", "echo x > /data/models/new"], 10)
        .await
        .unwrap();
    assert_ne!(w.exit_code, 0, "an image volume is read-only");
    // The image's layers outlive RemoveImage while a container mounts them.
    env.c.remove_image(&data_ref).await.unwrap();
    let out = env.c.exec(&id, &["cat", "/b/weights"], 10).await.unwrap();
    assert_eq!(out.stdout, b"second layer\n");
    // Refused before anything is made: an image not on the node, a sub path not in it.
    let mut c = env.container_config("missing", &["true"]);
    c.mounts = vec![vol("/data", &format!("{}/nope:v1", env.reg.host()), "")];
    let e = env.c.create(&p, c).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("not on this node"), "{e:?}");
    env.c.pull(&data_ref, None).await.unwrap();
    for sub in ["models/zzz", "../etc", "models/a/weights"] {
        let mut c = env.container_config("badsub", &["true"]);
        c.mounts = vec![vol("/data", &data_ref, sub)];
        let e = env.c.create(&p, c).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{sub}: {e:?}");
        assert!(e.message().contains("image_sub_path"), "{e:?}");
    }
    // An image of many layers: their paths pass a page of mount options together, so
    // they go to overlayfs one by one, as a container's root does.
    let deep = TestImage::new(
        (0..60)
            .map(|i| Layer::new(vec![Entry::file(&format!("layer{i}"), format!("{i}\n"))]))
            .collect(),
    );
    env.reg.push_image("deep", "v1", &deep.build());
    let deep_ref = format!("{}/deep:v1", env.reg.host());
    env.c.pull(&deep_ref, None).await.unwrap();
    let mut c = env.container_config("deep", &["sleep", "1000"]);
    c.mounts = vec![vol("/deep", &deep_ref, "")];
    let id = env.c.run_container(&p, c).await;
    let out = env
        .c
        .exec(&id, &["cat", "/deep/layer0", "/deep/layer59"], 10)
        .await
        .unwrap();
    assert_eq!(
        out.stdout,
        b"0\n59\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // In a pod with a user namespace the volume is id-mapped: the image's root-owned
    // files are root's inside.
    let mut userns = env.pod_config("cri136", "imgvol-userns");
    berth_e2e::cri::with_user_namespace(&mut userns, 1_000_000, 65536);
    let up = env.c.run_pod(userns).await;
    let mut c = env.container_config("mapped", &["sleep", "1000"]);
    c.mounts = vec![vol("/b", &data_ref, "models/b")];
    let id = env.c.run_container(&up, c).await;
    let out = env
        .c
        .exec(
            &id,
            &["sh", "-c", "cat /b/weights; stat -c %u /b/weights"],
            10,
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "second layer\n0\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.c.stop_and_remove_pod(&up).await;
    env.c.stop_and_remove_pod(&p).await;
    // Removing the container unmounted its image volumes (the fixture checks no mount of
    // this daemon remains when it is dropped).
}

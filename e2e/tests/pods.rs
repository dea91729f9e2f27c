//! Pods and containers end to end: real namespaces, overlay roots, cgroups and monitors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use berth_e2e::images::catalog;
use berth_e2e::{Cri, Daemon, Registry, require};
use berth_proto::cri;
use tonic::Code;

struct Env {
    d: Daemon,
    reg: Registry,
    c: Cri,
    logs: tempfile::TempDir,
}

async fn env() -> Option<Env> {
    if !(require::root() && catalog::available()) {
        return None;
    }
    let reg = Registry::start()?;
    reg.push_image("busybox", "latest", &catalog::busybox().build());
    reg.push_image("config", "latest", &catalog::with_config().build());
    reg.push_image("by-name", "latest", &catalog::user_by_name().build());
    let d = Daemon::start().await;
    let mut c = d.cri().await;
    for i in ["busybox", "config", "by-name"] {
        c.pull(&format!("{}/{i}", reg.host()), None).await.unwrap();
    }
    let logs = tempfile::tempdir().unwrap();
    Some(Env { d, reg, c, logs })
}

fn pod_config(env: &Env, name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: format!("{name}-host"),
        log_directory: env.logs.path().join(name).display().to_string(),
        labels: HashMap::from([("app".to_owned(), name.to_owned())]),
        ..Default::default()
    }
}

fn container_config(
    reg: &Registry,
    image: &str,
    name: &str,
    command: &[&str],
) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(berth_e2e::cri::spec(&format!("{}/{image}", reg.host()))),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        // As kubelet sends it: a pid namespace per container unless the pod shares one
        // (without namespace options the CRI's default is the pod's; tests/minimal.rs).
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn run_pod(env: &mut Env, name: &str) -> String {
    let config = pod_config(env, name);
    env.c.run_pod(config).await
}

fn log_of(env: &Env, pod: &str, name: &str) -> String {
    std::fs::read_to_string(env.logs.path().join(pod).join(name).join("0.log")).unwrap_or_default()
}

async fn teardown(env: &mut Env, pod: &str) {
    env.c.stop_and_remove_pod(pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_runs_logs_and_exits_with_its_code() {
    let Some(mut env) = env().await else { return };
    let pod = run_pod(&mut env, "web").await;
    let id = env
        .c
        .create(
            &pod,
            container_config(
                &env.reg,
                "busybox",
                "main",
                &["sh", "-c", "echo hello; hostname; echo oops >&2; exit 7"],
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        env.c.status(&id).await.state,
        cri::ContainerState::ContainerCreated as i32
    );
    env.c.start(&id).await.unwrap();
    let s = env.c.wait_exited(&id).await;
    assert_eq!(s.exit_code, 7);
    assert_eq!(s.reason, "Error");
    assert!(s.started_at > 0 && s.finished_at >= s.started_at);
    let log = log_of(&env, "web", "main");
    assert!(log.contains(" stdout F hello\n"), "{log}");
    assert!(log.contains(" stdout F web-host\n"), "{log}");
    assert!(log.contains(" stderr F oops\n"), "{log}");
    // Listing and filters.
    let all = env
        .c
        .runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(all.len(), 1);
    let pods = env
        .c
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxReady as i32);
    env.c
        .runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    env.c
        .runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    teardown(&mut env, &pod).await;
    teardown(&mut env, &pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn image_config_user_and_stop() {
    let Some(mut env) = env().await else { return };
    let pod = run_pod(&mut env, "cfg").await;
    // ENTRYPOINT/CMD/WORKDIR/ENV from the image.
    let a = env
        .c
        .run_container(&pod, container_config(&env.reg, "config", "app", &[]))
        .await;
    assert_eq!(env.c.wait_exited(&a).await.exit_code, 0);
    assert!(
        log_of(&env, "cfg", "app").contains("run.sh from-cmd in /app as hello"),
        "{}",
        log_of(&env, "cfg", "app")
    );
    // USER by name from the image's /etc/passwd.
    let u = env
        .c
        .run_container(&pod, container_config(&env.reg, "by-name", "user", &["id"]))
        .await;
    env.c.wait_exited(&u).await;
    assert!(
        log_of(&env, "cfg", "user").contains("uid=1000(berth) gid=1000(berth)"),
        "{}",
        log_of(&env, "cfg", "user")
    );
    // A long-running container stops with SIGTERM, and SIGKILL after the timeout.
    let l = env
        .c
        .create(
            &pod,
            container_config(
                &env.reg,
                "busybox",
                "sleeper",
                &[
                    "sh",
                    "-c",
                    "trap 'exit 0' TERM; while true; do sleep 0.1; done",
                ],
            ),
        )
        .await
        .unwrap();
    env.c.start(&l).await.unwrap();
    assert_eq!(
        env.c.status(&l).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    env.c
        .runtime
        .stop_container(cri::StopContainerRequest {
            container_id: l.clone(),
            timeout: 10,
        })
        .await
        .unwrap();
    let s = env.c.status(&l).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(s.exit_code, 0, "{s:?}");
    let k = env
        .c
        .create(
            &pod,
            container_config(
                &env.reg,
                "busybox",
                "stubborn",
                &["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"],
            ),
        )
        .await
        .unwrap();
    env.c.start(&k).await.unwrap();
    env.c
        .runtime
        .stop_container(cri::StopContainerRequest {
            container_id: k.clone(),
            timeout: 1,
        })
        .await
        .unwrap();
    assert_eq!(env.c.status(&k).await.exit_code, 137);
    teardown(&mut env, &pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_the_right_codes_and_leaves_nothing() {
    let Some(mut env) = env().await else { return };
    let e = env
        .c
        .runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: "nope".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = env
        .c
        .runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: "nope".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let pod = run_pod(&mut env, "bad").await;
    // The same pod again.
    let config = pod_config(&env, "bad");
    let e = env
        .c
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    // A command that does not exist: start fails, the container is EXITED with 128.
    let id = env
        .c
        .create(
            &pod,
            container_config(&env.reg, "busybox", "missing", &["/no/such/binary"]),
        )
        .await
        .unwrap();
    let e = env.c.start(&id).await.unwrap_err();
    assert!(e.message().contains("/no/such/binary"), "{}", e.message());
    let s = env.c.status(&id).await;
    assert_eq!(
        (s.state, s.exit_code),
        (cri::ContainerState::ContainerExited as i32, 128)
    );
    assert!(s.message.contains("/no/such/binary"), "{}", s.message);
    // An image that is not pulled, a user not in the image, a missing host path.
    let e = env
        .c
        .create(
            &pod,
            container_config(&env.reg, "never-pulled", "x", &["sh"]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let mut cfg = container_config(&env.reg, "busybox", "ghost", &["sh"]);
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_username: "ghost".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let e = env.c.create(&pod, cfg).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("ghost"));
    let mut cfg = container_config(&env.reg, "busybox", "vol", &["sh"]);
    cfg.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: "/berth/does/not/exist".into(),
        ..Default::default()
    }];
    let e = env.c.create(&pod, cfg).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("/berth/does/not/exist"));
    // Only the container with the failed start was recorded.
    let all = env
        .c
        .runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(all.len(), 1);
    // A container in a stopped pod.
    env.c
        .runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    let e = env
        .c
        .create(&pod, container_config(&env.reg, "busybox", "late", &["sh"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    teardown(&mut env, &pod).await;
}

async fn pod_state(c: &mut Cri, pod: &str) -> (i32, serde_json::Value) {
    let r = c
        .runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    (
        r.status.unwrap().state,
        serde_json::from_str(&r.info["info"]).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn berthd_kill9_keeps_pods_containers_exits_and_logs() {
    let Some(mut env) = env().await else { return };
    let pod = run_pod(&mut env, "survivor").await;
    let long = env
        .c
        .create(
            &pod,
            container_config(
                &env.reg,
                "busybox",
                "long",
                &[
                    "sh",
                    "-c",
                    "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done",
                ],
            ),
        )
        .await
        .unwrap();
    let short = env
        .c
        .create(
            &pod,
            container_config(
                &env.reg,
                "busybox",
                "short",
                &["sh", "-c", "sleep 1; exit 3"],
            ),
        )
        .await
        .unwrap();
    env.c.start(&long).await.unwrap();
    env.c.start(&short).await.unwrap();
    env.d.signal(nix::sys::signal::Signal::SIGKILL);
    env.d
        .wait_exit(Duration::from_secs(5))
        .expect("berthd did not die");
    // The short container exits while berthd is down.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = log_of(&env, "survivor", "long").lines().count();
    env.d.restart().await;
    env.c = env.d.cri().await;
    assert_eq!(
        pod_state(&mut env.c, &pod).await.0,
        cri::PodSandboxState::SandboxReady as i32
    );
    assert_eq!(
        env.c.status(&long).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    let s = env.c.status(&short).await;
    assert_eq!(
        (s.state, s.exit_code),
        (cri::ContainerState::ContainerExited as i32, 3)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        log_of(&env, "survivor", "long").lines().count() > before,
        "log stopped growing"
    );
    env.c
        .runtime
        .stop_container(cri::StopContainerRequest {
            container_id: long.clone(),
            timeout: 1,
        })
        .await
        .unwrap();
    assert_eq!(
        env.c.status(&long).await.state,
        cri::ContainerState::ContainerExited as i32
    );
    teardown(&mut env, &pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_monitor_leaves_an_exited_container_and_a_not_ready_pod() {
    let Some(mut env) = env().await else { return };
    let pod = run_pod(&mut env, "orphan").await;
    let id = env
        .c
        .run_container(
            &pod,
            container_config(&env.reg, "busybox", "sleeper", &["sleep", "1000"]),
        )
        .await;
    let (_, info) = pod_state(&mut env.c, &pod).await;
    let monitor = info["pid"].as_i64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut state = 0;
    for _ in 0..200 {
        state = pod_state(&mut env.c, &pod).await.0;
        if state == cri::PodSandboxState::SandboxNotready as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(state, cri::PodSandboxState::SandboxNotready as i32);
    let s = env.c.status(&id).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert!(!s.message.is_empty());
    teardown(&mut env, &pod).await;
    // The name can be used again at once.
    let again = run_pod(&mut env, "orphan").await;
    teardown(&mut env, &again).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_reboot_pods_are_not_ready_and_removable() {
    let Some(mut env) = env().await else { return };
    let pod = run_pod(&mut env, "rebooted").await;
    let id = env
        .c
        .run_container(
            &pod,
            container_config(&env.reg, "busybox", "sleeper", &["sleep", "1000"]),
        )
        .await;
    let (_, info) = pod_state(&mut env.c, &pod).await;
    // A reboot: everything in memory and in the run directory is gone.
    env.d.signal(nix::sys::signal::Signal::SIGKILL);
    env.d.wait_exit(Duration::from_secs(5)).unwrap();
    let monitor = info["pid"].as_i64().unwrap() as i32;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::Signal::SIGKILL,
    );
    let cgroup = info["cgroup"].as_str().unwrap().to_owned();
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let procs = h.path().join(&cgroup).join(&id).join("cgroup.procs");
        for p in std::fs::read_to_string(&procs).unwrap_or_default().lines() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.parse().unwrap()),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let netns = info["netns"].as_str().unwrap().to_owned();
    let _ = nix::mount::umount2(netns.as_str(), nix::mount::MntFlags::MNT_DETACH);
    let _ = nix::mount::umount2(
        env.d.state.join("pods").join(&pod).join("shm").as_path(),
        nix::mount::MntFlags::MNT_DETACH,
    );
    std::fs::remove_dir_all(&env.d.state).unwrap();
    env.d.restart().await;
    env.c = env.d.cri().await;
    assert_eq!(
        pod_state(&mut env.c, &pod).await.0,
        cri::PodSandboxState::SandboxNotready as i32
    );
    let s = env.c.status(&id).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    teardown(&mut env, &pod).await;
    let again = run_pod(&mut env, "rebooted").await;
    teardown(&mut env, &again).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_sync_output_codes_timeouts_and_background_children() {
    let Some(mut env) = env().await else { return };
    let pod = run_pod(&mut env, "exec").await;
    let id = env
        .c
        .run_container(
            &pod,
            container_config(&env.reg, "by-name", "app", &["sleep", "1000"]),
        )
        .await;
    let r = env
        .c
        .exec(
            &id,
            &[
                "sh",
                "-c",
                "echo out; echo err >&2; id -un; hostname; exit 4",
            ],
            10,
        )
        .await
        .unwrap();
    assert_eq!(r.exit_code, 4);
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "out\nberth\nexec-host\n"
    );
    assert_eq!(String::from_utf8_lossy(&r.stderr), "err\n");
    // Same pid namespace as the container: its main process is pid 1 there.
    let r = env
        .c
        .exec(&id, &["cat", "/proc/1/cmdline"], 10)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).replace('\0', " ").trim(),
        "sleep 1000"
    );
    // A background child keeping stdout open does not hold the answer.
    let t = std::time::Instant::now();
    let r = env
        .c
        .exec(&id, &["sh", "-c", "sleep 30 & echo started"], 10)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&r.stdout), "started\n");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // A timeout is DeadlineExceeded and kills the process and its children.
    let t = std::time::Instant::now();
    let e = env
        .c
        .exec(&id, &["sh", "-c", "sleep 300 & sleep 301"], 1)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
    let ps = env.c.exec(&id, &["ps", "-o", "args"], 10).await.unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout).to_string();
    assert!(
        !ps.contains("sleep 301") && !ps.contains("sleep 300"),
        "{ps}"
    );
    // Not found, and not running.
    let e = env.c.exec("nope", &["true"], 1).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = env.c.exec(&id, &["/no/such/tool"], 1).await.unwrap_err();
    assert!(e.message().contains("/no/such/tool"), "{e:?}");
    env.c
        .runtime
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    let e = env.c.exec(&id, &["true"], 1).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    teardown(&mut env, &pod).await;
}

fn cgroup_file(env: &Env, info: &serde_json::Value, file: &str) -> String {
    let _ = env;
    let cg = info["cgroup"].as_str().unwrap();
    let controller = file.split('.').next().unwrap();
    std::fs::read_to_string(format!("/sys/fs/cgroup/{controller}/{cg}/{file}"))
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_apply_update_live_and_oom_kills_are_reported() {
    let Some(mut env) = env().await else { return };
    let pod = run_pod(&mut env, "limits").await;
    let mut cfg = container_config(&env.reg, "busybox", "capped", &["sleep", "1000"]);
    cfg.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = env.c.run_container(&pod, cfg).await;
    let info = env.c.verbose_info(&id).await;
    if !std::path::Path::new("/sys/fs/cgroup/memory").is_dir() {
        require::prerequisite(
            "cgroup v1 memory hierarchy at /sys/fs/cgroup/memory (this test reads v1 files)",
            false,
        );
        teardown(&mut env, &pod).await;
        return;
    }
    assert_eq!(
        cgroup_file(&env, &info, "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(cgroup_file(&env, &info, "cpu.shares"), "512");
    assert_eq!(cgroup_file(&env, &info, "cpu.cfs_quota_us"), "50000");
    // The container process is in it.
    let pid = info["pid"].as_u64().unwrap().to_string();
    let procs = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/{}/cgroup.procs",
        info["cgroup"].as_str().unwrap()
    ))
    .unwrap();
    assert!(procs.lines().any(|p| p == pid), "{procs}");
    // Live update.
    env.c
        .runtime
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 128 << 20,
                cpu_shares: 256,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        cgroup_file(&env, &info, "memory.limit_in_bytes"),
        (128u64 << 20).to_string()
    );
    assert_eq!(cgroup_file(&env, &info, "cpu.shares"), "256");
    let st = env.c.status(&id).await;
    let r = st.resources.unwrap().linux.unwrap();
    assert_eq!(
        (r.memory_limit_in_bytes, r.cpu_shares, r.cpu_quota),
        (128 << 20, 256, 50_000)
    );

    // A container that outgrows its limit is OOMKilled.
    let mut cfg = container_config(
        &env.reg,
        "busybox",
        "hog",
        &[
            "sh",
            "-c",
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
        ],
    );
    cfg.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let hog = env.c.run_container(&pod, cfg).await;
    let s = env.c.wait_exited(&hog).await;
    assert_eq!(s.reason, "OOMKilled", "{s:?}");
    assert_ne!(s.exit_code, 0);
    teardown(&mut env, &pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reopen_container_log_after_rotation() {
    let Some(mut env) = env().await else { return };
    let pod = run_pod(&mut env, "rotate").await;
    let id = env
        .c
        .create(
            &pod,
            container_config(
                &env.reg,
                "busybox",
                "ticker",
                &[
                    "sh",
                    "-c",
                    "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.05; done",
                ],
            ),
        )
        .await
        .unwrap();
    env.c.start(&id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = env.logs.path().join("rotate/ticker");
    std::fs::rename(dir.join("0.log"), dir.join("0.log.1")).unwrap();
    env.c
        .runtime
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new = std::fs::read_to_string(dir.join("0.log")).unwrap();
    assert!(new.lines().count() >= 2, "{new}");
    assert!(new.lines().all(|l| l.contains(" stdout F line ")), "{new}");
    let old = std::fs::read_to_string(dir.join("0.log.1")).unwrap();
    let last_old: u64 = old
        .lines()
        .last()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let first_new: u64 = new
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        first_new,
        last_old + 1,
        "a line was lost or repeated across the rotation"
    );
    teardown(&mut env, &pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn host_network_host_ipc_readonly_root_and_volumes() {
    let Some(mut env) = env().await else { return };
    let mut config = pod_config(&env, "hostnet");
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                ipc: cri::NamespaceMode::Node as i32,
                pid: cri::NamespaceMode::Container as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = env.c.run_pod(config).await;
    let vol = tempfile::tempdir().unwrap();
    std::fs::write(vol.path().join("in.txt"), "from the host\n").unwrap();
    let mut cfg = container_config(
        &env.reg,
        "busybox",
        "probe",
        &[
            "sh",
            "-c",
            "cat /data/in.txt; echo out > /data/out.txt; echo nets $(ls /sys/class/net); touch /rootfile 2>/dev/null || echo readonly-root; touch /tmp/x 2>/dev/null || echo readonly-tmp; cat /proc/self/status | grep NoNewPrivs",
        ],
    );
    cfg.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: vol.path().display().to_string(),
        ..Default::default()
    }];
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            readonly_rootfs: true,
            no_new_privs: true,
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                ipc: cri::NamespaceMode::Node as i32,
                pid: cri::NamespaceMode::Container as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = env.c.run_container(&pod, cfg).await;
    let s = env.c.wait_exited(&id).await;
    let log = log_of(&env, "hostnet", "probe");
    assert_eq!(s.exit_code, 0, "{log}");
    assert!(log.contains("F from the host"), "{log}");
    // The host's network: the container sees the node's interfaces, not just a lo.
    let host_ifaces: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    if let Some(i) = host_ifaces.first() {
        assert!(
            log.lines()
                .any(|l| l.contains("F nets ") && l.contains(i.as_str())),
            "{i} not seen: {log}"
        );
    }
    assert!(log.contains("F readonly-root"), "{log}");
    assert!(log.contains("F readonly-tmp"), "{log}");
    assert!(log.contains("NoNewPrivs:\t1"), "{log}");
    assert_eq!(
        std::fs::read_to_string(vol.path().join("out.txt")).unwrap(),
        "out\n"
    );
    let (_, info) = pod_state(&mut env.c, &pod).await;
    assert!(
        info["netns"].is_null(),
        "a host-network pod has no netns of its own: {info}"
    );
    teardown(&mut env, &pod).await;
}

/// Namespace options of pid mode `pid`.
fn pod_pid_mode(pid: i32) -> cri::NamespaceOption {
    cri::NamespaceOption {
        pid,
        ..Default::default()
    }
}

/// A pod whose containers may share its pid namespace (pid mode POD).
fn shared_pid_pod_config(env: &Env, name: &str) -> cri::PodSandboxConfig {
    let mut config = pod_config(env, name);
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(pod_pid_mode(cri::NamespaceMode::Pod as i32)),
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shared_pid_namespace_lets_containers_see_each_other() {
    let Some(mut env) = env().await else { return };
    let ns = pod_pid_mode;
    let pod = env.c.run_pod(shared_pid_pod_config(&env, "shared")).await;
    let with_pid_mode = |mut cfg: cri::ContainerConfig| {
        cfg.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(ns(cri::NamespaceMode::Pod as i32)),
                ..Default::default()
            }),
            ..Default::default()
        });
        cfg
    };
    let _sleeper = env
        .c
        .run_container(
            &pod,
            with_pid_mode(container_config(
                &env.reg,
                "busybox",
                "a",
                &["sleep", "1000"],
            )),
        )
        .await;
    let b = env
        .c
        .run_container(
            &pod,
            with_pid_mode(container_config(
                &env.reg,
                "busybox",
                "b",
                &["ps", "-o", "pid,args"],
            )),
        )
        .await;
    env.c.wait_exited(&b).await;
    let log = log_of(&env, "shared", "b");
    assert!(
        log.contains("sleep 1000"),
        "the other container is not visible: {log}"
    );
    // Pid 1 is the pod's init, not a container.
    assert!(!log.lines().any(|l| l.contains(" F     1 sleep")), "{log}");
    teardown(&mut env, &pod).await;
}

/// The pod's init is pid 1 of a shared pid namespace: a container allowed to trace
/// (CAP_SYS_PTRACE, as kubelet grants a debugging container that asks) can open its
/// /proc/1 files. Nothing of the host is there: its root and working directory are empty,
/// its descriptors are the three standard streams, it holds no capability and gets no new
/// privileges (before, its root was the host's, its stderr the monitor's log, and it held
/// all of root's capabilities).
#[tokio::test(flavor = "multi_thread")]
async fn a_shared_pid_namespaces_init_shows_nothing_of_the_host() {
    let Some(mut env) = env().await else { return };
    let ns = pod_pid_mode;
    let pod = env
        .c
        .run_pod(shared_pid_pod_config(&env, "init-root"))
        .await;
    let mut cfg = container_config(&env.reg, "busybox", "debug", &["sleep", "1000"]);
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(ns(cri::NamespaceMode::Pod as i32)),
            capabilities: Some(cri::Capability {
                add_capabilities: vec!["SYS_PTRACE".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = env.c.run_container(&pod, cfg).await;
    // A container of the same pod with the default capabilities (no CAP_SYS_PTRACE).
    let mut plain = container_config(&env.reg, "busybox", "plain", &["sleep", "1000"]);
    plain.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(ns(cri::NamespaceMode::Pod as i32)),
            ..Default::default()
        }),
        ..Default::default()
    });
    let plain = env.c.run_container(&pod, plain).await;
    let run_in = |id: &str, cmd: &'static str| {
        let c = env.c.clone();
        let id = id.to_owned();
        async move {
            let mut c = c;
            let r = c.exec(&id, &["sh", "-c", cmd], 10).await.unwrap();
            String::from_utf8_lossy(&r.stdout).into_owned() + &String::from_utf8_lossy(&r.stderr)
        }
    };
    let run = |cmd: &'static str| run_in(&id, cmd);
    let status = run("cat /proc/1/status").await;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(field("Name:"), ["berth-pod-init"], "{status}");
    for caps in ["CapEff:", "CapPrm:", "CapInh:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(caps), ["0000000000000000"], "{caps} {status}");
    }
    assert_eq!(field("NoNewPrivs:"), ["1"], "{status}");
    assert_eq!(field("Groups:"), Vec::<&str>::new(), "{status}");
    // Under its own seccomp filter.
    assert_eq!(field("Seccomp:"), ["2"], "{status}");
    // Its descriptors: the standard streams, on /dev/null (device 1:3).
    let fds = run("ls /proc/1/fd | tr '\\n' ' '").await;
    assert_eq!(fds.trim(), "0 1 2", "{fds}");
    let devices = run("for f in 0 1 2; do stat -L -c %t:%T /proc/1/fd/$f; done").await;
    assert_eq!(devices, "1:3\n1:3\n1:3\n", "{devices}");
    // Not dumpable: a container without CAP_SYS_PTRACE (root too) cannot follow its
    // descriptors or its root.
    let refused = run_in(&plain, "cat /proc/1/fd/0 2>&1; ls -A /proc/1/root/ 2>&1").await;
    assert_eq!(refused.matches("Permission denied").count(), 2, "{refused}");
    // Its root and working directory: readable to this container, and empty.
    for what in ["root", "cwd"] {
        let listing = run(match what {
            "root" => "ls -A /proc/1/root/ && echo listed",
            _ => "ls -A /proc/1/cwd/ && echo listed",
        })
        .await;
        assert_eq!(listing, "listed\n", "/proc/1/{what}: {listing}");
    }
    teardown(&mut env, &pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_sysctls_supplemental_groups_and_run_as() {
    let Some(mut env) = env().await else { return };
    let mut config = pod_config(&env, "tuned");
    config.linux = Some(cri::LinuxPodSandboxConfig {
        sysctls: HashMap::from([(
            "net.ipv4.ip_unprivileged_port_start".to_owned(),
            "80".to_owned(),
        )]),
        ..Default::default()
    });
    let pod = env.c.run_pod(config).await;
    let mut cfg = container_config(
        &env.reg,
        "busybox",
        "who",
        &[
            "sh",
            "-c",
            "cat /proc/sys/net/ipv4/ip_unprivileged_port_start; id; echo x > /proc/sys/kernel/hostname || echo sysctl-readonly",
        ],
    );
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 4321 }),
            run_as_group: Some(cri::Int64Value { value: 4322 }),
            supplemental_groups: vec![5000, 5001],
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = env.c.run_container(&pod, cfg).await;
    env.c.wait_exited(&id).await;
    let log = log_of(&env, "tuned", "who");
    assert!(log.contains("stdout F 80\n"), "{log}");
    // The primary group is in the process's group list too, as containerd and CRI-O set it.
    assert!(
        log.contains("uid=4321 gid=4322 groups=4322,5000,5001"),
        "{log}"
    );
    assert!(log.contains("sysctl-readonly"), "{log}");
    // The node's own value is untouched.
    assert_ne!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .unwrap()
            .trim(),
        "80"
    );
    teardown(&mut env, &pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pid_mode_target_joins_another_containers_pid_namespace() {
    let Some(mut env) = env().await else { return };
    let pod = run_pod(&mut env, "target").await;
    let a = env
        .c
        .run_container(
            &pod,
            container_config(&env.reg, "busybox", "app", &["sleep", "1000"]),
        )
        .await;
    let mut cfg = container_config(&env.reg, "busybox", "debug", &["ps", "-o", "pid,args"]);
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Target as i32,
                target_id: a.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let b = env.c.run_container(&pod, cfg.clone()).await;
    let s = env.c.wait_exited(&b).await;
    let log = log_of(&env, "target", "debug");
    assert_eq!(s.exit_code, 0, "{log}");
    assert!(
        log.lines().any(|l| l.ends_with(" 1 sleep 1000")),
        "the target's pid 1 is not visible: {log}"
    );
    // A target that is not in the pod is refused.
    let mut bad = cfg;
    bad.metadata = Some(cri::ContainerMetadata {
        name: "bad".into(),
        attempt: 0,
    });
    if let Some(sc) = bad.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
        sc.namespace_options.as_mut().unwrap().target_id = "nope".into();
    }
    let e = env.c.create(&pod, bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    teardown(&mut env, &pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn security_defaults_dns_and_mount_propagation() {
    let Some(mut env) = env().await else { return };
    let mut config = pod_config(&env, "secure");
    config.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["default.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    let pod = env.c.run_pod(config).await;
    // A shared mount on the host, so that host-to-container propagation has something to carry.
    let vol = tempfile::tempdir().unwrap();
    let v = vol.path().to_owned();
    let run = |args: &[&str]| {
        assert!(
            std::process::Command::new(args[0])
                .args(&args[1..])
                .status()
                .unwrap()
                .success(),
            "{args:?}"
        )
    };
    run(&["mount", "--bind", v.to_str().unwrap(), v.to_str().unwrap()]);
    run(&["mount", "--make-shared", v.to_str().unwrap()]);
    std::fs::create_dir(v.join("sub")).unwrap();
    let mut cfg = container_config(
        &env.reg,
        "busybox",
        "check",
        &[
            "sh",
            "-c",
            "grep -E '^Cap(Eff|Bnd)' /proc/self/status; wc -c < /proc/timer_list; cat /etc/resolv.conf; \
             for i in $(seq 100); do [ -e /data/sub/marker ] && echo propagated && exit 0; sleep 0.05; done; exit 9",
        ],
    );
    cfg.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: v.display().to_string(),
        propagation: cri::MountPropagation::PropagationHostToContainer as i32,
        ..Default::default()
    }];
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                drop_capabilities: vec!["NET_RAW".into()],
                add_capabilities: vec!["SYS_TIME".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = env.c.run_container(&pod, cfg).await;
    run(&[
        "mount",
        "-t",
        "tmpfs",
        "berth-e2e-prop",
        v.join("sub").to_str().unwrap(),
    ]);
    std::fs::write(v.join("sub/marker"), "x").unwrap();
    let s = env.c.wait_exited(&id).await;
    let _ = nix::mount::umount2(v.join("sub").as_path(), nix::mount::MntFlags::MNT_DETACH);
    let _ = nix::mount::umount2(v.as_path(), nix::mount::MntFlags::MNT_DETACH);
    let log = log_of(&env, "secure", "check");
    assert_eq!(s.exit_code, 0, "{log}");
    // Default set 0xa80425fb, minus NET_RAW (bit 13), plus SYS_TIME (bit 25).
    let want = format!("{:016x}", (0xa80425fbu64 & !(1 << 13)) | (1 << 25));
    assert!(log.contains(&format!("CapEff:\t{want}")), "{want}: {log}");
    assert!(log.contains(&format!("CapBnd:\t{want}")), "{log}");
    assert!(
        log.contains("stdout F 0\n"),
        "/proc/timer_list is not masked: {log}"
    );
    assert!(
        log.contains("F nameserver 10.96.0.10")
            && log.contains("F search default.svc.cluster.local")
            && log.contains("F options ndots:5"),
        "{log}"
    );
    assert!(log.contains("F propagated"), "{log}");
    teardown(&mut env, &pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_the_image_of_a_running_container_keeps_its_layers() {
    let Some(mut env) = env().await else { return };
    let pod = run_pod(&mut env, "inuse").await;
    let id = env
        .c
        .run_container(
            &pod,
            container_config(&env.reg, "busybox", "app", &["sleep", "1000"]),
        )
        .await;
    for i in ["busybox", "config", "by-name"] {
        env.c
            .remove_image(&format!("{}/{i}", env.reg.host()))
            .await
            .unwrap();
    }
    let r = env.c.exec(&id, &["ls", "/bin/busybox"], 10).await.unwrap();
    assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stderr));
    assert!(
        std::fs::read_dir(env.d.root.join("snapshots/sha256"))
            .unwrap()
            .count()
            >= 1
    );
    teardown(&mut env, &pod).await;
    // With the container gone, its layers go too.
    assert_eq!(
        std::fs::read_dir(env.d.root.join("snapshots/sha256"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_an_in_flight_call_finish() {
    let Some(mut env) = env().await else { return };
    let pod = run_pod(&mut env, "drain").await;
    let id = env
        .c
        .run_container(
            &pod,
            container_config(&env.reg, "busybox", "app", &["sleep", "1000"]),
        )
        .await;
    let mut c2 = env.d.cri().await;
    let slow = tokio::spawn({
        let id = id.clone();
        async move { c2.exec(&id, &["sh", "-c", "sleep 2; echo done"], 30).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.d.signal(nix::sys::signal::Signal::SIGTERM);
    let r = slow.await.unwrap().expect("the in-flight call was cut");
    assert_eq!(String::from_utf8_lossy(&r.stdout), "done\n");
    let exit = env
        .d
        .wait_exit(Duration::from_secs(10))
        .expect("berthd did not exit after draining");
    assert!(exit.success(), "{exit}");
    // The pod outlived berthd; a new berthd finds it and removes it.
    env.d.restart().await;
    env.c = env.d.cri().await;
    assert_eq!(
        env.c.status(&id).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    teardown(&mut env, &pod).await;
}

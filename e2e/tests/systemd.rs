//! The systemd cgroup driver on a systemd node with cgroup v2 (the VM lane runs these with
//! `BERTH_E2E_CGROUP_DRIVER=systemd`: `scripts/vm --driver systemd e2e:systemd`): each
//! container is a transient scope in its pod's slice, with its limits as unit properties
//! and in its cgroup, and the scopes (and berth's own slices) go when the pods go. And the
//! cgroupfs driver on the same node (`scripts/vm --driver cgroupfs e2e:systemd`): berth's
//! own pods go under a delegated scope of berth's, never at the root. Not applicable on a
//! node without that driver: they say so and pass.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::process::Command;

use berth_e2e::daemon::CGROUP_DRIVER_ENV;
use berth_e2e::env::BusyboxEnv;
use berth_e2e::require;
use berth_proto::cri;

fn systemd_driver() -> bool {
    driver_on_systemd("systemd")
}

/// Whether the tests run with `driver` on a node whose cgroups systemd manages.
fn driver_on_systemd(driver: &str) -> bool {
    if std::env::var(CGROUP_DRIVER_ENV).ok().as_deref() != Some(driver) {
        eprintln!(
            "not applicable: {CGROUP_DRIVER_ENV} is not {driver:?} (the VM lane runs this: scripts/vm --driver {driver} e2e:systemd)"
        );
        return false;
    }
    require::prerequisite(
        "systemd as PID 1 and cgroup v2 (the systemd cgroup driver's node)",
        std::path::Path::new("/run/systemd/system").is_dir()
            && std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").is_file(),
    )
}

/// `systemctl show -P <property> <unit>`.
fn show(unit: &str, property: &str) -> String {
    let out = Command::new("systemctl")
        .args(["show", "-P", property, unit])
        .output()
        .expect("systemctl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The loaded units matching a pattern (`systemctl list-units --all`).
fn units(pattern: &str) -> Vec<String> {
    let out = Command::new("systemctl")
        .args(["list-units", "--all", "--plain", "--no-legend", pattern])
        .output()
        .expect("systemctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn cgroup_file(cgroup: &str, file: &str) -> String {
    std::fs::read_to_string(format!("/sys/fs/cgroup/{cgroup}/{file}"))
        .unwrap_or_else(|e| panic!("read {cgroup}/{file}: {e}"))
        .trim()
        .to_owned()
}

fn container(
    image: &str,
    name: &str,
    cmd: &[&str],
    res: cri::LinuxContainerResources,
) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(berth_e2e::cri::spec(image)),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(res),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_are_scopes_in_kubelets_slices_with_their_limits_and_go_with_them() {
    if !systemd_driver() {
        return;
    }
    let Some(BusyboxEnv {
        d: _d,
        reg: _reg,
        mut c,
        image,
        logs,
    }) = BusyboxEnv::start().await
    else {
        return;
    };
    // The expanded slice path kubelet sends with the systemd driver (its pod slice made
    // by kubelet before RunPodSandbox; here berth makes it, as runc's driver would).
    let uid = format!("e2e{}", std::process::id());
    let slice = format!("kubepods-burstable-pod{uid}.slice");
    let parent = format!("/kubepods.slice/kubepods-burstable.slice/{slice}");
    let mut config = berth_e2e::cri::pod_config("systemd", "kubelet-shaped", logs.path());
    config.linux = Some(cri::LinuxPodSandboxConfig {
        cgroup_parent: parent.clone(),
        ..Default::default()
    });
    let pod = c.run_pod(config).await;
    let id = c
        .run_container(
            &pod,
            container(
                &image,
                "capped",
                &["sleep", "1000"],
                cri::LinuxContainerResources {
                    memory_limit_in_bytes: 64 << 20,
                    cpu_shares: 1024,
                    cpu_quota: 50_000,
                    cpu_period: 100_000,
                    // cgroup v2's own knobs through the unified map: memory.high and
                    // io.weight become unit properties too; memory.min and cpu.max.burst
                    // (no property on systemd 252) are written into the scope.
                    unified: [
                        ("memory.high".to_owned(), (48u64 << 20).to_string()),
                        ("memory.min".to_owned(), (8u64 << 20).to_string()),
                        ("io.weight".to_owned(), "default 300".to_owned()),
                        ("cpu.max.burst".to_owned(), "20000".to_owned()),
                    ]
                    .into(),
                    ..Default::default()
                },
            ),
        )
        .await;
    let scope = format!("berth-{id}.scope");
    assert_eq!(show(&scope, "ActiveState"), "active");
    assert_eq!(show(&scope, "Slice"), slice);
    assert_eq!(show(&scope, "Delegate"), "yes");
    assert_eq!(show(&scope, "MemoryMax"), (64u64 << 20).to_string());
    assert_eq!(show(&scope, "MemoryHigh"), (48u64 << 20).to_string());
    assert_eq!(show(&scope, "CPUWeight"), "100");
    assert_eq!(show(&scope, "CPUQuotaPerSecUSec"), "500ms");
    assert!(units("berth-*.scope").contains(&scope));
    // The container's process is in it, and the cgroup says the same as the unit.
    let info = c.verbose_info(&id).await;
    let pid = info["pid"].as_u64().unwrap();
    let cg = format!("{}/{scope}", parent.trim_start_matches('/'));
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap()
            .trim(),
        format!("0::/{cg}")
    );
    assert_eq!(cgroup_file(&cg, "memory.max"), (64u64 << 20).to_string());
    assert_eq!(cgroup_file(&cg, "memory.high"), (48u64 << 20).to_string());
    assert_eq!(cgroup_file(&cg, "cpu.weight"), "100");
    assert_eq!(cgroup_file(&cg, "cpu.max"), "50000 100000");
    assert_eq!(show(&scope, "IOWeight"), "300");
    assert_eq!(show(&scope, "MemoryMin"), (8u64 << 20).to_string());
    assert_eq!(cgroup_file(&cg, "io.weight"), "default 300");
    assert_eq!(cgroup_file(&cg, "memory.min"), (8u64 << 20).to_string());
    assert_eq!(cgroup_file(&cg, "cpu.max.burst"), "20000");
    // Live update: the unit and the cgroup both.
    c.runtime
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 128 << 20,
                cpu_shares: 512,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(show(&scope, "MemoryMax"), (128u64 << 20).to_string());
    assert_eq!(cgroup_file(&cg, "memory.max"), (128u64 << 20).to_string());
    assert_eq!(show(&scope, "CPUWeight"), "59");
    assert_eq!(cgroup_file(&cg, "cpu.weight"), "59");
    // Exec'd processes join the scope.
    let out = c
        .exec(&id, &["cat", "/proc/self/cgroup"], 10)
        .await
        .unwrap();
    let seen = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        seen == "0::/" || seen.ends_with(&format!("/{scope}")),
        "{seen}"
    );
    // A container that outgrows its limit is OOMKilled, though systemd takes its emptied
    // scope away.
    let hog = c
        .run_container(
            &pod,
            container(
                &image,
                "hog",
                &[
                    "sh",
                    "-c",
                    "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
                ],
                cri::LinuxContainerResources {
                    memory_limit_in_bytes: 32 << 20,
                    ..Default::default()
                },
            ),
        )
        .await;
    let s = c.wait_exited(&hog).await;
    assert_eq!(s.reason, "OOMKilled", "{s:?}");
    // Stopped and removed: no scope is left; kubelet's slice stays (kubelet's to remove).
    c.stop_and_remove_pod(&pod).await;
    let left = units("berth-*.scope");
    assert!(
        !left.contains(&scope) && !left.contains(&format!("berth-{hog}.scope")),
        "{left:?}"
    );
    assert_eq!(show(&slice, "ActiveState"), "active");
    let _ = Command::new("systemctl").args(["stop", &slice]).status();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_without_a_cgroup_parent_gets_a_slice_of_berths_that_goes_with_it() {
    if !systemd_driver() {
        return;
    }
    let Some(BusyboxEnv {
        d: _d,
        reg: _reg,
        mut c,
        image,
        logs,
    }) = BusyboxEnv::start().await
    else {
        return;
    };
    let pod = c
        .run_pod(berth_e2e::cri::pod_config(
            "systemd",
            "minimal",
            logs.path(),
        ))
        .await;
    let id = c
        .run_container(
            &pod,
            container(&image, "plain", &["sleep", "1000"], Default::default()),
        )
        .await;
    let scope = format!("berth-{id}.scope");
    let slice = show(&scope, "Slice");
    assert!(slice.ends_with(&format!("-pod{pod}.slice")), "{slice}");
    assert_eq!(show(&slice, "ActiveState"), "active");
    c.stop_and_remove_pod(&pod).await;
    assert!(!units("berth-*.scope").contains(&scope));
    assert!(!units(&slice).contains(&slice), "{slice} is left");
}

#[tokio::test(flavor = "multi_thread")]
async fn cgroupfs_driver_keeps_own_pods_in_a_delegated_scope_that_outlives_a_restart() {
    if !driver_on_systemd("cgroupfs") {
        return;
    }
    let Some(BusyboxEnv {
        mut d,
        reg: _reg,
        mut c,
        image,
        logs,
    }) = BusyboxEnv::start().await
    else {
        return;
    };
    let pod = c
        .run_pod(berth_e2e::cri::pod_config(
            "cgroupfs",
            "minimal",
            logs.path(),
        ))
        .await;
    let id = c
        .run_container(
            &pod,
            container(
                &image,
                "plain",
                &["sleep", "1000"],
                cri::LinuxContainerResources {
                    memory_limit_in_bytes: 64 << 20,
                    ..Default::default()
                },
            ),
        )
        .await;
    let pid = c.verbose_info(&id).await["pid"].as_u64().unwrap();
    let cgroup_of = |pid: u64| {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap()
            .trim()
            .trim_start_matches("0::/")
            .to_owned()
    };
    // berth-e2e-<x> as the configured parent: <x>'s slice, and the scope in it.
    let cg = cgroup_of(pid);
    let parts: Vec<&str> = cg.split('/').collect();
    let scope_at = parts
        .iter()
        .position(|p| p.ends_with("-pods.scope"))
        .unwrap_or_else(|| panic!("the container is not under berth's scope: {cg}"));
    let scope = parts[scope_at].to_owned();
    let scope_cg = parts[..=scope_at].join("/");
    assert!(parts[0] == "berth.slice", "{cg}");
    assert_eq!(parts[scope_at + 1], format!("pod-{pod}"), "{cg}");
    assert_eq!(show(&scope, "ActiveState"), "active");
    assert_eq!(show(&scope, "Delegate"), "yes");
    // Its limit is written in berth's subtree, and nothing of berth's is at the root.
    assert_eq!(cgroup_file(&cg, "memory.max"), (64u64 << 20).to_string());
    assert!(
        !std::path::Path::new("/sys/fs/cgroup")
            .join(d.cgroup_parent())
            .exists(),
        "a cgroup at the root"
    );
    // The keeper holds the scope from its own leaf.
    let keeper = cgroup_file(&format!("{scope_cg}/keeper"), "cgroup.procs");
    assert!(!keeper.is_empty(), "no keeper");
    // berthd goes and comes back (as `systemctl restart` would): the scope, its pod and
    // its container stay, and the new berthd uses them.
    d.restart().await;
    c = d.cri().await;
    assert_eq!(show(&scope, "ActiveState"), "active");
    assert_eq!(
        c.status(&id).await.state(),
        cri::ContainerState::ContainerRunning
    );
    assert_eq!(cgroup_of(pid), cg);
    let second = c
        .run_pod(berth_e2e::cri::pod_config(
            "cgroupfs",
            "second",
            logs.path(),
        ))
        .await;
    assert!(
        std::path::Path::new("/sys/fs/cgroup")
            .join(&scope_cg)
            .join(format!("pod-{second}"))
            .is_dir()
    );
    assert_eq!(
        cgroup_file(&format!("{scope_cg}/keeper"), "cgroup.procs"),
        keeper,
        "a second keeper"
    );
    // The scope goes with the last of berth's pods, its keeper with it.
    c.stop_and_remove_pod(&pod).await;
    assert_eq!(show(&scope, "ActiveState"), "active");
    c.stop_and_remove_pod(&second).await;
    assert!(!units(&scope).contains(&scope), "{scope} is left");
    assert!(
        !std::path::Path::new("/sys/fs/cgroup")
            .join(&scope_cg)
            .exists()
    );
    let keeper_pid: u32 = keeper.lines().next().unwrap().parse().unwrap();
    assert!(
        !std::path::Path::new(&format!("/proc/{keeper_pid}")).exists() || {
            // A zombie until its parent (this berthd) reaps it.
            std::fs::read_to_string(format!("/proc/{keeper_pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
        }
    );
}

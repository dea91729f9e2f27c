//! The failpoint walk: berthd is crashed (aborted, as by kill -9 or a power cut of the
//! daemon alone) at every named step of RunPodSandbox, CreateContainer, StartContainer,
//! StopPodSandbox, RemovePodSandbox and PullImage, started again, and then the CRI view, the
//! processes, mounts, cgroups, veths, nft elements and files must agree: what was recorded
//! is there and can be removed, what was not is gone, and once everything is removed
//! nothing of it is left on the node (the Daemon fixture checks the node when it stops).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Duration;

use berth_e2e::images::catalog;
use berth_e2e::{Cri, Daemon, DaemonOptions, Registry, require};
use berth_proto::cri;

/// How far an operation got before the crash, as the walk expects to find it after.
async fn run_until(c: &mut Cri, image: &str, op: &str) {
    let stop_at = |step: &str| step == op;
    let pulled = c.pull(image, None).await;
    if stop_at("pull") {
        assert!(pulled.is_err(), "the pull should have crashed berthd");
        return;
    }
    pulled.unwrap();
    let pod = c
        .try_run_pod(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "walk".into(),
                uid: "walk-uid".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            port_mappings: vec![cri::PortMapping {
                protocol: cri::Protocol::Tcp as i32,
                container_port: 80,
                host_port: 18080,
                host_ip: "127.0.0.1".into(),
            }],
            ..Default::default()
        })
        .await;
    if stop_at("run_pod") {
        assert!(pod.is_err());
        return;
    }
    let pod = pod.unwrap();
    let ctr = c
        .create(
            &pod,
            cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "walker".into(),
                    attempt: 0,
                }),
                image: Some(berth_e2e::cri::spec(image)),
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "sleep 1000 & exec sleep 1000".into(),
                ],
                ..Default::default()
            },
        )
        .await;
    if stop_at("create_container") {
        assert!(ctr.is_err());
        return;
    }
    let ctr = ctr.unwrap();
    let started = c.start(&ctr).await;
    if stop_at("start_container") {
        assert!(started.is_err());
        return;
    }
    started.unwrap();
    let stopped = c
        .runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await;
    if stop_at("stop_pod") {
        assert!(stopped.is_err());
        return;
    }
    stopped.unwrap();
    let removed = c
        .runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await;
    if stop_at("remove_pod") {
        assert!(removed.is_err(), "the removal should have crashed berthd");
    } else {
        removed.unwrap();
    }
}

/// After the restart: every pod and container listed answers status and can be removed;
/// pods whose monitor died are not ready; then everything goes.
async fn check_and_remove(c: &mut Cri, point: &str) -> (usize, usize) {
    let containers_running = |cs: &[cri::Container]| {
        cs.iter()
            .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
            .count()
    };
    let pods = c
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    let ctrs = c
        .runtime
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    for ct in &ctrs {
        assert!(
            pods.iter().any(|p| p.id == ct.pod_sandbox_id),
            "{point}: container {} of an unknown pod",
            ct.id
        );
        let s = c.status(&ct.id).await;
        if s.state == cri::ContainerState::ContainerRunning as i32 {
            // A running container is really running: ExecSync reaches it.
            let r = c.exec(&ct.id, &["true"], 10).await.unwrap();
            assert_eq!(r.exit_code, 0, "{point}");
        }
    }
    // A container whose process the monitor started before the crash, but whose start was
    // not recorded, is found running (not left CREATED with a process behind it).
    if point == "start_container.started" {
        assert_eq!(containers_running(&ctrs), 1, "{point}: {ctrs:?}");
    }
    for p in &pods {
        let s = c.pod_status(&p.id).await;
        assert_eq!(s.id, p.id, "{point}");
        c.stop_and_remove_pod(&p.id).await;
    }
    let left = c
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(left.is_empty(), "{point}: {left:?}");
    (pods.len(), ctrs.len())
}

#[tokio::test(flavor = "multi_thread")]
async fn crashing_at_every_failpoint_leaves_a_consistent_node() {
    if !(require::root() && catalog::available()) {
        return;
    }
    let Some(reg) = Registry::start() else { return };
    reg.push_image("busybox", "latest", &catalog::busybox().build());
    let image = format!("{}/busybox:latest", reg.host());
    let mut walked = 0;
    for point in berth_engine::failpoints::ALL {
        let op = point.split('.').next().unwrap();
        println!("failpoint {point}");
        let mut d = Daemon::start_with(DaemonOptions {
            env: vec![("BERTH_FAILPOINTS".into(), format!("{point}=abort"))],
            ..Default::default()
        })
        .await;
        let mut c = d.cri().await;
        let info = c
            .runtime
            .status(cri::StatusRequest { verbose: true })
            .await
            .unwrap()
            .into_inner()
            .info;
        let engine: serde_json::Value = serde_json::from_str(&info["engine"]).unwrap();
        assert_eq!(
            engine["failpoints"], true,
            "berthd was built without failpoints: build the workspace (cargo build --workspace), not berth-agent alone"
        );
        run_until(&mut c, &image, op).await;
        let status = d
            .wait_exit(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{point}: berthd did not crash at the failpoint"));
        assert!(!status.success(), "{point}: {status}");
        drop(c);
        d.set_env(Vec::new());
        d.restart().await;
        let mut c = d.cri().await;
        let (pods, ctrs) = check_and_remove(&mut c, point).await;
        // What was recorded before the crash is visible; what was not, is not.
        let recorded_pod = !point.starts_with("pull.")
            && !matches!(
                *point,
                "run_pod.dir_made"
                    | "run_pod.cgroup_made"
                    | "run_pod.monitor_started"
                    | "run_pod.network_set_up"
            );
        let expect_pods = usize::from(recorded_pod);
        assert_eq!(pods, expect_pods, "{point}: pods after the restart");
        let recorded_ctr = expect_pods == 1
            && !matches!(
                *point,
                "run_pod.recorded"
                    | "create_container.layer_made"
                    | "create_container.cgroup_made"
                    | "remove_pod.containers_removed"
                    | "remove_pod.torn_down"
            );
        assert_eq!(
            ctrs,
            usize::from(recorded_ctr),
            "{point}: containers after the restart"
        );
        // A pull cut short left no image; a completed one can be removed.
        let images = c.list_images(None).await.unwrap();
        if point.starts_with("pull.") {
            assert!(images.is_empty(), "{point}: {images:?}");
        } else {
            assert_eq!(images.len(), 1, "{point}");
            c.remove_image(&image).await.unwrap();
        }
        // And the node works: a pod runs again (its address, its host port are free).
        run_until(&mut c, &image, "none").await;
        c.remove_image(&image).await.unwrap();
        // No blob or layer of an interrupted pull is left behind once nothing uses them.
        for store in ["content/blobs/sha256", "snapshots/sha256"] {
            let left: Vec<_> = std::fs::read_dir(d.root.join(store))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect();
            assert!(left.is_empty(), "{point}: {store}: {left:?}");
        }
        drop(c);
        // The fixture stops berthd and checks that nothing of it is left on the node.
        drop(d);
        walked += 1;
    }
    println!("failpoints walked: {walked}");
    assert_eq!(walked, berth_engine::failpoints::ALL.len());
}

/// A container that exits while StartContainer has the monitor's answer but has not yet
/// written Running (the window held open by a delay there) is found exited, with its code,
/// by ListContainers and by ContainerStatus as soon as StartContainer returns: the exit
/// the monitor reported meanwhile found the record still Created.
#[tokio::test(flavor = "multi_thread")]
async fn an_exit_while_start_records_running_is_not_lost() {
    if !(require::root() && catalog::available()) {
        return;
    }
    let Some(reg) = Registry::start() else { return };
    reg.push_image("busybox", "latest", &catalog::busybox().build());
    let image = format!("{}/busybox:latest", reg.host());
    let d = Daemon::start_with(DaemonOptions {
        env: vec![(
            "BERTH_FAILPOINTS".into(),
            "start_container.started=delay(2000)".into(),
        )],
        ..Default::default()
    })
    .await;
    let mut c = d.cri().await;
    c.pull(&image, None).await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let pod = c
        .run_pod(berth_e2e::cri::pod_config("default", "race", logs.path()))
        .await;
    let ctr = c
        .create(
            &pod,
            cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "quick".into(),
                    attempt: 0,
                }),
                image: Some(berth_e2e::cri::spec(&image)),
                command: vec!["sh".into(), "-c".into(), "exit 3".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let asked = std::time::Instant::now();
    c.start(&ctr).await.unwrap();
    assert!(
        asked.elapsed() >= Duration::from_millis(2000),
        "the failpoint's delay did not hold StartContainer: built without failpoints?"
    );
    let returned_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    // The list first, as kubelet's relist sees it (ContainerStatus would apply the exit
    // record itself).
    let listed = c.containers().await;
    let l = listed.iter().find(|l| l.id == ctr).expect("listed");
    assert_eq!(
        l.state,
        cri::ContainerState::ContainerExited as i32,
        "{l:?}"
    );
    let s = c.status(&ctr).await;
    assert_eq!(
        s.state,
        cri::ContainerState::ContainerExited as i32,
        "{s:?}"
    );
    assert_eq!(s.exit_code, 3, "{s:?}");
    // The exit fell inside the window (else this test proved nothing about it).
    let finished_ns = u128::try_from(s.finished_at).unwrap();
    assert!(
        finished_ns + 1_000_000_000 < returned_ns,
        "the container exited {} ms before StartContainer returned, not within its delay",
        returned_ns.saturating_sub(finished_ns) / 1_000_000
    );
    c.stop_and_remove_pod(&pod).await;
}

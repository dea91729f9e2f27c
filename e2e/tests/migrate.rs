//! Moving a node from containerd to berth, as `docs/migrate-from-containerd.md` has it,
//! against Debian's containerd: a node in service (containerd with a running pod) exports
//! its images with `ctr -n k8s.io images export`, is drained, stops containerd, and berth
//! takes over with those images, without the registry they came from; and back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use berth_e2e::containerd::{Containerd, pause_image};
use berth_e2e::images::catalog;
use berth_e2e::{Cri, Daemon, Registry, require};
use berth_proto::cri;

fn pod(name: &str, logs: &std::path::Path) -> cri::PodSandboxConfig {
    berth_e2e::cri::pod_config("migrate", name, logs)
}

fn container(image: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "app".into(),
            attempt: 0,
        }),
        image: Some(berth_e2e::cri::spec(image)),
        command: vec!["sleep".into(), "1000".into()],
        log_path: "app.log".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_node_moves_from_containerd_to_berth_with_its_images() {
    if !(require::root() && catalog::available()) {
        return;
    }
    for (bin, package) in [
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("runc", "runc"),
        ("gcc", "gcc"),
    ] {
        if require::need_binary(bin, package).is_none() {
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    let Some(reg) = Registry::start() else {
        return;
    };
    reg.push_image("busybox", "1.36", &catalog::busybox().build());
    reg.push_image("pause", "3.9", &pause_image(tmp.path()).build());
    let image = format!("{}/busybox:1.36", reg.host());

    // The node in service: containerd runs a pod of the image.
    let mut ctd = Containerd::start(&reg.host(), &format!("{}/pause:3.9", reg.host()))
        .expect("containerd starts");
    let mut c = Cri::connect(&ctd.socket).await.unwrap();
    c.pull(&image, None).await.expect("containerd pulls");
    let p = c.run_pod(pod("web", &logs)).await;
    // As kubelet sends it (containerd 1.6 needs the pod's config with the container's).
    let id = c
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: p.clone(),
            config: Some(container(&image)),
            sandbox_config: Some(pod("web", &logs)),
        })
        .await
        .expect("containerd creates the container")
        .into_inner()
        .container_id;
    c.start(&id).await.expect("containerd starts it");
    assert_eq!(
        c.status(&id).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    let (img, _) = c.image_status(&image, false).await.unwrap();
    let image_id = img.expect("containerd has the image").id;

    // Step 1 of the document: export what kubelet pulled (namespace k8s.io).
    let archive = tmp.path().join("node-images.tar");
    let out = Command::new("ctr")
        .arg("--address")
        .arg(&ctd.socket)
        .args(["-n", "k8s.io", "images", "export"])
        .arg(&archive)
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctr export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Steps 2-3: drain (the pod goes), stop containerd. The registry goes too: the images
    // must come from the archive.
    c.stop_and_remove_pod(&p).await;
    drop(c);
    ctd.stop();
    drop(reg);

    // Steps 4-5: berth starts and imports the node's images.
    let d = Daemon::start().await;
    let out = d.cli(
        &["image".as_ref(), "import".as_ref(), archive.as_os_str()],
        None,
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let mut b = d.cri().await;
    let (img, _) = b.image_status(&image, false).await.unwrap();
    let img = img.expect("berth has the image under the name kubelet knows");
    assert_eq!(img.id, image_id, "the same image, by its config digest");
    assert!(img.repo_tags.contains(&image), "{:?}", img.repo_tags);
    // Step 6: kubelet, pointed at berth, starts the pod again; no pull needed.
    let p = b.run_pod(pod("web", &logs)).await;
    let id = b.run_container(&p, container(&image)).await;
    let r = b.exec(&id, &["echo", "moved"], 10).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&r.stdout), "moved\n");
    b.stop_and_remove_pod(&p).await;

    // Switching back: berth's export imports into containerd as the same image.
    let back = tmp.path().join("back.tar");
    let out = d.cli(
        &[
            "image".as_ref(),
            "export".as_ref(),
            image.as_ref(),
            back.as_os_str(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ctd = Containerd::start("127.0.0.1:1", "127.0.0.1:1/pause:3.9").expect("containerd starts");
    let out = Command::new("ctr")
        .arg("--address")
        .arg(&ctd.socket)
        .args(["-n", "k8s.io", "images", "import"])
        .arg(&back)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctr import: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = Cri::connect(&ctd.socket).await.unwrap();
    let (img, _) = c.image_status(&image, false).await.unwrap();
    assert_eq!(img.expect("containerd has it back").id, image_id);
}

//! ImageService end to end: pulls from a real registry into a real berthd.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_e2e::images::{Compression, Entry, Format, Layer, TestImage, catalog};
use berth_e2e::proxy::Proxy;
use berth_e2e::{Daemon, DaemonOptions, Registry, require};
use berth_proto::cri;
use tonic::Code;

fn ready() -> bool {
    require::root() && catalog::available()
}

/// A daemon and an open registry with the standard images pushed.
async fn setup() -> Option<(Daemon, Registry)> {
    if !ready() {
        return None;
    }
    let reg = Registry::start()?;
    let d = Daemon::start().await;
    Some((d, reg))
}

fn dir_count(p: &Path) -> usize {
    std::fs::read_dir(p).map(|r| r.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_by_tag_and_by_digest_then_status_and_list() {
    let Some((d, reg)) = setup().await else {
        return;
    };
    let built = catalog::busybox().build();
    let manifest_digest = reg.push_image("busybox", "1.0", &built);
    let mut c = d.cri().await;
    let name = format!("{}/busybox:1.0", reg.host());
    let id = c.pull(&name, None).await.unwrap();
    assert_eq!(id, built.config_digest, "image_ref is the image id");

    let (img, info) = c.image_status(&name, true).await.unwrap();
    let img = img.expect("image known by tag");
    assert_eq!(img.id, built.config_digest);
    assert_eq!(img.repo_tags, vec![name.clone()]);
    let repo_digest = format!("{}/busybox@{manifest_digest}", reg.host());
    assert_eq!(img.repo_digests, vec![repo_digest.clone()]);
    let blob_bytes: u64 = built.blobs.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
        + built.config.len() as u64
        + built.manifest.len() as u64;
    assert_eq!(img.size, blob_bytes);
    let info = info.unwrap();
    assert_eq!(info["manifestDigest"], manifest_digest.as_str());
    assert_eq!(info["layers"][0]["diffID"], built.diff_ids[0].as_str());

    // The same image by id, by bare hex id and by repo digest.
    for q in [
        id.clone(),
        id.trim_start_matches("sha256:").to_owned(),
        repo_digest.clone(),
    ] {
        let (i, _) = c.image_status(&q, false).await.unwrap();
        assert_eq!(i.expect(&q).id, id);
    }
    // By digest: same image, no new tag.
    let id2 = c.pull(&repo_digest, None).await.unwrap();
    assert_eq!(id2, id);
    let all = c.list_images(None).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].repo_tags, vec![name.clone()]);
    assert_eq!(c.list_images(Some(&name)).await.unwrap().len(), 1);
    assert!(
        c.list_images(Some("nothing:here"))
            .await
            .unwrap()
            .is_empty()
    );

    // Unknown images: empty status, idempotent removal, NotFound on pull.
    let (none, _) = c.image_status("unknown/image:1", false).await.unwrap();
    assert!(none.is_none());
    c.remove_image("unknown/image:1").await.unwrap();
    let e = c
        .pull(&format!("{}/busybox:nope", reg.host()), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = c.pull("Not A Reference", None).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread")]
async fn image_users_config_and_pins_are_reported() {
    if !ready() {
        return;
    }
    let Some(reg) = Registry::start() else { return };
    let d = Daemon::start_with(DaemonOptions {
        extra_config: format!("\n[images]\npinned = [\"{}/by-uid:latest\"]\n", reg.host()),
        ..Default::default()
    })
    .await;
    reg.push_image("by-name", "latest", &catalog::user_by_name().build());
    reg.push_image("by-uid", "latest", &catalog::user_by_uid().build());
    reg.push_image("config", "latest", &catalog::with_config().build());
    let mut c = d.cri().await;
    let h = reg.host();
    c.pull(&format!("{h}/by-name"), None).await.unwrap();
    c.pull(&format!("{h}/by-uid"), None).await.unwrap();
    c.pull(&format!("{h}/config"), None).await.unwrap();
    let (i, _) = c
        .image_status(&format!("{h}/by-name:latest"), false)
        .await
        .unwrap();
    assert_eq!(i.unwrap().username, "berth");
    let (i, _) = c.image_status(&format!("{h}/by-uid"), false).await.unwrap();
    let i = i.unwrap();
    assert_eq!(i.uid.unwrap().value, 1234);
    assert!(i.pinned, "configured pin not reported");
    let (i, _) = c
        .image_status(&format!("{h}/by-name"), false)
        .await
        .unwrap();
    assert!(!i.unwrap().pinned);
    let (_, info) = c.image_status(&format!("{h}/config"), true).await.unwrap();
    let cfg = &info.unwrap()["config"];
    assert_eq!(cfg["Entrypoint"][0], "/app/run.sh");
    assert_eq!(cfg["WorkingDir"], "/app");
    assert_eq!(cfg["StopSignal"], "SIGUSR1");
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_platform_index_picks_this_node() {
    let Some((d, reg)) = setup().await else {
        return;
    };
    let mut c = d.cri().await;
    for (tag, format) in [("oci", Format::Oci), ("docker", Format::Docker)] {
        let idx = catalog::multiarch(format);
        let index_digest = reg.push_index("multi", tag, &idx);
        let host_image = idx
            .images
            .iter()
            .find(|(_, p)| p.architecture == berth_e2e::images::host_architecture())
            .unwrap();
        let id = c
            .pull(&format!("{}/multi:{tag}", reg.host()), None)
            .await
            .unwrap();
        assert_eq!(id, host_image.0.config_digest, "{tag}");
        let (img, _) = c.image_status(&id, false).await.unwrap();
        assert!(
            img.unwrap()
                .repo_digests
                .contains(&format!("{}/multi@{index_digest}", reg.host()))
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_is_used_and_refusals_keep_secrets() {
    if !ready() {
        return;
    }
    let Some(reg) = Registry::start_with_auth("berth", "s3cret-pass") else {
        return;
    };
    reg.push_image("private/busybox", "v1", &catalog::busybox().build());
    let d = Daemon::start().await;
    let mut c = d.cri().await;
    let name = format!("{}/private/busybox:v1", reg.host());
    let e = c.pull(&name, None).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::PermissionDenied | Code::Unavailable),
        "{e:?}"
    );
    let wrong = cri::AuthConfig {
        username: "berth".into(),
        password: "wrong-pass-xyz".into(),
        ..Default::default()
    };
    let e = c.pull(&name, Some(wrong)).await.unwrap_err();
    assert!(!e.message().contains("wrong-pass-xyz"), "{}", e.message());
    assert!(!d.log().contains("wrong-pass-xyz"), "password in the log");
    let right = cri::AuthConfig {
        username: "berth".into(),
        password: "s3cret-pass".into(),
        ..Default::default()
    };
    c.pull(&name, Some(right)).await.unwrap();
    c.remove_image(&name).await.unwrap();
    // The docker config form: base64 of user:password.
    let b64 = cri::AuthConfig {
        auth: "YmVydGg6czNjcmV0LXBhc3M=".into(),
        ..Default::default()
    };
    c.pull(&name, Some(b64)).await.unwrap();
    assert!(!d.log().contains("s3cret-pass"), "password in the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn mirrors_are_tried_in_order_and_serve_upstream_names() {
    if !ready() {
        return;
    }
    let Some(reg) = Registry::start() else { return };
    // The mirror serves the repository under the upstream's path.
    reg.push_image("library/busybox", "latest", &catalog::busybox().build());
    let dead = berth_e2e::registry::free_port();
    // mirrors_only: nothing is ever sent to the (unreachable) origin.
    let d = Daemon::start_with(DaemonOptions {
        extra_config: format!(
            "\n[registries.\"docker.io\"]\nmirrors = [\"http://127.0.0.1:{dead}\", \"http://{}\"]\nmirrors_only = true\n",
            reg.host()
        ),
        ..Default::default()
    })
    .await;
    let mut c = d.cri().await;
    let id = c.pull("busybox", None).await.unwrap();
    let (img, _) = c
        .image_status("docker.io/library/busybox:latest", false)
        .await
        .unwrap();
    let img = img.unwrap();
    assert_eq!(img.id, id);
    assert_eq!(img.repo_tags, vec!["docker.io/library/busybox:latest"]);
    assert!(
        d.log().contains("trying the next"),
        "the dead mirror was not tried first"
    );
}

/// Mounts the image's layers as overlay and returns the tree under `sub`.
fn merged_tree(layers: &[PathBuf], sub: &str) -> BTreeMap<String, String> {
    let t = tempfile::tempdir().unwrap();
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let st = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("lowerdir={}", lower.join(":")))
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success(), "overlay mount failed");
    let mut out = BTreeMap::new();
    let root = mnt.join(sub);
    let mut stack = vec![root.clone()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(&root).unwrap().display().to_string();
            let ft = std::fs::symlink_metadata(e.path()).unwrap().file_type();
            if ft.is_dir() {
                out.insert(format!("{rel}/"), String::new());
                stack.push(e.path());
            } else if ft.is_symlink() {
                out.insert(
                    rel,
                    format!("-> {}", std::fs::read_link(e.path()).unwrap().display()),
                );
            } else {
                out.insert(rel, std::fs::read_to_string(e.path()).unwrap());
            }
        }
    }
    let st = std::process::Command::new("umount")
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn whiteouts_give_the_right_merged_tree() {
    let Some((d, reg)) = setup().await else {
        return;
    };
    reg.push_image("whiteout", "latest", &catalog::whiteouts().build());
    let mut c = d.cri().await;
    let name = format!("{}/whiteout", reg.host());
    c.pull(&name, None).await.unwrap();
    let (_, info) = c.image_status(&name, true).await.unwrap();
    let layers: Vec<PathBuf> = info.unwrap()["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| PathBuf::from(l["snapshot"].as_str().unwrap()))
        .collect();
    assert_eq!(layers.len(), 4);
    let tree = merged_tree(&layers, "data");
    let want: BTreeMap<String, String> = catalog::WHITEOUT_EXPECTED
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(tree, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_zstd_and_plain_layers_unpack_to_one_shared_layer() {
    let Some((d, reg)) = setup().await else {
        return;
    };
    let mut c = d.cri().await;
    let mut chains = Vec::new();
    for (repo, comp) in [
        ("gz", Compression::Gzip),
        ("zst", Compression::Zstd),
        ("plain", Compression::None),
    ] {
        reg.push_image(repo, "latest", &catalog::compressed(comp).build());
        let name = format!("{}/{repo}", reg.host());
        c.pull(&name, None).await.unwrap();
        let (_, info) = c.image_status(&name, true).await.unwrap();
        chains.push(info.unwrap()["chainID"].as_str().unwrap().to_owned());
    }
    assert!(chains.iter().all(|x| x == &chains[0]), "{chains:?}");
    assert_eq!(
        dir_count(&d.root.join("snapshots/sha256")),
        1,
        "the layer is stored once"
    );
    // Three manifests and three layer blobs; the config (same diff_ids) is one blob.
    assert_eq!(dir_count(&d.root.join("content/blobs/sha256")), 3 + 3 + 1);
}

fn hostile(entries: Vec<Entry>) -> TestImage {
    let mut i = catalog::busybox();
    i.layers.push(Layer::new(entries));
    i
}

fn raw(name: &str, kind: tar::EntryType, link: &str, data: &[u8]) -> Entry {
    Entry::Raw {
        name: name.into(),
        kind,
        link: link.into(),
        data: data.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_layers_are_refused_and_touch_nothing() {
    let Some((d, reg)) = setup().await else {
        return;
    };
    let victim_dir = tempfile::Builder::new()
        .prefix("berth-victim-")
        .tempdir()
        .unwrap();
    let v = victim_dir.path().display().to_string();
    std::fs::write(victim_dir.path().join("target"), b"safe").unwrap();
    use tar::EntryType::{Link, Regular, Symlink};
    let cases = vec![
        (
            "dotdot",
            hostile(vec![
                raw("../../../../../../../../../../../..", Regular, "", b"x"),
                raw(
                    &format!("../../../../../../../../..{v}/pwned"),
                    Regular,
                    "",
                    b"x",
                ),
            ]),
        ),
        (
            "absolute",
            hostile(vec![raw(&format!("{v}/pwned"), Regular, "", b"pwned")]),
        ),
        (
            "through-symlink",
            hostile(vec![
                raw("evil", Symlink, &v, b""),
                raw("evil/pwned", Regular, "", b"pwned"),
            ]),
        ),
        (
            "hardlink-out",
            hostile(vec![raw("h", Link, &format!("{v}/target"), b"")]),
        ),
        (
            "hardlink-dotdot",
            hostile(vec![raw("h", Link, "../../../../etc/shadow", b"")]),
        ),
    ];
    let mut c = d.cri().await;
    // A good image first, so that its layer is present and must stay.
    reg.push_image("good", "latest", &catalog::busybox().build());
    c.pull(&format!("{}/good", reg.host()), None).await.unwrap();
    let (bytes0, inodes0) = c.image_fs_usage().await.unwrap();
    for (name, img) in cases {
        reg.push_image(name, "latest", &img.build());
        let e = c
            .pull(&format!("{}/{name}", reg.host()), None)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e:?}");
        assert!(e.message().contains("layer"), "{name}: {}", e.message());
        assert!(
            !victim_dir.path().join("pwned").exists(),
            "{name} wrote outside"
        );
        assert_eq!(
            std::fs::read(victim_dir.path().join("target")).unwrap(),
            b"safe"
        );
        assert_eq!(
            dir_count(&d.root.join("snapshots/tmp")),
            0,
            "{name}: partial unpack left"
        );
        assert_eq!(
            dir_count(&d.root.join("content/ingest")),
            0,
            "{name}: partial ingest left"
        );
        let (_, i) = c
            .image_status(&format!("{}/{name}", reg.host()), false)
            .await
            .unwrap();
        assert!(i.is_none(), "{name} recorded");
    }
    assert_eq!(
        dir_count(&d.root.join("snapshots/sha256")),
        1,
        "only the good layer"
    );
    // Manifests and configs of refused pulls are garbage; a removal of nothing collects them.
    c.remove_image("refused/none:1").await.unwrap();
    let (bytes1, inodes1) = c.image_fs_usage().await.unwrap();
    assert!(
        bytes1 <= bytes0 + 64 * 1024 && inodes1 <= inodes0 + 16,
        "{bytes0}/{inodes0} -> {bytes1}/{inodes1}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_bytes_from_the_registry_are_data_loss() {
    let Some((d, reg)) = setup().await else {
        return;
    };
    let built = catalog::busybox().build();
    reg.push_image("busybox", "latest", &built);
    let proxy = Proxy::start(reg.addr, true);
    let mut c = d.cri().await;
    let e = c
        .pull(&format!("{}/busybox", proxy.host()), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    assert!(e.message().contains(&built.blobs[0].0), "{}", e.message());
    let layer_blob = d
        .root
        .join("content/blobs/sha256")
        .join(built.blobs[0].0.trim_start_matches("sha256:"));
    assert!(!layer_blob.exists(), "a corrupt blob became visible");
    assert_eq!(dir_count(&d.root.join("snapshots/sha256")), 0);
    assert_eq!(dir_count(&d.root.join("snapshots/tmp")), 0);
    assert!(proxy.requests().iter().any(|r| r.contains("/blobs/")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_download_fails_and_stores_nothing() {
    let Some((d, reg)) = setup().await else {
        return;
    };
    let built = catalog::busybox().build();
    reg.push_image("busybox", "latest", &built);
    let proxy = Proxy::start_with(reg.addr, berth_e2e::proxy::Fault::Truncate);
    let mut c = d.cri().await;
    let e = c
        .pull(&format!("{}/busybox", proxy.host()), None)
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::Unavailable | Code::DataLoss),
        "{e:?}"
    );
    let layer_blob = d
        .root
        .join("content/blobs/sha256")
        .join(built.blobs[0].0.trim_start_matches("sha256:"));
    assert!(!layer_blob.exists(), "a truncated blob became visible");
    assert_eq!(dir_count(&d.root.join("content/ingest")), 0);
    assert_eq!(dir_count(&d.root.join("snapshots/sha256")), 0);
    assert_eq!(dir_count(&d.root.join("snapshots/tmp")), 0);
    // The same image through an honest path afterwards is fine.
    c.pull(&format!("{}/busybox", reg.host()), None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_download_each_blob_once() {
    let Some((d, reg)) = setup().await else {
        return;
    };
    let mut img = catalog::busybox();
    for i in 0..4 {
        img.layers.push(Layer::new(vec![Entry::file(
            &format!("data-{i}"),
            vec![i as u8; 300_000],
        )]));
    }
    let built = img.build();
    reg.push_image("multi-layer", "latest", &built);
    let proxy = Proxy::start(reg.addr, false);
    let name = format!("{}/multi-layer", proxy.host());
    let (mut a, mut b) = (d.cri().await, d.cri().await);
    let (ra, rb) = tokio::join!(a.pull(&name, None), b.pull(&name, None));
    assert_eq!(ra.unwrap(), built.config_digest);
    assert_eq!(rb.unwrap(), built.config_digest);
    let reqs = proxy.requests();
    for (digest, _) in &built.blobs {
        let n = reqs
            .iter()
            .filter(|r| r.starts_with("GET") && r.ends_with(digest.as_str()))
            .count();
        assert_eq!(n, 1, "blob {digest} fetched {n} times: {reqs:#?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_image_frees_the_disk_but_keeps_shared_layers() {
    let Some((d, reg)) = setup().await else {
        return;
    };
    let mut c = d.cri().await;
    let (bytes0, inodes0) = c.image_fs_usage().await.unwrap();
    let mut big = catalog::busybox();
    big.layers
        .push(Layer::new(vec![Entry::file("big", vec![0x5a; 2 << 20])]));
    reg.push_image("big", "latest", &big.build());
    reg.push_image("config", "latest", &catalog::with_config().build());
    let big_name = format!("{}/big", reg.host());
    let cfg_name = format!("{}/config", reg.host());
    c.pull(&big_name, None).await.unwrap();
    c.pull(&cfg_name, None).await.unwrap();
    let (bytes1, _) = c.image_fs_usage().await.unwrap();
    assert!(bytes1 > bytes0 + (2 << 20), "{bytes0} -> {bytes1}");
    c.remove_image(&big_name).await.unwrap();
    // The busybox base layer is shared with `config` and stays.
    let (_, info) = c.image_status(&cfg_name, true).await.unwrap();
    for l in info.unwrap()["layers"].as_array().unwrap() {
        assert!(Path::new(l["snapshot"].as_str().unwrap()).is_dir());
    }
    c.remove_image(&cfg_name).await.unwrap();
    assert!(c.list_images(None).await.unwrap().is_empty());
    let (bytes2, inodes2) = c.image_fs_usage().await.unwrap();
    assert_eq!((bytes2, inodes2), (bytes0, inodes0), "disk not freed");
    assert_eq!(dir_count(&d.root.join("content/blobs/sha256")), 0);
    assert_eq!(dir_count(&d.root.join("snapshots/sha256")), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn images_survive_restart_and_crash_leftovers_are_cleaned() {
    let Some((mut d, reg)) = setup().await else {
        return;
    };
    reg.push_image("busybox", "latest", &catalog::busybox().build());
    let name = format!("{}/busybox", reg.host());
    let mut c = d.cri().await;
    let id = c.pull(&name, None).await.unwrap();
    // What a crash in the middle of a pull or a removal leaves behind.
    std::fs::create_dir_all(d.root.join("content/ingest/deadbeef-1-0")).unwrap();
    std::fs::write(d.root.join("content/ingest/deadbeef-1-0/data"), b"partial").unwrap();
    std::fs::create_dir_all(d.root.join("snapshots/tmp/1-0/fs/etc")).unwrap();
    let orphan = d.root.join("content/blobs/sha256").join("ab".repeat(32));
    std::fs::write(&orphan, b"orphan").unwrap();
    d.signal(nix::sys::signal::Signal::SIGKILL);
    d.wait_exit(std::time::Duration::from_secs(5)).unwrap();
    d.restart().await;
    let mut c = d.cri().await;
    let (img, _) = c.image_status(&name, false).await.unwrap();
    assert_eq!(img.unwrap().id, id);
    assert_eq!(dir_count(&d.root.join("content/ingest")), 0);
    assert_eq!(dir_count(&d.root.join("snapshots/tmp")), 0);
    assert!(!orphan.exists(), "unreferenced blob kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_token_flow_with_password_registry_token_and_identity_token() {
    if !ready() {
        return;
    }
    let Some(tokens) = berth_e2e::token::TokenServer::start("berth", "tok-pass", "refresh-abc123")
    else {
        return;
    };
    let tokens = std::sync::Arc::new(tokens);
    let Some(reg) = Registry::start_with_tokens(tokens.clone()) else {
        return;
    };
    let built = catalog::busybox().build();
    reg.push_image("secure/busybox", "v1", &built);
    let d = Daemon::start().await;
    let mut c = d.cri().await;
    let name = format!("{}/secure/busybox:v1", reg.host());

    // Anonymous: the token service refuses, the pull is denied.
    let e = c.pull(&name, None).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::PermissionDenied | Code::Unavailable),
        "{e:?}"
    );

    // User and password: exchanged for a bearer token at the realm.
    let before = tokens.issued();
    let auth = cri::AuthConfig {
        username: "berth".into(),
        password: "tok-pass".into(),
        ..Default::default()
    };
    assert_eq!(
        c.pull(&name, Some(auth)).await.unwrap(),
        built.config_digest
    );
    assert!(tokens.issued() > before, "no token was requested");
    c.remove_image(&name).await.unwrap();

    // A registry token (already a bearer token for this registry).
    let auth = cri::AuthConfig {
        registry_token: tokens.mint("berth", "secure/busybox", &["pull"]),
        ..Default::default()
    };
    assert_eq!(
        c.pull(&name, Some(auth)).await.unwrap(),
        built.config_digest
    );
    c.remove_image(&name).await.unwrap();
    // A token for another repository does not open this one.
    let auth = cri::AuthConfig {
        registry_token: tokens.mint("berth", "other/repo", &["pull"]),
        ..Default::default()
    };
    assert!(c.pull(&name, Some(auth)).await.is_err());

    // An identity token (OAuth2 refresh token), exchanged for an access token.
    let auth = cri::AuthConfig {
        identity_token: "refresh-abc123".into(),
        ..Default::default()
    };
    assert_eq!(
        c.pull(&name, Some(auth)).await.unwrap(),
        built.config_digest
    );
    let auth = cri::AuthConfig {
        identity_token: "refresh-wrong-999".into(),
        ..Default::default()
    };
    let e = c.pull(&name, Some(auth)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        !e.message().contains("refresh-wrong-999"),
        "{}",
        e.message()
    );
    assert!(!d.log().contains("refresh-wrong-999") && !d.log().contains("tok-pass"));
}

#[tokio::test(flavor = "multi_thread")]
async fn https_registries_need_their_ca_or_skip_verify() {
    let Some((_plain_daemon, reg)) = setup().await else {
        return;
    };
    reg.push_image("busybox", "latest", &catalog::busybox().build());
    let Some(tls) = reg.serve_tls() else { return };
    let name = format!("{}/busybox:latest", tls.host());
    for (setting, ok) in [
        (String::new(), false),
        (format!("ca_file = {:?}\n", tls.cert_path()), true),
        ("skip_verify = true\n".to_owned(), true),
    ] {
        let d = Daemon::start_with(DaemonOptions {
            extra_config: format!(
                "\n[registries.\"{}\"]\nplain_http = false\n{setting}",
                tls.host()
            ),
            ..Default::default()
        })
        .await;
        let mut c = d.cri().await;
        let r = c.pull(&name, None).await;
        assert_eq!(r.is_ok(), ok, "{setting:?}: {r:?}");
    }
}

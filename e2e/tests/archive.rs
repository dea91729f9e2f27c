//! Image archives for nodes without a registry: `berthd image import` of what skopeo
//! writes (OCI layout and docker archives, plain and gzip'd, from a file and from stdin),
//! `berthd image export` read back by skopeo both ways, and hostile archives refused with
//! nothing left behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

use berth_e2e::env::BusyboxEnv;
use berth_e2e::require;

/// `berthd --config <the daemon's> ARGS`, its output captured; `stdin` fed when given.
fn berthd(env: &BusyboxEnv, args: &[&str], stdin: Option<&Path>) -> Output {
    env.d.cli(args, stdin)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn skopeo(args: &[&str]) {
    let o = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .expect("run skopeo");
    assert!(o.status.success(), "skopeo {args:?}: {}", text(&o));
}

async fn image_id(env: &mut BusyboxEnv, name: &str) -> Option<String> {
    env.c
        .image_status(name, false)
        .await
        .unwrap()
        .0
        .map(|i| i.id)
}

#[tokio::test]
async fn images_round_trip_through_oci_and_docker_archives() {
    let Some(mut env) = BusyboxEnv::start().await else {
        return;
    };
    if require::need_binary("skopeo", "skopeo").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = format!("docker://{}:latest", env.image);
    let oci = d.join("oci.tar");
    let docker = d.join("docker.tar");
    skopeo(&[
        "copy",
        "-q",
        "--src-tls-verify=false",
        &src,
        &format!(
            "oci-archive:{}:example.com/tools/busybox:oci",
            oci.display()
        ),
    ]);
    skopeo(&[
        "copy",
        "-q",
        "--src-tls-verify=false",
        &src,
        &format!(
            "docker-archive:{}:example.com/tools/busybox:docker",
            docker.display()
        ),
    ]);
    let gz = d.join("docker.tar.gz");
    {
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::fast(),
        );
        enc.write_all(&std::fs::read(&docker).unwrap()).unwrap();
        enc.finish().unwrap();
    }
    let pulled = env.image.clone();
    let id = image_id(&mut env, &pulled).await.unwrap();
    // The archives alone bring it back.
    env.c.remove_image(&env.image).await.unwrap();
    assert!(image_id(&mut env, &pulled).await.is_none());
    for (file, name) in [
        (&oci, "example.com/tools/busybox:oci"),
        (&docker, "example.com/tools/busybox:docker"),
        (&gz, "example.com/tools/busybox:docker"),
    ] {
        let o = berthd(&env, &["image", "import", file.to_str().unwrap()], None);
        assert!(o.status.success(), "{}: {}", file.display(), text(&o));
        assert!(text(&o).contains(&format!("imported {id}")), "{}", text(&o));
        assert_eq!(image_id(&mut env, name).await.as_deref(), Some(id.as_str()));
    }
    // From standard input, named by --tag (the docker archive names it too).
    let o = berthd(
        &env,
        &[
            "image",
            "import",
            "-",
            "--tag",
            "registry.local/mirror/busybox:v1",
        ],
        Some(&oci),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        image_id(&mut env, "registry.local/mirror/busybox:v1")
            .await
            .as_deref(),
        Some(id.as_str())
    );
    // A container runs from the imported image, which no registry here serves.
    let p = env.c.run_pod(env.pod_config("archive", "imported")).await;
    let mut c = env.container_config("app", &["sleep", "1000"]);
    c.image = Some(berth_e2e::cri::spec("example.com/tools/busybox:oci"));
    let cid = env.c.run_container(&p, c).await;
    let out = env
        .c
        .exec(&cid, &["echo", "from-archive"], 10)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-archive\n");
    env.c.stop_and_remove_pod(&p).await;

    // Export; skopeo reads the result as an OCI layout and as a docker archive.
    let out = d.join("out.tar");
    let o = berthd(
        &env,
        &[
            "image",
            "export",
            "example.com/tools/busybox:oci",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    skopeo(&[
        "copy",
        "-q",
        &format!("oci-archive:{}", out.display()),
        &format!("dir:{}", d.join("as-oci").display()),
    ]);
    skopeo(&[
        "copy",
        "-q",
        &format!("docker-archive:{}", out.display()),
        &format!("dir:{}", d.join("as-docker").display()),
    ]);
    let inspected = Command::new("skopeo")
        .args(["inspect", &format!("oci-archive:{}", out.display())])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(v["Layers"].as_array().map(Vec::len), Some(1), "{v}");
    // An existing file is never overwritten; an unknown image is named.
    let again = berthd(
        &env,
        &[
            "image",
            "export",
            "example.com/tools/busybox:oci",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert!(!again.status.success());
    assert!(text(&again).contains("exists"), "{}", text(&again));
    let unknown = berthd(
        &env,
        &[
            "image",
            "export",
            "nope:1",
            d.join("x.tar").to_str().unwrap(),
        ],
        None,
    );
    assert!(
        text(&unknown).contains("\"nope:1\" not found"),
        "{}",
        text(&unknown)
    );
    assert!(!d.join("x.tar").exists());
    // And back: the exported archive imports as the same image.
    for name in [
        "example.com/tools/busybox:oci",
        "example.com/tools/busybox:docker",
        "registry.local/mirror/busybox:v1",
    ] {
        env.c.remove_image(name).await.unwrap();
    }
    assert!(
        image_id(&mut env, "example.com/tools/busybox:oci")
            .await
            .is_none()
    );
    let o = berthd(&env, &["image", "import", out.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        image_id(&mut env, "example.com/tools/busybox:oci")
            .await
            .as_deref(),
        Some(id.as_str())
    );
}

/// A tar of (path, bytes) entries.
fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // Raw names, so that `..` reaches the archive as a hostile tool would write it.
        let name = h.as_old_mut().name.as_mut();
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn sha(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

#[tokio::test]
async fn hostile_archives_are_refused_and_leave_nothing() {
    let Some(mut env) = BusyboxEnv::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let before = env.c.list_images(None).await.unwrap().len();
    let blobs = |env: &BusyboxEnv| {
        std::fs::read_dir(env.d.root.join("content/blobs/sha256"))
            .unwrap()
            .count()
    };
    let blobs_before = blobs(&env);
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":{}}},"layers":[]}}"#,
        sha(config),
        config.len()
    );
    let index = |m: &str| {
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":{},"annotations":{{"io.containerd.image.name":"example.com/evil:1"}}}}]}}"#,
            sha(m.as_bytes()),
            m.len()
        )
    };
    let escape = Path::new("/tmp/berth-archive-escape");
    let _ = std::fs::remove_file(escape);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not a tar",
            b"hello, this is not an archive".repeat(40),
            "image archive",
        ),
        (
            "a blob that is not what its name says",
            tar_of(&[
                (
                    &format!("blobs/sha256/{}", sha(config)),
                    b"{\"tampered\":true}",
                ),
                (
                    &format!("blobs/sha256/{}", sha(manifest.as_bytes())),
                    manifest.as_bytes(),
                ),
                ("index.json", index(&manifest).as_bytes()),
            ]),
            "digest mismatch",
        ),
        (
            "a manifest the archive lacks, and a path that climbs out",
            tar_of(&[
                ("../../../../tmp/berth-archive-escape", b"x"),
                ("index.json", index(&manifest).as_bytes()),
            ]),
            "lacks manifest",
        ),
        (
            "neither index.json nor manifest.json",
            tar_of(&[("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)]),
            "not an OCI image layout or a docker save archive",
        ),
    ];
    for (what, bytes, needle) in cases {
        let f = dir.path().join("bad.tar");
        std::fs::write(&f, &bytes).unwrap();
        let o = berthd(&env, &["image", "import", f.to_str().unwrap()], None);
        assert!(!o.status.success(), "{what}: {}", text(&o));
        assert!(text(&o).contains(needle), "{what}: {}", text(&o));
    }
    assert!(!escape.exists());
    assert_eq!(env.c.list_images(None).await.unwrap().len(), before);
    assert!(image_id(&mut env, "example.com/evil:1").await.is_none());
    // No ingest left, and nothing of what the failed imports stored.
    let ingest = env.d.root.join("content/ingest");
    assert_eq!(
        std::fs::read_dir(&ingest).map(|d| d.count()).unwrap_or(0),
        0
    );
    assert_eq!(blobs(&env), blobs_before);
}

/// Waits until `name` is an image of the daemon (`secs` at most).
async fn wait_image(env: &mut BusyboxEnv, name: &str, secs: u64) -> Option<String> {
    for _ in 0..secs * 10 {
        if let Some(id) = image_id(env, name).await {
            return Some(id);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test]
async fn a_preload_directory_is_imported_at_start_and_when_archives_appear() {
    let preload = tempfile::tempdir().unwrap();
    let Some(mut env) = BusyboxEnv::start_with(berth_e2e::DaemonOptions {
        extra_config: format!(
            "\n[images]\npreload_dir = {:?}\n",
            preload.path().display().to_string()
        ),
        ..Default::default()
    })
    .await
    else {
        return;
    };
    if require::need_binary("skopeo", "skopeo").is_none() {
        return;
    }
    let src = format!("docker://{}:latest", env.image);
    let make = |name: &str, file: &str| {
        // Written under a dot name, then renamed in: never read half-written.
        let tmp = preload.path().join(format!(".{file}"));
        skopeo(&[
            "copy",
            "-q",
            "--src-tls-verify=false",
            &src,
            &format!("oci-archive:{}:{name}", tmp.display()),
        ]);
        std::fs::rename(&tmp, preload.path().join(file)).unwrap();
    };
    // At start-up.
    make("example.com/pre/busybox:boot", "boot.tar");
    std::fs::write(preload.path().join("junk.tar"), b"not an archive").unwrap();
    env.d.restart().await;
    env.c = env.d.cri().await;
    let id = wait_image(&mut env, "example.com/pre/busybox:boot", 10)
        .await
        .expect("preloaded at start-up");
    // While running: a new archive appears.
    make("example.com/pre/busybox:later", "later.tar");
    assert_eq!(
        wait_image(&mut env, "example.com/pre/busybox:later", 30).await,
        Some(id)
    );
    // Each file was read once; the junk is remembered as refused, not retried.
    let seen: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.d.root.join("preload.json")).unwrap()).unwrap();
    assert!(
        seen["boot.tar"]["outcome"]
            .as_str()
            .unwrap()
            .starts_with("imported"),
        "{seen}"
    );
    assert!(
        seen["junk.tar"]["outcome"]
            .as_str()
            .unwrap()
            .starts_with("refused"),
        "{seen}"
    );
    let log = env.d.log();
    assert_eq!(log.matches("preloaded images").count(), 2, "{log}");
}

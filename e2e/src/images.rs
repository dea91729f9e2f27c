//! Test images, built without internet from Debian's `busybox-static` and small files.
//!
//! A [`TestImage`] is a list of [`Layer`]s (tar entries, each layer compressed with gzip, zstd
//! or not at all) and an image config; [`TestImage::build`] produces the blobs and the
//! manifest (OCI or Docker schema2) that [`crate::registry::Registry`] pushes. Output is
//! deterministic: the same image builds to the same digests.
//!
//! [`catalog`] holds the standard images every test suite uses.

use std::io::Write;
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Fixed mtime for every entry, so that builds are reproducible.
const MTIME: u64 = 1_700_000_000;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// One tar entry of a layer.
#[derive(Debug, Clone)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        uid: u64,
        gid: u64,
        data: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
    Hardlink {
        path: String,
        target: String,
    },
    /// An OCI whiteout: `dir/.wh.name` deletes `dir/name` from lower layers.
    Whiteout {
        path: String,
    },
    /// An opaque-directory marker: `dir/.wh..wh..opq` hides everything below `dir` in lower layers.
    Opaque {
        dir: String,
    },
    /// An entry written byte for byte, name and link unchecked: for hostile layers
    /// (`../x`, absolute names, links out of the layer) that tar libraries refuse to write.
    Raw {
        name: String,
        kind: tar::EntryType,
        link: String,
        data: Vec<u8>,
    },
}

impl Entry {
    pub fn dir(path: &str) -> Entry {
        Entry::Dir {
            path: path.into(),
            mode: 0o755,
        }
    }
    pub fn file(path: &str, data: impl Into<Vec<u8>>) -> Entry {
        Entry::File {
            path: path.into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            data: data.into(),
        }
    }
    pub fn exe(path: &str, data: impl Into<Vec<u8>>) -> Entry {
        Entry::File {
            path: path.into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
            data: data.into(),
        }
    }
    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry::Symlink {
            path: path.into(),
            target: target.into(),
        }
    }
}

/// A layer: entries in order, and how its blob is compressed.
#[derive(Debug, Clone)]
pub struct Layer {
    pub entries: Vec<Entry>,
    pub compression: Compression,
}

impl Layer {
    pub fn new(entries: Vec<Entry>) -> Layer {
        Layer {
            entries,
            compression: Compression::Gzip,
        }
    }

    pub fn compressed(mut self, c: Compression) -> Layer {
        self.compression = c;
        self
    }

    /// The uncompressed tar stream (its digest is the layer's diff_id).
    pub fn tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in &self.entries {
            append(&mut b, e);
        }
        b.into_inner().expect("finish tar")
    }

    /// The blob as pushed, and its media type in the given manifest format.
    pub fn blob(&self, format: Format) -> (Vec<u8>, &'static str) {
        let tar = self.tar();
        let (bytes, oci, docker) = match self.compression {
            Compression::None => (
                tar,
                "application/vnd.oci.image.layer.v1.tar",
                "application/vnd.docker.image.rootfs.diff.tar",
            ),
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(&tar).expect("gzip");
                (
                    enc.finish().expect("gzip"),
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                    "application/vnd.docker.image.rootfs.diff.tar.gzip",
                )
            }
            Compression::Zstd => (
                zstd::encode_all(tar.as_slice(), 3).expect("zstd"),
                "application/vnd.oci.image.layer.v1.tar+zstd",
                // Docker schema2 has no zstd type; registries and pullers accept the OCI one.
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        };
        let media = match format {
            Format::Oci => oci,
            Format::Docker => docker,
        };
        (bytes, media)
    }
}

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(size);
    let _ = path;
    h
}

fn append(b: &mut tar::Builder<Vec<u8>>, e: &Entry) {
    match e {
        Entry::Raw {
            name,
            kind,
            link,
            data,
        } => {
            let mut h = tar::Header::new_gnu();
            {
                let gnu = h.as_gnu_mut().expect("gnu header");
                assert!(
                    name.len() <= gnu.name.len() && link.len() <= gnu.linkname.len(),
                    "raw names must fit the header"
                );
                gnu.name[..name.len()].copy_from_slice(name.as_bytes());
                gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(if *kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(MTIME);
            h.set_cksum();
            b.append(&h, data.as_slice()).expect("raw entry");
        }
        Entry::Dir { path, mode } => {
            let mut h = header(path, tar::EntryType::Directory, *mode, 0);
            b.append_data(
                &mut h,
                format!("{}/", path.trim_end_matches('/')),
                std::io::empty(),
            )
            .expect("dir entry");
        }
        Entry::File {
            path,
            mode,
            uid,
            gid,
            data,
        } => {
            let mut h = header(path, tar::EntryType::Regular, *mode, data.len() as u64);
            h.set_uid(*uid);
            h.set_gid(*gid);
            b.append_data(&mut h, path, data.as_slice())
                .expect("file entry");
        }
        Entry::Symlink { path, target } => {
            let mut h = header(path, tar::EntryType::Symlink, 0o777, 0);
            b.append_link(&mut h, path, target).expect("symlink entry");
        }
        Entry::Hardlink { path, target } => {
            let mut h = header(path, tar::EntryType::Link, 0o644, 0);
            b.append_link(&mut h, path, target).expect("hardlink entry");
        }
        Entry::Whiteout { path } => {
            let p = Path::new(path);
            let name = p.file_name().expect("whiteout name").to_string_lossy();
            let wh = match p.parent().filter(|d| !d.as_os_str().is_empty()) {
                Some(d) => format!("{}/.wh.{name}", d.display()),
                None => format!(".wh.{name}"),
            };
            let mut h = header(&wh, tar::EntryType::Regular, 0o644, 0);
            b.append_data(&mut h, wh, std::io::empty())
                .expect("whiteout entry");
        }
        Entry::Opaque { dir } => {
            let p = format!("{}/.wh..wh..opq", dir.trim_end_matches('/'));
            let mut h = header(&p, tar::EntryType::Regular, 0o644, 0);
            b.append_data(&mut h, p, std::io::empty())
                .expect("opaque entry");
        }
    }
}

/// Manifest format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Oci,
    Docker,
}

/// What the image config says about running it.
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: String,
    pub labels: Vec<(String, String)>,
}

/// An image to build.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub layers: Vec<Layer>,
    pub config: RunConfig,
    pub os: String,
    pub architecture: String,
    pub variant: String,
    pub format: Format,
}

/// A built image: its blobs, config and manifest.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// (digest, bytes) of each layer blob, in order.
    pub blobs: Vec<(String, Vec<u8>)>,
    /// diff_ids: digests of the uncompressed layer tars.
    pub diff_ids: Vec<String>,
    pub config: Vec<u8>,
    /// The image id as CRI reports it: the config digest.
    pub config_digest: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub manifest_media_type: &'static str,
}

/// A platform in an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: String,
}

/// A multi-platform index of built images.
#[derive(Debug, Clone)]
pub struct BuiltIndex {
    pub images: Vec<(BuiltImage, Platform)>,
    pub bytes: Vec<u8>,
    pub digest: String,
    pub media_type: &'static str,
}

/// The OCI/Go architecture name of this machine.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

impl TestImage {
    /// An image of these layers for this machine's platform, OCI format.
    pub fn new(layers: Vec<Layer>) -> TestImage {
        TestImage {
            layers,
            config: RunConfig::default(),
            os: "linux".into(),
            architecture: host_architecture().into(),
            variant: String::new(),
            format: Format::Oci,
        }
    }

    pub fn with_config(mut self, config: RunConfig) -> TestImage {
        self.config = config;
        self
    }

    pub fn with_format(mut self, format: Format) -> TestImage {
        self.format = format;
        self
    }

    pub fn platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
        }
    }

    pub fn build(&self) -> BuiltImage {
        let mut blobs = Vec::new();
        let mut diff_ids = Vec::new();
        let mut layer_descs = Vec::new();
        for l in &self.layers {
            diff_ids.push(sha256_digest(&l.tar()));
            let (bytes, media) = l.blob(self.format);
            let digest = sha256_digest(&bytes);
            layer_descs.push(json!({"mediaType": media, "digest": digest, "size": bytes.len()}));
            blobs.push((digest, bytes));
        }
        let c = &self.config;
        let mut cfg = serde_json::Map::new();
        if !c.env.is_empty() {
            cfg.insert("Env".into(), json!(c.env));
        }
        if !c.entrypoint.is_empty() {
            cfg.insert("Entrypoint".into(), json!(c.entrypoint));
        }
        if !c.cmd.is_empty() {
            cfg.insert("Cmd".into(), json!(c.cmd));
        }
        if !c.working_dir.is_empty() {
            cfg.insert("WorkingDir".into(), json!(c.working_dir));
        }
        if !c.user.is_empty() {
            cfg.insert("User".into(), json!(c.user));
        }
        if !c.stop_signal.is_empty() {
            cfg.insert("StopSignal".into(), json!(c.stop_signal));
        }
        if !c.labels.is_empty() {
            let labels: serde_json::Map<_, _> = c
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            cfg.insert("Labels".into(), serde_json::Value::Object(labels));
        }
        let mut config = json!({
            "created": "2023-11-14T22:13:20Z",
            "architecture": self.architecture,
            "os": self.os,
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": self.layers.iter().map(|_| json!({"created_by": "berth-e2e"})).collect::<Vec<_>>(),
        });
        if !self.variant.is_empty() {
            config["variant"] = json!(self.variant);
        }
        let config = serde_json::to_vec(&config).expect("config json");
        let config_digest = sha256_digest(&config);
        let (manifest_media_type, config_media) = match self.format {
            Format::Oci => (
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.config.v1+json",
            ),
            Format::Docker => (
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.container.image.v1+json",
            ),
        };
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": manifest_media_type,
            "config": {"mediaType": config_media, "digest": config_digest, "size": config.len()},
            "layers": layer_descs,
        }))
        .expect("manifest json");
        BuiltImage {
            blobs,
            diff_ids,
            manifest_digest: sha256_digest(&manifest),
            manifest,
            config_digest,
            config,
            manifest_media_type,
        }
    }
}

/// Builds an index (OCI image index or Docker manifest list) over several images.
pub fn build_index(images: &[TestImage], format: Format) -> BuiltIndex {
    let media_type = match format {
        Format::Oci => "application/vnd.oci.image.index.v1+json",
        Format::Docker => "application/vnd.docker.distribution.manifest.list.v2+json",
    };
    let built: Vec<(BuiltImage, Platform)> = images
        .iter()
        .map(|i| (i.clone().with_format(format).build(), i.platform()))
        .collect();
    let manifests: Vec<_> = built
        .iter()
        .map(|(b, p)| {
            let mut platform = json!({"os": p.os, "architecture": p.architecture});
            if !p.variant.is_empty() {
                platform["variant"] = json!(p.variant);
            }
            json!({"mediaType": b.manifest_media_type, "digest": b.manifest_digest,
                   "size": b.manifest.len(), "platform": platform})
        })
        .collect();
    let bytes = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": manifests,
    }))
    .expect("index json");
    BuiltIndex {
        digest: sha256_digest(&bytes),
        images: built,
        bytes,
        media_type,
    }
}

/// The standard test images.
pub mod catalog {
    use super::*;

    /// Where Debian's busybox-static installs its binary.
    pub const BUSYBOX: &str = "/bin/busybox";

    /// Whether busybox-static is installed (after the skip/fail rule).
    pub fn available() -> bool {
        crate::require::prerequisite(
            "/bin/busybox from Debian's busybox-static",
            Path::new(BUSYBOX).is_file(),
        )
    }

    /// The base layer: busybox with its applets as symlinks, a minimal /etc, the usual dirs.
    pub fn busybox_layer() -> Layer {
        let bin = std::fs::read(BUSYBOX).expect("read /bin/busybox (busybox-static)");
        let list = std::process::Command::new(BUSYBOX)
            .arg("--list-full")
            .output()
            .expect("busybox --list-full");
        let mut entries = vec![];
        for d in [
            "bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "var", "home", "proc", "sys", "dev",
        ] {
            entries.push(Entry::dir(d));
        }
        entries.push(Entry::Dir {
            path: "root".into(),
            mode: 0o700,
        });
        entries.push(Entry::Dir {
            path: "tmp".into(),
            mode: 0o1777,
        });
        entries.push(Entry::exe("bin/busybox", bin));
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let applet = applet.trim();
            if applet.is_empty() || applet == "bin/busybox" {
                continue;
            }
            entries.push(Entry::symlink(applet, "/bin/busybox"));
        }
        entries.push(Entry::file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ));
        entries.push(Entry::file("etc/group", "root:x:0:\nnogroup:x:65534:\n"));
        Layer::new(entries)
    }

    /// `busybox`: shell and tools, runs as root; CMD sh.
    pub fn busybox() -> TestImage {
        TestImage::new(vec![busybox_layer()]).with_config(RunConfig {
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cmd: vec!["sh".into()],
            ..RunConfig::default()
        })
    }

    fn user_layer() -> Layer {
        Layer::new(vec![
            Entry::file(
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\nberth:x:1000:1000:berth test user:/home/berth:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
            ),
            Entry::file(
                "etc/group",
                "root:x:0:\nberth:x:1000:\nextra:x:2000:berth\nnogroup:x:65534:\n",
            ),
            Entry::Dir {
                path: "home/berth".into(),
                mode: 0o755,
            },
        ])
    }

    /// `busybox-user-name`: USER berth (uid 1000, gid 1000, in group `extra` 2000).
    pub fn user_by_name() -> TestImage {
        let mut i = busybox();
        i.layers.push(user_layer());
        i.config.user = "berth".into();
        i
    }

    /// `busybox-user-uid`: USER 1234:5678 (not in /etc/passwd).
    pub fn user_by_uid() -> TestImage {
        let mut i = busybox();
        i.config.user = "1234:5678".into();
        i
    }

    /// `busybox-config`: ENV, WORKDIR, ENTRYPOINT and CMD set, a stop signal and a label.
    pub fn with_config() -> TestImage {
        let mut i = busybox();
        i.layers.push(Layer::new(vec![
            Entry::dir("app"),
            Entry::exe(
                "app/run.sh",
                "#!/bin/sh\necho \"run.sh $@ in $(pwd) as $GREETING\"\n",
            ),
        ]));
        i.config = RunConfig {
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                "GREETING=hello".into(),
                "BERTH_IMAGE=config".into(),
            ],
            entrypoint: vec!["/app/run.sh".into()],
            cmd: vec!["from-cmd".into()],
            working_dir: "/app".into(),
            user: String::new(),
            stop_signal: "SIGUSR1".into(),
            labels: vec![("org.berth.test".into(), "config".into())],
        };
        i
    }

    /// `whiteout`: three layers over busybox that delete and replace files and make an
    /// opaque directory. The merged tree must be exactly [`WHITEOUT_EXPECTED`].
    pub fn whiteouts() -> TestImage {
        let mut i = busybox();
        i.layers.push(Layer::new(vec![
            Entry::dir("data"),
            Entry::file("data/keep", "keep-1"),
            Entry::file("data/delete-me", "gone"),
            Entry::file("data/replace-me", "old"),
            Entry::dir("data/opaque"),
            Entry::file("data/opaque/hidden-1", "h1"),
            Entry::dir("data/opaque/sub"),
            Entry::file("data/opaque/sub/hidden-2", "h2"),
            Entry::dir("data/dir-to-file"),
            Entry::file("data/dir-to-file/inner", "x"),
            Entry::Hardlink {
                path: "data/keep-link".into(),
                target: "data/keep".into(),
            },
        ]));
        i.layers.push(
            Layer::new(vec![
                Entry::Whiteout {
                    path: "data/delete-me".into(),
                },
                Entry::file("data/replace-me", "new"),
                Entry::Opaque {
                    dir: "data/opaque".into(),
                },
                Entry::file("data/opaque/visible", "v"),
                Entry::Whiteout {
                    path: "data/dir-to-file".into(),
                },
                Entry::file("data/dir-to-file", "now a file"),
            ])
            .compressed(Compression::Zstd),
        );
        i.layers.push(
            Layer::new(vec![
                Entry::file("data/added-last", "last"),
                Entry::symlink("data/link", "keep"),
            ])
            .compressed(Compression::None),
        );
        i
    }

    /// The files under /data of [`whiteouts`] after merging, with their contents
    /// (directories end in '/', symlinks are "-> target").
    pub const WHITEOUT_EXPECTED: &[(&str, &str)] = &[
        ("added-last", "last"),
        ("dir-to-file", "now a file"),
        ("keep", "keep-1"),
        ("keep-link", "keep-1"),
        ("link", "-> keep"),
        ("opaque/", ""),
        ("opaque/visible", "v"),
        ("replace-me", "new"),
    ];

    /// `busybox` with its single layer compressed as given (gzip, zstd or none).
    pub fn compressed(c: Compression) -> TestImage {
        let mut i = busybox();
        for l in &mut i.layers {
            l.compression = c;
        }
        i
    }

    /// The marker image used for the non-host platform of the multi-platform index.
    pub fn marker(architecture: &str) -> TestImage {
        let mut i = TestImage::new(vec![Layer::new(vec![Entry::file(
            "platform",
            format!("linux/{architecture}\n"),
        )])]);
        i.architecture = architecture.into();
        if architecture == "arm64" {
            i.variant = "v8".into();
        }
        i
    }

    /// `multiarch`: an index with the real busybox for this machine and a small marker
    /// image for another architecture.
    pub fn multiarch(format: Format) -> BuiltIndex {
        let other = if host_architecture() == "arm64" {
            "amd64"
        } else {
            "arm64"
        };
        build_index(&[marker(other), busybox()], format)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_are_reproducible_and_consistent() {
        let img = TestImage::new(vec![
            Layer::new(vec![Entry::dir("a"), Entry::file("a/b", "hello")]),
            Layer::new(vec![Entry::Whiteout { path: "a/b".into() }]).compressed(Compression::Zstd),
        ]);
        let one = img.build();
        let two = img.build();
        assert_eq!(one.manifest_digest, two.manifest_digest);
        assert_eq!(one.blobs.len(), 2);
        let m: serde_json::Value = serde_json::from_slice(&one.manifest).unwrap();
        assert_eq!(
            m["layers"][1]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        assert_eq!(m["config"]["digest"], one.config_digest.as_str());
        let c: serde_json::Value = serde_json::from_slice(&one.config).unwrap();
        assert_eq!(c["rootfs"]["diff_ids"][0], one.diff_ids[0].as_str());
        // The zstd layer decompresses to the tar whose digest is the diff_id.
        let tar = zstd::decode_all(one.blobs[1].1.as_slice()).unwrap();
        assert_eq!(sha256_digest(&tar), one.diff_ids[1]);
        let mut ar = tar::Archive::new(tar.as_slice());
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, vec!["a/.wh.b"]);
    }

    #[test]
    fn index_lists_each_platform() {
        let idx = build_index(
            &[catalog::marker("arm64"), catalog::marker("amd64")],
            Format::Docker,
        );
        let v: serde_json::Value = serde_json::from_slice(&idx.bytes).unwrap();
        assert_eq!(v["manifests"].as_array().unwrap().len(), 2);
        assert_eq!(v["manifests"][0]["platform"]["variant"], "v8");
        assert_eq!(
            v["manifests"][1]["mediaType"],
            "application/vnd.docker.distribution.manifest.v2+json"
        );
    }
}

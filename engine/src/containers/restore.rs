//! Restoring a checkpoint into a new container, as CRI-O does: CreateContainer whose image
//! is a checkpoint archive on the node (`crictl create … <archive>`) makes a container of
//! the checkpoint's image with the checkpoint's writable-layer changes applied, and its
//! StartContainer has the pod's monitor restore the process tree with CRIU
//! (`linux::restore`) instead of starting the command.
//!
//! The archive is unpacked (sanitised, as an image layer is) beside the container's
//! directory first; a broken one is InvalidArgument and nothing is made. The checkpoint's
//! image must be on the node (FailedPrecondition naming it), and every mount the
//! checkpointed container had from the host must be asked for again by the new request
//! (the same check CRI-O makes): its new source is bound where the old one was.

use std::path::{Path, PathBuf};

use super::checkpoint::{
    CONFIG_DUMP, DELETED_FILES, DESCRIPTORS, IMAGES_DIR, ROOTFS_DIFF, SPEC_DUMP,
};
use crate::Engine;
use crate::api;
use crate::error::{Error, Result};
use crate::linux::spawn::LaunchSpec;
use crate::state::records::{ContainerRecord, PodRecord};

/// Where archives are unpacked for a CreateContainer, under berth's root (swept at
/// start-up).
pub(crate) const STAGING_DIR: &str = "restores";

/// Where a restored container keeps the unpacked checkpoint, in its directory.
pub(crate) const CHECKPOINT_DIR: &str = "checkpoint";

/// A checkpoint archive, unpacked for a CreateContainer.
#[derive(Debug)]
pub(crate) struct RestoreSource {
    /// The unpacked archive (removed if the create fails).
    pub dir: PathBuf,
    /// The checkpoint's image, found on this node.
    pub image_id: String,
    /// The checkpointed process's command line (what ContainerStatus shows).
    pub args: Vec<String>,
    /// The mount points the checkpointed container had from the host.
    pub external_mounts: Vec<String>,
}

impl Engine {
    /// The checkpoint a CreateContainer names as its image: a file on the node (an image
    /// reference never names one), or a local image made of one (`checkpointctl build`, or
    /// buildah with CRI-O's annotation): one layer holding the archive's files, and the
    /// annotation naming the checkpointed container. None for an ordinary image.
    pub(crate) fn restore_source(&self, image: &str) -> Result<Option<RestoreSource>> {
        let path = Path::new(image);
        let from_file = path.is_absolute() && path.is_file();
        let from_image = if from_file {
            None
        } else {
            match self.resolve_image(image) {
                Ok(Some(rec)) if self.is_checkpoint_image(&rec) => Some(rec),
                _ => return Ok(None),
            }
        };
        let bad = |why: String| Error::InvalidArgument(format!("checkpoint {image}: {why}"));
        let staging = self.cfg.root.join("restores").join(crate::pods::new_id()?);
        crate::durable::create_dir_all(&staging, 0o700)?;
        let unpacked = (|| {
            match &from_image {
                None => {
                    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
                    crate::snapshots::apply::apply(
                        std::io::BufReader::new(file),
                        &staging,
                        crate::snapshots::apply::Limits::default(),
                    )
                    .map_err(|e| bad(format!("not a readable tar archive: {e}")))?;
                }
                Some(rec) => {
                    let [layer] = rec.layers.as_slice() else {
                        return Err(bad(format!(
                            "a checkpoint image has one layer, this one {}",
                            rec.layers.len()
                        )));
                    };
                    // A copy: CRIU writes beside its images, and the layer is shared.
                    copy_tree(&self.snapshot_dir(&layer.chain_id), &staging)
                        .map_err(|e| bad(format!("copy its layer: {e}")))?;
                }
            }
            self.read_checkpoint(&staging, image)
        })();
        match unpacked {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                Err(e)
            }
        }
    }

    /// Whether a local image is a checkpoint: its manifest carries CRI-O's or
    /// checkpointctl's annotation naming the checkpointed container.
    fn is_checkpoint_image(&self, rec: &crate::state::records::ImageRecord) -> bool {
        let Ok(bytes) = self.content.read(&rec.manifest_digest, 4 << 20) else {
            return false;
        };
        let Ok(m) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            return false;
        };
        CHECKPOINT_ANNOTATIONS
            .iter()
            .any(|k| m["annotations"][k].as_str().is_some_and(|v| !v.is_empty()))
    }

    /// Checks an unpacked checkpoint and reads what the create needs of it.
    fn read_checkpoint(&self, staging: &Path, image: &str) -> Result<RestoreSource> {
        let bad = |why: String| Error::InvalidArgument(format!("checkpoint {image}: {why}"));
        for need in [CONFIG_DUMP, SPEC_DUMP, ROOTFS_DIFF] {
            if !staging.join(need).is_file() {
                return Err(bad(format!("no {need}: not a container checkpoint")));
            }
        }
        if !staging.join(IMAGES_DIR).join("inventory.img").is_file() {
            return Err(bad(format!(
                "no {IMAGES_DIR}/inventory.img: not a CRIU checkpoint"
            )));
        }
        let json = |name: &str| -> Result<serde_json::Value> {
            serde_json::from_slice(
                &std::fs::read(staging.join(name)).map_err(|e| bad(format!("{name}: {e}")))?,
            )
            .map_err(|e| bad(format!("{name}: {e}")))
        };
        let config = json(CONFIG_DUMP)?;
        let spec = json(SPEC_DUMP)?;
        let field = |k: &str| config[k].as_str().unwrap_or_default().to_owned();
        let (image_ref, image_name) = (field("rootfsImageRef"), field("rootfsImageName"));
        let found = [&image_ref, &image_name, &field("rootfsImage")]
            .into_iter()
            .filter(|r| !r.is_empty())
            .find_map(|r| self.resolve_image(r).ok().flatten());
        let Some(found) = found else {
            return Err(Error::FailedPrecondition(format!(
                "the image of checkpoint {image}, {} ({image_ref}), is not on this node; pull it first",
                if image_name.is_empty() {
                    "unnamed"
                } else {
                    &image_name
                }
            )));
        };
        let external_mounts = external_mounts_of(&spec);
        Ok(RestoreSource {
            dir: staging.to_owned(),
            image_id: found.id.to_string(),
            args: strings(&spec["process"]["args"]),
            external_mounts,
        })
    }
}

/// The strings of a JSON array (none for anything else).
fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// The mounts a checkpoint took as external, from its `spec.dump`: berth names them;
/// another runtime's archive has its bind mounts.
fn external_mounts_of(spec: &serde_json::Value) -> Vec<String> {
    if spec["berth"].is_null() {
        spec["mounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["type"] == "bind")
            .filter_map(|m| m["destination"].as_str().map(str::to_owned))
            .collect()
    } else {
        strings(&spec["berth"]["externalMounts"])
    }
}

/// The manifest annotations that make an image a checkpoint (CRI-O's, checkpointctl's).
pub(crate) const CHECKPOINT_ANNOTATIONS: [&str; 2] = [
    "io.kubernetes.cri-o.annotations.checkpoint.name",
    "org.criu.checkpoint.container.name",
];

/// Copies a directory tree of files, directories and symlinks.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let t = e.file_type()?;
        if t.is_dir() {
            std::fs::create_dir_all(&dst)?;
            copy_tree(&src, &dst)?;
        } else if t.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if t.is_file() {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

impl RestoreSource {
    /// The request as the container is made: the checkpoint's image and command.
    pub(crate) fn config(&self, asked: &api::ContainerConfig) -> api::ContainerConfig {
        let mut c = asked.clone();
        c.image = self.image_id.clone();
        if !self.args.is_empty() {
            c.command = self.args.clone();
            c.args = Vec::new();
        }
        c
    }

    /// The checkpointed container's host mounts the new one will not have, by path.
    pub(crate) fn missing_mounts(&self, launch: &LaunchSpec) -> Vec<String> {
        self.external_mounts
            .iter()
            .filter(|m| external_source(launch, m).is_none())
            .cloned()
            .collect()
    }

    /// Applies the checkpoint's writable-layer changes to the new container's (empty)
    /// writable layer: deletions as overlay whiteouts (a deleted directory that the diff
    /// has again is opaque), then the files.
    pub(crate) fn apply_rootfs_diff(&self, upper: &Path) -> Result<()> {
        let bad =
            |why: String| Error::InvalidArgument(format!("checkpoint's writable layer: {why}"));
        let deleted: Vec<String> = match std::fs::read(self.dir.join(DELETED_FILES)) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|e| bad(format!("{DELETED_FILES}: {e}")))?
            }
            Err(_) => Vec::new(),
        };
        let diff = self.dir.join(ROOTFS_DIFF);
        // The directories the diff has (to tell an opaque directory from a deleted one).
        let mut dirs = std::collections::BTreeSet::new();
        {
            let f = std::fs::File::open(&diff).map_err(|e| bad(e.to_string()))?;
            let mut a = tar::Archive::new(std::io::BufReader::new(f));
            for e in a.entries().map_err(|e| bad(e.to_string()))? {
                let e = e.map_err(|e| bad(e.to_string()))?;
                if e.header().entry_type() == tar::EntryType::Directory {
                    let p = e.path().map_err(|e| bad(e.to_string()))?;
                    dirs.insert(PathBuf::from("/").join(p));
                }
            }
        }
        // Whiteouts in the layer format the unpacker turns into overlay's.
        let mut wh = tar::Builder::new(Vec::new());
        for d in &deleted {
            let p = Path::new(d);
            let rel = p.strip_prefix("/").unwrap_or(p);
            let name = if dirs.contains(&PathBuf::from("/").join(rel)) {
                rel.join(".wh..wh..opq")
            } else {
                let Some(file) = rel.file_name() else {
                    continue;
                };
                let mut n = std::ffi::OsString::from(".wh.");
                n.push(file);
                rel.parent().unwrap_or(Path::new("")).join(n)
            };
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            h.set_mode(0o600);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            wh.append_data(&mut h, &name, std::io::empty())
                .map_err(|e| bad(e.to_string()))?;
        }
        let wh = wh.into_inner().map_err(|e| bad(e.to_string()))?;
        let limits = crate::snapshots::apply::Limits::default();
        crate::snapshots::apply::apply(&wh[..], upper, limits)
            .map_err(|e| bad(format!("{DELETED_FILES}: {e}")))?;
        let f = std::fs::File::open(&diff).map_err(|e| bad(e.to_string()))?;
        crate::snapshots::apply::apply(std::io::BufReader::new(f), upper, limits)
            .map_err(|e| bad(format!("{ROOTFS_DIFF}: {e}")))?;
        Ok(())
    }
}

impl Engine {
    /// What the monitor needs to restore a created container from its checkpoint.
    pub(crate) fn restore_spec(
        &self,
        c: &ContainerRecord,
        pod: &PodRecord,
        checkpoint: &Path,
    ) -> Result<crate::linux::restore::RestoreSpec> {
        let criu = which("criu").ok_or_else(|| {
            Error::Unimplemented("criu is not installed: containers cannot be restored".into())
        })?;
        let spec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(checkpoint.join(SPEC_DUMP))
                .map_err(|e| Error::Internal(format!("{SPEC_DUMP}: {e}")))?,
        )
        .map_err(|e| Error::Internal(format!("{SPEC_DUMP}: {e}")))?;
        let mut external_mounts = Vec::new();
        for name in external_mounts_of(&spec) {
            let Some(source) = external_source(&c.launch, &name) else {
                return Err(Error::FailedPrecondition(format!(
                    "the checkpoint of container {} has a mount at {name} that it lacks",
                    c.id
                )));
            };
            external_mounts.push((name, source));
        }
        let stdio: Vec<String> = std::fs::read(checkpoint.join(IMAGES_DIR).join(DESCRIPTORS))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Ok(crate::linux::restore::RestoreSpec {
            criu,
            images_dir: checkpoint.join(IMAGES_DIR),
            work_dir: checkpoint.to_owned(),
            external_mounts,
            stdio,
            netns: pod.netns.clone(),
        })
    }
}

/// The new container's host source for a mount the checkpointed one had from the host at
/// `dest`: a mount it asks for there, its view of its cgroup, one of the device nodes
/// berth binds into every /dev, or /dev/null over a masked file.
fn external_source(launch: &LaunchSpec, dest: &str) -> Option<PathBuf> {
    if let Some(m) = launch.mounts.iter().rev().find(|m| m.destination == dest) {
        return Some(PathBuf::from(&m.source));
    }
    if let Some(name) = dest.strip_prefix("/sys/fs/cgroup") {
        let name = name.trim_start_matches('/');
        return launch
            .cgroup_view
            .iter()
            .find(|(n, _)| name.is_empty() || n == name)
            .map(|(_, d)| d.clone());
    }
    if let Some(dev) = dest.strip_prefix("/dev/")
        && crate::linux::rootfs_dev_binds().contains(&dev)
    {
        return Some(PathBuf::from(dest));
    }
    if launch.masked_paths.iter().any(|p| p == dest) {
        return Some(PathBuf::from("/dev/null"));
    }
    None
}

/// A program on PATH, or in the system directories (criu is in /usr/sbin).
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

//! Image volumes (Kubernetes' `image` volume source; CRI `Mount.image` with
//! `image_sub_path`): an image kubelet has pulled, mounted read-only at a container path,
//! whole or one directory of it. Checked at CreateContainer before anything is made.

use std::path::{Component, Path, PathBuf};

use crate::Engine;
use crate::api;
use crate::error::{Error, Result};

/// One image volume of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageVolume {
    pub destination: String,
    /// The image's layer directories, top first.
    pub layers: Vec<PathBuf>,
    /// The directory of the image to mount, relative; empty for all of it.
    pub sub_path: String,
}

/// Whether `rel` is a directory of the image made of `layers` (top first), as overlayfs
/// will show it: the topmost layer that has the path decides; a whiteout (a 0/0 character
/// device, as berth's applier writes them) of it or of a directory on the way hides it,
/// and so does an opaque directory (`trusted.overlay.opaque=y`) on the way that lacks it.
fn in_image(layers_top_first: &[PathBuf], rel: &Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let whiteout = |p: &Path| {
        std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
    };
    let opaque = |p: &Path| {
        xattr::get(p, crate::snapshots::apply::OPAQUE_XATTR)
            .ok()
            .flatten()
            .is_some_and(|v| v == b"y")
    };
    for l in layers_top_first {
        let full = l.join(rel);
        let mut cur = l.clone();
        for c in rel.components() {
            let Component::Normal(name) = c else { continue };
            cur.push(name);
            if whiteout(&cur) {
                return false;
            }
            if cur != full && opaque(&cur) && std::fs::symlink_metadata(&full).is_err() {
                return false;
            }
        }
        if let Ok(m) = std::fs::symlink_metadata(&full) {
            return m.is_dir();
        }
    }
    false
}

impl Engine {
    /// Resolves the image volumes of a request: the image must be on the node (kubelet
    /// pulls it first) and the sub path a directory in it.
    pub(super) fn image_volumes(&self, mounts: &[&api::Mount]) -> Result<Vec<ImageVolume>> {
        let mut out = Vec::new();
        for (i, m) in mounts.iter().enumerate() {
            let field = |f: &str| format!("config.mounts (image volume {i}).{f}");
            crate::spec::mounts::check_path(&m.container_path, &field("container_path"))?;
            let image = self.resolve_image(&m.image)?.ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{}: image {:?} is not on this node (kubelet pulls it before it creates the container)",
                    field("image"),
                    m.image
                ))
            })?;
            let layers: Vec<PathBuf> = image
                .layers
                .iter()
                .rev()
                .map(|l| self.snapshot_dir(&l.chain_id))
                .collect();
            let sub = m.image_sub_path.trim_matches('/');
            if !sub.is_empty() {
                let rel = Path::new(sub);
                let bad = rel.components().any(|c| !matches!(c, Component::Normal(_)));
                if bad || !in_image(&layers, rel) {
                    return Err(Error::InvalidArgument(format!(
                        "{}: {:?} is not a directory of image {:?}",
                        field("image_sub_path"),
                        m.image_sub_path,
                        m.image
                    )));
                }
            }
            out.push(ImageVolume {
                destination: m.container_path.clone(),
                layers,
                sub_path: sub.to_owned(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_paths_follow_the_layers() {
        let t = tempfile::tempdir().unwrap();
        let (top, bottom) = (t.path().join("top"), t.path().join("bottom"));
        for d in ["data/keep", "data/gone", "other"] {
            std::fs::create_dir_all(bottom.join(d)).unwrap();
        }
        std::fs::create_dir_all(top.join("data")).unwrap();
        std::fs::create_dir_all(top.join("shut")).unwrap();
        std::fs::create_dir_all(bottom.join("shut/below")).unwrap();
        let whiteout = |p: PathBuf| {
            nix::sys::stat::mknod(
                &p,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                0,
            )
            .unwrap()
        };
        whiteout(top.join("data/gone"));
        whiteout(top.join("other"));
        xattr::set(
            top.join("shut"),
            crate::snapshots::apply::OPAQUE_XATTR,
            b"y",
        )
        .unwrap();
        std::fs::write(bottom.join("file"), "x").unwrap();
        let layers = [top, bottom];
        assert!(in_image(&layers, Path::new("data/keep")));
        assert!(in_image(&layers, Path::new("data")));
        assert!(!in_image(&layers, Path::new("data/gone")));
        assert!(!in_image(&layers, Path::new("other")));
        assert!(
            !in_image(&layers, Path::new("file")),
            "a file is not a directory"
        );
        assert!(!in_image(&layers, Path::new("missing")));
        assert!(in_image(&layers, Path::new("shut")));
        assert!(
            !in_image(&layers, Path::new("shut/below")),
            "hidden by an opaque dir"
        );
    }
}

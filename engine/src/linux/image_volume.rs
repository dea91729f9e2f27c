//! Image volumes on the host: an image's layers mounted read-only (an overlay of them, or
//! the one layer bound read-only) in the container's directory, from where the container's
//! mount of the volume (or of a sub path of it) is an ordinary bind, id-mapped in a
//! user-namespaced pod as any volume is.

use std::path::{Path, PathBuf};

use nix::mount::mount as sys_mount;
use nix::mount::{MntFlags, MsFlags, umount2};

/// Mounts `layers` (top first) read-only at `at` (made if missing). For a pod with a user
/// namespace (`userns`, its namespace file), each layer is first id-mapped into it and
/// attached beside (`<at>-layers/<i>`), so that the image's root-owned files are root's
/// inside, as the container's own root is made.
pub fn mount(layers: &[PathBuf], at: &Path, userns: Option<&std::fs::File>) -> std::io::Result<()> {
    let err = |e: &dyn std::fmt::Display| {
        std::io::Error::other(format!("mount image volume at {}: {e}", at.display()))
    };
    std::fs::create_dir_all(at)?;
    let layers: Vec<PathBuf> = match userns {
        None => layers.to_vec(),
        Some(ns) => {
            let staging = layers_dir(at);
            let mut out = Vec::new();
            for (i, l) in layers.iter().enumerate() {
                let tree = super::sys::idmapped_tree(l, ns, false).map_err(|e| err(&e))?;
                let t = staging.join(i.to_string());
                std::fs::create_dir_all(&t)?;
                super::sys::move_mount_to(&tree, &t).map_err(|e| err(&e))?;
                out.push(t);
            }
            out
        }
    };
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let r = match layers.as_slice() {
        [] => return Err(std::io::Error::other("an image without layers")),
        [one] => sys_mount(
            Some(one.as_path()),
            at,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .and_then(|()| {
            sys_mount(
                None::<&str>,
                at,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags,
                None::<&str>,
            )
        }),
        many => {
            return super::overlay::mount_at(many, None, at, "image volume")
                .map_err(std::io::Error::other);
        }
    };
    r.map_err(|e| err(&e))
}

fn layers_dir(at: &Path) -> PathBuf {
    let mut name = at.file_name().unwrap_or_default().to_owned();
    name.push("-layers");
    at.with_file_name(name)
}

/// Unmounts every image volume under `dir` (a container's directory), then the id-mapped
/// layers under them; what is not mounted is skipped. Lazy, so that a process still
/// inside cannot keep it.
pub fn unmount_all(dir: &Path) {
    let base = dir.join("image-volumes");
    let Ok(entries) = std::fs::read_dir(&base) else {
        return;
    };
    let (staging, volumes): (Vec<PathBuf>, Vec<PathBuf>) = entries
        .flatten()
        .map(|e| e.path())
        .partition(|p| p.to_string_lossy().ends_with("-layers"));
    for v in volumes {
        let _ = umount2(&v, MntFlags::MNT_DETACH);
    }
    for s in staging {
        for l in std::fs::read_dir(&s).into_iter().flatten().flatten() {
            let _ = umount2(&l.path(), MntFlags::MNT_DETACH);
        }
    }
}

/// Where image volume `n` of a container is mounted on the host.
pub fn host_dir(container_dir: &Path, n: usize) -> PathBuf {
    container_dir.join("image-volumes").join(n.to_string())
}

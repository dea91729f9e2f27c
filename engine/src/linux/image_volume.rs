//! Image volumes on the host: an image's layers mounted read-only (an overlay of them, or
//! the one layer bound read-only) in the container's directory, from where the container's
//! mount of the volume (or of a sub path of it) is an ordinary bind, id-mapped in a
//! user-namespaced pod as any volume is.

use std::path::{Path, PathBuf};

use nix::mount::mount as sys_mount;
use nix::mount::{MntFlags, MsFlags, umount2};

/// Mounts `layers` (top first) read-only at `at` (made if missing).
pub fn mount(layers: &[PathBuf], at: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(at)?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let r = match layers {
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
            // An overlay without an upper layer is read-only by itself.
            let lower: Vec<String> = many.iter().map(|p| p.display().to_string()).collect();
            let data = format!("lowerdir={}", lower.join(":"));
            sys_mount(
                Some("overlay"),
                at,
                Some("overlay"),
                flags,
                Some(data.as_str()),
            )
        }
    };
    r.map_err(|e| std::io::Error::other(format!("mount image volume at {}: {e}", at.display())))
}

/// Unmounts every image volume under `dir` (a container's directory); what is not
/// mounted is skipped. Lazy, so that a process still inside cannot keep it.
pub fn unmount_all(dir: &Path) {
    let base = dir.join("image-volumes");
    let Ok(entries) = std::fs::read_dir(&base) else {
        return;
    };
    for e in entries.flatten() {
        let _ = umount2(&e.path(), MntFlags::MNT_DETACH);
    }
}

/// Where image volume `n` of a container is mounted on the host.
pub fn host_dir(container_dir: &Path, n: usize) -> PathBuf {
    container_dir.join("image-volumes").join(n.to_string())
}

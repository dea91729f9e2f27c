//! Mounting an overlay of image layers: each layer as its own `lowerdir+` where the kernel
//! has it (Linux 6.8+; no limit but overlayfs's 500 layers), else one mount(2) whose
//! options must fit in a page. Used for containers' roots (writable) and image volumes
//! (read-only).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::mount::{MsFlags, mount};

/// Whether `lowerdir+` is worth trying: false on kernels before 6.8 (which log an
/// "unrecognized mount option" line for every attempt) and once a kernel has refused it.
static APPEND_WORKS: AtomicBool = AtomicBool::new(true);

fn append_supported() -> bool {
    static CHECKED: std::sync::Once = std::sync::Once::new();
    CHECKED.call_once(|| {
        // An unreadable release counts as new enough: the attempt decides then.
        if super::sys::kernel_release().is_some_and(|v| v < (6, 8)) {
            APPEND_WORKS.store(false, Ordering::Relaxed);
        }
    });
    APPEND_WORKS.load(Ordering::Relaxed)
}

/// Mounts an overlay of `lower` (top first; paths, or names relative to the working
/// directory) at `target`: writable with `upper_work`, read-only (and nosuid, nodev)
/// without. `what` names it in errors.
pub fn mount_at(
    lower: &[PathBuf],
    upper_work: Option<(&Path, &Path)>,
    target: &Path,
    what: &str,
) -> Result<(), String> {
    let n = lower.len();
    let attrs = if upper_work.is_some() {
        0
    } else {
        super::sys::MOUNT_ATTR_RO_NOSUID_NODEV
    };
    if append_supported() {
        match super::sys::overlay_tree(lower, upper_work, attrs) {
            Ok(tree) => {
                return super::sys::move_mount_to(&tree, target)
                    .map_err(|e| format!("attach {what} ({n} layers): {e}"));
            }
            Err(nix::Error::ENOSYS | nix::Error::EINVAL) => {
                APPEND_WORKS.store(false, Ordering::Relaxed);
            }
            Err(e) => return Err(format!("mount {what} ({n} layers): {e}")),
        }
    }
    let lower: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    let (data, flags) = match upper_work {
        Some((upper, work)) => (
            format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.join(":"),
                upper.display(),
                work.display()
            ),
            MsFlags::empty(),
        ),
        None => (
            format!("lowerdir={}", lower.join(":")),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        ),
    };
    // mount(2) takes its options in one page.
    if data.len() >= 4096 {
        return Err(format!(
            "mount {what}: {n} layers do not fit in one page of overlay options on this kernel (Linux 6.8+ takes each layer separately)"
        ));
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        flags,
        Some(data.as_str()),
    )
    .map_err(|e| format!("mount {what} ({n} layers): {e}"))
}

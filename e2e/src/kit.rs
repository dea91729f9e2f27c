//! The critest kit (`third_party/critest`, or `$BERTH_CRITEST_KIT`): SIG Node's conformance
//! suite critest and the CLI crictl, v1.36.0, as static binaries (xz), and `images.sh`,
//! which builds the suite's images offline. Both are clients berth did not write.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace's root directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where the kit's binaries are unpacked, and conformance logs go.
pub fn work_dir() -> PathBuf {
    workspace().join("target/conformance")
}

/// The kit's directory, when it has the binaries.
pub fn dir() -> Option<PathBuf> {
    let dir = std::env::var_os("BERTH_CRITEST_KIT")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("third_party/critest"));
    dir.join("bin/critest.xz").is_file().then_some(dir)
}

/// Unpacks the kit's `bin/NAME.xz` into [`work_dir`] (unless a copy at least as new is
/// there) and returns its path.
pub fn unpack(kit: &Path, name: &str) -> Result<PathBuf, String> {
    // Tests of one binary unpack side by side: one at a time (processes have their own
    // temporary names).
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let out = work_dir();
    std::fs::create_dir_all(&out).map_err(|e| format!("create {}: {e}", out.display()))?;
    let src = kit.join("bin").join(format!("{name}.xz"));
    let dst = out.join(name);
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if dst.is_file() && mtime(&dst) >= mtime(&src) {
        return Ok(dst);
    }
    // Per-process name: test binaries running at once may unpack at once.
    let tmp = out.join(format!(".{name}.{}", std::process::id()));
    let file = std::fs::File::create(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
    let st = Command::new("xz")
        .arg("-dc")
        .arg(&src)
        .stdout(file)
        .status()
        .map_err(|e| format!("run xz (Debian package xz-utils): {e}"))?;
    if !st.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("xz -dc {} failed: {st}", src.display()));
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .and_then(|()| std::fs::rename(&tmp, &dst))
        .map_err(|e| format!("install {}: {e}", dst.display()))?;
    Ok(dst)
}

/// crictl 1.36 from the kit; None (after the skip/fail rule) without the kit.
pub fn crictl() -> Option<PathBuf> {
    let kit = dir();
    if !crate::require::prerequisite(
        "the critest kit's crictl (third_party/critest or $BERTH_CRITEST_KIT)",
        kit.is_some(),
    ) {
        return None;
    }
    match unpack(&kit?, "crictl") {
        Ok(p) => Some(p),
        Err(e) => panic!("crictl: {e}"),
    }
}

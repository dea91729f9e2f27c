//! Prerequisites: a test that cannot run here says so loudly. Under
//! `BERTH_E2E_REQUIRED=1` (set in CI) a missing prerequisite is a failure, never a silent pass.

use std::path::{Path, PathBuf};

/// Whether missing prerequisites fail tests instead of skipping them.
pub fn required() -> bool {
    std::env::var("BERTH_E2E_REQUIRED").is_ok_and(|v| v == "1")
}

/// Returns `ok`; when false, fails the test under BERTH_E2E_REQUIRED=1 and otherwise prints
/// a loud SKIP line naming what is missing.
pub fn prerequisite(what: &str, ok: bool) -> bool {
    if ok {
        return true;
    }
    if required() {
        panic!("missing prerequisite: {what} (BERTH_E2E_REQUIRED=1 makes this a failure)");
    }
    eprintln!("SKIP (missing prerequisite): {what}");
    false
}

/// Running as root (namespaces, mounts, cgroups need it).
pub fn root() -> bool {
    prerequisite("running as root", nix::unistd::geteuid().is_root())
}

/// An executable on PATH or at an absolute path.
pub fn binary(name: &str) -> Option<PathBuf> {
    let candidate = Path::new(name);
    if candidate.is_absolute() {
        return candidate.is_file().then(|| candidate.to_owned());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// An executable that the test needs; None (after the skip/fail rule) when absent.
pub fn need_binary(name: &str, package: &str) -> Option<PathBuf> {
    let found = binary(name);
    prerequisite(
        &format!("{name} (Debian package {package})"),
        found.is_some(),
    )
    .then_some(())
    .and(found)
}

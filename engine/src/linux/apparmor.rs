//! Loading berth's default AppArmor profile: the kernel takes only compiled policy, so the
//! profile text goes through the node's `apparmor_parser` (as containerd and Docker do).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::spec::apparmor::{DEFAULT_PROFILE, PolicyDir, default_profile};

/// Where `apparmor_parser` is (sbin may be missing from a service's PATH).
fn parser() -> Option<PathBuf> {
    ["/sbin/apparmor_parser", "/usr/sbin/apparmor_parser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// What the node's AppArmor offers: off, on, or on without a way to load berth's
/// default profile (not loaded, no apparmor_parser).
pub fn host_state() -> crate::spec::security::HostAppArmor {
    use crate::spec::security::{HostAppArmor, apparmor_loaded, host_apparmor};
    if !host_apparmor() {
        HostAppArmor::Off
    } else if parser().is_some() || apparmor_loaded(DEFAULT_PROFILE) {
        HostAppArmor::On
    } else {
        HostAppArmor::NoParser
    }
}

/// Compiles and loads (or replaces) the default profile. Blocks for the parser's run.
pub fn load_default() -> Result<(), String> {
    let exe = parser().ok_or_else(|| {
        "apparmor_parser is not installed (Debian/Ubuntu package apparmor)".to_owned()
    })?;
    let text = default_profile(DEFAULT_PROFILE, PolicyDir::of_node());
    // -K: no cache files written; -r: replace a loaded profile of that name.
    let mut child = Command::new(&exe)
        .arg("-Kr")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {}: {e}", exe.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("write the profile to {}: {e}", exe.display()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("wait for {}: {e}", exe.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} -Kr: {}: {}",
            exe.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `berthd check`'s view: whether RuntimeDefault confines with AppArmor here.
pub fn describe() -> Result<String, String> {
    if !crate::spec::security::host_apparmor() {
        return Ok("not enabled on this node: RuntimeDefault means no AppArmor profile, named profiles are refused".into());
    }
    match parser() {
        Some(p) => Ok(format!(
            "enabled; the default profile {DEFAULT_PROFILE} is loaded with {}",
            p.display()
        )),
        None => Err("enabled, but apparmor_parser is missing: containers asking for RuntimeDefault cannot be created (install the apparmor package)".into()),
    }
}

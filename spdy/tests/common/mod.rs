//! Helpers for the tests that run spdy-transport under node.

use std::path::PathBuf;

/// `node/` in this crate (the scripts), with NODE_PATH pointing at the npm packages that
/// `scripts/dev deps` installs for the e2e streaming client (spdy-transport is one).
///
/// None when node or the packages are missing and the e2e prerequisites are not required
/// (BERTH_E2E_REQUIRED unset); a failure otherwise.
pub fn node_dir() -> Option<(PathBuf, PathBuf)> {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let modules = crate_dir.join("../e2e/node/node_modules");
    let ok = modules.join("spdy-transport").is_dir()
        && std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_ok();
    if !ok {
        assert!(
            std::env::var_os("BERTH_E2E_REQUIRED").is_none(),
            "node and e2e/node/node_modules are needed (scripts/dev deps installs them)"
        );
        #[allow(clippy::print_stderr)]
        {
            eprintln!("node or e2e/node/node_modules missing: skipping node interop test");
        }
        return None;
    }
    Some((crate_dir.join("node"), modules))
}

#[allow(dead_code)]
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[allow(dead_code)]
pub fn unhex(s: &str) -> Vec<u8> {
    let s = s.trim();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

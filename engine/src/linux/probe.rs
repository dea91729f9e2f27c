//! Node checks for `berthd check`: what this host must provide for berth to run pods.
//!
//! Each check reads kernel-provided files (or, for nftables, asks the `nft` tool) and never
//! changes the host, except for creating berth's own state directories to test that they
//! are writable.

use std::path::{Path, PathBuf};

use super::cgroups::CgroupLayout;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    pub name: String,
    /// A failed required check makes `berthd check` exit non-zero.
    pub required: bool,
    pub ok: bool,
    pub detail: String,
}

/// What the checks need to know about the configured node.
#[derive(Debug, Clone)]
pub struct ProbeInput {
    pub root: PathBuf,
    pub state: PathBuf,
    /// Whether the built-in network (which needs nftables) is configured.
    pub builtin_network: bool,
}

/// Runs every check, in a stable order.
pub fn run(input: &ProbeInput) -> Vec<Check> {
    let mut out = vec![overlayfs(), namespaces()];
    out.push(cgroups());
    out.push(netlink());
    out.push(nftables(input.builtin_network));
    for (what, dir) in [("root", &input.root), ("state", &input.state)] {
        out.push(writable_dir(what, dir));
    }
    out
}

fn check(name: &str, required: bool, result: Result<String, String>) -> Check {
    let (ok, detail) = match result {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    Check {
        name: name.to_owned(),
        required,
        ok,
        detail,
    }
}

fn overlayfs() -> Check {
    let r = match std::fs::read_to_string("/proc/filesystems") {
        Ok(s)
            if s.lines()
                .any(|l| l.split_whitespace().last() == Some("overlay")) =>
        {
            Ok("overlay filesystem available".into())
        }
        Ok(_) => Err("overlay is not in /proc/filesystems (try `modprobe overlay`)".into()),
        Err(e) => Err(format!("read /proc/filesystems: {e}")),
    };
    check("overlayfs", true, r)
}

fn namespaces() -> Check {
    let wanted = ["mnt", "pid", "net", "ipc", "uts", "user", "cgroup"];
    let missing: Vec<_> = wanted
        .iter()
        .filter(|ns| !Path::new("/proc/self/ns").join(ns).exists())
        .collect();
    let r = if missing.is_empty() {
        Ok(wanted.join(" "))
    } else {
        Err(format!("kernel lacks namespaces: {missing:?}"))
    };
    check("namespaces", true, r)
}

fn cgroups() -> Check {
    let r = match CgroupLayout::detect() {
        Ok(l) => {
            let missing = l.missing_required();
            let v1: Vec<_> = l
                .controllers
                .iter()
                .filter(|(_, h)| matches!(h, super::cgroups::Hierarchy::V1 { .. }))
                .map(|(c, _)| c.as_str())
                .collect();
            let v2: Vec<_> = l
                .controllers
                .iter()
                .filter(|(_, h)| matches!(h, super::cgroups::Hierarchy::V2 { .. }))
                .map(|(c, _)| c.as_str())
                .collect();
            let desc = format!(
                "{} layout; v1: [{}]; v2: [{}]",
                l.kind(),
                v1.join(" "),
                v2.join(" ")
            );
            if missing.is_empty() {
                Ok(desc)
            } else {
                Err(format!(
                    "{desc}; missing controllers: {}",
                    missing.join(" ")
                ))
            }
        }
        Err(e) => Err(format!("read /proc/self/mountinfo: {e}")),
    };
    check("cgroups", true, r)
}

fn netlink() -> Check {
    let r = match std::fs::read_to_string("/proc/net/netlink") {
        Ok(_) => Ok("netlink sockets available".into()),
        Err(e) => Err(format!("read /proc/net/netlink: {e}")),
    };
    check("netlink", true, r)
}

fn nftables(required: bool) -> Check {
    let r = match std::process::Command::new("nft")
        .args(["list", "tables"])
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => Ok("nft can list tables".into()),
        Ok(o) => Err(format!(
            "`nft list tables` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!(
            "cannot run `nft` ({e}); install Debian's nftables package"
        )),
    };
    check("nftables", required, r)
}

fn writable_dir(what: &str, dir: &Path) -> Check {
    let r = (|| {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let probe = dir.join(".berth-check");
        std::fs::write(&probe, b"ok").map_err(|e| format!("write {}: {e}", probe.display()))?;
        std::fs::remove_file(&probe).map_err(|e| format!("remove {}: {e}", probe.display()))?;
        Ok(format!("{} is writable", dir.display()))
    })();
    check(&format!("{what} dir"), true, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_dir_reports_failure_with_path() {
        let c = writable_dir("root", Path::new("/proc/berth-cannot-exist"));
        assert!(!c.ok);
        assert!(
            c.detail.contains("/proc/berth-cannot-exist"),
            "{}",
            c.detail
        );
        let t = tempfile::tempdir().unwrap();
        let c = writable_dir("root", &t.path().join("a/b"));
        assert!(c.ok, "{}", c.detail);
    }
}

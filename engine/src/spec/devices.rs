//! Devices: the nodes a container gets (CRI devices, or every host device for a privileged
//! container) and the device cgroup rules that allow exactly those plus the standard set,
//! everything else denied.

use std::fmt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::api;
use serde::{Deserialize, Serialize};

use super::SpecError;

/// A device node to create in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNode {
    pub path: String,
    /// 'c' or 'b'.
    pub kind: char,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// One device cgroup rule, as v1's devices.allow takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRule {
    /// 'a' (all), 'c' or 'b'.
    pub kind: char,
    pub major: Option<u64>,
    pub minor: Option<u64>,
    pub access: String,
}

impl fmt::Display for DeviceRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == 'a' {
            return write!(f, "a");
        }
        let n = |v: Option<u64>| v.map_or_else(|| "*".to_owned(), |v| v.to_string());
        write!(
            f,
            "{} {}:{} {}",
            self.kind,
            n(self.major),
            n(self.minor),
            self.access
        )
    }
}

/// What a container may use: `allow_all` (privileged) or the rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePolicy {
    pub allow_all: bool,
    pub rules: Vec<DeviceRule>,
}

fn rule(kind: char, major: Option<u64>, minor: Option<u64>, access: &str) -> DeviceRule {
    DeviceRule {
        kind,
        major,
        minor,
        access: access.to_owned(),
    }
}

/// The devices every container may use: mknod of anything (using it is another matter),
/// null, zero, full, random, urandom, tty, console, ptmx, its ptys and tun.
pub fn default_rules() -> Vec<DeviceRule> {
    vec![
        rule('c', None, None, "m"),
        rule('b', None, None, "m"),
        rule('c', Some(1), Some(3), "rwm"),
        rule('c', Some(1), Some(5), "rwm"),
        rule('c', Some(1), Some(7), "rwm"),
        rule('c', Some(1), Some(8), "rwm"),
        rule('c', Some(1), Some(9), "rwm"),
        rule('c', Some(5), Some(0), "rwm"),
        rule('c', Some(5), Some(1), "rwm"),
        rule('c', Some(5), Some(2), "rwm"),
        rule('c', Some(136), None, "rwm"),
        rule('c', Some(10), Some(200), "rwm"),
    ]
}

fn node_of(host: &Path, container_path: &str) -> Result<Option<DeviceNode>, std::io::Error> {
    let m = std::fs::metadata(host)?;
    let kind = if m.file_type().is_char_device() {
        'c'
    } else if m.file_type().is_block_device() {
        'b'
    } else {
        return Ok(None);
    };
    let rdev = m.rdev();
    Ok(Some(DeviceNode {
        path: container_path.to_owned(),
        kind,
        major: nix::sys::stat::major(rdev),
        minor: nix::sys::stat::minor(rdev),
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
    }))
}

/// The CRI devices as nodes and rules; a host path that is not a device, or permissions
/// outside "rwm", are InvalidArgument.
pub fn requested(devices: &[api::Device]) -> Result<(Vec<DeviceNode>, Vec<DeviceRule>), SpecError> {
    let mut nodes = Vec::new();
    let mut rules = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let field = format!("devices[{i}]");
        let access = if d.permissions.is_empty() {
            "rwm".to_owned()
        } else {
            d.permissions.clone()
        };
        if !access.chars().all(|c| "rwm".contains(c)) {
            return Err(SpecError::new(
                format!("{field}.permissions"),
                format!("{access:?}: only r, w and m"),
            ));
        }
        if !d.container_path.starts_with('/') || d.container_path.split('/').any(|c| c == "..") {
            return Err(SpecError::new(
                format!("{field}.container_path"),
                format!(
                    "{:?} must be an absolute path without '..'",
                    d.container_path
                ),
            ));
        }
        let node = node_of(Path::new(&d.host_path), &d.container_path)
            .map_err(|e| {
                SpecError::new(
                    format!("{field}.host_path"),
                    format!("{}: {e}", d.host_path),
                )
            })?
            .ok_or_else(|| {
                SpecError::new(
                    format!("{field}.host_path"),
                    format!("{} is not a device", d.host_path),
                )
            })?;
        rules.push(rule(node.kind, Some(node.major), Some(node.minor), &access));
        nodes.push(node);
    }
    Ok((nodes, rules))
}

/// Every device of the node (for a privileged container), as the same paths; the
/// per-container mounts (/dev/pts, /dev/shm, /dev/mqueue) are left out.
pub fn host_devices() -> Vec<DeviceNode> {
    let mut out = Vec::new();
    let mut stack = vec![std::path::PathBuf::from("/dev")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                let skip = ["/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/hugepages"];
                if !skip.iter().any(|s| p == Path::new(s)) {
                    stack.push(p);
                }
                continue;
            }
            if t.is_symlink() {
                continue;
            }
            // /dev/ptmx and /dev/console come from the container's own devpts and tty.
            if p == Path::new("/dev/ptmx") || p == Path::new("/dev/console") {
                continue;
            }
            if let Ok(Some(n)) = node_of(&p, &p.to_string_lossy()) {
                out.push(n);
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_render_as_devices_allow_takes_them() {
        let r = default_rules();
        assert_eq!(r[0].to_string(), "c *:* m");
        assert_eq!(r[2].to_string(), "c 1:3 rwm");
        assert_eq!(rule('c', Some(136), None, "rwm").to_string(), "c 136:* rwm");
        assert_eq!(rule('a', None, None, "").to_string(), "a");
    }

    #[test]
    fn requested_devices_are_checked() {
        let d = |host: &str, path: &str, perms: &str| api::Device {
            container_path: path.into(),
            host_path: host.into(),
            permissions: perms.into(),
        };
        let (nodes, rules) = requested(&[d("/dev/null", "/dev/mynull", "rw")]).unwrap();
        assert_eq!(nodes[0].kind, 'c');
        assert_eq!((nodes[0].major, nodes[0].minor), (1, 3));
        assert_eq!(rules[0].to_string(), "c 1:3 rw");
        assert!(requested(&[d("/dev/null", "/dev/x", "rwx")]).is_err());
        assert!(requested(&[d("/etc/hostname", "/dev/x", "r")]).is_err());
        assert!(requested(&[d("/dev/nope", "/dev/x", "r")]).is_err());
        assert!(requested(&[d("/dev/null", "dev/x", "r")]).is_err());
        assert!(host_devices().iter().any(|n| n.path == "/dev/null"));
    }
}

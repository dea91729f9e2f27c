//! Container mounts: the standard set every container gets, the pod's files (hosts,
//! resolv.conf, hostname, /dev/shm) and the CRI volume mounts.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SpecError;

/// Mount propagation of a bind mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Propagation {
    Private,
    /// Mounts made on the host appear in the container (CRI HOST_TO_CONTAINER).
    RSlave,
    /// Both ways (CRI BIDIRECTIONAL).
    RShared,
}

/// A bind option of berth's own: the source is id-mapped into the pod's user namespace
/// already (an image volume), so the container's bind of it is not mapped again.
pub const PREMAPPED: &str = "berth.premapped";

/// One mount, in OCI terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub destination: String,
    /// Host path for binds; the filesystem name otherwise.
    pub source: String,
    /// `bind`, `proc`, `tmpfs`, `devpts`, `mqueue`, `sysfs`, `cgroup`.
    pub kind: String,
    pub options: Vec<String>,
    pub propagation: Option<Propagation>,
}

impl Mount {
    fn new(destination: &str, kind: &str, options: &[&str]) -> Mount {
        Mount {
            destination: destination.into(),
            source: kind.into(),
            kind: kind.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
            propagation: None,
        }
    }

    pub(crate) fn bind(destination: &str, source: &Path, readonly: bool) -> Mount {
        let mut options = vec!["rbind".to_owned(), "nosuid".to_owned(), "nodev".to_owned()];
        if readonly {
            options.push("ro".into());
        }
        Mount {
            destination: destination.into(),
            source: source.display().to_string(),
            kind: "bind".into(),
            options,
            propagation: Some(Propagation::Private),
        }
    }
}

/// Files and directories the pod provides to each of its containers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFiles<'a> {
    pub hosts: Option<&'a Path>,
    pub resolv_conf: Option<&'a Path>,
    pub hostname: Option<&'a Path>,
    pub shm: Option<&'a Path>,
}

/// A CRI volume mount request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeRequest {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    /// CRI MountPropagation: 0 private, 1 host-to-container, 2 bidirectional.
    pub propagation: i32,
    /// Read-only all the way down: the mounts below the host path too.
    pub recursive_read_only: bool,
}

/// The option that asks for a recursive read-only bind mount (runc's name for it).
pub const RECURSIVE_READONLY: &str = "rro";

/// The mounts every container gets (containerd's defaults), then the pod's files.
pub fn default_mounts(pod: &PodFiles<'_>, privileged: bool) -> Vec<Mount> {
    let sys_mode = if privileged { "rw" } else { "ro" };
    let mut m = vec![
        Mount::new("/proc", "proc", &["nosuid", "noexec", "nodev"]),
        Mount::new(
            "/dev",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        Mount::new(
            "/dev/pts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        Mount::new("/dev/mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        Mount::new("/sys", "sysfs", &["nosuid", "noexec", "nodev", sys_mode]),
        Mount::new(
            "/sys/fs/cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        ),
    ];
    match pod.shm {
        Some(shm) => {
            let mut b = Mount::bind("/dev/shm", shm, false);
            b.options.push("noexec".into());
            m.push(b);
        }
        None => m.push(Mount::new(
            "/dev/shm",
            "tmpfs",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )),
    }
    for (dest, src) in [
        ("/etc/hosts", pod.hosts),
        ("/etc/resolv.conf", pod.resolv_conf),
        ("/etc/hostname", pod.hostname),
    ] {
        if let Some(src) = src {
            m.push(Mount::bind(dest, src, false));
        }
    }
    m
}

/// A mount path: absolute, without `..`.
pub(crate) fn check_path(p: &str, field: &str) -> Result<(), SpecError> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(SpecError::new(
            field,
            format!("{p:?} is not an absolute path"),
        ));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(SpecError::new(field, format!("{p:?} contains '..'")));
    }
    Ok(())
}

/// CRI host-path volume mounts as bind mounts (image volumes are planned apart, in
/// `containers::image_volumes`). `exists` says whether a host path exists (the caller
/// checks the host; this module stays pure).
pub fn volume_mounts(
    vols: &[VolumeRequest],
    exists: impl Fn(&Path) -> bool,
) -> Result<Vec<Mount>, SpecError> {
    let mut out = Vec::with_capacity(vols.len());
    for (i, v) in vols.iter().enumerate() {
        let field = |f: &str| format!("config.mounts[{i}].{f}");
        check_path(&v.container_path, &field("container_path"))?;
        check_path(&v.host_path, &field("host_path"))?;
        if !exists(Path::new(&v.host_path)) {
            return Err(SpecError::new(
                field("host_path"),
                format!("{} does not exist on the node", v.host_path),
            ));
        }
        // As the CRI says: recursive read-only needs readonly, and private propagation (a
        // mount arriving later from the host could not be made read-only).
        if v.recursive_read_only && !v.readonly {
            return Err(SpecError::new(
                field("recursive_read_only"),
                "recursive read-only needs readonly: true",
            ));
        }
        if v.recursive_read_only && v.propagation != 0 {
            return Err(SpecError::new(
                field("recursive_read_only"),
                "recursive read-only needs propagation PROPAGATION_PRIVATE",
            ));
        }
        let mut m = Mount::bind(&v.container_path, Path::new(&v.host_path), v.readonly);
        // Volumes keep setuid binaries and device files working as the user expects.
        m.options.retain(|o| o != "nosuid" && o != "nodev");
        if v.recursive_read_only {
            m.options.push(RECURSIVE_READONLY.into());
        }
        m.propagation = Some(match v.propagation {
            0 => Propagation::Private,
            1 => Propagation::RSlave,
            2 => Propagation::RShared,
            other => {
                return Err(SpecError::new(
                    field("propagation"),
                    format!("unknown propagation {other}"),
                ));
            }
        });
        out.push(m);
    }
    Ok(out)
}

/// Which of berth's own paths a volume's host path would expose: the path itself or one
/// inside it (read-only or not), or, for a writable volume, a directory holding it. Both
/// sides are real paths (symlinks resolved by the caller).
pub fn protected_overlap<'a>(
    host: &Path,
    readonly: bool,
    protected: &'a [PathBuf],
) -> Option<&'a PathBuf> {
    protected
        .iter()
        .find(|p| host.starts_with(p) || (!readonly && p.starts_with(host)))
}

/// Defaults and volumes merged: a volume replaces a default at the same destination, and
/// the list is ordered so that a mount's parents are mounted before it.
pub fn merge(defaults: Vec<Mount>, volumes: Vec<Mount>) -> Vec<Mount> {
    let mut out: Vec<Mount> = defaults
        .into_iter()
        .filter(|d| !volumes.iter().any(|v| v.destination == d.destination))
        .collect();
    out.extend(volumes);
    out.sort_by_key(|m| Path::new(&m.destination).components().count());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_pod_files() {
        let pod = PodFiles {
            hosts: Some(Path::new("/run/berth/pods/p/hosts")),
            shm: Some(Path::new("/run/berth/pods/p/shm")),
            ..PodFiles::default()
        };
        let m = default_mounts(&pod, false);
        let dests: Vec<&str> = m.iter().map(|m| m.destination.as_str()).collect();
        assert_eq!(
            dests,
            vec![
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup",
                "/dev/shm",
                "/etc/hosts"
            ]
        );
        assert!(m[4].options.contains(&"ro".to_owned()));
        assert_eq!(m[6].source, "/run/berth/pods/p/shm");
        let p = default_mounts(&PodFiles::default(), true);
        assert!(p[4].options.contains(&"rw".to_owned()));
        assert_eq!(p[6].kind, "tmpfs");
    }

    #[test]
    fn runtime_paths_are_protected() {
        let prot = vec![
            PathBuf::from("/var/lib/berth"),
            PathBuf::from("/run/berth"),
            PathBuf::from("/run/berth/berth.sock"),
        ];
        let hit = |h: &str, ro: bool| protected_overlap(Path::new(h), ro, &prot).cloned();
        assert_eq!(hit("/var/lib/berth", true), Some(prot[0].clone()));
        assert_eq!(hit("/var/lib/berth/state.db", true), Some(prot[0].clone()));
        assert_eq!(hit("/run/berth/berth.sock", true), Some(prot[1].clone()));
        assert_eq!(hit("/var/lib", false), Some(prot[0].clone()));
        assert_eq!(hit("/", false), Some(prot[0].clone()));
        assert_eq!(hit("/", true), None);
        assert_eq!(hit("/var/lib/berthx", false), None);
        assert_eq!(hit("/srv/data", false), None);
    }

    #[test]
    fn volumes_are_checked_and_override_defaults() {
        let vols = vec![
            VolumeRequest {
                container_path: "/data".into(),
                host_path: "/srv/data".into(),
                readonly: true,
                propagation: 1,
                recursive_read_only: false,
            },
            VolumeRequest {
                container_path: "/etc/hosts".into(),
                host_path: "/var/lib/kubelet/pods/x/etc-hosts".into(),
                ..Default::default()
            },
        ];
        let m = volume_mounts(&vols, |_| true).unwrap();
        assert_eq!(m[0].propagation, Some(Propagation::RSlave));
        assert!(m[0].options.contains(&"ro".to_owned()));
        let merged = merge(
            default_mounts(
                &PodFiles {
                    hosts: Some(Path::new("/pod/hosts")),
                    ..Default::default()
                },
                false,
            ),
            m,
        );
        let hosts: Vec<_> = merged
            .iter()
            .filter(|m| m.destination == "/etc/hosts")
            .collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].source, "/var/lib/kubelet/pods/x/etc-hosts");
        let pos = |d: &str| merged.iter().position(|m| m.destination == d).unwrap();
        assert!(pos("/dev") < pos("/dev/pts") && pos("/sys") < pos("/sys/fs/cgroup"));

        for (v, needle) in [
            (
                VolumeRequest {
                    container_path: "data".into(),
                    host_path: "/x".into(),
                    ..Default::default()
                },
                "container_path",
            ),
            (
                VolumeRequest {
                    container_path: "/a/../b".into(),
                    host_path: "/x".into(),
                    ..Default::default()
                },
                "container_path",
            ),
            (
                VolumeRequest {
                    container_path: "/a".into(),
                    host_path: "x".into(),
                    ..Default::default()
                },
                "host_path",
            ),
            (
                VolumeRequest {
                    container_path: "/a".into(),
                    host_path: "/x".into(),
                    propagation: 7,
                    ..Default::default()
                },
                "propagation",
            ),
            (
                VolumeRequest {
                    container_path: "/a".into(),
                    host_path: "/x".into(),
                    recursive_read_only: true,
                    ..Default::default()
                },
                "recursive_read_only",
            ),
            (
                VolumeRequest {
                    container_path: "/a".into(),
                    host_path: "/x".into(),
                    readonly: true,
                    recursive_read_only: true,
                    propagation: 1,
                },
                "recursive_read_only",
            ),
        ] {
            let e = volume_mounts(&[v], |_| true).unwrap_err();
            assert!(e.field.ends_with(needle), "{needle}: {e}");
        }
        let e = volume_mounts(
            &[VolumeRequest {
                container_path: "/a".into(),
                host_path: "/missing".into(),
                ..Default::default()
            }],
            |_| false,
        )
        .unwrap_err();
        assert!(e.message.contains("/missing does not exist"), "{e}");
        let rro = volume_mounts(
            &[VolumeRequest {
                container_path: "/a".into(),
                host_path: "/x".into(),
                readonly: true,
                recursive_read_only: true,
                ..Default::default()
            }],
            |_| true,
        )
        .unwrap();
        assert!(rro[0].options.iter().any(|o| o == RECURSIVE_READONLY));
    }
}

//! Capabilities, masked paths and read-only paths.

use std::collections::BTreeSet;

use crate::api;
use serde::{Deserialize, Serialize};

use super::SpecError;

/// Every capability Linux defines, by number (CAP_CHOWN = 0 … CAP_CHECKPOINT_RESTORE = 40).
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The default set containerd and Docker grant (CRI-O grants a subset of it).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Paths hidden from containers (containerd's and Docker's defaults).
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths mounted read-only in containers (containerd's and Docker's defaults).
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The five capability sets of a process, as capability numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub bounding: BTreeSet<u8>,
    pub effective: BTreeSet<u8>,
    pub permitted: BTreeSet<u8>,
    pub inheritable: BTreeSet<u8>,
    pub ambient: BTreeSet<u8>,
}

impl Capabilities {
    /// A 64-bit mask of a set, as /proc/<pid>/status shows it.
    pub fn mask(set: &BTreeSet<u8>) -> u64 {
        // Numbers past 63 name no capability a kernel has (and would alias onto one).
        set.iter()
            .filter(|c| **c < 64)
            .fold(0, |m, c| m | (1u64 << c))
    }
}

/// The number of a capability given as `NET_ADMIN`, `CAP_NET_ADMIN` or `net_admin`.
pub fn capability_number(name: &str) -> Option<u8> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    ALL_CAPABILITIES
        .iter()
        .position(|c| *c == full)
        .and_then(|i| u8::try_from(i).ok())
}

fn names_to_set(names: &[String], field: &str) -> Result<(BTreeSet<u8>, bool), SpecError> {
    let mut set = BTreeSet::new();
    let mut all = false;
    for n in names {
        if n.eq_ignore_ascii_case("ALL") {
            all = true;
            continue;
        }
        let c = capability_number(n)
            .ok_or_else(|| SpecError::new(field, format!("unknown capability {n:?}")))?;
        set.insert(c);
    }
    Ok((set, all))
}

/// What the security context asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapabilityRequest {
    pub add: Vec<String>,
    pub drop: Vec<String>,
    pub add_ambient: Vec<String>,
    pub privileged: bool,
}

/// The capability sets of a container process: the default set (or all, when privileged),
/// plus `add`, minus `drop` (`ALL` allowed in both; drop wins over the default, add wins over
/// drop of the same name, as in containerd). Root gets the bounding set as effective and
/// permitted; any other user only the ambient capabilities it was explicitly granted.
pub fn capabilities(req: &CapabilityRequest, uid: u32) -> Result<Capabilities, SpecError> {
    let all: BTreeSet<u8> = (0..ALL_CAPABILITIES.len())
        .filter_map(|i| u8::try_from(i).ok())
        .collect();
    let (add, add_all) = names_to_set(&req.add, "security_context.capabilities.add_capabilities")?;
    let (drop, drop_all) =
        names_to_set(&req.drop, "security_context.capabilities.drop_capabilities")?;
    let (ambient, ambient_all) = names_to_set(
        &req.add_ambient,
        "security_context.capabilities.add_ambient_capabilities",
    )?;
    if ambient_all {
        return Err(SpecError::new(
            "security_context.capabilities.add_ambient_capabilities",
            "ALL is not allowed for ambient capabilities",
        ));
    }
    let mut bounding: BTreeSet<u8> = if req.privileged {
        all.clone()
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .filter_map(|c| capability_number(c))
            .collect()
    };
    if drop_all {
        bounding.clear();
    } else {
        bounding.retain(|c| !drop.contains(c));
    }
    if add_all {
        bounding = all;
    } else {
        bounding.extend(add.iter().copied());
    }
    // Ambient capabilities must be in the bounding and inheritable sets too.
    bounding.extend(ambient.iter().copied());
    let (effective, permitted) = if uid == 0 {
        (bounding.clone(), bounding.clone())
    } else {
        (ambient.clone(), ambient.clone())
    };
    Ok(Capabilities {
        inheritable: ambient.clone(),
        bounding,
        effective,
        permitted,
        ambient,
    })
}

/// Masked and read-only paths: kubelet's lists when it sends them, else the defaults;
/// none at all for privileged containers.
pub fn masked_and_readonly(
    masked: &[String],
    readonly: &[String],
    privileged: bool,
) -> (Vec<String>, Vec<String>) {
    if privileged {
        return (Vec::new(), Vec::new());
    }
    let pick = |given: &[String], default: &[&str]| {
        if given.is_empty() {
            default.iter().map(|s| s.to_string()).collect()
        } else {
            given.to_vec()
        }
    };
    (
        pick(masked, DEFAULT_MASKED_PATHS),
        pick(readonly, DEFAULT_READONLY_PATHS),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: &[&str]) -> Vec<String> {
        x.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn capability_names() {
        assert_eq!(capability_number("CAP_CHOWN"), Some(0));
        assert_eq!(capability_number("net_admin"), Some(12));
        assert_eq!(capability_number("SYS_ADMIN"), Some(21));
        assert_eq!(capability_number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(capability_number("CAP_FLY"), None);
    }

    #[test]
    fn default_set_matches_containerd() {
        let c = capabilities(&CapabilityRequest::default(), 0).unwrap();
        // Docker's/containerd's default effective mask.
        assert_eq!(Capabilities::mask(&c.effective), 0x00000000a80425fb);
        assert_eq!(c.bounding, c.permitted);
        assert!(c.ambient.is_empty() && c.inheritable.is_empty());
    }

    #[test]
    fn add_drop_all_and_non_root() {
        let req = CapabilityRequest {
            add: v(&["NET_ADMIN"]),
            drop: v(&["MKNOD", "CAP_NET_RAW"]),
            ..Default::default()
        };
        let c = capabilities(&req, 0).unwrap();
        assert!(
            c.effective.contains(&12) && !c.effective.contains(&27) && !c.effective.contains(&13)
        );
        let req = CapabilityRequest {
            drop: v(&["ALL"]),
            add: v(&["NET_BIND_SERVICE"]),
            ..Default::default()
        };
        let c = capabilities(&req, 0).unwrap();
        assert_eq!(c.bounding.iter().copied().collect::<Vec<_>>(), vec![10]);
        let req = CapabilityRequest {
            add: v(&["ALL"]),
            ..Default::default()
        };
        assert_eq!(
            capabilities(&req, 0).unwrap().bounding.len(),
            ALL_CAPABILITIES.len()
        );
        // Non-root: nothing effective unless granted as ambient.
        let c = capabilities(&CapabilityRequest::default(), 1000).unwrap();
        assert!(c.effective.is_empty() && c.permitted.is_empty());
        assert!(!c.bounding.is_empty());
        let req = CapabilityRequest {
            add_ambient: v(&["NET_BIND_SERVICE"]),
            drop: v(&["ALL"]),
            ..Default::default()
        };
        let c = capabilities(&req, 1000).unwrap();
        assert_eq!(c.effective, c.ambient);
        assert_eq!(c.inheritable, c.ambient);
        assert!(c.bounding.contains(&10));
        assert!(
            capabilities(
                &CapabilityRequest {
                    add: v(&["FLY"]),
                    ..Default::default()
                },
                0
            )
            .is_err()
        );
    }

    #[test]
    fn privileged_gets_everything_and_no_masks() {
        let c = capabilities(
            &CapabilityRequest {
                privileged: true,
                ..Default::default()
            },
            0,
        )
        .unwrap();
        assert_eq!(c.effective.len(), ALL_CAPABILITIES.len());
        assert_eq!(masked_and_readonly(&[], &[], true), (vec![], vec![]));
        let (m, r) = masked_and_readonly(&[], &[], false);
        assert!(m.contains(&"/proc/kcore".to_owned()) && r.contains(&"/proc/sys".to_owned()));
        let (m, _) = masked_and_readonly(&v(&["/proc/x"]), &[], false);
        assert_eq!(m, v(&["/proc/x"]));
    }
}

/// Which namespace a sysctl belongs to, if it is namespaced at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysctlNamespace {
    Net,
    Ipc,
    Uts,
}

/// The namespace of a sysctl (dotted or slashed name), or None for a node-wide one.
pub fn sysctl_namespace(name: &str) -> Option<SysctlNamespace> {
    let n = name.replace('/', ".");
    if n.starts_with("net.") {
        return Some(SysctlNamespace::Net);
    }
    if n.starts_with("kernel.shm")
        || n.starts_with("kernel.msg")
        || n == "kernel.sem"
        || n.starts_with("fs.mqueue.")
    {
        return Some(SysctlNamespace::Ipc);
    }
    if n == "kernel.hostname" || n == "kernel.domainname" {
        return Some(SysctlNamespace::Uts);
    }
    None
}

/// Checks a pod's sysctls: only namespaced ones, and only for a namespace the pod does not
/// share with the node (a sysctl there would change the node). `host_net` and `host_ipc`
/// say which namespaces the pod shares.
pub fn check_sysctls<'a>(
    sysctls: impl IntoIterator<Item = (&'a String, &'a String)>,
    host_net: bool,
    host_ipc: bool,
) -> Result<(), SpecError> {
    for (k, v) in sysctls {
        let field = format!("linux.sysctls[{k}]");
        let bad = k.is_empty()
            || k.contains("..")
            || k.starts_with(['.', '/'])
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c));
        if bad || v.contains('\n') {
            return Err(SpecError::new(field, "not a sysctl name and value"));
        }
        match sysctl_namespace(k) {
            None => {
                return Err(SpecError::new(
                    field,
                    "not a namespaced sysctl: it would change the whole node (allowed: net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*)",
                ));
            }
            Some(SysctlNamespace::Net) if host_net => {
                return Err(SpecError::new(
                    field,
                    "the pod uses the node's network namespace; a net.* sysctl would change the node",
                ));
            }
            Some(SysctlNamespace::Ipc) if host_ipc => {
                return Err(SpecError::new(
                    field,
                    "the pod uses the node's IPC namespace; this sysctl would change the node",
                ));
            }
            Some(SysctlNamespace::Uts) => {
                return Err(SpecError::new(
                    field,
                    "set the hostname through the pod's hostname, not a sysctl",
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod sysctl_tests {
    use super::*;

    fn check(pairs: &[(&str, &str)], host_net: bool, host_ipc: bool) -> Result<(), SpecError> {
        let m: std::collections::BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        check_sysctls(&m, host_net, host_ipc)
    }

    #[test]
    fn only_namespaced_sysctls_of_own_namespaces() {
        assert!(
            check(
                &[
                    ("net.ipv4.ip_unprivileged_port_start", "0"),
                    ("kernel.shmmax", "1000"),
                    ("fs.mqueue.msg_max", "20"),
                    ("kernel.sem", "250 32000 32 128")
                ],
                false,
                false
            )
            .is_ok()
        );
        assert!(check(&[("net/ipv4/ping_group_range", "0 1")], false, false).is_ok());
        let e = check(&[("kernel.panic", "1")], false, false).unwrap_err();
        assert!(e.to_string().contains("not a namespaced sysctl"), "{e}");
        assert!(check(&[("vm.swappiness", "1")], false, false).is_err());
        assert!(check(&[("net.core.somaxconn", "1024")], true, false).is_err());
        assert!(check(&[("kernel.shmmax", "1")], false, true).is_err());
        assert!(check(&[("net.ipv4.../x", "1")], false, false).is_err());
        assert!(check(&[("kernel.hostname", "x")], false, false).is_err());
    }
}

/// Whether the node runs AppArmor.
pub fn host_apparmor() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|v| v.trim() == "Y")
}

/// Whether the node runs SELinux.
pub fn host_selinux() -> bool {
    std::path::Path::new("/sys/fs/selinux/enforce").exists()
}

/// Which AppArmor profile a container's process runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppArmor {
    Unconfined,
    /// berth's default profile ([`super::apparmor::DEFAULT_PROFILE`]), which berthd loads.
    Default,
    /// A profile the node has loaded.
    Named(String),
}

impl AppArmor {
    /// The profile name to exec under (None: unconfined).
    pub fn profile(&self) -> Option<String> {
        match self {
            AppArmor::Unconfined => None,
            AppArmor::Default => Some(super::apparmor::DEFAULT_PROFILE.to_owned()),
            AppArmor::Named(n) => Some(n.clone()),
        }
    }
}

/// What the node's AppArmor offers a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAppArmor {
    /// Not enabled in the kernel.
    Off,
    /// Enabled; berth's default profile is loaded or can be (apparmor_parser is there).
    On,
    /// Enabled, but the default profile is not loaded and no apparmor_parser can load it.
    NoParser,
}

/// The AppArmor profile for a container. On a node running AppArmor, `RuntimeDefault` and
/// no choice at all mean berth's default profile (as containerd, after kubernetes#51746);
/// a named (localhost) profile must be loaded already. Where the node has no AppArmor,
/// the default means unconfined and a named profile is refused rather than ignored. Where
/// the kernel has AppArmor but the default profile cannot be loaded (no apparmor_parser),
/// a container that made no choice runs unconfined (as containerd does; berth warns and
/// says so in Status), and one that asked for RuntimeDefault is refused.
pub fn apparmor_profile(
    profile: Option<&api::SecurityProfile>,
    legacy: &str,
    host: HostAppArmor,
    loaded: impl Fn(&str) -> bool,
) -> Result<AppArmor, SpecError> {
    let field = "security_context.apparmor";
    let runtime_default = || match host {
        HostAppArmor::On => Ok(AppArmor::Default),
        HostAppArmor::Off => Ok(AppArmor::Unconfined),
        HostAppArmor::NoParser => Err(SpecError::new(
            field,
            format!(
                "RuntimeDefault: AppArmor is enabled on this node but apparmor_parser is missing, so berth's default profile {} cannot be loaded; install the apparmor package, or ask for Unconfined",
                super::apparmor::DEFAULT_PROFILE
            ),
        )),
    };
    let name = match profile {
        Some(p) => match p.profile_type {
            0 => return runtime_default(),
            1 => return Ok(AppArmor::Unconfined),
            // kubelet sends the name with the annotation's prefix (`localhost/<name>`), as
            // critest does; containerd strips it too.
            2 => p
                .localhost_ref
                .strip_prefix("localhost/")
                .unwrap_or(&p.localhost_ref)
                .to_owned(),
            t => return Err(SpecError::new(field, format!("unknown profile type {t}"))),
        },
        None => match legacy {
            "" if host == HostAppArmor::NoParser => return Ok(AppArmor::Unconfined),
            "" | "runtime/default" => return runtime_default(),
            "unconfined" => return Ok(AppArmor::Unconfined),
            l => match l.strip_prefix("localhost/") {
                Some(n) if !n.is_empty() => n.to_owned(),
                _ => {
                    return Err(SpecError::new(
                        field,
                        format!(
                            "apparmor_profile {l:?}: expected runtime/default, unconfined or localhost/<profile>"
                        ),
                    ));
                }
            },
        },
    };
    if host == HostAppArmor::Off {
        return Err(SpecError::new(
            field,
            format!(
                "AppArmor is not enabled on this node; cannot confine the container with profile {name:?}"
            ),
        ));
    }
    if name.is_empty() || name.contains('\n') || !loaded(&name) {
        return Err(SpecError::new(
            field,
            format!(
                "AppArmor profile {name:?} is not loaded on this node (load it with apparmor_parser first)"
            ),
        ));
    }
    Ok(AppArmor::Named(name))
}

/// Whether AppArmor profile `name` is loaded.
pub fn apparmor_loaded(name: &str) -> bool {
    std::fs::read_to_string("/sys/kernel/security/apparmor/profiles").is_ok_and(|t| {
        t.lines()
            .any(|l| l.rsplit_once(" (").is_some_and(|(n, _)| n == name))
    })
}

/// The SELinux label for a container's process, from the pod's and the container's
/// options (the container's fields win). None when nothing is asked; refused when the node
/// does not run SELinux, rather than silently ignored.
pub fn selinux_label(
    pod: Option<&api::SeLinuxOption>,
    container: Option<&api::SeLinuxOption>,
    host_has_selinux: bool,
) -> Result<Option<String>, SpecError> {
    let pick = |f: fn(&api::SeLinuxOption) -> &String| {
        container
            .map(f)
            .filter(|v| !v.is_empty())
            .or_else(|| pod.map(f).filter(|v| !v.is_empty()))
            .cloned()
            .unwrap_or_default()
    };
    let (user, role, typ, level) = (
        pick(|o| &o.user),
        pick(|o| &o.role),
        pick(|o| &o.r#type),
        pick(|o| &o.level),
    );
    if user.is_empty() && role.is_empty() && typ.is_empty() && level.is_empty() {
        return Ok(None);
    }
    let field = "security_context.selinux_options";
    if !host_has_selinux {
        return Err(SpecError::new(
            field,
            "SELinux is not enabled on this node; remove seLinuxOptions or run the pod on a node with SELinux",
        ));
    }
    // Unset parts take the usual container defaults.
    let or = |v: String, d: &str| if v.is_empty() { d.to_owned() } else { v };
    let label = format!(
        "{}:{}:{}:{}",
        or(user, "system_u"),
        or(role, "system_r"),
        or(typ, "container_t"),
        or(level, "s0")
    );
    if label.contains('\n') {
        return Err(SpecError::new(field, "a label part contains a newline"));
    }
    Ok(Some(label))
}

#[cfg(test)]
mod lsm_tests {
    use super::*;

    #[test]
    fn apparmor_choices() {
        let p = |t: i32, r: &str| api::SecurityProfile {
            profile_type: t,
            localhost_ref: r.into(),
        };
        let un = AppArmor::Unconfined;
        // Without AppArmor: the default is unconfined, a named profile is refused.
        assert_eq!(
            apparmor_profile(None, "", HostAppArmor::Off, |_| false).unwrap(),
            un
        );
        assert_eq!(
            apparmor_profile(Some(&p(0, "")), "", HostAppArmor::Off, |_| false).unwrap(),
            un
        );
        assert_eq!(
            apparmor_profile(None, "unconfined", HostAppArmor::Off, |_| false).unwrap(),
            un
        );
        let e = apparmor_profile(Some(&p(2, "my-profile")), "", HostAppArmor::Off, |_| true)
            .unwrap_err();
        assert!(e.to_string().contains("not enabled"), "{e}");
        assert!(apparmor_profile(None, "localhost/x", HostAppArmor::Off, |_| true).is_err());
        // With it: the default profile unless unconfined is asked for.
        assert!(apparmor_profile(None, "bogus", HostAppArmor::On, |_| true).is_err());
        assert_eq!(
            apparmor_profile(None, "", HostAppArmor::On, |_| false).unwrap(),
            AppArmor::Default
        );
        assert_eq!(
            apparmor_profile(None, "runtime/default", HostAppArmor::On, |_| false).unwrap(),
            AppArmor::Default
        );
        assert_eq!(
            apparmor_profile(Some(&p(0, "")), "", HostAppArmor::On, |_| false).unwrap(),
            AppArmor::Default
        );
        assert_eq!(
            apparmor_profile(Some(&p(1, "")), "", HostAppArmor::On, |_| false).unwrap(),
            un
        );
        assert_eq!(
            AppArmor::Default.profile().as_deref(),
            Some(crate::spec::apparmor::DEFAULT_PROFILE)
        );
        assert_eq!(
            apparmor_profile(None, "localhost/x", HostAppArmor::On, |n| n == "x").unwrap(),
            AppArmor::Named("x".into())
        );
        assert!(apparmor_profile(None, "localhost/y", HostAppArmor::On, |n| n == "x").is_err());
        // AppArmor on but no parser: no choice runs unconfined, RuntimeDefault is refused
        // with the fix, Unconfined and loaded Localhost profiles still work.
        // The new field's localhost_ref, as kubelet sends it: with the `localhost/` prefix.
        assert_eq!(
            apparmor_profile(Some(&p(2, "localhost/x")), "", HostAppArmor::On, |n| n
                == "x")
            .unwrap(),
            AppArmor::Named("x".into())
        );
        let np = HostAppArmor::NoParser;
        assert_eq!(apparmor_profile(None, "", np, |_| false).unwrap(), un);
        for (profile, legacy) in [(Some(p(0, "")), ""), (None, "runtime/default")] {
            let e = apparmor_profile(profile.as_ref(), legacy, np, |_| false).unwrap_err();
            assert!(e.message.contains("install the apparmor package"), "{e}");
        }
        assert_eq!(
            apparmor_profile(Some(&p(1, "")), "", np, |_| false).unwrap(),
            un
        );
        assert_eq!(
            apparmor_profile(None, "localhost/x", np, |n| n == "x").unwrap(),
            AppArmor::Named("x".into())
        );
    }

    #[test]
    fn selinux_labels() {
        let o = |t: &str, l: &str| api::SeLinuxOption {
            user: String::new(),
            role: String::new(),
            r#type: t.into(),
            level: l.into(),
        };
        assert_eq!(selinux_label(None, None, false).unwrap(), None);
        assert_eq!(selinux_label(Some(&o("", "")), None, false).unwrap(), None);
        assert!(selinux_label(None, Some(&o("spc_t", "")), false).is_err());
        assert_eq!(
            selinux_label(Some(&o("", "s0:c1,c2")), Some(&o("spc_t", "")), true).unwrap(),
            Some("system_u:system_r:spc_t:s0:c1,c2".into())
        );
    }
}

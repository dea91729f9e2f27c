//! Capabilities, masked paths and read-only paths.

use std::collections::BTreeSet;

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
        set.iter().fold(0, |m, c| m | (1u64 << c))
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

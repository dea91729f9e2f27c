//! berth's default AppArmor profile (`RuntimeDefault`, and what an unconfined-by-omission
//! container gets on an AppArmor node, as containerd does after kubernetes#51746).
//!
//! The rules are those of the default profiles of Docker and containerd, so a workload
//! that runs under them runs under berth's: everything allowed except mounting, writing
//! to most of /proc and /sys, the kernel's memory and sysrq files, and signals or ptrace
//! across the profile's boundary (apart from the node's unconfined processes, berthd
//! included, which stop containers).

/// The name the default profile is loaded under.
pub const DEFAULT_PROFILE: &str = "berth-default";

/// What of the node's AppArmor policy directory the profile can include.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyDir {
    /// `/etc/apparmor.d/tunables/global` exists (defines @{PROC} and friends).
    pub tunables: bool,
    /// `/etc/apparmor.d/abstractions/base` exists.
    pub base_abstraction: bool,
    /// `/etc/apparmor.d/abi/3.0` exists (AppArmor 3 userspace).
    pub abi3: bool,
}

impl PolicyDir {
    /// Looks at the node's `/etc/apparmor.d`.
    pub fn of_node() -> PolicyDir {
        let d = std::path::Path::new("/etc/apparmor.d");
        PolicyDir {
            tunables: d.join("tunables/global").exists(),
            base_abstraction: d.join("abstractions/base").exists(),
            abi3: d.join("abi/3.0").exists(),
        }
    }
}

/// The text of profile `name`, for `apparmor_parser`.
pub fn default_profile(name: &str, dir: PolicyDir) -> String {
    let mut p = String::new();
    if dir.abi3 {
        p.push_str("abi <abi/3.0>,\n\n");
    }
    if dir.tunables {
        p.push_str("#include <tunables/global>\n\n");
    } else {
        // What tunables/global would define.
        p.push_str("@{PROC}=/proc/\n\n");
    }
    p.push_str(&format!(
        "profile {name} flags=(attach_disconnected,mediate_deleted) {{\n"
    ));
    if dir.base_abstraction {
        p.push_str("  #include <abstractions/base>\n\n");
    }
    p.push_str(&format!(
        r#"  network,
  capability,
  file,
  umount,
  # The node's unconfined processes (berthd, kubelet) may signal the container.
  signal (receive) peer=unconfined,
  # The container's processes may signal each other.
  signal (send,receive) peer={name},

  deny @{{PROC}}/* w,   # files directly in /proc
  # everything in /proc but /proc/<pid>/** and /proc/sys/**
  deny @{{PROC}}/{{[^1-9],[^1-9][^0-9],[^1-9s][^0-9y][^0-9s],[^1-9][^0-9][^0-9][^0-9/]*}}/** w,
  deny @{{PROC}}/sys/[^k]** w,   # /proc/sys but /proc/sys/kernel
  deny @{{PROC}}/sys/kernel/{{?,??,[^s][^h][^m]**}} w,   # /proc/sys/kernel but shm*
  deny @{{PROC}}/sysrq-trigger rwklx,
  deny @{{PROC}}/kcore rwklx,

  deny mount,

  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/devices/virtual/powercap/** rwklx,
  deny /sys/kernel/security/** rwklx,

  # ps inside the container
  ptrace (trace,read,tracedby,readby) peer={name},
}}
"#
    ));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_text() {
        let full = default_profile(
            DEFAULT_PROFILE,
            PolicyDir {
                tunables: true,
                base_abstraction: true,
                abi3: true,
            },
        );
        assert!(full.starts_with("abi <abi/3.0>,\n\n#include <tunables/global>\n"));
        assert!(full.contains("profile berth-default flags=(attach_disconnected,mediate_deleted) {\n  #include <abstractions/base>\n"));
        assert!(full.contains("  deny mount,\n"));
        assert!(full.contains("  deny @{PROC}/sysrq-trigger rwklx,\n"));
        assert!(full.contains("signal (send,receive) peer=berth-default,"));
        assert!(full.contains("ptrace (trace,read,tracedby,readby) peer=berth-default,"));
        assert!(full.trim_end().ends_with('}'));
        // Braces balance: apparmor_parser refuses the profile otherwise.
        let open = full.matches('{').count();
        assert_eq!(open, full.matches('}').count());

        let bare = default_profile("x", PolicyDir::default());
        assert!(bare.starts_with("@{PROC}=/proc/\n"));
        assert!(!bare.contains("#include"));
        assert!(!bare.contains("abi <"));
        assert!(bare.contains("profile x flags="));
    }
}

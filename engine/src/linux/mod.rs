//! The kernel-facing layer: namespaces, mounts, cgroups, capabilities, seccomp, spawn.
//!
//! This is the only module tree that may hold `unsafe` (in `sys.rs`, once it exists), each
//! block with a `// SAFETY:` comment. Everything here that can be expressed as a pure
//! function over kernel-provided text (mountinfo, cgroup files) is, so that it can be
//! unit-tested against fixtures.

pub mod apparmor;
pub mod beneath;
pub mod cgroups;
pub mod devfilter;
pub mod hooks;
pub mod image_volume;
pub mod init;
pub mod mountinfo;
pub mod namespaces;
mod overlay;
pub mod probe;
pub mod process;
pub mod restore;
mod rootfs;
pub mod spawn;
pub mod sys;

pub use rootfs::empty_root;

/// The host's device nodes bound into every container's /dev (by name).
pub fn rootfs_dev_binds() -> &'static [&'static str] {
    &rootfs::DEV_BINDS
}

//! CRI configuration -> what a container needs: pure functions, no syscalls.
//!
//! This is where most behaviour bugs would hide (which command runs, as whom, with which
//! capabilities, mounts and limits), so everything here is a function of its inputs and is
//! unit-tested against the rules kubelet, Docker and containerd document:
//! - [`process`]: command/args with the image's ENTRYPOINT/CMD, environment, working
//!   directory, user and groups resolved in the image's own /etc/passwd and /etc/group;
//! - [`security`]: capability sets, masked and read-only paths;
//! - [`resources`]: CPU, memory, pids and hugepage limits;
//! - [`mounts`]: the standard container mounts plus CRI volume mounts.

pub mod apparmor;
pub mod cdi;
pub mod devices;
pub mod hooks;
pub mod metadata;
pub mod mounts;
pub mod pod;
pub mod process;
pub mod resources;
pub mod runtime_spec;
pub mod seccomp;
mod seccomp_default;
pub mod security;
pub mod userns;

use crate::error::ErrorKind;

/// A configuration that cannot be turned into a container.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The CRI field at fault, e.g. `config.command` or `security_context.run_as_username`.
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

//! Creating a container process: clone into new mount (and pid) namespaces, build the root
//! filesystem, drop to the container's identity and exec. The child reports any failure
//! on a close-on-exec pipe; end-of-file on it means the exec succeeded.
//!
//! Runs in the per-pod monitor, which is single-threaded and already inside the pod's
//! network, IPC and UTS namespaces, so the child inherits those.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::sched::CloneFlags;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::init;
use crate::spec::mounts::Mount;
use crate::spec::process::User;
use crate::spec::security::Capabilities;

/// Everything the child needs to become the container. Built by berthd, carried to the
/// monitor as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub id: String,
    pub rootfs: Rootfs,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: User,
    pub capabilities: Capabilities,
    pub no_new_privs: bool,
    pub oom_score_adj: Option<i32>,
    pub mounts: Vec<Mount>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    /// Cgroup directories (one per hierarchy) the process joins before anything else.
    pub cgroup_dirs: Vec<PathBuf>,
    /// What /sys/fs/cgroup shows inside: (name, host directory) bind-mounted read-only.
    pub cgroup_view: Vec<(String, PathBuf)>,
    /// Give the container its own pid namespace (CRI pid mode CONTAINER).
    pub new_pid_namespace: bool,
    /// Namespaced sysctls to set inside.
    pub sysctls: BTreeMap<String, String>,
}

/// The container's root filesystem: an overlay of image layers and a private upper dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rootfs {
    /// Image layer directories, top layer first.
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: PathBuf,
    pub workdir: PathBuf,
    /// Where the overlay is mounted (inside the container's own mount namespace).
    pub target: PathBuf,
    pub readonly: bool,
}

/// The child's standard streams.
#[derive(Debug)]
pub struct Stdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Why a container process could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("create error pipe: {0}")]
    Pipe(nix::Error),
    #[error("clone: {0}")]
    Clone(nix::Error),
    /// The child failed before exec; the message says at which step.
    #[error("{0}")]
    Child(String),
}

/// Starts the container process; returns its pid once it has exec'd.
pub fn spawn(spec: &LaunchSpec, stdio: Stdio) -> Result<Pid, SpawnError> {
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;
    let mut flags = CloneFlags::CLONE_NEWNS;
    if spec.new_pid_namespace {
        flags |= CloneFlags::CLONE_NEWPID;
    }
    let mut stdio = Some(stdio);
    let pid = super::sys::clone_child(flags, || {
        let Some(io) = stdio.take() else { return 127 };
        let failure = init::become_container(spec, io);
        // Only reached on failure: report it and die without running any destructor or
        // atexit handler of the monitor's copy.
        if let Ok(fd) = err_w.try_clone() {
            let _ = std::fs::File::from(fd).write_all(failure.as_bytes());
        }
        super::sys::exit_now(127)
    })
    .map_err(SpawnError::Clone)?;
    drop(err_w);
    drop(stdio);
    let mut msg = String::new();
    let _ = std::fs::File::from(err_r).read_to_string(&mut msg);
    if msg.is_empty() {
        Ok(pid)
    } else {
        let _ = nix::sys::wait::waitpid(pid, None);
        Err(SpawnError::Child(msg))
    }
}

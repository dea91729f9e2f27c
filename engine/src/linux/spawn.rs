//! Creating a container process: clone into new mount (and pid) namespaces, build the root
//! filesystem, drop to the container's identity and exec. The child reports any failure
//! on a close-on-exec pipe; end-of-file on it means the exec succeeded.
//!
//! Runs in the per-pod monitor, which is single-threaded and already inside the pod's
//! network, IPC and UTS namespaces, so the child inherits those.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

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
    /// The process (its fields sit at the top level of the JSON, as before they were
    /// grouped).
    #[serde(flatten)]
    pub process: ProcessSpec,
    /// Device nodes to create (requested devices; every host device when privileged).
    #[serde(default)]
    pub devices: Vec<crate::spec::devices::DeviceNode>,
    pub oom_score_adj: Option<i32>,
    pub mounts: Vec<Mount>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    /// Cgroup directories (one per hierarchy) the process joins before anything else.
    pub cgroup_dirs: Vec<PathBuf>,
    /// What /sys/fs/cgroup shows inside: (name, host directory) bind-mounted read-only.
    pub cgroup_view: Vec<(String, PathBuf)>,
    /// The runtime's socket the child connects to and waits on before joining
    /// `cgroup_dirs` (systemd driver: berthd makes the container's scope meanwhile).
    #[serde(default)]
    pub cgroup_park: Option<PathBuf>,
    /// Give the container its own pid namespace (CRI pid mode CONTAINER).
    pub new_pid_namespace: bool,
    /// Join the pid namespace of this container of the pod instead (CRI pid mode TARGET).
    #[serde(default)]
    pub pid_target: Option<String>,
    /// Join the pod's shared pid namespace (CRI pid mode POD): the monitor starts the
    /// pod's init, pid 1 of that namespace, in these cgroup directories when it has none.
    #[serde(default)]
    pub pod_pid_namespace: Option<Vec<PathBuf>>,
    /// Namespaced sysctls to set inside.
    pub sysctls: BTreeMap<String, String>,
    /// The pod's user namespace, joined last (after every mount); image layers and bind
    /// mounts are id-mapped into it.
    #[serde(default)]
    pub userns: Option<UserNamespace>,
    /// The container's standard streams as CreateContainer asked for them.
    #[serde(default)]
    pub stdio: StdioMode,
    /// OCI hooks (CDI devices ask for them); see `spec::hooks` for where each point runs.
    #[serde(default)]
    pub hooks: Option<crate::spec::hooks::Hooks>,
}

/// CRI `stdin`, `stdin_once` and `tty` of a container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StdioMode {
    /// A stdin pipe that attach sessions write to (else /dev/null).
    pub stdin: bool,
    /// Close stdin when the first attach session that wrote to it ends.
    pub stdin_once: bool,
    /// A terminal for stdin, stdout and stderr (output is one stream, logged as stdout).
    pub tty: bool,
}

/// A pod's user namespace as a container joins it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNamespace {
    /// The namespace, bind-mounted by the pod's monitor.
    pub path: PathBuf,
    /// Host uid and gid of the container's root: owner of the writable layer's top and
    /// of what berth creates inside.
    pub root_uid: u32,
    pub root_gid: u32,
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
pub enum Stdio {
    /// Pipes; no stdin means /dev/null.
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// The slave side of a terminal for all three, which becomes the process's controlling
    /// terminal (an exec'd process: the monitor opened it in the container's devpts).
    Terminal(OwnedFd),
    /// Make a terminal in the container's own devpts, send its master back over this
    /// socket (SCM_RIGHTS) and use the slave as above: a container's terminal, which the
    /// monitor cannot open before the container's devpts exists (runc's console socket).
    Console(OwnedFd),
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

/// Starts the container process in the pid namespace of the process `target` (CRI pid
/// mode TARGET): an intermediate enters that namespace and clones the container with
/// CLONE_PARENT, so the container is our child like any other; then it exits.
pub fn spawn_in_pid_namespace_of(
    target: Pid,
    spec: &LaunchSpec,
    stdio: Stdio,
) -> Result<Pid, SpawnError> {
    let prepared = init::Prepared::new(&spec.process).map_err(SpawnError::Child)?;
    let (err_r, err_w) = cloexec_pipe()?;
    let (pid_r, pid_w) = cloexec_pipe()?;
    let (mut child_sync, parent_sync) = hook_pipes(spec)?;
    let mut stdio = Some(stdio);
    let into = birth_cgroup(spec);
    let intermediate = super::sys::clone_child(CloneFlags::empty(), || {
        let path = format!("/proc/{target}/ns/pid");
        let ns = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => fail(&err_w, format!("open {path}: {e}")),
        };
        if let Err(e) = nix::sched::setns(&ns, CloneFlags::empty()) {
            fail(&err_w, format!("enter the target's pid namespace: {e}"));
        }
        let mut io = stdio.take();
        let child = clone_into_or_join(
            CloneFlags::CLONE_PARENT | CloneFlags::CLONE_NEWNS,
            into.as_ref().map(|(fd, dir)| (fd, *dir)),
            |born_in| {
                let Some(io) = io.take() else { return 127 };
                let failure =
                    init::become_container(spec, &prepared, io, child_sync.take(), born_in);
                fail(&err_w, failure)
            },
        );
        match child {
            Ok(pid) => {
                if let Ok(fd) = pid_w.try_clone() {
                    let _ = std::fs::File::from(fd).write_all(&pid.as_raw().to_le_bytes());
                }
                super::sys::exit_now(0)
            }
            Err(e) => fail(&err_w, format!("clone the container: {e}")),
        }
    })
    .map_err(SpawnError::Clone)?;
    drop(err_w);
    drop(pid_w);
    drop(stdio);
    drop(child_sync);
    let _ = nix::sys::wait::waitpid(intermediate, None);
    let pid = read_pid(pid_r);
    let hooks = match (pid, parent_sync) {
        (Some(pid), Some(sync)) => sync.run(spec, pid),
        _ => Ok(()),
    };
    let msg = match hooks {
        Ok(()) => read_error(err_r),
        Err(e) => e,
    };
    if let (Some(pid), true) = (pid, msg.is_empty()) {
        return Ok(pid);
    }
    if let Some(pid) = pid {
        let _ = nix::sys::wait::waitpid(pid, None);
    }
    Err(SpawnError::Child(if msg.is_empty() {
        "container process did not start".into()
    } else {
        msg
    }))
}

/// Starts the container process in the pid namespace `ns` (the pod's shared one): the
/// caller's namespace for new children is switched to it for the clone and back after,
/// so the container is our direct child and later containers of other modes are not
/// affected (a new pid namespace can only be made from the caller's own). Needs a
/// single-threaded caller, as [`spawn`].
pub fn spawn_in_pid_namespace(
    ns: &std::fs::File,
    spec: &LaunchSpec,
    stdio: Stdio,
) -> Result<Pid, SpawnError> {
    let own = own_pid_namespace()?;
    nix::sched::setns(ns, CloneFlags::CLONE_NEWPID)
        .map_err(|e| SpawnError::Child(format!("enter the pod's pid namespace: {e}")))?;
    let spawned = spawn(spec, stdio);
    // Returning to our own namespace cannot fail (it is our active one, which the kernel
    // always lets us name); were it to, later containers of other modes would fail to
    // start with EINVAL rather than run in the wrong namespace.
    let _ = nix::sched::setns(own, CloneFlags::CLONE_NEWPID);
    spawned
}

/// Starts the container process; returns its pid once it has exec'd.
pub fn spawn(spec: &LaunchSpec, stdio: Stdio) -> Result<Pid, SpawnError> {
    let prepared = init::Prepared::new(&spec.process).map_err(SpawnError::Child)?;
    let (err_r, err_w) = cloexec_pipe()?;
    let (mut child_sync, parent_sync) = hook_pipes(spec)?;
    let mut flags = CloneFlags::CLONE_NEWNS;
    if spec.new_pid_namespace {
        flags |= CloneFlags::CLONE_NEWPID;
    }
    let mut stdio = Some(stdio);
    let child = |born_in: Option<&Path>| {
        let Some(io) = stdio.take() else { return 127 };
        let failure = init::become_container(spec, &prepared, io, child_sync.take(), born_in);
        // Only reached on failure: report it and die without running any destructor or
        // atexit handler of the monitor's copy.
        fail(&err_w, failure)
    };
    let into = birth_cgroup(spec);
    let pid = clone_into_or_join(flags, into.as_ref().map(|(fd, dir)| (fd, *dir)), child)
        .map_err(SpawnError::Clone)?;
    drop(err_w);
    drop(stdio);
    drop(child_sync);
    let msg = match parent_sync.map_or(Ok(()), |s| s.run(spec, pid)) {
        Ok(()) => read_error(err_r),
        Err(e) => e,
    };
    if msg.is_empty() {
        Ok(pid)
    } else {
        let _ = nix::sys::wait::waitpid(pid, None);
        Err(SpawnError::Child(msg))
    }
}

/// Clones `child` into cgroup directory `into` when there is one and the kernel takes it
/// (the child is told which: it joins its other cgroups itself), else plainly (`None`: it
/// joins them all).
fn clone_into_or_join<'a>(
    flags: CloneFlags,
    into: Option<(&OwnedFd, &'a Path)>,
    mut child: impl FnMut(Option<&'a Path>) -> isize,
) -> nix::Result<Pid> {
    use nix::errno::Errno;
    if let Some((fd, dir)) = into {
        match super::sys::clone_child_into(flags, fd, || child(Some(dir))) {
            Ok(pid) => return Ok(pid),
            Err(e) if e == Errno::ENOSYS || not_at_birth(e) => {}
            Err(e) => return Err(e),
        }
    }
    super::sys::clone_child(flags, || child(None))
}

/// Whether a clone into a cgroup failed because this kernel or this cgroup cannot take a
/// process at birth: then clone, and join (which fails the same way if the cgroup cannot
/// take processes at all). ENODEV: the directory opened was removed since (an exec's kept
/// one; the join goes by its path). Anything else (EAGAIN of a full pids.max, ENOMEM) a
/// plain clone must not get around.
fn not_at_birth(e: nix::errno::Errno) -> bool {
    use nix::errno::Errno;
    matches!(
        e,
        Errno::E2BIG | Errno::EINVAL | Errno::EOPNOTSUPP | Errno::EBUSY | Errno::ENODEV
    )
}

/// Clones `child` born in the cgroup v2 directory among `dirs` where there is one and the
/// kernel takes it (the child is told which: it joins the others with [`join_cgroups`]),
/// else plainly (`None`: it joins them all).
pub fn clone_in_cgroups<'a>(
    flags: CloneFlags,
    dirs: &'a [PathBuf],
    child: impl FnMut(Option<&'a Path>) -> isize,
) -> nix::Result<Pid> {
    let into = v2_cgroup(dirs, None);
    clone_into_or_join(flags, into.as_ref().map(|(fd, dir)| (fd, *dir)), child)
}

/// Joins the calling single-threaded process to cgroup directories `dirs` but `born_in`
/// (the one it was cloned into): the first error, with the directory it was joining.
pub fn join_cgroups(dirs: &[PathBuf], born_in: Option<&Path>) -> Result<(), String> {
    for dir in dirs.iter().filter(|d| Some(d.as_path()) != born_in) {
        super::cgroups::join_self(dir)
            .map_err(|e| format!("join cgroup {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Where a container is born: its cgroup v2 directory, unless it waits for the runtime to
/// make its systemd scope (then it is cloned, and joins). It joins its v1 directories
/// itself.
fn birth_cgroup(spec: &LaunchSpec) -> Option<(OwnedFd, &Path)> {
    if spec.cgroup_park.is_some() {
        return None;
    }
    v2_cgroup(&spec.cgroup_dirs, None)
}

/// The one cgroup v2 directory among a container's cgroup directories (a process can be
/// cloned into it), opened: the whole cgroup on a unified node; on a hybrid one, the
/// cgroup2 beside the v1 hierarchies when it holds a controller berth uses (else none).
/// With `under` (the cgroup2 mount) only the directories beneath it are looked at (an
/// exec: one statfs, not one for each of a hybrid node's nine hierarchies).
fn v2_cgroup<'a>(dirs: &'a [PathBuf], under: Option<&Path>) -> Option<(OwnedFd, &'a Path)> {
    use nix::fcntl::{OFlag, open};
    use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};
    let mut v2 = dirs.iter().filter(|d| {
        under.is_none_or(|m| d.starts_with(m))
            && statfs(d.as_path()).is_ok_and(|fs| fs.filesystem_type() == CGROUP2_SUPER_MAGIC)
    });
    let (dir, None) = (v2.next()?, v2.next()) else {
        return None;
    };
    let fd = open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    Some((fd, dir))
}

/// Where this process sees the cgroup2 hierarchy mounted, found once, at a monitor's first
/// exec (None: none, or the mount table could not be read; then every directory is looked
/// at). A container's start does not wait for the mount table: it looks at every one.
fn unified_mount() -> Option<&'static Path> {
    static MOUNT: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    MOUNT
        .get_or_init(|| {
            super::cgroups::CgroupLayout::detect()
                .ok()
                .and_then(|l| l.unified)
        })
        .as_deref()
}

/// Our own pid namespace, opened once: an exec's clone is made from the container's and
/// we return to ours after it (our active namespace never changes).
fn own_pid_namespace() -> Result<&'static std::fs::File, SpawnError> {
    static OWN: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    if let Some(f) = OWN.get() {
        return Ok(f);
    }
    let f = std::fs::File::open("/proc/self/ns/pid")
        .map_err(|e| SpawnError::Child(format!("open our pid namespace: {e}")))?;
    Ok(OWN.get_or_init(|| f))
}

/// The child's ends of the pipes on which it stops for the runtime's `prestart` and
/// `createRuntime` hooks: it writes one byte to `ready` once its namespaces and mounts
/// are made, and goes on to pivot_root when it reads one from `go`.
#[derive(Debug)]
pub struct HookSync {
    pub ready: OwnedFd,
    pub go: OwnedFd,
    /// The monitor's ends, which the child closes first, so that the monitor's death
    /// reads as end-of-file on `go`.
    parent: Option<ParentSync>,
}

impl HookSync {
    /// Closes the monitor's ends in the child's copy of the descriptor table.
    pub fn close_parent_ends(&mut self) {
        self.parent = None;
    }
}

/// The monitor's ends of those pipes.
#[derive(Debug)]
struct ParentSync {
    ready: OwnedFd,
    go: OwnedFd,
}

/// The hook pipes, when the container has runtime hooks to run before its pivot_root.
fn hook_pipes(spec: &LaunchSpec) -> Result<(Option<HookSync>, Option<ParentSync>), SpawnError> {
    if !spec
        .hooks
        .as_ref()
        .is_some_and(|h| h.runtime_before_pivot())
    {
        return Ok((None, None));
    }
    let (ready_r, ready_w) = cloexec_pipe()?;
    let (go_r, go_w) = cloexec_pipe()?;
    let dup = |fd: &OwnedFd| {
        fd.try_clone().map_err(|e| {
            SpawnError::Pipe(nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)))
        })
    };
    let (child_parent_copy_ready, child_parent_copy_go) = (dup(&ready_r)?, dup(&go_w)?);
    Ok((
        Some(HookSync {
            ready: ready_w,
            go: go_r,
            parent: Some(ParentSync {
                ready: child_parent_copy_ready,
                go: child_parent_copy_go,
            }),
        }),
        Some(ParentSync {
            ready: ready_r,
            go: go_w,
        }),
    ))
}

impl ParentSync {
    /// Waits for the child to be ready, runs the `prestart` and `createRuntime` hooks
    /// with its pid and lets it go on; a failing hook kills the child and is the error.
    /// A child that fails before it is ready closes its end: nothing to run then.
    fn run(self, spec: &LaunchSpec, pid: Pid) -> Result<(), String> {
        let Some(hooks) = &spec.hooks else {
            return Ok(());
        };
        let mut byte = [0u8; 1];
        match std::fs::File::from(self.ready).read(&mut byte) {
            Ok(1) => {}
            _ => return Ok(()),
        }
        let ran = super::hooks::run_point(
            crate::spec::hooks::Point::Prestart,
            hooks,
            &spec.id,
            Some(pid.as_raw()),
        )
        .and_then(|()| {
            super::hooks::run_point(
                crate::spec::hooks::Point::CreateRuntime,
                hooks,
                &spec.id,
                Some(pid.as_raw()),
            )
        });
        match ran {
            Ok(()) => {
                let _ = std::fs::File::from(self.go).write_all(&[1]);
                Ok(())
            }
            Err(e) => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                Err(e)
            }
        }
    }
}

/// What a container's process and an exec'd process are made of: command, environment,
/// identity and confinement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: User,
    pub capabilities: Capabilities,
    pub no_new_privs: bool,
    /// Compiled seccomp filters, installed in order just before exec (none: unconfined).
    #[serde(default)]
    pub seccomp: Vec<crate::spec::seccomp::Filter>,
    /// AppArmor profile to exec under (None: unconfined).
    #[serde(default)]
    pub apparmor: Option<String>,
    /// SELinux process label to exec with.
    #[serde(default)]
    pub selinux_label: Option<String>,
}

/// A process to run inside a running container (ExecSync, exec sessions): confined like
/// the container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecSpec {
    #[serde(flatten)]
    pub process: ProcessSpec,
    pub cgroup_dirs: Vec<PathBuf>,
    /// The pod's user namespace to join (the one the container was started in, never
    /// whatever namespace its process may have made since).
    #[serde(default)]
    pub userns: Option<PathBuf>,
}

impl ExecSpec {
    /// `args` run as, and confined like, the container `launch` describes.
    pub fn for_container(launch: &LaunchSpec, args: Vec<String>) -> ExecSpec {
        ExecSpec {
            process: ProcessSpec {
                args,
                ..launch.process.clone()
            },
            cgroup_dirs: launch.cgroup_dirs.clone(),
            userns: launch.userns.as_ref().map(|u| u.path.clone()),
        }
    }
}

/// A running container's cgroups as its execs join them, opened at its first exec and kept
/// by the monitor while the container runs: the directory to be born in (found with one
/// statfs, once) and the file of each directory that moves its writer in. A probe's child
/// then writes to files already open instead of opening eight or nine beneath cgroupfs
/// (each a path walk and an open and a release of a kernfs file) at every exec. The files
/// close on exec: nothing of them reaches the container's processes.
#[derive(Debug)]
pub struct ExecCgroups {
    birth: Option<(OwnedFd, PathBuf)>,
    joins: Vec<(PathBuf, std::fs::File)>,
}

impl ExecCgroups {
    /// Opens the join files of `dirs` (an error names the directory) and the cgroup v2
    /// directory among them to be born in.
    pub fn open(dirs: &[PathBuf]) -> Result<ExecCgroups, String> {
        let joins = dirs
            .iter()
            .map(|dir| {
                super::cgroups::open_join(dir)
                    .map(|f| (dir.clone(), f))
                    .map_err(|e| format!("join cgroup {}: {e}", dir.display()))
            })
            .collect::<Result<_, _>>()?;
        let birth = v2_cgroup(dirs, unified_mount()).map(|(fd, dir)| (fd, dir.to_path_buf()));
        Ok(ExecCgroups { birth, joins })
    }

    /// Whether these are the cgroups of an exec into `dirs`.
    pub fn serves(&self, dirs: &[PathBuf]) -> bool {
        self.joins.iter().map(|(d, _)| d).eq(dirs)
    }

    /// In the exec's child: joins every directory but `born_in` (the one it was cloned
    /// into); the first error, with the directory. A kept file whose directory is gone
    /// (removed and made again beneath the running container by something else: ENODEV)
    /// gives way to the directory now at its path, as an exec joined before they were kept.
    fn join(&self, born_in: Option<&Path>) -> Result<(), String> {
        for (dir, f) in self
            .joins
            .iter()
            .filter(|(d, _)| Some(d.as_path()) != born_in)
        {
            super::cgroups::join_by(f)
                .or_else(|e| match e.raw_os_error() {
                    Some(libc::ENODEV) => super::cgroups::join_self(dir),
                    _ => Err(e),
                })
                .map_err(|e| format!("join cgroup {}: {e}", dir.display()))?;
        }
        Ok(())
    }
}

/// Starts `spec` inside the namespaces of the container whose main process is `target`.
///
/// The exec process is our direct child, born in the container's pid namespace: our
/// namespace for new children is switched to the container's for the clone and back
/// after (as [`spawn_in_pid_namespace`]). It joins the container's cgroups through
/// `cgroups`, the container's files the monitor keeps open (born in the cgroup v2 one
/// where the kernel allows),
/// enters its mount namespace (and the pod's user namespace, last), starts its own
/// session, takes the container's identity and execs. There is no intermediate process
/// that waits for it: an exec cost two clones and an address-space copy more, at every
/// probe of every pod. We are its parent (and a subreaper), so it is reaped even when the
/// container's init would not.
///
/// Without a user namespace to enter, the child shares our memory until it execs
/// ([`sys::clone_vfork`](super::sys::clone_vfork)): nothing of the monitor's address
/// space is copied, faulted in or torn down for it, which was most of a probe's cost. What
/// it execs is prepared here ([`init::Prepared`]), it only borrows what it is given, and
/// whatever it allocates on the way is freed before it execs or exits. A child that
/// enters the pod's user namespace is a copy (the conservative choice: the monitor's
/// memory is never shared with a process in a namespace of the pod's own, and kernels have
/// differed in what setns allows a process sharing its memory), as is every child where
/// the shared clone is not available.
///
/// Returns (the process to wait for, the process to signal: the same one) once it has
/// exec'd. Needs a single-threaded caller, as [`spawn`].
pub fn spawn_exec(
    target: Pid,
    cgroups: &ExecCgroups,
    spec: &ExecSpec,
    stdio: Stdio,
) -> Result<(Pid, Pid), SpawnError> {
    let open = |path: &str| {
        std::fs::File::open(path).map_err(|e| SpawnError::Child(format!("open {path}: {e}")))
    };
    let prepared = init::Prepared::new(&spec.process).map_err(SpawnError::Child)?;
    // Open everything first: in the container's mount namespace our /proc is no longer
    // the host's (the child's view), and the target is not named by its host pid there.
    let pid_ns = open(&format!("/proc/{target}/ns/pid"))?;
    let mnt_ns = open(&format!("/proc/{target}/ns/mnt"))?;
    let user_ns = match &spec.userns {
        Some(path) => Some(open(&path.to_string_lossy())?),
        None => None,
    };
    let own = own_pid_namespace()?;
    let (err_r, err_w) = cloexec_pipe()?;
    let mut child = |born_in: Option<&Path>| {
        if let Err(e) = cgroups.join(born_in) {
            fail(&err_w, e);
        }
        // The pod's user namespace last: the others belong to the host's, whose
        // capabilities we give up on entering it.
        let entries = [("mnt", Some(&mnt_ns)), ("user", user_ns.as_ref())];
        for (ns, f) in entries {
            if let Some(f) = f
                && let Err(e) = nix::sched::setns(f, CloneFlags::empty())
            {
                fail(&err_w, format!("enter the container's {ns} namespace: {e}"));
            }
        }
        let failure = init::become_exec(spec, &prepared, &stdio);
        fail(&err_w, failure)
    };
    nix::sched::setns(&pid_ns, CloneFlags::CLONE_NEWPID)
        .map_err(|e| SpawnError::Child(format!("enter the container's pid namespace: {e}")))?;
    // Born in the container's cgroup where the kernel allows (see `spawn`).
    let into = cgroups.birth.as_ref().map(|(fd, dir)| (fd, dir.as_path()));
    let cloned = if user_ns.is_none() {
        clone_shared_into_or_join(into, &mut child)
    } else {
        clone_into_or_join(CloneFlags::empty(), into, &mut child)
    };
    // Back to our own namespace for new children (our active one: the kernel always lets
    // us name it, see `spawn_in_pid_namespace`).
    let _ = nix::sched::setns(own, CloneFlags::CLONE_NEWPID);
    let pid = cloned.map_err(SpawnError::Clone)?;
    drop(err_w);
    drop(stdio);
    let msg = read_error(err_r);
    if msg.is_empty() {
        return Ok((pid, pid));
    }
    let _ = nix::sys::wait::waitpid(pid, None);
    Err(SpawnError::Child(msg))
}

/// [`clone_into_or_join`] with a child that shares our memory until it execs
/// ([`sys::clone_vfork`](super::sys::clone_vfork); `child` keeps to its rules), falling
/// back to a copy where the kernel or this build has no such clone.
fn clone_shared_into_or_join<'a>(
    into: Option<(&OwnedFd, &'a Path)>,
    child: &mut dyn FnMut(Option<&'a Path>) -> isize,
) -> nix::Result<Pid> {
    use super::sys::clone_vfork;
    use nix::errno::Errno;
    if let Some((fd, dir)) = into {
        match clone_vfork(CloneFlags::empty(), Some(fd), &mut || child(Some(dir))) {
            Ok(pid) => return Ok(pid),
            Err(Errno::ENOSYS) => return clone_into_or_join(CloneFlags::empty(), into, child),
            Err(e) if not_at_birth(e) => {}
            Err(e) => return Err(e),
        }
    }
    match clone_vfork(CloneFlags::empty(), None, &mut || child(None)) {
        // No clone3 (before 5.3), one that takes fewer arguments than we pass (E2BIG
        // before 5.7: our clone_args always have room for the cgroup), or none that
        // shares memory here: a copy, as before.
        Err(Errno::ENOSYS | Errno::E2BIG | Errno::EINVAL) => {
            super::sys::clone_child(CloneFlags::empty(), || child(None))
        }
        r => r,
    }
}

/// A pipe whose ends close on exec: a child's exec closes its copy, which is how the
/// parent learns the exec succeeded.
fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)
}

/// The pid an intermediate wrote, if it wrote one (blocks until it has or has exited).
fn read_pid(pid_r: OwnedFd) -> Option<Pid> {
    let mut pid_bytes = [0u8; 4];
    std::fs::File::from(pid_r)
        .read_exact(&mut pid_bytes)
        .ok()
        .map(|()| Pid::from_raw(i32::from_le_bytes(pid_bytes)))
}

/// The child's error text: empty when it exec'd. Blocks until every writer has exec'd or
/// exited.
fn read_error(err_r: OwnedFd) -> String {
    let mut msg = String::new();
    let _ = std::fs::File::from(err_r).read_to_string(&mut msg);
    msg
}

/// In a child: reports a failure on the error pipe and exits. At most [`ERROR_MAX`] bytes
/// (cut at a character boundary), in one write: a pipe takes that much at once without
/// blocking, and the parent of a child sharing its memory cannot drain it until the child
/// is gone. The message is freed before the exit: such a child must leave nothing of its
/// own allocated.
pub(super) fn fail(err_w: &OwnedFd, msg: String) -> ! {
    report(err_w, &msg);
    drop(msg);
    super::sys::exit_now(127)
}

/// Writes the first [`ERROR_MAX`] bytes of `msg` to the error pipe, in one write.
fn report(err_w: &OwnedFd, msg: &str) {
    let _ = nix::unistd::write(err_w, truncated(msg, ERROR_MAX).as_bytes());
}

/// The longest error message a child writes (PIPE_BUF: one atomic write into an empty pipe).
const ERROR_MAX: usize = 4096;

/// `msg` cut to at most `max` bytes at a character boundary.
pub(super) fn truncated(msg: &str, max: usize) -> &str {
    let mut end = msg.len().min(max);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    &msg[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An exec's cgroups are opened once and joined through the kept files by each exec's
    /// child: the v1 directory through `tasks`, the v2 one it is born in (where the node
    /// has a cgroup2 mount) or through `cgroup.procs`; none of the files reaches what
    /// the child execs.
    #[test]
    fn execs_join_a_containers_cgroups_through_files_opened_once() {
        use nix::fcntl::{FcntlArg, FdFlag, fcntl};
        let Ok(layout) = super::super::cgroups::CgroupLayout::detect() else {
            return;
        };
        let tag = format!("berth-test-exec-cgroups-{}", std::process::id());
        let mut dirs = Vec::new();
        if let Some(super::super::cgroups::Hierarchy::V1 { mountpoint }) =
            layout.controllers.get("pids")
        {
            dirs.push(mountpoint.join(&tag));
        }
        if let Some(unified) = &layout.unified {
            dirs.push(unified.join(&tag));
        }
        if dirs.is_empty() || dirs.iter().any(|d| std::fs::create_dir(d).is_err()) {
            for d in &dirs {
                let _ = std::fs::remove_dir(d);
            }
            return; // not root
        }
        let cgroups = ExecCgroups::open(&dirs).unwrap();
        assert!(cgroups.serves(&dirs));
        assert!(!cgroups.serves(&dirs[..1]) || dirs.len() == 1);
        assert_eq!(
            cgroups.birth.as_ref().map(|(_, d)| d.clone()),
            layout.unified.as_ref().map(|u| u.join(&tag)),
            "born in the cgroup v2 directory, where there is one"
        );
        for (dir, f) in &cgroups.joins {
            let flags = FdFlag::from_bits_truncate(fcntl(f, FcntlArg::F_GETFD).unwrap());
            assert!(
                flags.contains(FdFlag::FD_CLOEXEC),
                "{} is inherited",
                dir.display()
            );
        }
        // Each child (a copy: this test process has other threads) joins with the kept
        // files only and exits 0 when /proc/self/cgroup has it in every directory.
        let wants: Vec<Vec<u8>> = dirs
            .iter()
            .map(|d| {
                if d.starts_with(layout.unified.as_deref().unwrap_or(Path::new("/-"))) {
                    format!("0::/{tag}\n").into_bytes()
                } else {
                    format!(":pids:/{tag}\n").into_bytes()
                }
            })
            .collect();
        for _ in 0..2 {
            let pid = super::super::sys::clone_child(CloneFlags::empty(), || {
                if cgroups.join(None).is_err() {
                    return 2;
                }
                let Ok(fd) = nix::fcntl::open(
                    "/proc/self/cgroup",
                    nix::fcntl::OFlag::O_RDONLY,
                    nix::sys::stat::Mode::empty(),
                ) else {
                    return 3;
                };
                let mut buf = [0u8; 4096];
                let n = nix::unistd::read(&fd, &mut buf).unwrap_or(0);
                let text = &buf[..n];
                let all = wants
                    .iter()
                    .all(|w| text.windows(w.len()).any(|x| x == w.as_slice()));
                isize::from(!all)
            })
            .unwrap();
            let status = nix::sys::wait::waitpid(pid, None).unwrap();
            assert_eq!(
                status,
                nix::sys::wait::WaitStatus::Exited(pid, 0),
                "the child did not join {dirs:?}"
            );
        }
        drop(cgroups);
        for d in &dirs {
            std::fs::remove_dir(d).unwrap();
        }
    }

    #[test]
    fn an_error_message_is_cut_at_a_character_boundary() {
        assert_eq!(truncated("abc", 10), "abc");
        assert_eq!(truncated("abc", 2), "ab");
        // "é" is two bytes: a cut inside one keeps the characters before it.
        assert_eq!(truncated("aéé", 4), "aé");
        assert_eq!(truncated("ééé", 1), "");
    }

    #[test]
    fn a_long_error_message_never_fills_the_pipe() {
        // Nobody reads this pipe (a parent suspended until its child exits cannot): more
        // than its 64 KiB in one message would block the writer for good.
        let (r, w) = cloexec_pipe().unwrap();
        let msg = "é".repeat(100_000);
        report(&w, &msg);
        report(&w, &msg);
        drop(w);
        let text = read_error(r);
        assert_eq!(text.len(), 2 * ERROR_MAX);
        assert!(text.chars().all(|c| c == 'é'));
    }
}

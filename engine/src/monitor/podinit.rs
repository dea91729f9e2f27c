//! The pod's shared pid namespace (CRI pid mode POD): a small init as its pid 1, made
//! when the first container of mode POD starts.

use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// The pod's shared pid namespace (CRI pid mode POD), held by a small init as its pid 1.
pub(super) struct PodInit {
    pub(super) pid: Pid,
    /// `/proc/<init>/ns/pid`, opened once: containers of mode POD are cloned into it.
    pub(super) ns: std::fs::File,
}

/// The pod init program (`src/linux/pod_init_program.rs`, built by engine/build.rs): empty
/// on a target it is not written for.
pub const PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/berth-pod-init"));

/// Writes [`PROGRAM`] into the run directory `state` as `berth-pod-init` (mode 0755),
/// unless it is there already as that, with the same bytes; returns its path, or None when
/// this build has no program. A new file replaces an old one by rename, so inits still
/// running from it are not touched. A run directory mounted `noexec` is an error (the
/// program could not be executed from it).
pub fn install(state: &Path) -> std::io::Result<Option<PathBuf>> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if PROGRAM.is_empty() {
        return Ok(None);
    }
    let noexec = nix::sys::statvfs::statvfs(state)
        .is_ok_and(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_NOEXEC));
    if noexec {
        return Err(std::io::Error::other(format!(
            "{} is mounted noexec",
            state.display()
        )));
    }
    let path = state.join(POD_INIT_NAME);
    let installed = std::fs::symlink_metadata(&path)
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o7777 == 0o755)
        && std::fs::read(&path).is_ok_and(|b| b == PROGRAM);
    if installed {
        return Ok(Some(path));
    }
    let tmp = state.join(format!(".{POD_INIT_NAME}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(PROGRAM)?;
            // Exactly 0755, whatever the umask.
            f.set_permissions(std::fs::Permissions::from_mode(0o755))
        })
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(Some(path))
}

/// Starts the pod's init in a new pid namespace, in the cgroup directories `cgroups`:
/// `program` (see [`install`]) if given and it can be executed, else the same loop in the
/// monitor's copy ([`pod_init`]). Made when the first container of mode POD starts; it
/// lives until the monitor exits, and its death ends every process of the namespace.
///
/// Every container of the pod sees it as pid 1, and one allowed to trace (CAP_SYS_PTRACE,
/// which kubelet grants when asked, e.g. to a debugging container) may open its
/// `/proc/1/root`: the init has nothing to show there. It runs in a mount namespace of its
/// own with an empty root (`dir`, the pod's run directory, is where that root is mounted,
/// in its namespace only), as nobody (65534) with no capability, its parent-death signal
/// set after that change (which clears it), and no new privileges; it keeps the pod's
/// network, IPC and UTS namespaces, as the monitor holds them. It needs nothing else: it
/// only reaps the orphans reparented to it.
pub(super) fn start(
    cgroups: &[PathBuf],
    program: Option<&Path>,
    dir: &Path,
) -> Result<PodInit, String> {
    use std::os::unix::ffi::OsStrExt;
    // Made before the clone: the child only executes.
    let program = program.and_then(|p| std::ffi::CString::new(p.as_os_str().as_bytes()).ok());
    let argv0 = std::ffi::CString::new(POD_INIT_NAME).unwrap_or_default();
    let flags = CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS;
    // The child's failure to confine itself, in words (closed unwritten by its exec).
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("start the pod's init: pipe: {e}"))?;
    let pid = crate::linux::spawn::clone_in_cgroups(flags, cgroups, |born_in| {
        use std::os::fd::AsRawFd;
        let _ = crate::linux::spawn::join_cgroups(cgroups, born_in);
        // Our copies of the monitor's descriptors (its socket, containers' stdin pipes,
        // terminals) would keep them open for as long as the pod lives.
        crate::linux::sys::close_from_but(3, err_w.as_raw_fd());
        // The program, held open across the change of root (closed by its exec).
        let exe = program.as_deref().and_then(|p| {
            nix::fcntl::open(
                p,
                nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .ok()
        });
        // Never pid 1 of the pod with the host's root or root's capabilities.
        let confined = crate::linux::empty_root(dir).and_then(|()| {
            become_nobody().map_err(|e| format!("give up root and its capabilities: {e}"))
        });
        if let Err(e) = confined {
            let _ = nix::unistd::write(&err_w, e.as_bytes());
            crate::linux::sys::exit_now(1)
        }
        // The init must not outlive its monitor (a killed monitor would leave the pod's
        // processes behind): the kernel kills it when the monitor dies, whatever killed it.
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        // The pod init program, named POD_INIT_NAME: containers see that as their pid 1.
        if let Some(fd) = &exe {
            let _ = nix::unistd::execveat(
                fd,
                c"",
                &[argv0.as_c_str()],
                &[] as &[&std::ffi::CStr],
                nix::fcntl::AtFlags::AT_EMPTY_PATH,
            );
        }
        // It cannot be executed (no program in this build, a run directory mounted noexec):
        // the same loop, in this copy.
        let _ = nix::unistd::close(err_w.as_raw_fd());
        pod_init()
    })
    .map_err(|e| format!("start the pod's init: {e}"))?;
    drop(err_w);
    let mut failure = String::new();
    let _ = std::io::Read::read_to_string(&mut std::fs::File::from(err_r), &mut failure);
    if !failure.is_empty() {
        let _ = nix::sys::wait::waitpid(pid, None);
        return Err(format!("start the pod's init: {failure}"));
    }
    match std::fs::File::open(format!("/proc/{pid}/ns/pid")) {
        Ok(ns) => Ok(PodInit { pid, ns }),
        Err(e) => {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            Err(format!("open the pod's pid namespace: {e}"))
        }
    }
}

/// The id the pod's init runs as (nobody; its group nogroup).
const NOBODY: u32 = 65534;

/// In the pod init's child: no supplementary group, group and user nobody (which clears
/// every capability), no new privileges. Where nobody is no id of this process's user
/// namespace, every capability is given up instead, the bounding set too, so that its
/// exec (as root) gains none.
fn become_nobody() -> nix::Result<()> {
    use crate::linux::sys;
    let _ = sys::set_groups(&[]);
    if sys::set_gid(NOBODY)
        .and_then(|()| sys::set_uid(NOBODY))
        .is_err()
    {
        let known = sys::known_capabilities();
        for cap in (0..64u32).filter(|c| known & (1 << c) != 0) {
            sys::drop_from_bounding_set(cap)?;
        }
        sys::set_ambient_capabilities(0)?;
        sys::set_capabilities(0, 0, 0)?;
    }
    nix::sys::prctl::set_no_new_privs()
}

/// The name the pod's init runs under (argv[0] of berthd re-executed as the init): what
/// containers sharing the pod's pid namespace see as its pid 1, like containerd's /pause.
pub const POD_INIT_NAME: &str = "berth-pod-init";

/// Pid 1 of a shared pod pid namespace: reaps the orphans reparented to it, forever.
pub fn pod_init() -> ! {
    use nix::sys::signal::{SigSet, Signal as S};
    // Nothing ignored (berthd, a Rust program, ignores SIGPIPE), as in every process of a
    // pod: pid 1 of a namespace gets no signal it has no handler for anyway.
    crate::linux::sys::reset_signals();
    // Its command name too (an exec through /proc/self/exe would be named "exe").
    if let Ok(name) = std::ffi::CString::new(POD_INIT_NAME) {
        let _ = nix::sys::prctl::set_name(&name);
    }
    let mut set = SigSet::empty();
    set.add(S::SIGCHLD);
    let _ = set.thread_block();
    loop {
        while matches!(
            nix::sys::wait::waitpid(None, Some(WaitPidFlag::WNOHANG)),
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..))
        ) {}
        let _ = set.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_program_is_installed_executable_and_put_right_when_it_is_not() {
        if PROGRAM.is_empty() {
            return; // a target the program is not written for
        }
        assert_eq!(&PROGRAM[..4], b"\x7fELF");
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let p = install(dir.path()).unwrap().unwrap();
        assert_eq!(p, dir.path().join(POD_INIT_NAME));
        assert_eq!(std::fs::read(&p).unwrap(), PROGRAM);
        assert_eq!(mode(&p), 0o755);
        // The same bytes but not executable: replaced.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        install(dir.path()).unwrap().unwrap();
        assert_eq!(mode(&p), 0o755);
        // Other bytes: replaced; nothing else is left in the directory.
        std::fs::write(&p, b"old").unwrap();
        install(dir.path()).unwrap().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), PROGRAM);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
    }
}

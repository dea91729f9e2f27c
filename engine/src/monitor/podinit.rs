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
/// `/proc/1/root`, `cwd` and `fd/*`: the init has nothing to show there. It runs in a mount
/// namespace of its own with an empty root (`dir`, the pod's run directory, is where that
/// root is mounted, in its namespace only), its standard streams on /dev/null, with no
/// capability at all (bounding set included) and no new privileges, not dumpable (the
/// program makes itself so: only CAP_SYS_PTRACE may trace it or open its /proc files), and
/// under a seccomp filter that allows only its exec and its loop's calls
/// ([`pod_init_filter`](crate::spec::seccomp::pod_init_filter)). It
/// stays root of the host's user namespace — without capabilities that gives it nothing,
/// and only root may signal it (as nobody, any process of the node running as nobody
/// could kill it, and with it the pod). It keeps the pod's network, IPC and UTS
/// namespaces, as the monitor holds them. It needs nothing else: it only reaps the orphans
/// reparented to it.
pub(super) fn start(
    cgroups: &[PathBuf],
    program: Option<&Path>,
    dir: &Path,
) -> Result<PodInit, String> {
    use std::os::unix::ffi::OsStrExt;
    // Made before the clone: the child only executes. The program is executed by its name
    // in its directory (so the kernel names the process after it on every version).
    let program = program.and_then(|p| {
        let name = std::ffi::CString::new(p.file_name()?.as_bytes()).ok()?;
        let parent = std::ffi::CString::new(p.parent()?.as_os_str().as_bytes()).ok()?;
        Some((parent, name))
    });
    let argv0 = std::ffi::CString::new(POD_INIT_NAME).unwrap_or_default();
    let filter = crate::spec::seccomp::pod_init_filter()
        .map_err(|e| format!("start the pod's init: {e}"))?;
    let flags = CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS;
    // The child's failure to confine itself, in words (closed unwritten by its exec).
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("start the pod's init: pipe: {e}"))?;
    let pid = crate::linux::spawn::clone_in_cgroups(flags, cgroups, |born_in| {
        use nix::fcntl::{OFlag, open};
        use std::os::fd::AsRawFd;
        let _ = crate::linux::spawn::join_cgroups(cgroups, born_in);
        // The init must not outlive its monitor (a killed monitor would leave the pod's
        // processes behind): the kernel kills it when the monitor dies, whatever killed it.
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        // Our copies of the monitor's descriptors (its socket, its log on 2, containers'
        // stdin pipes, terminals) would keep them open for as long as the pod lives, and
        // show them to a container that may open /proc/1/fd.
        crate::linux::sys::close_from_but(3, err_w.as_raw_fd());
        if let Ok(null) = open("/dev/null", OFlag::O_RDWR, nix::sys::stat::Mode::empty()) {
            let _ = nix::unistd::dup2_stdin(&null);
            let _ = nix::unistd::dup2_stdout(&null);
            let _ = nix::unistd::dup2_stderr(&null);
        }
        // The program's directory, held open across the change of root (closed by the
        // exec, or below).
        let exe_dir = program.as_ref().and_then(|(parent, _)| {
            open(
                parent.as_c_str(),
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .ok()
        });
        // Never pid 1 of the pod with the host's root or capabilities.
        let confined = crate::linux::empty_root(dir)
            .and_then(|()| {
                give_up_capabilities().map_err(|e| format!("give up every capability: {e}"))
            })
            .and_then(|()| {
                crate::linux::sys::install_seccomp(&filter.0)
                    .map_err(|e| format!("install its seccomp filter: {e}"))
            });
        if let Err(e) = confined {
            let _ = nix::unistd::write(&err_w, e.as_bytes());
            crate::linux::sys::exit_now(1)
        }
        // The pod init program, named POD_INIT_NAME: containers see that as their pid 1.
        if let (Some(fd), Some((_, name))) = (&exe_dir, &program) {
            let _ = nix::unistd::execveat(
                fd,
                name.as_c_str(),
                &[argv0.as_c_str()],
                &[] as &[&std::ffi::CStr],
                nix::fcntl::AtFlags::empty(),
            );
        }
        // It cannot be executed (no program in this build, a run directory mounted noexec):
        // the same loop in this copy, which is not dumpable (as the monitor it copies).
        drop(exe_dir);
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

/// In the pod init's child: no supplementary group, no capability (the bounding set
/// emptied too, so that its exec as root gains none), no new privileges.
fn give_up_capabilities() -> nix::Result<()> {
    use crate::linux::sys;
    sys::set_groups(&[])?;
    sys::drop_all_from_bounding_set(sys::known_capabilities()).map_err(|(_, e)| e)?;
    sys::set_ambient_capabilities(0)?;
    sys::set_capabilities(0, 0, 0)?;
    nix::sys::prctl::set_no_new_privs()
}

/// The name the pod's init runs under (argv[0] and its command name): what
/// containers sharing the pod's pid namespace see as its pid 1, like containerd's /pause.
pub const POD_INIT_NAME: &str = "berth-pod-init";

/// Pid 1 of a shared pod pid namespace: reaps the orphans reparented to it, forever.
pub fn pod_init() -> ! {
    use nix::sys::signal::{SigSet, Signal as S};
    // Nothing ignored (berthd, a Rust program, ignores SIGPIPE), as in every process of a
    // pod: pid 1 of a namespace gets no signal it has no handler for anyway.
    crate::linux::sys::reset_signals();
    // Not dumpable (as the program makes itself): only CAP_SYS_PTRACE may trace it.
    let _ = nix::sys::prctl::set_dumpable(false);
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

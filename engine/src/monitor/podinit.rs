//! The pod's shared pid namespace (CRI pid mode POD): a small init as its pid 1, made
//! when the first container of mode POD starts.

use std::path::PathBuf;

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

/// Starts the pod's init in a new pid namespace, in the cgroup directories `cgroups`.
/// Made when the first container of mode POD starts; it lives until the monitor exits,
/// and its death ends every process of the namespace.
pub(super) fn start(cgroups: &[PathBuf]) -> Result<PodInit, String> {
    let pid = crate::linux::spawn::clone_in_cgroups(CloneFlags::CLONE_NEWPID, cgroups, |born_in| {
        let _ = crate::linux::spawn::join_cgroups(cgroups, born_in);
        // The init must not outlive its monitor (a killed monitor would leave the pod's
        // processes behind): the kernel kills it when the monitor dies, whatever killed it.
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        // Our copies of the monitor's descriptors (its socket, containers' stdin pipes,
        // terminals) would keep them open for as long as the pod lives.
        crate::linux::sys::close_from(3);
        // berthd again, as a program of its own named POD_INIT_NAME: containers see that
        // as their pid 1, not the monitor's command line with the node's paths in it.
        let exe = c"/proc/self/exe";
        let argv0 = std::ffi::CString::new(POD_INIT_NAME).unwrap_or_default();
        let _ = nix::unistd::execve::<_, &std::ffi::CStr>(exe, &[argv0.as_c_str()], &[]);
        // Cannot exec (the binary was replaced): the same loop, in this copy.
        pod_init()
    })
    .map_err(|e| format!("start the pod's init: {e}"))?;
    match std::fs::File::open(format!("/proc/{pid}/ns/pid")) {
        Ok(ns) => Ok(PodInit { pid, ns }),
        Err(e) => {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            Err(format!("open the pod's pid namespace: {e}"))
        }
    }
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

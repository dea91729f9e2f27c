//! The namespaces of a pod, as its monitor makes them at start (and berth releases them
//! at teardown): UTS with the hostname, network with loopback up and bound to a file, IPC
//! with its /dev/shm, and a user namespace the others are made inside.

use std::os::fd::OwnedFd;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;

/// What a pod asks for.
#[derive(Debug)]
pub struct PodNamespaces<'a> {
    /// A UTS namespace with this hostname (empty: the node's).
    pub hostname: &'a str,
    /// A network namespace, bound at this path.
    pub netns: Option<&'a Path>,
    /// An IPC namespace, its /dev/shm a tmpfs mounted here.
    pub shm: Option<&'a Path>,
    /// A user namespace with these mappings, bound at this path; the pod's other
    /// namespaces are made inside it.
    pub userns: Option<(&'a crate::spec::userns::IdMappings, &'a Path)>,
}

/// Makes and enters the pod's namespaces. The caller (the monitor) must be
/// single-threaded.
pub fn make_pod_namespaces(ns: &PodNamespaces<'_>) -> Result<(), String> {
    let mut flags = CloneFlags::empty();
    if !ns.hostname.is_empty() {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    if ns.netns.is_some() {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if ns.shm.is_some() {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if let Some((m, target)) = ns.userns {
        // The pod's namespaces are made inside its user namespace (and joined).
        create_userns(m, target, flags)?;
        flags = CloneFlags::empty();
    }
    if !flags.is_empty() {
        nix::sched::unshare(flags).map_err(|e| format!("unshare {flags:?}: {e}"))?;
    }
    if !ns.hostname.is_empty() {
        nix::unistd::sethostname(ns.hostname).map_err(|e| format!("sethostname: {e}"))?;
    }
    if let Some(netns) = ns.netns {
        super::sys::loopback_up().map_err(|e| format!("bring up lo: {e}"))?;
        bind_namespace("/proc/self/ns/net", netns)?;
    }
    if let Some(shm) = ns.shm {
        std::fs::create_dir_all(shm).map_err(|e| format!("create {}: {e}", shm.display()))?;
        mount(
            Some("shm"),
            shm,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=1777,size=65536k"),
        )
        .map_err(|e| format!("mount pod /dev/shm: {e}"))?;
    }
    Ok(())
}

/// Detaches whatever is mounted at `p` (a namespace's bind mount, a pod's /dev/shm).
pub fn detach(p: &Path) {
    let _ = umount2(p, MntFlags::MNT_DETACH);
}

/// Detaches a namespace bind mount and removes its file.
pub fn unbind_namespace(p: &Path) {
    detach(p);
    let _ = std::fs::remove_file(p);
}

/// Creates a user namespace with the pod's mappings and binds it at `target`, and makes the
/// pod's `owned` namespaces (network, IPC, UTS) inside it and joins them, so that root of
/// the pod has its capabilities over them (binding ports below 1024, raw sockets,
/// NET_ADMIN) and none over the host's. A child unshares the user namespace and waits while
/// we (root of the host) write its maps, unshares the others from inside, and waits again
/// while we join them; the bind mount keeps the user namespace alive.
fn create_userns(
    m: &crate::spec::userns::IdMappings,
    target: &Path,
    owned: CloneFlags,
) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let pipe =
        || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
    let (go_r, go_w) = pipe()?; // us -> child: maps written
    let (ready_r, ready_w) = pipe()?; // child -> us: namespaces made
    let (done_r, done_w) = pipe()?; // us -> child: joined, exit
    let ours = [go_w.as_raw_fd(), ready_r.as_raw_fd(), done_w.as_raw_fd()];
    let (mut go_r, mut ready_w, mut done_r) = (Some(go_r), Some(ready_w), Some(done_r));
    let child = super::sys::clone_child(CloneFlags::CLONE_NEWUSER, || {
        // Our copies of the parent's ends must go first, or the reads below would never
        // see end-of-file.
        for fd in ours {
            let _ = nix::unistd::close(fd);
        }
        let wait_eof = |r: Option<OwnedFd>| {
            if let Some(r) = r {
                let mut b = [0u8; 1];
                let _ = std::fs::File::from(r).read(&mut b);
            }
        };
        wait_eof(go_r.take());
        if !owned.is_empty() && nix::sched::unshare(owned).is_err() {
            return 1;
        }
        if let Some(w) = ready_w.take() {
            let _ = std::fs::File::from(w).write_all(b"1");
        }
        wait_eof(done_r.take());
        0
    })
    .map_err(|e| format!("create the pod's user namespace: {e}"))?;
    drop((go_r, ready_w, done_r));
    let result = (|| {
        for (file, text) in [("uid_map", m.uid_map()), ("gid_map", m.gid_map())] {
            std::fs::write(format!("/proc/{child}/{file}"), &text)
                .map_err(|e| format!("write {file} {:?}: {e}", text.trim_end()))?;
        }
        bind_namespace(&format!("/proc/{child}/ns/user"), target)
    })();
    drop(go_w);
    let result = result.and_then(|()| {
        let mut b = [0u8; 1];
        let n = std::fs::File::from(ready_r).read(&mut b).unwrap_or(0);
        if n == 0 {
            return Err(format!(
                "the pod's network, IPC and UTS namespaces could not be made in its user namespace ({owned:?})"
            ));
        }
        for (flag, kind) in [
            (CloneFlags::CLONE_NEWNET, "net"),
            (CloneFlags::CLONE_NEWIPC, "ipc"),
            (CloneFlags::CLONE_NEWUTS, "uts"),
        ] {
            if owned.contains(flag) {
                let path = format!("/proc/{child}/ns/{kind}");
                let f = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
                nix::sched::setns(&f, flag)
                    .map_err(|e| format!("join the pod's {kind} namespace: {e}"))?;
            }
        }
        Ok(())
    });
    drop(done_w);
    let _ = nix::sys::wait::waitpid(child, None);
    result
}

/// Bind-mounts the namespace file `src` (`/proc/<pid>/ns/<kind>`) at `target`, so that
/// the namespace outlives its processes.
fn bind_namespace(src: &str, target: &Path) -> Result<(), String> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    }
    std::fs::File::create(target).map_err(|e| format!("create {}: {e}", target.display()))?;
    mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("bind {src} at {}: {e}", target.display()))
}

//! Restoring a container from CRIU images, in the monitor: a child makes a mount namespace
//! of its own, joins the container's cgroup, mounts the container's new overlay root there
//! (its writable layer already holds the checkpoint's changes), and execs `criu restore`
//! with that root. `--restore-sibling` makes the restored tree a child of the monitor (the
//! child's parent), as a started container is; criu exits once the tree runs, and its pid
//! comes back in a pid file.
//!
//! The checkpoint's external mounts are bound from the new container's sources, its
//! standard streams' pipes become the new container's pipes (`--inherit-fd`), and the
//! pod's network namespace is the one it had been taken out of (`extRootNetNS`).
//! Established TCP connections come back closed (`--tcp-close`): the pod's address is new.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::mount::{MsFlags, mount};
use nix::sched::CloneFlags;
use nix::unistd::Pid;

use super::init::{Step, step};
use super::spawn::{LaunchSpec, SpawnError, Stdio};

/// What the monitor is asked to restore (protocol 5's `Restore`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RestoreSpec {
    /// The criu binary.
    pub criu: PathBuf,
    pub images_dir: PathBuf,
    pub work_dir: PathBuf,
    /// (name in the checkpoint — its path in the old container —, new host source).
    pub external_mounts: Vec<(String, PathBuf)>,
    /// What fds 0, 1 and 2 of the checkpointed process were (`pipe:[N]`, a path …).
    pub stdio: Vec<String>,
    /// The pod's network namespace, for the checkpoint's external one.
    pub netns: Option<PathBuf>,
}

/// The key CRIU knows the pod's network namespace by (as runc and crun name it).
pub const NET_NS_KEY: &str = "extRootNetNS";

/// The first descriptor number handed to criu (0–2 are its own).
const FIRST_FD: i32 = 3;

/// Restores the container; its pid, a child of the caller, once criu has exited.
pub fn restore(spec: &LaunchSpec, stdio: Stdio, r: &RestoreSpec) -> Result<Pid, SpawnError> {
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;
    let pidfile = r.work_dir.join("restored.pid");
    let _ = std::fs::remove_file(&pidfile);
    // CRIU gives the pod's UTS namespace the checkpointed pod's host name: the pod's own
    // is put back once it is done.
    let hostname = nix::unistd::gethostname().ok();
    let own_uts = pods_own("/proc/self/ns/uts", "/proc/1/ns/uts");
    let mut stdio = Some(stdio);
    let pid = super::sys::clone_child(CloneFlags::CLONE_NEWNS, || {
        let Some(io) = stdio.take() else { return 127 };
        let failure = match child(spec, io, r, &pidfile, &err_w) {
            Ok(never) => match never {},
            Err(e) => e,
        };
        super::spawn::fail(&err_w, failure)
    })
    .map_err(SpawnError::Clone)?;
    drop(err_w);
    drop(stdio);
    let mut msg = String::new();
    let _ = std::io::Read::read_to_string(&mut std::fs::File::from(err_r), &mut msg);
    let status = nix::sys::wait::waitpid(pid, None);
    if own_uts && let Some(h) = &hostname {
        let _ = nix::unistd::sethostname(h);
    }
    if !msg.is_empty() {
        return Err(SpawnError::Child(msg));
    }
    match status {
        Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => {}
        other => {
            return Err(SpawnError::Child(format!(
                "criu restore failed ({other:?}): {}",
                last_errors(&r.work_dir.join("restore.log"))
                    .unwrap_or_else(|| format!("see {}", r.work_dir.join("restore.log").display()))
            )));
        }
    }
    let text = std::fs::read_to_string(&pidfile).unwrap_or_default();
    text.trim().parse::<i32>().map(Pid::from_raw).map_err(|_| {
        SpawnError::Child(format!(
            "criu restore wrote no pid to {}",
            pidfile.display()
        ))
    })
}

/// Whether the namespace `pod` is known to be another than the node's `node`: false
/// when either cannot be read, so that nothing of the node's is ever joined or changed.
fn pods_own(pod: &str, node: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(pod), std::fs::metadata(node)) {
        (Ok(x), Ok(y)) => x.dev() != y.dev() || x.ino() != y.ino(),
        _ => false,
    }
}

/// The last error lines of a CRIU log, if it has any.
pub fn last_errors(log: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("Error")).collect();
    (!errors.is_empty()).then(|| errors[errors.len().saturating_sub(4)..].join("; "))
}

enum Never {}

fn child(
    spec: &LaunchSpec,
    stdio: Stdio,
    r: &RestoreSpec,
    pidfile: &std::path::Path,
    err_w: &OwnedFd,
) -> Step<Never> {
    super::init::place_in_cgroups(spec, None)?;
    step(
        || "make the mount tree a slave of the host's".into(),
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        ),
    )?;
    super::rootfs::mount_overlay(spec, None)?;
    let root = &spec.rootfs.target;
    for (name, source) in &r.external_mounts {
        super::rootfs::ensure_mount_point(root, name, source.is_dir())?;
    }
    // The descriptors criu inherits: the new streams where the old were pipes, then the
    // pod's network namespace.
    let (stdin, stdout, stderr) = match stdio {
        Stdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => (stdin, Some(stdout), Some(stderr)),
        _ => return Err("a restored container has pipes for its streams, not a terminal".into()),
    };
    let mut inherit: Vec<(OwnedFd, String)> = Vec::new();
    for (fd, key) in [stdin, stdout, stderr].into_iter().zip(&r.stdio) {
        if let Some(fd) = fd
            && key.starts_with("pipe:")
        {
            inherit.push((fd, key.clone()));
        }
    }
    if let Some(ns) = &r.netns {
        let f = step(
            || format!("open the pod's network namespace {}", ns.display()),
            std::fs::File::open(ns),
        )?;
        inherit.push((OwnedFd::from(f), NET_NS_KEY.to_owned()));
    }
    let mut args: Vec<String> = vec![
        "criu".into(),
        "restore".into(),
        "--images-dir".into(),
        r.images_dir.display().to_string(),
        "--work-dir".into(),
        r.work_dir.display().to_string(),
        "--log-file".into(),
        "restore.log".into(),
        "-v4".into(),
        "--root".into(),
        root.display().to_string(),
        "--restore-detached".into(),
        "--restore-sibling".into(),
        "--pidfile".into(),
        pidfile.display().to_string(),
        "--manage-cgroups=ignore".into(),
        "--tcp-close".into(),
        "--network-lock".into(),
        "nftables".into(),
        "--file-locks".into(),
    ];
    // Into the pod's UTS and IPC namespaces — the monitor's —, unless those are the node's:
    // CRIU sets the checkpoint's host name in a namespace it joins.
    let parent = nix::unistd::getppid();
    for ns in ["uts", "ipc"] {
        let own = format!("/proc/{parent}/ns/{ns}");
        if !pods_own(&own, &format!("/proc/1/ns/{ns}")) {
            continue;
        }
        args.push("--join-ns".into());
        args.push(format!("{ns}:{own}"));
    }
    for (i, (_, key)) in inherit.iter().enumerate() {
        args.push("--inherit-fd".into());
        args.push(format!("fd[{}]:{key}", FIRST_FD + i as i32));
    }
    for (name, source) in &r.external_mounts {
        args.push("--external".into());
        args.push(format!("mnt[{name}]:{}", source.display()));
    }
    // criu's own streams go nowhere (it logs to restore.log); the inherited descriptors
    // are moved to 3, 4, … and everything else is closed.
    let null = step(|| "open /dev/null".into(), std::fs::File::open("/dev/null"))?;
    let raw: Vec<i32> = inherit
        .iter()
        .map(|(fd, _)| super::sys::dup_above(fd.as_raw_fd(), 100))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("move descriptors for criu: {e}"))?;
    for target in 0..3 {
        super::sys::dup_onto(null.as_raw_fd(), target)
            .map_err(|e| format!("stdio of criu: {e}"))?;
    }
    // The error pipe goes right after them (close-on-exec again), where nothing else
    // lands: a failure from here on is still reported there, not into a container's pipe.
    let err_at = FIRST_FD + raw.len() as i32;
    let err_copy = super::sys::dup_above(err_w.as_raw_fd(), 100)
        .map_err(|e| format!("move the error pipe: {e}"))?;
    for (i, fd) in raw.iter().enumerate() {
        super::sys::dup_onto(*fd, FIRST_FD + i as i32)
            .map_err(|e| format!("hand descriptor {i} to criu: {e}"))?;
    }
    super::sys::dup_onto(err_copy, err_at).map_err(|e| format!("move the error pipe: {e}"))?;
    super::sys::set_cloexec(err_at).map_err(|e| format!("move the error pipe: {e}"))?;
    super::sys::close_from(err_at + 1);
    // `err_w`'s number may be one of criu's now, and the descriptors dropped on a return
    // are closed already: a failed exec is reported here, on the moved copy, and the child
    // ends without returning.
    let e = exec_criu(r, &args);
    super::sys::write_and_exit(err_at, &e)
}

/// Execs criu with `args`; returns only with why it could not.
fn exec_criu(r: &RestoreSpec, args: &[String]) -> String {
    let argv: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_str()).unwrap_or_default())
        .collect();
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != "PATH")
        .filter_map(|(k, v)| {
            let mut s = k.into_encoded_bytes();
            s.push(b'=');
            s.extend(v.into_encoded_bytes());
            CString::new(s).ok()
        })
        .collect();
    // criu restores tmpfs contents with tar, found on PATH.
    env.push(c"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned());
    let exe = CString::new(r.criu.as_os_str().as_encoded_bytes()).unwrap_or_default();
    let e = nix::unistd::execve(&exe, &argv, &env).err();
    format!("exec {}: {e:?}", r.criu.display())
}

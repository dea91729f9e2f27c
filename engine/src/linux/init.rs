//! The container side of process creation: what the cloned child does, in order, before it
//! execs the container's command. Every step names itself in the error it returns, so a
//! failure reads like `mount /proc: EPERM`.
//!
//! Order (after youki and crun): join the cgroups; make the mount tree private; mount the
//! overlay root and everything inside it; mask and protect paths; pivot_root; set sysctls
//! and oom_score_adj; set up stdio; drop to the container's groups and user keeping the
//! capabilities we grant; set the capability sets; no_new_privs; exec.

use std::ffi::CString;
use std::fs;
use std::path::Path;

use nix::mount::{MsFlags, mount};

use super::rootfs::{
    make_device, make_parent_mount_private, mask, mount_one, mount_overlay, pivot, readonly,
    remount_bind,
};
use super::spawn::{HookSync, LaunchSpec, Stdio};
use crate::spec::hooks::Point;
use crate::spec::mounts::Propagation;
use crate::spec::security::ALL_CAPABILITIES;

pub(super) type Step<T> = Result<T, String>;

pub(super) fn step<T, E: std::fmt::Display>(
    what: impl FnOnce() -> String,
    r: Result<T, E>,
) -> Step<T> {
    r.map_err(|e| format!("{}: {e}", what()))
}

/// Does everything up to and including exec; returns only with an error message.
pub fn become_container(
    spec: &LaunchSpec,
    prepared: &Prepared,
    stdio: Stdio,
    sync: Option<HookSync>,
    born_in: Option<&Path>,
) -> String {
    match run(spec, prepared, stdio, sync, born_in) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

/// Connects to the runtime's socket (which learns our pid from the connection) and waits
/// for its one byte: the runtime has put us in our systemd scope and set its limits.
fn wait_for_placement(park: &std::path::Path) -> std::io::Result<()> {
    use std::io::Read;
    let mut s = std::os::unix::net::UnixStream::connect(park)?;
    let mut b = [0u8; 1];
    match s.read(&mut b)? {
        1 => Ok(()),
        _ => Err(std::io::Error::other(
            "the runtime closed the connection without placing the container",
        )),
    }
}

/// Waits for the runtime to make the container's systemd scope (when it does), then joins
/// the container's cgroups, but `born_in` (the one it was cloned into).
pub(super) fn place_in_cgroups(spec: &LaunchSpec, born_in: Option<&Path>) -> Step<()> {
    if let Some(park) = &spec.cgroup_park {
        step(
            || {
                format!(
                    "wait for the runtime to place the container in its cgroup ({})",
                    park.display()
                )
            },
            wait_for_placement(park),
        )?;
    }
    super::spawn::join_cgroups(&spec.cgroup_dirs, born_in)
}

/// `born_in`: the cgroup directory the process was cloned into (it joins the others).
fn run(
    spec: &LaunchSpec,
    prepared: &Prepared,
    stdio: Stdio,
    mut sync: Option<HookSync>,
    born_in: Option<&Path>,
) -> Step<Never> {
    if let Some(s) = sync.as_mut() {
        s.close_parent_ends();
    }
    // Opened first, while the host's paths are visible; entered last.
    let userns = match &spec.userns {
        Some(u) => Some(step(
            || format!("open the pod's user namespace {}", u.path.display()),
            fs::File::open(&u.path),
        )?),
        None => None,
    };
    place_in_cgroups(spec, born_in)?;
    let root = &spec.rootfs.target;
    // Slave, not private: nothing we mount leaks to the host, and host mounts still reach
    // volumes that ask for host-to-container propagation (runc's default too). A
    // bidirectional volume needs the host's shared mounts to stay shared in our copy of
    // them, so that its bind joins the host's peer group (runc's rootfsPropagation
    // rshared, which containerd asks for then); the mount our root is made under is then
    // made private, so that the root and what is mounted in it stay ours.
    let bidirectional = spec
        .mounts
        .iter()
        .any(|m| m.propagation == Some(Propagation::RShared));
    let root_propagation = if bidirectional {
        MsFlags::MS_REC | MsFlags::MS_SHARED
    } else {
        MsFlags::MS_REC | MsFlags::MS_SLAVE
    };
    step(
        || format!("set the propagation of / to {root_propagation:?}"),
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            root_propagation,
            None::<&str>,
        ),
    )?;
    if bidirectional {
        make_parent_mount_private(root)?;
    }
    mount_overlay(spec, userns.as_ref())?;
    for m in &spec.mounts {
        mount_one(root, m, spec, userns.as_ref())?;
    }
    for d in &spec.devices {
        make_device(root, d)?;
    }
    // Sysctls go through the container's /proc before /proc/sys is made read-only. A
    // name with slashes is a path already (dots may then be part of an interface name).
    for (k, v) in &spec.sysctls {
        if k.contains("..") || k.starts_with('/') {
            return Err(format!("sysctl {k:?}: not a sysctl name"));
        }
        let rel = if k.contains('/') {
            k.clone()
        } else {
            k.replace('.', "/")
        };
        let f = root.join("proc/sys").join(rel);
        step(|| format!("sysctl {k}"), fs::write(&f, v))?;
    }
    for p in &spec.masked_paths {
        mask(root, p)?;
    }
    for p in &spec.readonly_paths {
        readonly(root, p)?;
    }
    if let Some(hooks) = &spec.hooks {
        // The runtime's hooks (prestart, createRuntime) run in the monitor meanwhile.
        if let Some(s) = sync {
            wait_for_runtime_hooks(s)?;
        }
        // createContainer: in our mount namespace, the host's paths still visible.
        run_hooks(Point::CreateContainer, hooks, &spec.id)?;
    }
    pivot(root)?;
    if spec.rootfs.readonly {
        step(
            || "remount / read-only".into(),
            remount_bind(Path::new("/"), MsFlags::MS_RDONLY),
        )?;
    }
    if let Some(adj) = spec.oom_score_adj {
        // Lowering the score needs CAP_SYS_RESOURCE, which a node may not grant: keep the
        // inherited value then, as containerd's restrict_oom_score_adj does.
        let _ = fs::write("/proc/self/oom_score_adj", adj.to_string());
    }
    if let Some(ns) = &userns {
        // From here on our capabilities are the namespace's: full inside, none over the
        // host's mounts and namespaces, which are all set up by now.
        step(
            || "enter the pod's user namespace".into(),
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWUSER),
        )?;
    }
    if let Some(hooks) = &spec.hooks {
        // startContainer: inside, as the container's root (in its user namespace when it
        // has one): the program is looked up in the container's file system.
        run_hooks(Point::StartContainer, hooks, &spec.id)?;
    }
    become_process(&stdio, &spec.process, prepared)
}

fn run_hooks(point: Point, hooks: &crate::spec::hooks::Hooks, id: &str) -> Step<()> {
    super::hooks::run_point(point, hooks, id, Some(nix::unistd::getpid().as_raw()))
}

/// Tells the monitor our namespaces and mounts are made and waits until its hooks have
/// run; end-of-file instead of its byte means it gave up on us.
fn wait_for_runtime_hooks(s: HookSync) -> Step<()> {
    use std::io::{Read, Write};
    step(
        || "signal the runtime's hooks".into(),
        fs::File::from(s.ready).write_all(&[1]),
    )?;
    let mut byte = [0u8; 1];
    match fs::File::from(s.go).read(&mut byte) {
        Ok(1) => Ok(()),
        _ => Err("the runtime's createRuntime hooks did not complete".into()),
    }
}

/// The steps a container's process and an exec process share: standard streams, working
/// directory, identity, no_new_privs, exec. Allocates nothing that is alive at the exec
/// (what that takes is in `prepared`), so that an exec child sharing the monitor's memory
/// can run it.
fn become_process(
    stdio: &Stdio,
    p: &super::spawn::ProcessSpec,
    prepared: &Prepared,
) -> Step<Never> {
    let super::spawn::ProcessSpec {
        cwd,
        user,
        no_new_privs,
        seccomp,
        apparmor,
        selinux_label,
        ..
    } = p;
    let (no_new_privs, apparmor, selinux_label) =
        (*no_new_privs, apparmor.as_deref(), selinux_label.as_deref());
    // A session of its own (a terminal's setup makes one too): the container's process is
    // not in its monitor's session, which CRIU refuses to dump ("a session leader … is
    // outside of its pid namespace"), and a signal to the monitor's group misses it.
    let _ = nix::unistd::setsid();
    redirect(stdio, user)?;
    super::sys::reset_signals();
    step(|| format!("chdir {cwd}"), nix::unistd::chdir(cwd.as_str()))?;
    // The LSM labels take effect at exec.
    if let Some(profile) = apparmor {
        let attr = if Path::new("/proc/self/attr/apparmor/exec").exists() {
            "/proc/self/attr/apparmor/exec"
        } else {
            "/proc/self/attr/exec"
        };
        step(
            || format!("set AppArmor profile {profile}"),
            fs::write(attr, format!("exec {profile}")),
        )?;
    }
    if let Some(label) = selinux_label {
        step(
            || format!("set SELinux label {label}"),
            fs::write("/proc/self/attr/exec", label),
        )?;
    }
    // Without no_new_privs the kernel takes a filter only from a process holding
    // CAP_SYS_ADMIN: install it before the identity change drops capabilities. With it,
    // install it last, so that it confines nothing of berth's own set-up.
    if !no_new_privs {
        install_seccomp(seccomp)?;
    }
    set_identity_of(prepared, user)?;
    if no_new_privs {
        step(
            || "no_new_privs".into(),
            nix::sys::prctl::set_no_new_privs(),
        )?;
        install_seccomp(seccomp)?;
    }
    exec_prepared(p, prepared)
}

fn install_seccomp(filters: &[crate::spec::seccomp::Filter]) -> Step<()> {
    for f in filters {
        step(
            || "install the seccomp filter".into(),
            super::sys::install_seccomp(&f.0),
        )?;
    }
    Ok(())
}

/// The exec side: already inside the container's mount and pid namespaces. Runs in a child
/// that may share the monitor's memory: see [`become_process`].
pub fn become_exec(spec: &super::spawn::ExecSpec, prepared: &Prepared, stdio: &Stdio) -> String {
    match run_exec(spec, prepared, stdio) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn run_exec(spec: &super::spawn::ExecSpec, prepared: &Prepared, stdio: &Stdio) -> Step<Never> {
    // Its own session, so that a timeout can kill it and everything it started.
    let _ = nix::unistd::setsid();
    become_process(stdio, &spec.process, prepared)
}

fn redirect(stdio: &Stdio, user: &crate::spec::process::User) -> Step<()> {
    match stdio {
        Stdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            if let Some(i) = stdin {
                step(|| "stdin".into(), nix::unistd::dup2_stdin(i))?;
            } else {
                let null = step(|| "open /dev/null".into(), fs::File::open("/dev/null"))?;
                step(|| "stdin".into(), nix::unistd::dup2_stdin(&null))?;
            }
            step(|| "stdout".into(), nix::unistd::dup2_stdout(stdout))?;
            step(|| "stderr".into(), nix::unistd::dup2_stderr(stderr))?;
            Ok(())
        }
        Stdio::Terminal(slave) => use_terminal(slave, user),
        Stdio::Console(socket) => {
            // Our root is the container's by now: this is its own devpts instance.
            let master = step(
                || "open /dev/pts/ptmx".into(),
                nix::fcntl::open(
                    "/dev/pts/ptmx",
                    nix::fcntl::OFlag::O_RDWR
                        | nix::fcntl::OFlag::O_NOCTTY
                        | nix::fcntl::OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                ),
            )?;
            let slave = step(
                || "open the terminal's slave".into(),
                super::sys::open_pty_peer(&master),
            )?;
            step(
                || "hand the terminal to the monitor".into(),
                super::sys::send_fd(socket, &master),
            )?;
            drop(master);
            // The socket is close-on-exec: the container's process does not keep it.
            use_terminal(&slave, user)
        }
    }
}

/// Makes the terminal `slave` stdin, stdout, stderr and the controlling terminal of a new
/// session (an exec process has one already), so that job control and SIGWINCH work.
fn use_terminal(slave: &std::os::fd::OwnedFd, user: &crate::spec::process::User) -> Step<()> {
    // The terminal belongs to the process's user (as runc does), so that it can reopen it
    // (made by root of the host, it would show as nobody in a user namespace).
    let _ = std::os::unix::fs::fchown(slave, Some(user.uid), Some(user.gid));
    step(|| "stdin".into(), nix::unistd::dup2_stdin(slave))?;
    step(|| "stdout".into(), nix::unistd::dup2_stdout(slave))?;
    step(|| "stderr".into(), nix::unistd::dup2_stderr(slave))?;
    let _ = nix::unistd::setsid();
    step(
        || "make the terminal the controlling one".into(),
        super::sys::take_controlling_terminal(),
    )
}

/// A capability's name, for an error message.
fn cap_name(n: u32) -> String {
    usize::try_from(n)
        .ok()
        .and_then(|i| ALL_CAPABILITIES.get(i))
        .map_or_else(|| format!("capability {n}"), |c| (*c).to_owned())
}

/// What the child needs of a [`ProcessSpec`](super::spawn::ProcessSpec) in the form it
/// uses it, made by the monitor before the clone: the command line and environment as
/// execve takes them, where to look for the program, and the capability masks. An exec
/// child, which shares the monitor's memory until it execs, then has nothing to allocate
/// that would outlive its exec; a container's child has less to do.
#[derive(Debug)]
pub struct Prepared {
    argv: super::sys::ExecArray,
    envp: super::sys::ExecArray,
    /// Where the program may be, in order: the command itself when it names a path,
    /// else each directory of the process's PATH (from its own environment) joined with it.
    candidates: Vec<CString>,
    /// Whether `candidates` come from PATH (the first that is a file is run).
    searched: bool,
    /// The capabilities the process may not have (of those the kernel knows): dropped from
    /// the bounding set.
    drop_from_bounding: u64,
    effective: u64,
    permitted: u64,
    inheritable: u64,
    ambient: u64,
    groups: Vec<libc::gid_t>,
}

impl Prepared {
    pub fn new(p: &super::spawn::ProcessSpec) -> Step<Prepared> {
        let cmd = p.args.first().ok_or_else(|| "no command".to_owned())?;
        let cstr = |s: &str| CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"));
        let searched = !cmd.contains('/');
        let candidates = if searched {
            let path_var = p
                .env
                .iter()
                .find_map(|e| e.strip_prefix("PATH="))
                .unwrap_or(crate::spec::process::DEFAULT_PATH);
            path_var
                .split(':')
                .map(|d| cstr(&Path::new(d).join(cmd).to_string_lossy()))
                .collect::<Step<Vec<_>>>()?
        } else {
            vec![cstr(cmd)?]
        };
        let mask = crate::spec::security::Capabilities::mask;
        let c = &p.capabilities;
        Ok(Prepared {
            argv: super::sys::ExecArray::new(&p.args)?,
            envp: super::sys::ExecArray::new(&p.env)?,
            candidates,
            searched,
            drop_from_bounding: super::sys::known_capabilities() & !mask(&c.bounding),
            effective: mask(&c.effective),
            permitted: mask(&c.permitted),
            inheritable: mask(&c.inheritable),
            ambient: mask(&c.ambient),
            groups: p.user.groups(),
        })
    }
}

fn set_identity_of(p: &Prepared, u: &crate::spec::process::User) -> Step<()> {
    use super::sys;
    // Drop from the bounding set what the container may never have.
    sys::drop_all_from_bounding_set(p.drop_from_bounding)
        .map_err(|(cap, e)| format!("drop {} from the bounding set: {e}", cap_name(cap)))?;
    // Keep permitted capabilities across the uid change; the sets are set right after.
    step(
        || "keep capabilities".into(),
        nix::sys::prctl::set_keepcaps(true),
    )?;
    step(|| "setgroups".into(), sys::set_groups(&p.groups))?;
    step(|| format!("setresgid {}", u.gid), sys::set_gid(u.gid))?;
    step(|| format!("setresuid {}", u.uid), sys::set_uid(u.uid))?;
    // A node may lack some capabilities itself (a bounding set without CAP_SYS_RESOURCE,
    // say): a container, privileged ones included, gets at most what the node has, as
    // containerd grants privileged containers the runtime's own set.
    let node = step(
        || "read the permitted capabilities".into(),
        sys::permitted_capabilities(),
    )?;
    // One capset: the kernel checks effective within permitted, and both within what we
    // have, together.
    step(
        || "set the effective, permitted and inheritable capabilities".into(),
        sys::set_capabilities(p.effective & node, p.permitted & node, p.inheritable & node),
    )?;
    step(
        || "set ambient capabilities".into(),
        sys::set_ambient_capabilities(p.ambient & node),
    )?;
    Ok(())
}

/// Runs the program: the command itself when it names a path, else the first file of that
/// name in the process's PATH. Allocates nothing unless it fails.
fn exec_prepared(spec: &super::spawn::ProcessSpec, p: &Prepared) -> Step<Never> {
    use nix::sys::stat::{SFlag, stat};
    let is_file = |c: &CString| {
        stat(c.as_c_str())
            .is_ok_and(|st| st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFREG.bits())
    };
    let Some(path) = p.candidates.iter().find(|c| !p.searched || is_file(c)) else {
        let cmd = spec.args.first().map_or("", String::as_str);
        return Err(format!(
            "exec {:?}: executable file not found in $PATH",
            shortened(cmd)
        ));
    };
    let e = super::sys::execve(path, &p.argv, &p.envp);
    Err(format!("exec {}: {e}", shortened(&path.to_string_lossy())))
}

/// A name for an error message: at most 256 bytes of it (cut at a character boundary),
/// so that what went wrong still fits the message a child can send.
fn shortened(name: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 256;
    if name.len() <= MAX {
        return name.into();
    }
    let head = super::spawn::truncated(name, MAX);
    format!("{head}… ({} bytes)", name.len()).into()
}

#[cfg(test)]
mod tests {
    use super::shortened;

    #[test]
    fn long_names_are_shortened_in_error_messages() {
        assert_eq!(shortened("sh"), "sh");
        let long = "é".repeat(200); // 400 bytes
        let s = shortened(&long);
        assert!(s.ends_with("… (400 bytes)"), "{s}");
        assert_eq!(s.trim_end_matches("… (400 bytes)"), "é".repeat(128));
    }
}

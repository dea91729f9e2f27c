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
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::unistd::{Gid, Uid};

use super::spawn::{LaunchSpec, Stdio};
use crate::spec::mounts::{Mount, Propagation, RECURSIVE_READONLY};
use crate::spec::security::ALL_CAPABILITIES;

type Step<T> = Result<T, String>;

fn step<T, E: std::fmt::Display>(what: impl FnOnce() -> String, r: Result<T, E>) -> Step<T> {
    r.map_err(|e| format!("{}: {e}", what()))
}

/// Does everything up to and including exec; returns only with an error message.
pub fn become_container(spec: &LaunchSpec, stdio: Stdio) -> String {
    match run(spec, stdio) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

fn run(spec: &LaunchSpec, stdio: Stdio) -> Step<Never> {
    // Opened first, while the host's paths are visible; entered last.
    let userns = match &spec.userns {
        Some(u) => Some(step(
            || format!("open the pod's user namespace {}", u.path.display()),
            fs::File::open(&u.path),
        )?),
        None => None,
    };
    for dir in &spec.cgroup_dirs {
        let f = dir.join("cgroup.procs");
        step(
            || format!("join cgroup {}", dir.display()),
            fs::write(&f, "0"),
        )?;
    }
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
    become_process(stdio, &spec.process)
}

/// The steps a container's process and an exec process share: standard streams, working
/// directory, identity, no_new_privs, exec.
fn become_process(stdio: Stdio, p: &super::spawn::ProcessSpec) -> Step<Never> {
    let super::spawn::ProcessSpec {
        cwd,
        capabilities: caps,
        user,
        no_new_privs,
        seccomp,
        apparmor,
        selinux_label,
        args,
        env,
    } = p;
    let (no_new_privs, apparmor, selinux_label) =
        (*no_new_privs, apparmor.as_deref(), selinux_label.as_deref());
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
    set_identity_of(caps, user)?;
    if no_new_privs {
        step(
            || "no_new_privs".into(),
            nix::sys::prctl::set_no_new_privs(),
        )?;
        install_seccomp(seccomp)?;
    }
    exec_args(args, env)
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

/// The exec side: already inside the container's mount and pid namespaces.
pub fn become_exec(spec: &super::spawn::ExecSpec, stdio: Stdio) -> String {
    match run_exec(spec, stdio) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn run_exec(spec: &super::spawn::ExecSpec, stdio: Stdio) -> Step<Never> {
    // Its own session, so that a timeout can kill it and everything it started.
    let _ = nix::unistd::setsid();
    become_process(stdio, &spec.process)
}

fn redirect(stdio: Stdio, user: &crate::spec::process::User) -> Step<()> {
    match stdio {
        Stdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            if let Some(i) = &stdin {
                step(|| "stdin".into(), nix::unistd::dup2_stdin(i))?;
            } else {
                let null = step(|| "open /dev/null".into(), fs::File::open("/dev/null"))?;
                step(|| "stdin".into(), nix::unistd::dup2_stdin(&null))?;
            }
            step(|| "stdout".into(), nix::unistd::dup2_stdout(&stdout))?;
            step(|| "stderr".into(), nix::unistd::dup2_stderr(&stderr))?;
            Ok(())
        }
        Stdio::Terminal(slave) => use_terminal(&slave, user),
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
                super::sys::send_fd(&socket, &master),
            )?;
            drop(master);
            drop(socket);
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

fn mount_overlay(spec: &LaunchSpec, userns: Option<&fs::File>) -> Step<()> {
    let r = &spec.rootfs;
    // In a user namespace the image's files must show their owners as the container sees
    // them (root's as the container's root): each layer is id-mapped into the namespace
    // and attached on a directory of its own, in our private mount namespace (gone with
    // the old root at pivot_root); overlayfs before Linux 6.15 takes no detached mount as a
    // layer. The names are short and relative to that directory, so that many layers still
    // fit in one page of mount options. The writable layer is not mapped, so what the
    // container writes is owned by its host ids.
    let lower: Vec<String> = match (userns, &spec.userns) {
        (Some(ns), Some(u)) => {
            step(
                || format!("chown {}", r.upperdir.display()),
                nix::unistd::chown(
                    &r.upperdir,
                    Some(Uid::from_raw(u.root_uid)),
                    Some(Gid::from_raw(u.root_gid)),
                ),
            )?;
            let staging = r.target.with_extension("layers");
            let mut v = Vec::new();
            for (i, l) in r.lowerdirs.iter().enumerate() {
                let t = step(
                    || format!("id-map layer {}", l.display()),
                    super::sys::idmapped_tree(l, ns, false),
                )?;
                let at = staging.join(i.to_string());
                step(
                    || format!("create {}", at.display()),
                    fs::create_dir_all(&at),
                )?;
                step(
                    || format!("attach id-mapped layer {}", l.display()),
                    super::sys::move_mount_to(&t, &at),
                )?;
                v.push(i.to_string());
            }
            step(
                || format!("chdir {}", staging.display()),
                nix::unistd::chdir(&staging),
            )?;
            v
        }
        _ => r
            .lowerdirs
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
    };
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        r.upperdir.display(),
        r.workdir.display()
    );
    step(
        || format!("create {}", r.target.display()),
        fs::create_dir_all(&r.target),
    )?;
    step(
        || format!("mount overlay root ({} layers)", lower.len()),
        mount(
            Some("overlay"),
            &r.target,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        ),
    )
}

/// Splits mount options into flags and data, as mount(8) does.
fn options(opts: &[String]) -> (MsFlags, Vec<String>) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in opts {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            RECURSIVE_READONLY => flags |= MsFlags::MS_RDONLY,
            other => data.push(other.to_owned()),
        }
    }
    (flags, data)
}

/// The destination inside the new root, refusing to follow symlinks out of it.
fn inside(root: &Path, dest: &str) -> Step<PathBuf> {
    let mut cur = root.to_owned();
    for c in Path::new(dest).components() {
        if let std::path::Component::Normal(n) = c {
            cur.push(n);
            if let Ok(m) = fs::symlink_metadata(&cur)
                && m.file_type().is_symlink()
            {
                return Err(format!(
                    "mount destination {dest}: {} is a symlink; refusing to follow it",
                    cur.display()
                ));
            }
        }
    }
    Ok(cur)
}

/// Creates a mount point that does not exist yet (a directory, or an empty file), owned by
/// `owner` (the mapped root of a user-namespaced pod: made by us, root of the host, it
/// would show as nobody inside). Never truncates or follows what appears on the path
/// meanwhile: new entries only (O_EXCL).
fn ensure_target(target: &Path, as_dir: bool, owner: Option<(u32, u32)>) -> Step<()> {
    if fs::symlink_metadata(target).is_ok() {
        return Ok(());
    }
    let own = |p: &Path| -> Step<()> {
        match owner {
            Some((u, g)) => step(
                || format!("chown {}", p.display()),
                std::os::unix::fs::lchown(p, Some(u), Some(g)),
            ),
            None => Ok(()),
        }
    };
    let mut missing = Vec::new();
    let mut cur = if as_dir {
        Some(target)
    } else {
        target.parent()
    };
    while let Some(p) = cur {
        if fs::symlink_metadata(p).is_ok() {
            break;
        }
        missing.push(p.to_owned());
        cur = p.parent();
    }
    for d in missing.iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => own(d)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("create {}: {e}", d.display())),
        }
    }
    if !as_dir {
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(target)
        {
            Ok(_) => own(target)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("create {}: {e}", target.display())),
        }
    }
    Ok(())
}

fn mount_one(root: &Path, m: &Mount, spec: &LaunchSpec, userns: Option<&fs::File>) -> Step<()> {
    let target = inside(root, &m.destination)?;
    let owner = spec.userns.as_ref().map(|u| (u.root_uid, u.root_gid));
    let (flags, data) = options(&m.options);
    match m.kind.as_str() {
        "bind" => {
            let is_dir = fs::metadata(&m.source)
                .map(|md| md.is_dir())
                .unwrap_or(true);
            ensure_target(&target, is_dir, owner)?;
            // Volumes and pod files id-mapped into a pod's user namespace where the file
            // system allows it, so that the host's root-owned files are root's inside.
            let mapped = userns
                .and_then(|ns| super::sys::idmapped_tree(Path::new(&m.source), ns, true).ok());
            match mapped {
                Some(tree) => step(
                    || format!("bind {} (id-mapped) on {}", m.source, m.destination),
                    super::sys::move_mount_to(&tree, &target),
                )?,
                None => step(
                    || format!("bind {} on {}", m.source, m.destination),
                    bind(Path::new(&m.source), &target, true),
                )?,
            }
            let extra = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
            if !extra.is_empty() {
                step(
                    || format!("remount {} with {:?}", m.destination, m.options),
                    remount_bind(&target, extra),
                )?;
            }
            if m.options.iter().any(|o| o == RECURSIVE_READONLY) {
                step(
                    || format!("make {} read-only recursively", m.destination),
                    super::sys::make_readonly_recursive(&target),
                )?;
            }
            let prop = match m.propagation {
                Some(Propagation::RSlave) => MsFlags::MS_REC | MsFlags::MS_SLAVE,
                Some(Propagation::RShared) => MsFlags::MS_REC | MsFlags::MS_SHARED,
                _ => MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            };
            step(
                || format!("propagation of {}", m.destination),
                mount(None::<&str>, &target, None::<&str>, prop, None::<&str>),
            )
        }
        "cgroup" => {
            // A read-only view of the container's own cgroups, as runc gives on v1.
            ensure_target(&target, true, owner)?;
            step(
                || "mount /sys/fs/cgroup tmpfs".into(),
                mount(
                    Some("tmpfs"),
                    &target,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    Some("mode=755"),
                ),
            )?;
            for (name, host_dir) in &spec.cgroup_view {
                let t = target.join(name);
                ensure_target(&t, true, owner)?;
                step(|| format!("bind cgroup {name}"), bind(host_dir, &t, false))?;
                step(
                    || format!("cgroup {name} read-only"),
                    remount_bind(&t, flags),
                )?;
            }
            if flags.contains(MsFlags::MS_RDONLY) {
                step(
                    || "/sys/fs/cgroup read-only".into(),
                    mount(
                        None::<&str>,
                        &target,
                        None::<&str>,
                        MsFlags::MS_REMOUNT | flags,
                        Some("mode=755"),
                    ),
                )?;
            }
            Ok(())
        }
        fstype => {
            ensure_target(&target, true, owner)?;
            let d = data.join(",");
            step(
                || format!("mount {} on {}", fstype, m.destination),
                mount(
                    Some(m.source.as_str()),
                    &target,
                    Some(fstype),
                    flags,
                    (!d.is_empty()).then_some(d.as_str()),
                ),
            )?;
            if m.destination == "/dev" {
                populate_dev(&target)?;
            }
            Ok(())
        }
    }
}

/// Creates a device node in the container (a requested device, or one of the node's for a
/// privileged container); one that exists already (the standard set) is kept.
fn make_device(root: &Path, d: &crate::spec::devices::DeviceNode) -> Step<()> {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let t = inside(root, &d.path)?;
    if fs::symlink_metadata(&t).is_ok() {
        return Ok(());
    }
    if let Some(parent) = t.parent() {
        step(
            || format!("create {}", parent.display()),
            fs::create_dir_all(parent),
        )?;
    }
    let kind = if d.kind == 'b' {
        SFlag::S_IFBLK
    } else {
        SFlag::S_IFCHR
    };
    step(
        || format!("mknod {}", d.path),
        mknod(
            &t,
            kind,
            Mode::from_bits_truncate(d.mode),
            makedev(d.major, d.minor),
        ),
    )?;
    step(
        || format!("chown {}", d.path),
        nix::unistd::chown(&t, Some(Uid::from_raw(d.uid)), Some(Gid::from_raw(d.gid))),
    )
}

/// The standard device nodes (bind-mounted from the host, which works in every namespace)
/// and the usual /dev symlinks.
fn populate_dev(dev: &Path) -> Step<()> {
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let t = dev.join(name);
        ensure_target(&t, false, None)?;
        let src = format!("/dev/{name}");
        step(|| format!("bind {src}"), bind(Path::new(&src), &t, false))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        step(
            || format!("symlink /dev/{link}"),
            std::os::unix::fs::symlink(target, dev.join(link)),
        )?;
    }
    Ok(())
}

fn mask(root: &Path, p: &str) -> Step<()> {
    let t = inside(root, p)?;
    match fs::metadata(&t) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => step(
            || format!("mask {p}"),
            mount(
                Some("tmpfs"),
                &t,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            ),
        ),
        Ok(_) => step(
            || format!("mask {p}"),
            bind(Path::new("/dev/null"), &t, false),
        ),
    }
}

fn readonly(root: &Path, p: &str) -> Step<()> {
    let t = inside(root, p)?;
    if !t.exists() {
        return Ok(());
    }
    step(|| format!("read-only {p}"), bind(&t, &t, true))?;
    step(
        || format!("read-only {p}"),
        remount_bind(
            &t,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        ),
    )
}

/// Bind-mounts `src` at `dst`, with everything mounted below it when `recursive`.
fn bind(src: &Path, dst: &Path, recursive: bool) -> nix::Result<()> {
    let rec = if recursive {
        MsFlags::MS_REC
    } else {
        MsFlags::empty()
    };
    mount(
        Some(src),
        dst,
        None::<&str>,
        MsFlags::MS_BIND | rec,
        None::<&str>,
    )
}

/// Changes the flags (read-only, nosuid, …) of the bind mount at `dst`.
fn remount_bind(dst: &Path, flags: MsFlags) -> nix::Result<()> {
    mount(
        None::<&str>,
        dst,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags,
        None::<&str>,
    )
}

/// Makes the mount that holds `dir` (in our mount namespace) private, so that mounts made
/// under `dir` reach no peer (runc's rootfsParentMountPrivate).
fn make_parent_mount_private(dir: &Path) -> Step<()> {
    let parent = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let m = step(
        || format!("find the mount holding {}", parent.display()),
        super::mountinfo::mount_of(parent),
    )?;
    step(
        || format!("make {} private", m.mount_point.display()),
        mount(
            None::<&str>,
            &m.mount_point,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
    )
}

/// pivot_root into `root`, then detach the old root (pivot_root(".", ".") idiom).
fn pivot(root: &Path) -> Step<()> {
    // The old root, held open: after pivot_root(".", ".") the working directory is the
    // new root's, beneath the old root now stacked on it, and "." would name the new one.
    let old_root = step(|| "open /".into(), fs::File::open("/"))?;
    step(
        || format!("chdir {}", root.display()),
        nix::unistd::chdir(root),
    )?;
    step(|| "pivot_root".into(), nix::unistd::pivot_root(".", "."))?;
    step(
        || "enter the old root".into(),
        nix::unistd::fchdir(&old_root),
    )?;
    // The old root may hold shared mounts (see the root's propagation above): made slave
    // first (it alone, not the new root's volumes), so that detaching it cannot unmount
    // anything of the host's (runc's order).
    step(
        || "make the old root slave".into(),
        mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        ),
    )?;
    step(
        || "detach old root".into(),
        umount2(".", MntFlags::MNT_DETACH),
    )?;
    drop(old_root);
    step(|| "chdir /".into(), nix::unistd::chdir("/"))
}

fn cap_of(n: u8) -> Option<Capability> {
    ALL_CAPABILITIES.get(usize::from(n))?.parse().ok()
}

fn set_of(nums: &std::collections::BTreeSet<u8>) -> CapsHashSet {
    nums.iter().filter_map(|n| cap_of(*n)).collect()
}

fn set_identity_of(
    c: &crate::spec::security::Capabilities,
    u: &crate::spec::process::User,
) -> Step<()> {
    // Drop from the bounding set what the container may never have.
    for n in 0..ALL_CAPABILITIES.len() {
        let Ok(n8) = u8::try_from(n) else { continue };
        if !c.bounding.contains(&n8)
            && let Some(cap) = cap_of(n8)
            && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false)
        {
            step(
                || format!("drop {cap} from the bounding set"),
                caps::drop(None, CapSet::Bounding, cap),
            )?;
        }
    }
    // Keep permitted capabilities across the uid change; the sets are set right after.
    step(
        || "keep capabilities".into(),
        nix::sys::prctl::set_keepcaps(true),
    )?;
    let groups: Vec<Gid> = u.groups().into_iter().map(Gid::from_raw).collect();
    step(|| "setgroups".into(), nix::unistd::setgroups(&groups))?;
    let gid = Gid::from_raw(u.gid);
    let uid = Uid::from_raw(u.uid);
    step(
        || format!("setresgid {}", u.gid),
        nix::unistd::setresgid(gid, gid, gid),
    )?;
    step(
        || format!("setresuid {}", u.uid),
        nix::unistd::setresuid(uid, uid, uid),
    )?;
    // A node may lack some capabilities itself (a bounding set without CAP_SYS_RESOURCE,
    // say): a container, privileged ones included, gets at most what the node has, as
    // containerd grants privileged containers the runtime's own set.
    let node = step(
        || "read the permitted capabilities".into(),
        caps::read(None, CapSet::Permitted),
    )?;
    let have = |nums: &std::collections::BTreeSet<u8>| -> CapsHashSet {
        set_of(nums)
            .into_iter()
            .filter(|c| node.contains(c))
            .collect()
    };
    // Effective first: the kernel refuses a permitted set that leaves effective larger.
    step(
        || "set effective capabilities".into(),
        caps::set(None, CapSet::Effective, &have(&c.effective)),
    )?;
    step(
        || "set permitted capabilities".into(),
        caps::set(None, CapSet::Permitted, &have(&c.permitted)),
    )?;
    step(
        || "set inheritable capabilities".into(),
        caps::set(None, CapSet::Inheritable, &have(&c.inheritable)),
    )?;
    step(
        || "set ambient capabilities".into(),
        caps::set(None, CapSet::Ambient, &have(&c.ambient)),
    )?;
    Ok(())
}

/// Finds the executable in the container's PATH (from its own environment) and execs it.
fn exec_args(args: &[String], env: &[String]) -> Step<Never> {
    let cmd = args.first().ok_or_else(|| "no command".to_owned())?;
    let path = if cmd.contains('/') {
        PathBuf::from(cmd)
    } else {
        let path_var = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(crate::spec::process::DEFAULT_PATH);
        path_var
            .split(':')
            .map(|d| Path::new(d).join(cmd))
            .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file()))
            .ok_or_else(|| format!("exec {cmd:?}: executable file not found in $PATH"))?
    };
    let cstr = |s: &str| CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"));
    let prog = cstr(&path.to_string_lossy())?;
    let argv = args
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env.iter().map(|e| cstr(e)).collect::<Result<Vec<_>, _>>()?;
    match nix::unistd::execve(&prog, &argv, &envp) {
        Ok(never) => match never {},
        Err(e) => Err(format!("exec {}: {e}", path.display())),
    }
}

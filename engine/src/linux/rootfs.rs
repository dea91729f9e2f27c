//! The container's root file system, built by the cloned child in its own mount
//! namespace: the overlay of its layers, every mount inside it (refusing to follow a
//! symlink out of the root), device nodes, masked and read-only paths, and the pivot.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::unistd::{Gid, Uid};

use super::beneath;
use super::init::{Step, step};
use super::spawn::LaunchSpec;
use crate::spec::mounts::{Mount, Propagation, RECURSIVE_READONLY};

pub(super) fn mount_overlay(spec: &LaunchSpec, userns: Option<&fs::File>) -> Step<()> {
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
    step(
        || format!("create {}", r.target.display()),
        fs::create_dir_all(&r.target),
    )?;
    let lower_paths: Vec<PathBuf> = lower.iter().map(PathBuf::from).collect();
    super::overlay::mount_at(
        &lower_paths,
        Some((&r.upperdir, &r.workdir)),
        &r.target,
        "overlay root",
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

/// A mount destination as a path relative to the new root; `..` is refused.
fn relative_destination(dest: &str) -> Step<PathBuf> {
    let rel: PathBuf = Path::new(dest)
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .collect();
    beneath::relative_components(&rel).map_err(|e| format!("mount destination {dest}: {e}"))?;
    Ok(rel)
}

/// The destination inside the new root, refusing to follow symlinks out of it (a check of
/// the path as it is now, for the steps that still work by path: masks, read-only paths,
/// device nodes — all made before any process of the pod can write the root).
fn inside(root: &Path, dest: &str) -> Step<PathBuf> {
    let mut cur = root.to_owned();
    for c in Path::new(dest).components() {
        if let Component::Normal(n) = c {
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

/// Makes sure the mount point `dest` exists beneath `root` (a directory, or an empty
/// file), without following a symlink out of it: for mounts made by someone else there
/// (CRIU's restore of a checkpoint's external mounts).
pub(super) fn ensure_mount_point(root: &Path, dest: &str, as_dir: bool) -> Step<()> {
    let rel = relative_destination(dest)?;
    let fd = step(
        || format!("open {}", root.display()),
        beneath::open_dir(root),
    )?;
    ensure_target(&fd, &rel, dest, as_dir, None)
}

/// Creates a mount point that does not exist yet (a directory, or an empty file) beneath
/// the root held by `root`, owned by `owner` (the mapped root of a user-namespaced pod:
/// made by us, root of the host, it would show as nobody inside). Every step resolves
/// beneath the root without following a symlink, and never truncates or follows what
/// appears on the path meanwhile: new entries only (O_EXCL).
fn ensure_target(
    root: &OwnedFd,
    rel: &Path,
    dest: &str,
    as_dir: bool,
    owner: Option<(u32, u32)>,
) -> Step<()> {
    let chown = |parent: &OwnedFd, name: &std::ffi::OsStr| -> std::io::Result<()> {
        match owner {
            Some((u, g)) => beneath::chown_at(parent, name, u, g),
            None => Ok(()),
        }
    };
    let (dir, file) = if as_dir || rel.file_name().is_none() {
        (rel, None)
    } else {
        (rel.parent().unwrap_or(Path::new("")), rel.file_name())
    };
    let parent = beneath::mkdir_all(root, dir, 0o755, &mut |p, n| chown(p, n))
        .map_err(|e| format!("mount destination {dest}: {e}"))?;
    if let Some(name) = file
        && beneath::create_file(&parent, name, 0o644)
            .map_err(|e| format!("mount destination {dest}: {e}"))?
    {
        chown(&parent, name).map_err(|e| format!("mount destination {dest}: {e}"))?;
    }
    Ok(())
}

/// The mount point as an `O_PATH` fd resolved beneath the root without symlinks, and the
/// `/proc/self/fd` path through which mount(2) acts on exactly that inode. Opened again
/// after something is mounted there, to reach the new mount rather than the covered
/// directory.
fn open_target(root: &OwnedFd, rel: &Path, dest: &str) -> Step<(OwnedFd, PathBuf)> {
    let fd = beneath::open_path(root, rel).map_err(|e| format!("mount destination {dest}: {e}"))?;
    let p = beneath::proc_fd_path(&fd);
    Ok((fd, p))
}

pub(super) fn mount_one(
    root: &Path,
    m: &Mount,
    spec: &LaunchSpec,
    userns: Option<&fs::File>,
) -> Step<()> {
    let dest = m.destination.as_str();
    let rel = relative_destination(dest)?;
    let root_fd = beneath::open_dir(root).map_err(|e| e.to_string())?;
    let owner = spec.userns.as_ref().map(|u| (u.root_uid, u.root_gid));
    let (flags, data) = options(&m.options);
    match m.kind.as_str() {
        "bind" => {
            let is_dir = fs::metadata(&m.source)
                .map(|md| md.is_dir())
                .unwrap_or(true);
            ensure_target(&root_fd, &rel, dest, is_dir, owner)?;
            let (target_fd, target) = open_target(&root_fd, &rel, dest)?;
            // Volumes and pod files id-mapped into a pod's user namespace where the file
            // system allows it, so that the host's root-owned files are root's inside.
            let premapped = m
                .options
                .iter()
                .any(|o| o == crate::spec::mounts::PREMAPPED);
            let mapped = userns
                .filter(|_| !premapped)
                .and_then(|ns| super::sys::idmapped_tree(Path::new(&m.source), ns, true).ok());
            match mapped {
                Some(tree) => step(
                    || format!("bind {} (id-mapped) on {dest}", m.source),
                    super::sys::move_mount_onto(&tree, &target_fd),
                )?,
                None => step(
                    || format!("bind {} on {dest}", m.source),
                    bind(Path::new(&m.source), &target, true),
                )?,
            }
            drop(target_fd);
            let (_mounted, target) = open_target(&root_fd, &rel, dest)?;
            let extra = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
            if !extra.is_empty() {
                step(
                    || format!("remount {dest} with {:?}", m.options),
                    remount_bind(&target, extra),
                )?;
            }
            if m.options.iter().any(|o| o == RECURSIVE_READONLY) {
                step(
                    || format!("make {dest} read-only recursively"),
                    super::sys::make_readonly_recursive(&target),
                )?;
            }
            let prop = match m.propagation {
                Some(Propagation::RSlave) => MsFlags::MS_REC | MsFlags::MS_SLAVE,
                Some(Propagation::RShared) => MsFlags::MS_REC | MsFlags::MS_SHARED,
                _ => MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            };
            step(
                || format!("propagation of {dest}"),
                mount(None::<&str>, &target, None::<&str>, prop, None::<&str>),
            )
        }
        "cgroup" => {
            // A read-only view of the container's own cgroups, as runc gives on v1.
            ensure_target(&root_fd, &rel, dest, true, owner)?;
            let (target_fd, target) = open_target(&root_fd, &rel, dest)?;
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
            drop(target_fd);
            // The fresh tmpfs is ours alone: its entries are made by path below it.
            let (tmpfs_fd, target) = open_target(&root_fd, &rel, dest)?;
            for (name, host_dir) in &spec.cgroup_view {
                let t = target.join(name);
                ensure_target(&tmpfs_fd, Path::new(name), dest, true, owner)?;
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
            ensure_target(&root_fd, &rel, dest, true, owner)?;
            let (target_fd, target) = open_target(&root_fd, &rel, dest)?;
            let d = data.join(",");
            step(
                || format!("mount {fstype} on {dest}"),
                mount(
                    Some(m.source.as_str()),
                    &target,
                    Some(fstype),
                    flags,
                    (!d.is_empty()).then_some(d.as_str()),
                ),
            )?;
            drop(target_fd);
            if m.destination == "/dev" {
                let (dev_fd, target) = open_target(&root_fd, &rel, dest)?;
                populate_dev(&dev_fd, &target)?;
            }
            Ok(())
        }
    }
}

/// Creates a device node in the container (a requested device, or one of the node's for a
/// privileged container); one that exists already (the standard set) is kept.
pub(super) fn make_device(root: &Path, d: &crate::spec::devices::DeviceNode) -> Step<()> {
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
    // mknod's mode went through the umask: the node gets exactly the mode asked for.
    step(
        || format!("chmod {}", d.path),
        std::fs::set_permissions(
            &t,
            std::os::unix::fs::PermissionsExt::from_mode(d.mode & 0o7777),
        ),
    )?;
    step(
        || format!("chown {}", d.path),
        nix::unistd::chown(&t, Some(Uid::from_raw(d.uid)), Some(Gid::from_raw(d.gid))),
    )
}

/// The standard device nodes (bind-mounted from the host, which works in every namespace)
/// and the usual /dev symlinks.
/// The host's device nodes bound into every container's /dev.
pub const DEV_BINDS: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

fn populate_dev(dev_fd: &OwnedFd, dev: &Path) -> Step<()> {
    for name in DEV_BINDS {
        let t = dev.join(name);
        ensure_target(dev_fd, Path::new(name), "/dev", false, None)?;
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

pub(super) fn mask(root: &Path, p: &str) -> Step<()> {
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

pub(super) fn readonly(root: &Path, p: &str) -> Step<()> {
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
pub(super) fn remount_bind(dst: &Path, flags: MsFlags) -> nix::Result<()> {
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
pub(super) fn make_parent_mount_private(dir: &Path) -> Step<()> {
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

/// Leaves the calling process, single-threaded and in a mount namespace of its own, with
/// an empty root: its mounts made private (nothing it mounts reaches the host's), a
/// read-only tmpfs of one page mounted at `at` (any directory of it: the mount exists in
/// this namespace only) and pivoted into, the old root detached. No path leads to a file
/// of the host's from then on, its own `/proc/<pid>/root` and `cwd` included. For the
/// pod's init, pid 1 of a pid namespace containers share (as the pause container's root
/// is its image's, not the host's).
pub fn empty_root(at: &Path) -> Step<()> {
    step(
        || "make our mounts private".into(),
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
    )?;
    step(
        || format!("mount an empty root at {}", at.display()),
        mount(
            Some("berth-empty"),
            at,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=4k,mode=0555"),
        ),
    )?;
    pivot(at)
}

/// pivot_root into `root`, then detach the old root (pivot_root(".", ".") idiom).
pub(super) fn pivot(root: &Path) -> Step<()> {
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

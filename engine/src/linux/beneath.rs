//! Opening and creating paths strictly beneath a directory berth holds open, for paths that
//! a pod can influence: a container's log file under kubelet's pod log directory (which a
//! hostPath volume may let the pod write) and mount points inside a container's root.
//!
//! Every step resolves with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from a
//! directory fd, so that neither `..`, an absolute path, a symlink planted by the pod, nor a
//! symlink swapped in between a check and the open can lead outside the directory. New
//! entries are made with `mkdirat`/`O_CREAT | O_EXCL` relative to their parent's fd.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

fn how(flags: OFlag, mode: u32) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS)
}

fn io_err(e: Errno, what: &str, path: &Path) -> io::Error {
    let kind = io::Error::from(e);
    let hint = match e {
        Errno::ELOOP => ": a symbolic link is in the way",
        Errno::EXDEV => ": it leads outside its directory",
        _ => "",
    };
    io::Error::new(
        kind.kind(),
        format!("{what} {}: {kind}{hint}", path.display()),
    )
}

/// The normal components of a relative path; `..`, `.` leading to nothing, and absolute
/// paths are refused (resolution would refuse them too, but a clear error is better).
pub fn relative_components(rel: &Path) -> io::Result<Vec<&std::ffi::OsStr>> {
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) | Component::ParentDir => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: must be relative, without '..'", rel.display()),
                ));
            }
        }
    }
    Ok(out)
}

/// Opens an existing directory by its full path (following symlinks: the anchor is
/// trusted, named by kubelet or berth).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_DIRECTORY | OFlag::O_PATH | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(e, "open directory", path))
}

/// Opens (with `O_PATH`) the directory `rel` beneath `dir`, making missing directories
/// on the way with `mode`; `made` is called with each new directory's parent fd and name
/// (for ownership changes).
pub fn mkdir_all(
    dir: &impl AsFd,
    rel: &Path,
    mode: u32,
    made: &mut dyn FnMut(&OwnedFd, &std::ffi::OsStr) -> io::Result<()>,
) -> io::Result<OwnedFd> {
    let mut cur = dup(dir)?;
    let mut walked = PathBuf::new();
    for name in relative_components(rel)? {
        walked.push(name);
        let open = |cur: &OwnedFd| openat2(cur, name, how(OFlag::O_PATH | OFlag::O_DIRECTORY, 0));
        let next = match open(&cur) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                match nix::sys::stat::mkdirat(&cur, name, Mode::from_bits_truncate(mode)) {
                    Ok(()) => made(&cur, name)?,
                    Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io_err(e, "create directory", &walked)),
                }
                open(&cur).map_err(|e| io_err(e, "open directory", &walked))?
            }
            Err(e) => return Err(io_err(e, "open directory", &walked)),
        };
        cur = next;
    }
    Ok(cur)
}

fn dup(fd: &impl AsFd) -> io::Result<OwnedFd> {
    fd.as_fd().try_clone_to_owned()
}

/// Opens `rel` beneath `dir` for appending, creating it (`mode`) and its missing parent
/// directories (0755): the container log's open, reopen after rotation included.
pub fn open_append(dir: &impl AsFd, rel: &Path, mode: u32) -> io::Result<File> {
    let parts = relative_components(rel)?;
    let Some((file, parents)) = parts.split_last() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an empty file name",
        ));
    };
    let parent = mkdir_all(
        dir,
        &parents.iter().collect::<PathBuf>(),
        0o755,
        &mut |_, _| Ok(()),
    )?;
    let fd = openat2(
        &parent,
        *file,
        how(
            OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::O_NOFOLLOW,
            mode,
        ),
    )
    .map_err(|e| io_err(e, "open", rel))?;
    Ok(File::from(fd))
}

/// Opens `rel` beneath `dir` with `O_PATH`, as it is now: for mounting onto the exact
/// inode that was checked (through [`proc_fd_path`]).
pub fn open_path(dir: &impl AsFd, rel: &Path) -> io::Result<OwnedFd> {
    relative_components(rel)?;
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    // No O_NOFOLLOW: with it a trailing symlink would be opened itself; without it,
    // RESOLVE_NO_SYMLINKS refuses it (ELOOP).
    openat2(dir, rel, how(OFlag::O_PATH, 0)).map_err(|e| io_err(e, "open", rel))
}

/// Creates an empty file `name` in the directory `parent` unless an entry of that name
/// exists (never following or truncating it). True when it was made.
pub fn create_file(parent: &OwnedFd, name: &std::ffi::OsStr, mode: u32) -> io::Result<bool> {
    match openat2(
        parent,
        name,
        how(
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
            mode,
        ),
    ) {
        Ok(_) => Ok(true),
        Err(Errno::EEXIST) => Ok(false),
        Err(e) => Err(io_err(e, "create", Path::new(name))),
    }
}

/// The `/proc/self/fd/N` path of an fd: mount(2) on it acts on the inode the fd holds,
/// not on whatever a path names by then (as runc mounts).
pub fn proc_fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Changes the owner of `name` in `parent` without following a symlink.
pub fn chown_at(parent: &OwnedFd, name: &std::ffi::OsStr, uid: u32, gid: u32) -> io::Result<()> {
    nix::unistd::fchownat(
        parent,
        name,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_err(e, "chown", Path::new(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        tempfile::tempdir().unwrap().keep()
    }

    #[test]
    fn appends_beneath_and_makes_parents() {
        let d = tmp();
        let fd = open_dir(&d).unwrap();
        use std::io::Write;
        open_append(&fd, Path::new("c/0.log"), 0o640)
            .unwrap()
            .write_all(b"a")
            .unwrap();
        open_append(&fd, Path::new("c/0.log"), 0o640)
            .unwrap()
            .write_all(b"b")
            .unwrap();
        assert_eq!(std::fs::read_to_string(d.join("c/0.log")).unwrap(), "ab");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn refuses_escapes_and_symlinks() {
        let d = tmp();
        let outside = tmp();
        let fd = open_dir(&d).unwrap();
        for bad in ["../x.log", "/etc/x.log", "a/../../x.log"] {
            assert!(open_append(&fd, Path::new(bad), 0o640).is_err(), "{bad}");
        }
        // A planted symlink, as the file or as a directory on the way.
        std::os::unix::fs::symlink(outside.join("victim"), d.join("b.log")).unwrap();
        std::os::unix::fs::symlink(&outside, d.join("c")).unwrap();
        let e = open_append(&fd, Path::new("b.log"), 0o640).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(open_append(&fd, Path::new("c/0.log"), 0o640).is_err());
        assert!(!outside.join("victim").exists());
        assert!(!outside.join("0.log").exists());
        assert!(open_path(&fd, Path::new("c")).is_err());
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }
}

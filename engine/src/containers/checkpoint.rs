//! CheckpointContainer: the container's process tree dumped by CRIU (`criu dump`, the
//! container left running), with its writable layer's changes and what berth knows of it,
//! in one tar archive laid out as CRI-O writes them (which `checkpointctl` reads):
//!
//! | entry | what |
//! |---|---|
//! | `checkpoint/` | CRIU's images, and `descriptors.json` (the targets of fds 0–2) |
//! | `config.dump` | id, name, image (name, reference, id), runtime, times |
//! | `spec.dump` | the container as an OCI runtime spec: process, root, mounts, annotations |
//! | `rootfs-diff.tar` | files added or changed in the writable layer |
//! | `deleted.files` | JSON list of paths deleted from the image's (a directory made opaque too) |
//! | `dump.log`, `stats-dump` | CRIU's log and statistics |
//! | `io.kubernetes.cri-o.LogPath` | the container's log so far |
//!
//! The container's cgroup is frozen through the dump and the copy of its writable layer,
//! so that both are of the same moment, and thawed after. The archive is written beside
//! `location` and renamed into place: a failure leaves the container running and no
//! archive.
//!
//! Mounts berth made from the host (volumes, the pod's files, /sys/fs/cgroup's view, image
//! volumes, devices) are external to CRIU, named by where they are in the container, so
//! that a restore binds the new container's sources there; the pod's network namespace is
//! external too. proc, sysfs, devpts, mqueue and tmpfs mounts (and binds inside them) are
//! CRIU's own. Refused: a container with a terminal, one in a user namespace, one sharing
//! its pod's (or another container's) pid namespace, and cgroup v1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Engine;
use crate::error::{Error, Result};
use crate::state::records::{ContainerRecord, ContainerState};

/// How long a checkpoint may take when the request says 0 (the CRI's "runtime default").
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The key of the pod's network namespace among CRIU's externals (runc's and crun's).
pub(crate) const NET_NS_KEY: &str = crate::linux::restore::NET_NS_KEY;

/// Where checkpoints are made, under berth's root: what a berthd that died left there is
/// removed at start-up.
pub(crate) const WORK_DIR: &str = "checkpoints";

/// The archive's entries.
pub(crate) const IMAGES_DIR: &str = "checkpoint";
pub(crate) const CONFIG_DUMP: &str = "config.dump";
pub(crate) const SPEC_DUMP: &str = "spec.dump";
pub(crate) const ROOTFS_DIFF: &str = "rootfs-diff.tar";
pub(crate) const DELETED_FILES: &str = "deleted.files";
pub(crate) const DESCRIPTORS: &str = "descriptors.json";
const LOG_ENTRY: &str = "io.kubernetes.cri-o.LogPath";

/// File systems CRIU mounts again by type at a restore: not external, whatever their
/// source (a tmpfs is saved with its contents).
const CRIU_OWN_FS: &[&str] = &[
    "proc", "sysfs", "devpts", "mqueue", "tmpfs", "cgroup2", "cgroup",
];

/// One mount of the container's mount namespace, as mountinfo says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    id: u32,
    parent: u32,
    dev: String,
    root: String,
    point: String,
    fstype: String,
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let f: Vec<&str> = left.split_whitespace().collect();
            Some(Mount {
                id: f.first()?.parse().ok()?,
                parent: f.get(1)?.parse().ok()?,
                dev: (*f.get(2)?).to_owned(),
                root: crate::linux::mountinfo::unescape(f.get(3)?),
                point: crate::linux::mountinfo::unescape(f.get(4)?),
                fstype: right.split_whitespace().next()?.to_owned(),
            })
        })
        .collect()
}

/// The mount points (inside the container) CRIU must take as external: every mount but
/// the root whose file system is not one CRIU makes itself, and is not a bind of a mount
/// inside the container (the read-only rebinds of /proc/sys, a masked path's /dev/null).
fn external_mounts(mountinfo: &str) -> Vec<String> {
    let mounts = parse_mountinfo(mountinfo);
    let ids: std::collections::BTreeSet<u32> = mounts.iter().map(|m| m.id).collect();
    // The root: the mount whose parent is not in this namespace's table.
    let root = mounts
        .iter()
        .find(|m| !ids.contains(&m.parent))
        .map(|m| m.id);
    mounts
        .iter()
        .filter(|m| Some(m.id) != root)
        .filter(|m| {
            let inside = mounts.iter().any(|o| {
                o.id != m.id
                    && o.dev == m.dev
                    && (Some(o.id) == root || o.root == "/")
                    && CRIU_OWN_FS.contains(&o.fstype.as_str())
                    && m.root.starts_with(o.root.as_str())
            });
            let own = CRIU_OWN_FS.contains(&m.fstype.as_str()) && m.root == "/";
            !(own || inside)
        })
        .map(|m| m.point.clone())
        .collect()
}

/// Where the archive goes: an absolute path that does not exist yet, in a directory berthd
/// can write.
fn check_location(location: &str) -> Result<PathBuf> {
    let bad = |why: String| {
        Err(Error::InvalidArgument(format!(
            "location {location:?}: {why}"
        )))
    };
    if location.is_empty() {
        return bad("empty: name the archive to write".into());
    }
    let path = PathBuf::from(location);
    if !path.is_absolute() {
        return bad("not an absolute path".into());
    }
    if path.symlink_metadata().is_ok() {
        return bad("exists already; checkpoints are not overwritten".into());
    }
    let Some(dir) = path.parent().filter(|d| d.is_dir()) else {
        return bad("its directory does not exist".into());
    };
    if let Err(e) = nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK) {
        return bad(format!(
            "its directory {} is not writable: {e}",
            dir.display()
        ));
    }
    if path.file_name().is_none() {
        return bad("not a file name".into());
    }
    Ok(path)
}

/// Why a container cannot be checkpointed, if it cannot.
fn refusal(c: &ContainerRecord) -> Option<String> {
    if c.state != ContainerState::Running || c.pid == 0 {
        return Some(format!(
            "container {} is not running (state {:?}); only a running container can be checkpointed",
            c.id, c.state
        ));
    }
    if c.launch.stdio.tty {
        return Some(format!(
            "container {} has a terminal (tty); berth checkpoints only containers without one",
            c.id
        ));
    }
    if c.launch.userns.is_some() {
        return Some(format!(
            "container {} runs in a user namespace (hostUsers: false); CRIU cannot restore those reliably yet",
            c.id
        ));
    }
    if !c.launch.new_pid_namespace {
        return Some(format!(
            "container {} shares a pid namespace (pod pid mode POD or TARGET); berth checkpoints only containers with their own",
            c.id
        ));
    }
    None
}

impl Engine {
    /// Checkpoints a running container into the archive `location` (see the module docs).
    pub async fn checkpoint_container(
        &self,
        id: &str,
        location: &str,
        timeout_seconds: i64,
    ) -> Result<()> {
        if id.is_empty() {
            return Err(Error::InvalidArgument(
                "container_id is required: name the container to checkpoint".into(),
            ));
        }
        let c = self.container(id)?;
        let _pg = self.locks.lock(&c.pod_id).await;
        let _g = self.locks.lock(id).await;
        let c = self.container(id)?;
        let location = check_location(location)?;
        if let Some(why) = refusal(&c) {
            return Err(Error::FailedPrecondition(why));
        }
        self.criu().await?;
        let unified = self
            .cgroups
            .as_ref()
            .and_then(|l| l.v2_root())
            .ok_or_else(|| {
                Error::FailedPrecondition(
                    "checkpoints need cgroup v2 (this node keeps its controllers on v1)".into(),
                )
            })?;
        let cgroup = unified.join(&c.cgroup);
        let timeout = match u64::try_from(timeout_seconds) {
            Ok(0) | Err(_) => DEFAULT_TIMEOUT,
            Ok(s) => Duration::from_secs(s),
        };
        let dir = location.parent().unwrap_or(Path::new("/")).to_owned();
        let name = location
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // CRIU's images and the other entries, under berth's root (swept at start-up).
        let stamp = crate::clock::now_nanos();
        let work = WorkDir::new(self.cfg.root.join(WORK_DIR).join(format!("{id}-{stamp}")))?;
        let started = std::time::Instant::now();
        let made = {
            // Thawed however this ends (an error, the timeout, a panic).
            let _frozen = Frozen(cgroup.clone());
            match tokio::time::timeout(timeout, self.dump_into(&c, &cgroup, work.path())).await {
                Ok(r) => r,
                Err(_) => Err(Error::DeadlineExceeded(format!(
                    "checkpoint of container {id} did not finish within {timeout:?}"
                ))),
            }
        };
        made?;
        // Written beside the location under a name of its own, then linked into place,
        // which fails rather than replace an archive made there meanwhile.
        let tmp = dir.join(format!(".{name}.berth-{stamp}.tmp"));
        let (from, to) = (work.path().to_owned(), tmp.clone());
        let written = tokio::task::spawn_blocking(move || write_archive(&from, &to))
            .await
            .map_err(|e| Error::Internal(format!("write the archive: {e}")))?;
        let placed = written.and_then(|()| {
            std::fs::hard_link(&tmp, &location).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Error::InvalidArgument(format!(
                        "location {}: made by someone else during the checkpoint",
                        location.display()
                    ))
                } else {
                    Error::Internal(format!("put the archive at {}: {e}", location.display()))
                }
            })
        });
        if tmp.exists() {
            // Ours: made with create_new under a name no one else uses.
            let _ = std::fs::remove_file(&tmp);
        }
        placed?;
        let size = std::fs::metadata(&location).map(|m| m.len()).unwrap_or(0);
        tracing::info!(container_id = %id, location = %location.display(), bytes = size, ms = started.elapsed().as_millis() as u64, "container checkpointed");
        Ok(())
    }

    /// Whether CRIU can run here, asked once.
    pub(crate) async fn criu(&self) -> Result<()> {
        let usable = self
            .criu
            .get_or_init(|| async {
                tokio::task::spawn_blocking(crate::linux::probe::criu_usable)
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
            })
            .await;
        match usable {
            Ok(_) => Ok(()),
            Err(why) => Err(Error::Unimplemented(format!(
                "this node cannot checkpoint containers: {why}"
            ))),
        }
    }

    /// Freezes the container, dumps it with CRIU into `work/checkpoint`, and writes the
    /// rest of the archive's entries into `work`, all while it is frozen.
    async fn dump_into(&self, c: &ContainerRecord, cgroup: &Path, work: &Path) -> Result<()> {
        let images = work.join(IMAGES_DIR);
        crate::durable::create_dir_all(&images, 0o700)?;
        let pid = c.pid;
        let proc = PathBuf::from(format!("/proc/{pid}"));
        // The targets of its standard streams (pipes to its monitor), for the restore.
        let fds: Vec<String> = (0..3)
            .map(|fd| {
                std::fs::read_link(proc.join("fd").join(fd.to_string()))
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect();
        write_json(&images.join(DESCRIPTORS), &fds)?;
        let mountinfo = std::fs::read_to_string(proc.join("mountinfo"))
            .map_err(|e| Error::FailedPrecondition(format!("container {} is gone: {e}", c.id)))?;
        let externals = external_mounts(&mountinfo);
        let netns = ns_inode(&proc.join("ns/net"))?;
        let own_netns = ns_inode(Path::new("/proc/self/ns/net"))?;
        freeze(cgroup).await?;
        // Still the container's process (not a pid reused after it exited)?
        let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
        if !procs.lines().any(|l| l.trim() == pid.to_string()) {
            return Err(Error::FailedPrecondition(format!(
                "container {} exited during the checkpoint",
                c.id
            )));
        }
        let mut args: Vec<String> = vec![
            "dump".into(),
            "--tree".into(),
            pid.to_string(),
            "--images-dir".into(),
            images.display().to_string(),
            "--work-dir".into(),
            work.display().to_string(),
            "--log-file".into(),
            "dump.log".into(),
            "-v4".into(),
            "--leave-running".into(),
            "--tcp-established".into(),
            // The pod's network is held still during the dump with nftables (as berth's
            // own rules are), not iptables-restore, which a node may lack.
            "--network-lock".into(),
            "nftables".into(),
            "--file-locks".into(),
            "--manage-cgroups=soft".into(),
            "--freeze-cgroup".into(),
            cgroup.display().to_string(),
        ];
        for m in &externals {
            args.push("--external".into());
            args.push(format!("mnt[{m}]:{m}"));
        }
        if netns != own_netns {
            args.push("--external".into());
            args.push(format!("net[{netns}]:{NET_NS_KEY}"));
        }
        run_criu(&args, &work.join("dump.log")).await?;
        // The writable layer's changes, and what berth knows of the container.
        let (upper, to) = (c.launch.rootfs.upperdir.clone(), work.to_owned());
        tokio::task::spawn_blocking(move || diff_upper(&upper, &to))
            .await
            .map_err(|e| Error::Internal(format!("copy the writable layer: {e}")))??;
        let image = c
            .image_id
            .parse::<crate::id::Digest>()
            .ok()
            .and_then(|d| self.db.image_get(&d).ok().flatten());
        let now = chrono_now();
        let config = serde_json::json!({
            "id": c.id,
            "name": c.name,
            "rootfsImage": c.image,
            "rootfsImageRef": c.image_id,
            "rootfsImageName": image.as_ref().and_then(|i| i.repo_tags.first().cloned()).unwrap_or_else(|| c.image.clone()),
            "runtime": "berth",
            "createdTime": rfc3339(c.created_at),
            "checkpointedTime": now,
            "restoredTime": serde_json::Value::Null,
            "restored": false,
        });
        write_json(&work.join(CONFIG_DUMP), &config)?;
        let pod = self.db.pod_get(&c.pod_id)?.ok_or_else(|| Error::NotFound {
            what: "pod sandbox",
            id: c.pod_id.clone(),
        })?;
        write_json(&work.join(SPEC_DUMP), &oci_spec(c, &pod, &externals))?;
        if !c.log_path.is_empty() {
            let log = Path::new(&pod.log_directory).join(&c.log_path);
            if log.is_file() {
                std::fs::copy(&log, work.join(LOG_ENTRY))
                    .map_err(|e| Error::Internal(format!("copy the log {}: {e}", log.display())))?;
            }
        }
        Ok(())
    }
}

/// The container as an OCI runtime spec, for `spec.dump`: what checkpointctl shows and a
/// restore checks its mounts against.
fn oci_spec(
    c: &ContainerRecord,
    pod: &crate::state::records::PodRecord,
    externals: &[String],
) -> serde_json::Value {
    let mut annotations: BTreeMap<String, String> = c.annotations.clone();
    annotations.insert("io.container.manager".into(), "berth".into());
    annotations.insert(
        "io.kubernetes.cri.container-type".into(),
        "container".into(),
    );
    annotations.insert("io.kubernetes.cri.container-name".into(), c.name.clone());
    annotations.insert("io.kubernetes.cri.sandbox-id".into(), pod.id.clone());
    annotations.insert("io.kubernetes.cri.sandbox-name".into(), pod.name.clone());
    annotations.insert(
        "io.kubernetes.cri.sandbox-namespace".into(),
        pod.namespace.clone(),
    );
    annotations.insert("io.kubernetes.cri.sandbox-uid".into(), pod.uid.clone());
    annotations.insert("io.kubernetes.cri.image-name".into(), c.image.clone());
    annotations.insert(
        "io.kubernetes.cri-o.Annotations".into(),
        serde_json::to_string(&c.annotations).unwrap_or_default(),
    );
    annotations.insert(
        "io.kubernetes.cri-o.Labels".into(),
        serde_json::to_string(&c.labels).unwrap_or_default(),
    );
    let p = &c.launch.process;
    let mounts: Vec<serde_json::Value> = c
        .launch
        .mounts
        .iter()
        .map(|m| {
            serde_json::json!({
                "destination": m.destination,
                "type": m.kind,
                "source": m.source,
                "options": m.options,
            })
        })
        .collect();
    serde_json::json!({
        "ociVersion": "1.1.0",
        "process": {
            "terminal": c.launch.stdio.tty,
            "user": {"uid": p.user.uid, "gid": p.user.gid},
            "args": p.args,
            "env": p.env,
            "cwd": p.cwd,
        },
        "root": {"path": c.launch.rootfs.target, "readonly": c.launch.rootfs.readonly},
        "hostname": pod.hostname,
        "mounts": mounts,
        "annotations": annotations,
        "linux": {
            "cgroupsPath": c.cgroup,
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network", "path": pod.netns}],
        },
        "berth": {"externalMounts": externals},
    })
}

/// A directory beside the archive for CRIU's images and the other entries, removed when
/// dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new(path: PathBuf) -> Result<WorkDir> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&path)
            .map_err(|e| {
                Error::Internal(format!("make the work directory {}: {e}", path.display()))
            })?;
        Ok(WorkDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(v)
        .map_err(|e| Error::Internal(format!("encode {}: {e}", path.display())))?;
    std::fs::write(path, bytes)
        .map_err(|e| Error::Internal(format!("write {}: {e}", path.display())))
}

fn ns_inode(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|e| Error::FailedPrecondition(format!("{}: {e}", path.display())))
}

/// RFC 3339 (UTC, nanoseconds) of nanoseconds since the epoch, as the CRI log writes it.
pub(crate) fn rfc3339(nanos: i64) -> String {
    let since = Duration::from_nanos(u64::try_from(nanos).unwrap_or(0));
    crate::monitor::cri_log::timestamp(std::time::UNIX_EPOCH + since)
}

fn chrono_now() -> String {
    rfc3339(crate::clock::now_nanos())
}

/// Freezes a cgroup v2 and waits until the kernel says it is frozen.
async fn freeze(cgroup: &Path) -> Result<()> {
    std::fs::write(cgroup.join("cgroup.freeze"), "1").map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::FailedPrecondition(format!(
                "the container's cgroup {} is gone: it exited",
                cgroup.display()
            ))
        } else {
            Error::Internal(format!("freeze {}: {e}", cgroup.display()))
        }
    })?;
    for _ in 0..500 {
        let events = std::fs::read_to_string(cgroup.join("cgroup.events")).unwrap_or_default();
        if events.lines().any(|l| l.trim() == "frozen 1") {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = thaw(cgroup);
    Err(Error::FailedPrecondition(format!(
        "the container's cgroup {} did not freeze within 5 s (a process stuck in the kernel?)",
        cgroup.display()
    )))
}

fn thaw(cgroup: &Path) -> std::io::Result<()> {
    std::fs::write(cgroup.join("cgroup.freeze"), "0")
}

/// Thaws the container's cgroup when dropped, and says so if it cannot.
struct Frozen(PathBuf);

impl Drop for Frozen {
    fn drop(&mut self) {
        match thaw(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(cgroup = %self.0.display(), error = %e, "cannot thaw a container after its checkpoint; it stays frozen");
            }
        }
    }
}

/// Runs criu with `args`; a failure names the last errors of its log.
pub(crate) async fn run_criu(args: &[String], log: &Path) -> Result<()> {
    let out = tokio::process::Command::new("criu")
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| Error::Unimplemented(format!("run criu: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let tail = crate::linux::restore::last_errors(log)
        .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_owned());
    Err(Error::FailedPrecondition(format!(
        "criu {} failed ({}): {tail}",
        args.first().map(String::as_str).unwrap_or(""),
        out.status
    )))
}

/// Writes `rootfs-diff.tar` (what the writable layer adds or changes) and `deleted.files`
/// (whiteouts, and opaque directories, whose image contents are hidden) into `work`.
fn diff_upper(upper: &Path, work: &Path) -> Result<()> {
    let file = std::fs::File::create(work.join(ROOTFS_DIFF))
        .map_err(|e| Error::Internal(format!("write {ROOTFS_DIFF}: {e}")))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    tar.follow_symlinks(false);
    let mut deleted = Vec::new();
    walk_upper(upper, Path::new(""), &mut tar, &mut deleted).map_err(|e| {
        Error::Internal(format!("copy the writable layer {}: {e}", upper.display()))
    })?;
    tar.into_inner()
        .and_then(|mut w| std::io::Write::flush(&mut w))
        .map_err(|e| Error::Internal(format!("write {ROOTFS_DIFF}: {e}")))?;
    write_json(&work.join(DELETED_FILES), &deleted)
}

fn walk_upper<W: std::io::Write>(
    dir: &Path,
    rel: &Path,
    tar: &mut tar::Builder<W>,
    deleted: &mut Vec<String>,
) -> std::io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let r = rel.join(e.file_name());
        let meta = std::fs::symlink_metadata(&path)?;
        let ft = meta.file_type();
        if ft.is_char_device() && meta.rdev() == 0 {
            deleted.push(format!("/{}", r.display()));
        } else if ft.is_dir() {
            if xattr::get(&path, "trusted.overlay.opaque")
                .ok()
                .flatten()
                .as_deref()
                == Some(b"y")
            {
                deleted.push(format!("/{}", r.display()));
            }
            tar.append_dir(&r, &path)?;
            walk_upper(&path, &r, tar, deleted)?;
        } else if ft.is_file() || ft.is_symlink() {
            tar.append_path_with_name(&path, &r)?;
        }
        // Sockets, fifos and device nodes a container made stay behind, as with CRI-O.
    }
    Ok(())
}

/// Tars the work directory (0600: it holds every page of the container's memory).
fn write_archive(work: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let err =
        |e: std::io::Error| Error::Internal(format!("write the archive {}: {e}", to.display()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(err)?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    tar.follow_symlinks(false);
    let mut names: Vec<_> = std::fs::read_dir(work).map_err(err)?.flatten().collect();
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let name = e.file_name();
        if e.file_type().map_err(err)?.is_dir() {
            tar.append_dir_all(&name, e.path()).map_err(err)?;
        } else {
            tar.append_path_with_name(e.path(), &name).map_err(err)?;
        }
    }
    let mut w = tar.into_inner().map_err(err)?;
    std::io::Write::flush(&mut w).map_err(err)?;
    w.into_inner()
        .map_err(|e| err(e.into_error()))?
        .sync_all()
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
812 700 0:95 / / rw,relatime - overlay overlay rw,lowerdir=/a,upperdir=/b,workdir=/c
813 812 0:97 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
814 812 0:98 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
815 814 0:99 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,gid=5,mode=620,ptmxmode=666
816 814 0:22 /berth/pods/p1/shm /dev/shm rw,nosuid,nodev - tmpfs tmpfs rw
817 812 0:100 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
818 817 0:30 /berth-e2e/pod-1/c1 /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw
819 812 8:1 /var/lib/data /data rw,relatime master:1 - ext4 /dev/sda1 rw
820 812 0:22 /berth/pods/p1/hosts /etc/hosts rw - tmpfs tmpfs rw
821 813 0:97 /sys /proc/sys ro,nosuid,nodev,noexec,relatime - proc proc rw
822 813 0:98 /null /proc/kcore rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
823 812 0:101 / /dev/mqueue rw - mqueue mqueue rw
";

    #[test]
    fn host_binds_are_external_and_the_containers_own_mounts_are_not() {
        assert_eq!(
            external_mounts(MOUNTINFO),
            vec!["/dev/shm", "/sys/fs/cgroup", "/data", "/etc/hosts"]
        );
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(1_796_601_600_000_000_123),
            "2026-12-07T00:00:00.000000123Z"
        );
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn a_location_must_be_new_absolute_and_writable() {
        let d = tempfile::tempdir().unwrap();
        let ok = d.path().join("c.tar");
        assert_eq!(check_location(ok.to_str().unwrap()).unwrap(), ok);
        for bad in ["", "relative.tar", "/nonexistent-dir-berth/c.tar"] {
            assert!(
                matches!(check_location(bad), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
        std::fs::write(&ok, b"x").unwrap();
        let e = check_location(ok.to_str().unwrap()).unwrap_err();
        assert!(e.to_string().contains("exists"), "{e}");
    }

    #[test]
    fn the_writable_layer_becomes_a_diff_and_a_deletion_list() {
        let upper = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(upper.path().join("etc/new")).unwrap();
        std::fs::write(upper.path().join("etc/new/file"), b"hello").unwrap();
        std::os::unix::fs::symlink("file", upper.path().join("etc/new/link")).unwrap();
        let whiteout = upper.path().join("etc/gone");
        if nix::sys::stat::mknod(
            &whiteout,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .is_err()
        {
            eprintln!("no mknod here: the whiteout case is not checked");
        }
        diff_upper(upper.path(), work.path()).unwrap();
        let mut names = Vec::new();
        let mut a = tar::Archive::new(std::fs::File::open(work.path().join(ROOTFS_DIFF)).unwrap());
        for e in a.entries().unwrap() {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        assert_eq!(
            names,
            vec!["etc", "etc/new", "etc/new/file", "etc/new/link"]
        );
        let deleted: Vec<String> =
            serde_json::from_slice(&std::fs::read(work.path().join(DELETED_FILES)).unwrap())
                .unwrap();
        if whiteout.exists() {
            assert_eq!(deleted, vec!["/etc/gone"]);
        }
    }
}

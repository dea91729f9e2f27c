//! Starting a container's process: its streams, its log, the pid namespace it asked for,
//! and the copies of its output that go to its log and to attached sessions.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::time::SystemTime;

use berth_proto::monitor as proto;
use nix::unistd::Pid;

use super::cri_log::{CriLogFile, DEFAULT_MAX_LINE, Stream};
use super::entry::{Running, Shared};
use super::podinit;
use super::session::{ContainerIo, STDERR};
use super::stdio::{self, Source};
use crate::clock::now_nanos;
use crate::linux::spawn::{self, LaunchSpec};

pub(super) fn oom_count(file: &str) -> u64 {
    std::fs::read(file).map_or(0, |t| oom_kills_in(&t))
}

pub(super) fn start(
    state: &Shared,
    s: proto::Start,
) -> Result<(Pid, i64), (crate::ErrorKind, String)> {
    let spec: LaunchSpec = super::wire::launch_of(&s)
        .map_err(|e| (crate::ErrorKind::InvalidArgument, e.to_string()))?;
    if state.borrow().running.contains_key(&s.container_id) {
        return Err((
            crate::ErrorKind::FailedPrecondition,
            format!("container {} is already running", s.container_id),
        ));
    }
    if state.borrow().shutting_down {
        return Err((
            crate::ErrorKind::FailedPrecondition,
            "the pod is stopping".into(),
        ));
    }
    let mode = spec.stdio;
    // A terminal is made by the container itself in its own devpts; its master comes back
    // once the container has started.
    let (stdio, pending) = stdio::prepare(mode.tty, mode.stdin)?;
    let log = if s.log_path.is_empty() {
        None
    } else {
        Some(Rc::new(RefCell::new(
            open_log(&s.log_directory, &s.log_path).map_err(|e| {
                (
                    crate::ErrorKind::InvalidArgument,
                    format!("open log {}: {e}", s.log_path),
                )
            })?,
        )))
    };
    let oom_before = if s.oom_file.is_empty() {
        0
    } else {
        oom_count(&s.oom_file)
    };
    let restore = s
        .restore
        .as_ref()
        .map(crate::linux::restore::RestoreSpec::from);
    let spawned = match (&spec.pid_target, &spec.pod_pid_namespace) {
        (None, None) => match &restore {
            Some(r) => crate::linux::restore::restore(&spec, stdio, r),
            None => spawn::spawn(&spec, stdio),
        },
        (None, Some(cgroups)) => {
            let mut st = state.borrow_mut();
            let st = &mut *st;
            let init = match &mut st.pod_init {
                Some(init) => init,
                slot @ None => slot.insert(
                    podinit::start(cgroups, st.pod_init_program.as_deref())
                        .map_err(|e| (crate::ErrorKind::Internal, e))?,
                ),
            };
            spawn::spawn_in_pid_namespace(&init.ns, &spec, stdio)
        }
        (Some(target), _) => {
            let Some(tpid) = state.borrow().running.get(target).map(|r| r.pid) else {
                return Err((
                    crate::ErrorKind::FailedPrecondition,
                    format!("the target container {target} of pid mode TARGET is not running"),
                ));
            };
            spawn::spawn_in_pid_namespace_of(tpid, &spec, stdio)
        }
    };
    let pid = spawned.map_err(|e| (crate::ErrorKind::FailedPrecondition, e.to_string()))?;
    if let Some(hooks) = &spec.hooks {
        // poststart: the command runs; a failing hook is logged and changes nothing (OCI).
        for e in crate::linux::hooks::run_point_all(
            crate::spec::hooks::Point::Poststart,
            hooks,
            &spec.id,
            Some(pid.as_raw()),
        ) {
            super::entry::log(
                &state.borrow().dir,
                &format!("container {}: {e}", s.container_id),
            );
        }
    }
    let streams = pending.finish(pid, 0, 0)?;
    let started_at = now_nanos();
    if let Some(want) = spec.oom_score_adj {
        // The kernel refuses to lower the score without CAP_SYS_RESOURCE; the container then
        // keeps the inherited one. Clamp-and-log, as containerd's restrict_oom_score_adj.
        let got = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap_or_default();
        if got.trim().parse::<i32>().ok() != Some(want) {
            super::entry::log(
                &state.borrow().dir,
                &format!(
                    "container {}: oom_score_adj {want} refused by this node; kept {}",
                    s.container_id,
                    got.trim()
                ),
            );
        }
    }
    let oom_seen = Rc::new(std::cell::Cell::new(oom_before));
    let (oom_watch, running_ended) = tokio::sync::oneshot::channel();
    // v1's memory.oom_control is never signalled: its count is read at the exit only.
    if !s.oom_file.is_empty() && !s.oom_file.ends_with("memory.oom_control") {
        tokio::task::spawn_local(watch_oom(
            s.oom_file.clone(),
            oom_seen.clone(),
            running_ended,
        ));
    }
    let outputs = u8::try_from(streams.outputs.len()).unwrap_or(2);
    let io = Rc::new(ContainerIo::new(
        streams.stdin,
        mode.stdin_once,
        streams.tty,
        outputs,
    ));
    for (stream, src) in streams.outputs {
        let stream = if stream == STDERR {
            Stream::Stderr
        } else {
            Stream::Stdout
        };
        tokio::task::spawn_local(copy_output(src, stream, log.clone(), io.clone()));
    }
    state.borrow_mut().running.insert(
        s.container_id.clone(),
        Running {
            pid,
            started_at,
            oom_file: s.oom_file,
            oom_before,
            oom_seen,
            _oom_watch: oom_watch,
            log,
            io,
            shared_pid_cgroups: if spec.new_pid_namespace {
                Vec::new()
            } else {
                spec.cgroup_dirs.clone()
            },
        },
    );
    Ok((pid, started_at))
}

/// Follows a container's OOM kill counter while it runs, so that a kill is known even when
/// the cgroup is gone by the time the exit is reaped: systemd removes a scope's cgroup once
/// it is empty. Ends when the container's exit has been handled (`ended`'s sender, kept
/// with the running container, is dropped).
///
/// The kernel signals each change of a cgroup v2 `memory.events` to pollers of the file
/// (EPOLLPRI, kernfs's file notification); v1's `memory.oom_control` is never notified
/// (its count is read at the exit, and no watch is made for it). Not inotify on the file,
/// which the kernel signals as well: closing an inotify instance waits for an SRCU grace
/// period (`fsnotify` flushes its mark connectors' destruction), which held the
/// single-threaded monitor for 10-20 ms at every container's exit, and a pod's Shutdown
/// behind it.
async fn watch_oom(
    file: String,
    seen: Rc<std::cell::Cell<u64>>,
    mut ended: tokio::sync::oneshot::Receiver<()>,
) {
    follow_kernfs_file(&file, &mut ended, |text| {
        seen.set(seen.get().max(oom_kills_in(text)));
    })
    .await;
}

/// Calls `on_change` with the text of kernfs file `file` (a cgroup's) each time the kernel
/// signals a change of it, until `ended` resolves (a removed cgroup wakes no poller; a
/// read of one fails, which ends the loop too). A newly opened kernfs file counts as
/// changed until its first read: the first call comes at once, which catches a change
/// between the caller's last read and this open.
async fn follow_kernfs_file(
    file: &str,
    ended: &mut tokio::sync::oneshot::Receiver<()>,
    mut on_change: impl FnMut(&[u8]),
) {
    use tokio::io::Interest;
    let Ok(f) = std::fs::File::open(file) else {
        return;
    };
    let Ok(afd) = crate::linux::sys::async_fd_for(f.into(), Interest::PRIORITY) else {
        return;
    };
    let mut buf = [0u8; 4096];
    loop {
        let mut guard = tokio::select! {
            r = afd.ready(Interest::PRIORITY) => match r {
                Ok(g) => g,
                Err(_) => return,
            },
            _ = &mut *ended => return,
        };
        // Read through this descriptor: the read is what marks the change seen.
        match nix::sys::uio::pread(afd.get_ref(), &mut buf, 0) {
            Ok(n) => on_change(&buf[..n]),
            Err(_) => return, // the cgroup is gone
        }
        guard.clear_ready();
    }
}

/// The `oom_kill` count of a `memory.events` or `memory.oom_control` text.
fn oom_kills_in(text: &[u8]) -> u64 {
    String::from_utf8_lossy(text)
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Copies one output stream of a container into its CRI log until end of file, and to the
/// sessions attached to it.
async fn copy_output(
    mut src: Source,
    stream: Stream,
    log: Option<Rc<RefCell<CriLogFile>>>,
    io: Rc<ContainerIo>,
) {
    let mut buf = super::stdio::ReadBuffer::new(32 * 1024);
    let channel = match stream {
        Stream::Stdout => super::session::STDOUT,
        Stream::Stderr => super::session::STDERR,
    };
    while let Ok(data) = buf.read_from(&mut src).await {
        if data.is_empty() {
            break;
        }
        if let Some(l) = &log {
            let _ = l.borrow_mut().writer.write(stream, data, SystemTime::now());
        }
        io.publish(channel, data);
    }
    if let Some(l) = &log {
        let _ = l
            .borrow_mut()
            .writer
            .close_stream(stream, SystemTime::now());
    }
    io.output_ended();
}

/// The container's log, opened beneath the pod's log directory (or, from an engine that
/// did not send one, beneath the log file's own directory).
fn open_log(log_directory: &str, log_path: &str) -> std::io::Result<CriLogFile> {
    let path = Path::new(log_path);
    let (dir, rel) = if log_directory.is_empty() {
        match (path.parent(), path.file_name()) {
            (Some(d), Some(f)) => (d, Path::new(f)),
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a file path",
                ));
            }
        }
    } else {
        let dir = Path::new(log_directory);
        let rel = path.strip_prefix(dir).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("not beneath the pod's log directory {log_directory}"),
            )
        })?;
        (dir, rel)
    };
    CriLogFile::open(dir, rel, DEFAULT_MAX_LINE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kills_are_read_from_v1_and_v2_files() {
        let v2 = b"low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(oom_kills_in(v2), 2);
        let v1 = b"oom_kill_disable 0\nunder_oom 0\noom_kill 5\n";
        assert_eq!(oom_kills_in(v1), 5);
        assert_eq!(oom_kills_in(b"oom_kill_disable 0\n"), 0);
        assert_eq!(oom_kills_in(b""), 0);
    }

    /// The change signal `watch_oom` relies on, on a file every cgroup2 directory has:
    /// `cgroup.events` changes when a first process comes in (memory.events, which the
    /// kernel signals the same way, needs a memory controller on cgroup2 and an OOM kill).
    #[test]
    fn a_change_of_a_kernfs_file_is_signalled() {
        let Some(root) = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(std::path::PathBuf::from)
            .find(|p| {
                nix::sys::statfs::statfs(p)
                    .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
            })
        else {
            return;
        };
        let dir = root.join(format!("berth-test-kernfs-{}", std::process::id()));
        if std::fs::create_dir(&dir).is_err() {
            return; // not root
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let texts = std::cell::RefCell::new(Vec::new());
        let mut child = None;
        let (_end, mut ended) = tokio::sync::oneshot::channel();
        rt.block_on(async {
            let file = dir.join("cgroup.events");
            let follow = follow_kernfs_file(file.to_str().unwrap(), &mut ended, |t| {
                texts
                    .borrow_mut()
                    .push(String::from_utf8_lossy(t).into_owned());
            });
            let populate = async {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                let c = std::process::Command::new("sleep")
                    .arg("10")
                    .spawn()
                    .unwrap();
                std::fs::write(dir.join("cgroup.procs"), c.id().to_string()).unwrap();
                child = Some(c);
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                tokio::join!(follow, populate)
            })
            .await;
        });
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir(&dir);
        let texts = texts.into_inner();
        assert!(
            texts.iter().any(|t| t.contains("populated 1")),
            "no change of cgroup.events was signalled: {texts:?}"
        );
    }
}

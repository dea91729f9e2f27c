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
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
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
            let init = match &mut st.pod_init {
                Some(init) => init,
                slot @ None => slot
                    .insert(podinit::start(cgroups).map_err(|e| (crate::ErrorKind::Internal, e))?),
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
    if !s.oom_file.is_empty() {
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

/// Follows a container's OOM kill counter while it runs (inotify on the file the kernel
/// notifies at each OOM event), so that a kill is known even when the cgroup is gone by
/// the time the exit is reaped: systemd removes a scope's cgroup once it is empty. Ends
/// when the file goes or the container's exit has been handled (`ended`'s sender, kept
/// with the running container, is dropped).
async fn watch_oom(
    file: String,
    seen: Rc<std::cell::Cell<u64>>,
    mut ended: tokio::sync::oneshot::Receiver<()>,
) {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let Ok(ino) = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) else {
        return;
    };
    if ino
        .add_watch(file.as_str(), AddWatchFlags::IN_MODIFY)
        .is_err()
    {
        return;
    }
    let Ok(afd) = crate::linux::sys::async_fd(std::os::fd::OwnedFd::from(ino)) else {
        return;
    };
    let mut buf = [0u8; 4096];
    loop {
        let mut guard = tokio::select! {
            r = afd.readable() => match r {
                Ok(g) => g,
                Err(_) => return,
            },
            _ = &mut ended => return,
        };
        match nix::unistd::read(afd.get_ref(), &mut buf) {
            Ok(n) => {
                seen.set(seen.get().max(oom_count(&file)));
                if inotify_ignored(&buf[..n]) {
                    return;
                }
            }
            Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
            Err(_) => return,
        }
    }
}

/// Whether a buffer of inotify events holds IN_IGNORED (the watched file is gone).
fn inotify_ignored(mut events: &[u8]) -> bool {
    // struct inotify_event: wd i32, mask u32, cookie u32, len u32, then len bytes of name.
    while events.len() >= 16 {
        let word = |at: usize| {
            u32::from_ne_bytes([events[at], events[at + 1], events[at + 2], events[at + 3]])
        };
        if word(4) & libc::IN_IGNORED != 0 {
            return true;
        }
        let next = 16 + word(12) as usize;
        events = events.get(next..).unwrap_or_default();
    }
    false
}

/// Copies one output stream of a container into its CRI log until end of file, and to the
/// sessions attached to it.
async fn copy_output(
    mut src: Source,
    stream: Stream,
    log: Option<Rc<RefCell<CriLogFile>>>,
    io: Rc<ContainerIo>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    let channel = match stream {
        Stream::Stdout => super::session::STDOUT,
        Stream::Stderr => super::session::STDERR,
    };
    while let Ok(n @ 1..) = src.read(&mut buf).await {
        if let Some(l) = &log {
            let _ = l
                .borrow_mut()
                .writer
                .write(stream, &buf[..n], SystemTime::now());
        }
        io.publish(channel, &buf[..n]);
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

    fn event(mask: u32, name_len: u32) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [1u32, mask, 0, name_len] {
            v.extend_from_slice(&w.to_ne_bytes());
        }
        v.extend(std::iter::repeat_n(0u8, name_len as usize));
        v
    }

    #[test]
    fn inotify_ignored_is_found_among_events() {
        let mut buf = event(libc::IN_MODIFY, 16);
        assert!(!inotify_ignored(&buf));
        buf.extend(event(libc::IN_IGNORED, 0));
        assert!(inotify_ignored(&buf));
        assert!(!inotify_ignored(&buf[..10]));
    }
}

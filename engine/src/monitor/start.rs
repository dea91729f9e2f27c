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
    let mut oom = super::oom::OomWatch::before_start(&s.oom_file, spec.pid_target.is_some());
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
                    podinit::start(cgroups, st.pod_init_program.as_deref(), &st.dir)
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
    oom.follow();
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
            oom,
            log,
            io,
            shared_pid_cgroups: if spec.new_pid_namespace {
                Vec::new()
            } else {
                spec.cgroup_dirs.clone()
            },
            exec_cgroups: None,
        },
    );
    Ok((pid, started_at))
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

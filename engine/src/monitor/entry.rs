//! The monitor process: `berthd monitor --pod ID --dir DIR [--new-net NETNS] [--new-ipc]
//! [--hostname NAME]`.
//!
//! Start-up: leave berthd's session, become a child subreaper, create the pod's namespaces
//! (UTS with the hostname, network with loopback up and bound at NETNS, IPC with a /dev/shm
//! tmpfs at DIR/shm), listen on DIR/monitor.sock, then write `ready` on stdout (a pipe
//! berthd reads) or the reason it could not. Then a current-thread runtime serves requests,
//! reaps children on SIGCHLD, copies container output into CRI logs, and records every
//! exit in DIR/exits/ before it tells anyone.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::SystemTime;

use berth_proto::monitor::{self as proto, Frame, frame::Body};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::mpsc;

use super::cri_log::CriLogFile;
use super::frame;
use crate::linux::spawn::ExecCgroups;

/// Command-line arguments of `berthd monitor`.
#[derive(Debug, Clone, Default)]
pub struct MonitorArgs {
    pub pod_id: String,
    pub dir: PathBuf,
    /// Create a network namespace and bind it here.
    pub new_net: Option<PathBuf>,
    pub new_ipc: bool,
    /// Create a UTS namespace with this hostname (empty: share the host's).
    pub hostname: String,
    /// Create the pod's user namespace with these mappings and bind it at
    /// `<dir>/`[`USERNS_FILE`]; the pod's network, IPC and UTS namespaces are made inside
    /// it, and its containers join it last.
    pub userns: Option<crate::spec::userns::IdMappings>,
    /// The pod init program (`podinit::install`) that becomes pid 1 of the pod's shared pid
    /// namespace; None, or a program that cannot be executed: the same loop in a confined copy
    /// of the monitor.
    pub pod_init: Option<PathBuf>,
}

/// Where a pod's user namespace is bind-mounted, in its run directory.
pub const USERNS_FILE: &str = "userns";

const SOCKET_NAME: &str = "monitor.sock";

/// Where the monitor of a pod listens.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_NAME)
}

/// Where exit records are kept.
pub fn exits_dir(dir: &Path) -> PathBuf {
    dir.join("exits")
}

/// Runs the monitor; returns the process exit code.
pub fn main(args: MonitorArgs) -> i32 {
    crate::linux::process::restore_nofile_from_env();
    let mut ready = std::io::stdout();
    match setup(&args) {
        Ok(listener) => {
            let _ = writeln!(ready, "ready");
            let _ = ready.flush();
            // berthd stops reading after "ready": point stdout at /dev/null.
            if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
                let _ = nix::unistd::dup2_stdout(&null);
            }
            // A monitor waits on a few descriptors a container: 64 events a wake-up, not
            // tokio's 1024 (12 KiB a monitor).
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_io_events_per_tick(64)
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    log(&args.dir, &format!("runtime: {e}"));
                    return 1;
                }
            };
            let local = tokio::task::LocalSet::new();
            crate::linux::sys::release_free_memory();
            local.block_on(&rt, serve(args, listener));
            0
        }
        Err(e) => {
            let _ = writeln!(ready, "error: {e}");
            1
        }
    }
}

/// Appends a line to DIR/monitor.log (the monitor's own diagnostics).
pub(super) fn log(dir: &Path, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("monitor.log"))
    {
        let _ = writeln!(f, "{} {line}", super::cri_log::timestamp(SystemTime::now()));
    }
}

fn setup(args: &MonitorArgs) -> Result<std::os::unix::net::UnixListener, String> {
    let _ = nix::unistd::setsid();
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| format!("set child subreaper: {e}"))?;
    close_inherited_fds();
    std::fs::create_dir_all(exits_dir(&args.dir)).map_err(|e| format!("create exits dir: {e}"))?;
    let userns_file = args.dir.join(USERNS_FILE);
    let shm = args.dir.join("shm");
    crate::linux::namespaces::make_pod_namespaces(&crate::linux::namespaces::PodNamespaces {
        hostname: &args.hostname,
        netns: args.new_net.as_deref(),
        shm: args.new_ipc.then_some(shm.as_path()),
        userns: args.userns.as_ref().map(|m| (m, userns_file.as_path())),
    })?;
    // Not dumpable: only CAP_SYS_PTRACE may open our /proc files or ptrace us. An exec's
    // child shares our memory until it execs (linux::sys::clone_vfork), by then with a
    // container's identity; dumpable, a process of that container could open the child's
    // /proc/<pid>/mem — ours — in that window. What our children exec is dumpable again;
    // before their exec they are copies of us, so a hook that opens /proc/<pid>/… of a
    // container being created needs CAP_SYS_PTRACE (as with runc), and a crashing monitor
    // leaves a core only as fs.suid_dumpable allows.
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("set not dumpable: {e}"))?;
    let sock = socket_path(&args.dir);
    let _ = std::fs::remove_file(&sock);
    // Bind by a relative name from inside the pod directory: socket paths are limited to
    // 108 bytes and a run directory may be deep.
    nix::unistd::chdir(&args.dir).map_err(|e| format!("chdir {}: {e}", args.dir.display()))?;
    let l = std::os::unix::net::UnixListener::bind(SOCKET_NAME)
        .map_err(|e| format!("listen on {}: {e}", sock.display()))?;
    l.set_nonblocking(true)
        .map_err(|e| format!("nonblocking: {e}"))?;
    Ok(l)
}

/// Closes every fd above stderr that berthd might have leaked to us.
fn close_inherited_fds() {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .filter(|fd| *fd > 2)
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        let _ = nix::unistd::close(fd);
    }
}

/// A running container process.
pub(super) struct Running {
    pub(super) pid: Pid,
    pub(super) started_at: i64,
    pub(super) oom: super::oom::OomWatch,
    pub(super) log: Option<Rc<RefCell<CriLogFile>>>,
    /// Its standard streams, for attach sessions.
    pub(super) io: Rc<super::session::ContainerIo>,
    /// Its cgroup directories, when it is not the init of a pid namespace of its own:
    /// whatever it started is killed when it exits (runc's kill of every process of a
    /// container that shares a pid namespace), instead of living on unseen.
    pub(super) shared_pid_cgroups: Vec<PathBuf>,
    /// Its cgroups as execs join them, from its first exec until it is reaped.
    pub(super) exec_cgroups: Option<Rc<ExecCgroups>>,
}

/// The process an exec into running container `id` (confined to cgroup directories
/// `dirs`) is made from, and the container's cgroups as the exec joins them: opened at its
/// first exec and kept in its record (dropped, closing them, when it is reaped).
pub(super) fn exec_target(
    state: &Shared,
    id: &str,
    dirs: &[PathBuf],
) -> Result<(Pid, Rc<ExecCgroups>), (crate::ErrorKind, String)> {
    let mut st = state.borrow_mut();
    let Some(r) = st.running.get_mut(id) else {
        return Err((
            crate::ErrorKind::FailedPrecondition,
            format!("container {id} is not running"),
        ));
    };
    let cgroups = match &r.exec_cgroups {
        Some(c) if c.serves(dirs) => c.clone(),
        _ => {
            let c = Rc::new(
                ExecCgroups::open(dirs).map_err(|e| (crate::ErrorKind::FailedPrecondition, e))?,
            );
            r.exec_cgroups = Some(c.clone());
            c
        }
    };
    Ok((r.pid, cgroups))
}

pub(super) struct State {
    pub(super) dir: PathBuf,
    pub(super) running: HashMap<String, Running>,
    pub(super) clients: Vec<mpsc::UnboundedSender<Frame>>,
    pub(super) shutting_down: bool,
    /// Wakes the main loop to check whether it may exit.
    pub(super) wake: Rc<tokio::sync::Notify>,
    /// Exec processes waiting for their exit code, by pid.
    pub(super) execs: HashMap<i32, tokio::sync::oneshot::Sender<i32>>,
    /// The pod's shared pid namespace, once a container of mode POD asked for it.
    pub(super) pod_init: Option<super::podinit::PodInit>,
    /// The program its init executes (`MonitorArgs::pod_init`).
    pub(super) pod_init_program: Option<PathBuf>,
}

pub(super) type Shared = Rc<RefCell<State>>;

async fn serve(args: MonitorArgs, listener: std::os::unix::net::UnixListener) {
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log(&args.dir, &format!("listener: {e}"));
            return;
        }
    };
    let state: Shared = Rc::new(RefCell::new(State {
        dir: args.dir.clone(),
        running: HashMap::new(),
        clients: Vec::new(),
        shutting_down: false,
        wake: Rc::new(tokio::sync::Notify::new()),
        execs: HashMap::new(),
        pod_init: None,
        pod_init_program: args.pod_init.clone(),
    }));
    let wake = state.borrow().wake.clone();
    let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(s) => s,
        Err(e) => {
            log(&args.dir, &format!("SIGCHLD handler: {e}"));
            return;
        }
    };
    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    log(
        &args.dir,
        &format!(
            "monitor for pod {} ready (pid {})",
            args.pod_id,
            std::process::id()
        ),
    );
    loop {
        tokio::select! {
            conn = listener.accept() => {
                if let Ok((stream, _)) = conn {
                    tokio::task::spawn_local(client(state.clone(), args.pod_id.clone(), stream));
                }
            }
            _ = sigchld.recv() => super::reap::reap(&state),
            _ = wake.notified() => {}
            _ = async { match sigterm.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {
                log(&args.dir, "SIGTERM: shutting down");
                begin_shutdown(&state);
            }
        }
        let st = state.borrow();
        if st.shutting_down && st.running.is_empty() {
            break;
        }
    }
    if let Some(init) = state.borrow_mut().pod_init.take() {
        // Killing the pod's init ends its pid namespace: nothing survives in it.
        let _ = nix::sys::signal::kill(init.pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(init.pid, None);
    }
    log(&args.dir, "monitor exiting");
}

fn begin_shutdown(state: &Shared) {
    let mut st = state.borrow_mut();
    st.shutting_down = true;
    for r in st.running.values() {
        r.oom.killed_by_berth();
        let _ = nix::sys::signal::kill(r.pid, Signal::SIGKILL);
    }
    st.wake.notify_one();
}

pub(super) fn error_frame(id: u64, kind: crate::ErrorKind, message: String) -> Frame {
    Frame {
        id,
        body: Some(Body::Error(super::wire::error(kind, message))),
    }
}

async fn client(state: Shared, pod_id: String, stream: tokio::net::UnixStream) {
    let (mut rd, mut wr) = stream.into_split();
    // A streaming session has the connection to itself and gets no events.
    let first = match frame::read(&mut rd).await {
        Ok(Some(f)) => f,
        _ => return,
    };
    let first = match first.body {
        // Boxed: inline, their state would make every connection's future (the events
        // watch berthd keeps open included) as large as a session's.
        Some(Body::ExecSession(e)) => {
            return Box::pin(super::session::exec_session(state, first.id, *e, rd, wr)).await;
        }
        Some(Body::Attach(a)) => {
            return Box::pin(super::session::attach_session(state, first.id, a, rd, wr)).await;
        }
        body => Frame { id: first.id, body },
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    state.borrow_mut().clients.push(tx.clone());
    let writer = tokio::task::spawn_local(async move {
        while let Some(f) = rx.recv().await {
            if frame::write(&mut wr, &f).await.is_err() {
                break;
            }
        }
    });
    let mut pending = Some(first);
    loop {
        let req = match pending.take() {
            Some(f) => f,
            None => match frame::read(&mut rd).await {
                Ok(Some(f)) => f,
                _ => break,
            },
        };
        if let Some(Body::Exec(e)) = req.body {
            // Runs for as long as the process does: answer from a task of its own.
            let (state, tx) = (state.clone(), tx.clone());
            tokio::task::spawn_local(async move {
                let _ = tx.send(super::execsync::exec(state, req.id, *e).await);
            });
            continue;
        }
        let resp = handle(&state, &pod_id, req);
        if tx.send(resp).is_err() {
            break;
        }
    }
    drop(tx);
    writer.abort();
}

fn handle(state: &Shared, pod_id: &str, req: Frame) -> Frame {
    let id = req.id;
    let ok = Frame {
        id,
        body: Some(Body::Ok(proto::Ok {})),
    };
    match req.body {
        Some(Body::Hello(_)) => Frame {
            id,
            body: Some(Body::Hello(proto::Hello {
                protocol_version: proto::PROTOCOL_VERSION,
                agent: concat!("berth ", env!("CARGO_PKG_VERSION")).into(),
                pod_id: pod_id.to_owned(),
                pid: std::process::id(),
            })),
        },
        Some(Body::Start(s)) => match super::start::start(state, *s).inspect(|_| {
            crate::linux::sys::release_free_memory();
        }) {
            Ok((pid, started_at)) => Frame {
                id,
                body: Some(Body::Started(proto::Started {
                    pid: pid.as_raw().unsigned_abs(),
                    started_at,
                })),
            },
            Err((kind, msg)) => error_frame(id, kind, msg),
        },
        Some(Body::Signal(s)) => {
            let st = state.borrow();
            if let Some(r) = st.running.get(&s.container_id)
                && let Ok(sig) = Signal::try_from(s.signal)
            {
                if sig == Signal::SIGKILL {
                    r.oom.killed_by_berth();
                }
                let _ = nix::sys::signal::kill(r.pid, sig);
            }
            ok
        }
        Some(Body::ReopenLog(r)) => {
            let st = state.borrow();
            match st.running.get(&r.container_id).and_then(|c| c.log.clone()) {
                Some(l) => match l.borrow_mut().reopen() {
                    Ok(()) => ok,
                    Err(e) => {
                        error_frame(id, crate::ErrorKind::Internal, format!("reopen log: {e}"))
                    }
                },
                None => error_frame(
                    id,
                    crate::ErrorKind::FailedPrecondition,
                    format!("container {} is not running", r.container_id),
                ),
            }
        }
        Some(Body::List(_)) => {
            let st = state.borrow();
            Frame {
                id,
                body: Some(Body::Processes(proto::Processes {
                    processes: st
                        .running
                        .iter()
                        .map(|(cid, r)| proto::Process {
                            container_id: cid.clone(),
                            pid: r.pid.as_raw().unsigned_abs(),
                            started_at: r.started_at,
                        })
                        .collect(),
                    exits: Vec::new(),
                })),
            }
        }
        Some(Body::Shutdown(_)) => {
            begin_shutdown(state);
            ok
        }
        _ => error_frame(
            id,
            crate::ErrorKind::InvalidArgument,
            "unexpected request".into(),
        ),
    }
}

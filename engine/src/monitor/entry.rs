//! The monitor process: `berthd monitor --pod ID --dir DIR [--new-net NETNS] [--new-ipc]
//! [--hostname NAME]`.
//!
//! Start-up: leave berthd's session, become a child subreaper, create the pod's namespaces
//! (UTS with the hostname, network with loopback up and bound at NETNS, IPC with a /dev/shm
//! tmpfs at DIR/shm), listen on DIR/monitor.sock, then write `ready` on stdout (a pipe
//! berthd reads) or the reason it could not. Then a current-thread runtime serves requests,
//! reaps children on SIGCHLD, copies container output into CRI logs, and records every
//! exit in DIR/exits/ before it tells anyone.

use crate::clock::now_nanos;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::SystemTime;

use berth_proto::monitor::{self as proto, Frame, frame::Body};
use nix::mount::{MsFlags, mount};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::cri_log::{CriLogFile, DEFAULT_MAX_LINE, Stream};
use super::frame;
use crate::linux::spawn::{self, LaunchSpec, Stdio};

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
    let mut ready = std::io::stdout();
    match setup(&args) {
        Ok(listener) => {
            let _ = writeln!(ready, "ready");
            let _ = ready.flush();
            // berthd stops reading after "ready": point stdout at /dev/null.
            if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
                let _ = nix::unistd::dup2_stdout(&null);
            }
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
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
fn log(dir: &Path, line: &str) {
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
    let mut flags = CloneFlags::empty();
    if !args.hostname.is_empty() {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    if args.new_net.is_some() {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if args.new_ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if let Some(m) = &args.userns {
        // The pod's namespaces are made inside its user namespace (and joined).
        create_userns(m, &args.dir.join(USERNS_FILE), flags)?;
        flags = CloneFlags::empty();
    }
    if !flags.is_empty() {
        nix::sched::unshare(flags).map_err(|e| format!("unshare {flags:?}: {e}"))?;
    }
    if !args.hostname.is_empty() {
        nix::unistd::sethostname(&args.hostname).map_err(|e| format!("sethostname: {e}"))?;
    }
    if let Some(netns) = &args.new_net {
        crate::linux::sys::loopback_up().map_err(|e| format!("bring up lo: {e}"))?;
        bind_namespace("/proc/self/ns/net", netns)?;
    }
    if args.new_ipc {
        let shm = args.dir.join("shm");
        std::fs::create_dir_all(&shm).map_err(|e| format!("create {}: {e}", shm.display()))?;
        mount(
            Some("shm"),
            &shm,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=1777,size=65536k"),
        )
        .map_err(|e| format!("mount pod /dev/shm: {e}"))?;
    }
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

/// The pod's shared pid namespace (CRI pid mode POD), held by a small init as its pid 1.
pub(super) struct PodInit {
    pid: Pid,
    /// `/proc/<init>/ns/pid`, opened once: containers of mode POD are cloned into it.
    ns: std::fs::File,
}

/// Starts the pod's init in a new pid namespace, in the cgroup directories `cgroups`.
/// Made when the first container of mode POD starts; it lives until the monitor exits,
/// and its death ends every process of the namespace.
fn start_pod_init(cgroups: &[PathBuf]) -> Result<PodInit, String> {
    let pid = crate::linux::sys::clone_child(CloneFlags::CLONE_NEWPID, || {
        for d in cgroups {
            let _ = std::fs::write(d.join("cgroup.procs"), "0");
        }
        // The init must not outlive its monitor (a killed monitor would leave the pod's
        // processes behind): the kernel kills it when the monitor dies, whatever killed it.
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        // Our copies of the monitor's descriptors (its socket, containers' stdin pipes,
        // terminals) would keep them open for as long as the pod lives.
        crate::linux::sys::close_from(3);
        // berthd again, as a program of its own named POD_INIT_NAME: containers see that
        // as their pid 1, not the monitor's command line with the node's paths in it.
        let exe = c"/proc/self/exe";
        let argv0 = std::ffi::CString::new(POD_INIT_NAME).unwrap_or_default();
        let _ = nix::unistd::execve::<_, &std::ffi::CStr>(exe, &[argv0.as_c_str()], &[]);
        // Cannot exec (the binary was replaced): the same loop, in this copy.
        pod_init()
    })
    .map_err(|e| format!("start the pod's init: {e}"))?;
    match std::fs::File::open(format!("/proc/{pid}/ns/pid")) {
        Ok(ns) => Ok(PodInit { pid, ns }),
        Err(e) => {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            Err(format!("open the pod's pid namespace: {e}"))
        }
    }
}

/// The name the pod's init runs under (argv[0] of berthd re-executed as the init): what
/// containers sharing the pod's pid namespace see as its pid 1, like containerd's /pause.
pub const POD_INIT_NAME: &str = "berth-pod-init";

/// Pid 1 of a shared pod pid namespace: reaps the orphans reparented to it, forever.
pub fn pod_init() -> ! {
    use nix::sys::signal::{SigSet, Signal as S};
    // Nothing ignored (berthd, a Rust program, ignores SIGPIPE), as in every process of a
    // pod: pid 1 of a namespace gets no signal it has no handler for anyway.
    crate::linux::sys::reset_signals();
    // Its command name too (an exec through /proc/self/exe would be named "exe").
    if let Ok(name) = std::ffi::CString::new(POD_INIT_NAME) {
        let _ = nix::sys::prctl::set_name(&name);
    }
    let mut set = SigSet::empty();
    set.add(S::SIGCHLD);
    let _ = set.thread_block();
    loop {
        while matches!(
            nix::sys::wait::waitpid(None, Some(WaitPidFlag::WNOHANG)),
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..))
        ) {}
        let _ = set.wait();
    }
}

/// Creates a user namespace with the pod's mappings and binds it at `target`, and makes the
/// pod's `owned` namespaces (network, IPC, UTS) inside it and joins them, so that root of
/// the pod has its capabilities over them (binding ports below 1024, raw sockets,
/// NET_ADMIN) and none over the host's. A child unshares the user namespace and waits while
/// we (root of the host) write its maps, unshares the others from inside, and waits again
/// while we join them; the bind mount keeps the user namespace alive.
fn create_userns(
    m: &crate::spec::userns::IdMappings,
    target: &Path,
    owned: CloneFlags,
) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let pipe =
        || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
    let (go_r, go_w) = pipe()?; // us -> child: maps written
    let (ready_r, ready_w) = pipe()?; // child -> us: namespaces made
    let (done_r, done_w) = pipe()?; // us -> child: joined, exit
    let ours = [go_w.as_raw_fd(), ready_r.as_raw_fd(), done_w.as_raw_fd()];
    let (mut go_r, mut ready_w, mut done_r) = (Some(go_r), Some(ready_w), Some(done_r));
    let child = crate::linux::sys::clone_child(CloneFlags::CLONE_NEWUSER, || {
        // Our copies of the parent's ends must go first, or the reads below would never
        // see end-of-file.
        for fd in ours {
            let _ = nix::unistd::close(fd);
        }
        let wait_eof = |r: Option<OwnedFd>| {
            if let Some(r) = r {
                let mut b = [0u8; 1];
                let _ = std::fs::File::from(r).read(&mut b);
            }
        };
        wait_eof(go_r.take());
        if !owned.is_empty() && nix::sched::unshare(owned).is_err() {
            return 1;
        }
        if let Some(w) = ready_w.take() {
            let _ = std::fs::File::from(w).write_all(b"1");
        }
        wait_eof(done_r.take());
        0
    })
    .map_err(|e| format!("create the pod's user namespace: {e}"))?;
    drop((go_r, ready_w, done_r));
    let result = (|| {
        for (file, text) in [("uid_map", m.uid_map()), ("gid_map", m.gid_map())] {
            std::fs::write(format!("/proc/{child}/{file}"), &text)
                .map_err(|e| format!("write {file} {:?}: {e}", text.trim_end()))?;
        }
        bind_namespace(&format!("/proc/{child}/ns/user"), target)
    })();
    drop(go_w);
    let result = result.and_then(|()| {
        let mut b = [0u8; 1];
        let n = std::fs::File::from(ready_r).read(&mut b).unwrap_or(0);
        if n == 0 {
            return Err(format!(
                "the pod's network, IPC and UTS namespaces could not be made in its user namespace ({owned:?})"
            ));
        }
        for (flag, kind) in [
            (CloneFlags::CLONE_NEWNET, "net"),
            (CloneFlags::CLONE_NEWIPC, "ipc"),
            (CloneFlags::CLONE_NEWUTS, "uts"),
        ] {
            if owned.contains(flag) {
                let path = format!("/proc/{child}/ns/{kind}");
                let f = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
                nix::sched::setns(&f, flag)
                    .map_err(|e| format!("join the pod's {kind} namespace: {e}"))?;
            }
        }
        Ok(())
    });
    drop(done_w);
    let _ = nix::sys::wait::waitpid(child, None);
    result
}

/// Bind-mounts the namespace file `src` (`/proc/<pid>/ns/<kind>`) at `target`, so that
/// the namespace outlives its processes.
fn bind_namespace(src: &str, target: &Path) -> Result<(), String> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    }
    std::fs::File::create(target).map_err(|e| format!("create {}: {e}", target.display()))?;
    mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("bind {src} at {}: {e}", target.display()))
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
    started_at: i64,
    oom_file: String,
    oom_before: u64,
    log: Option<Rc<RefCell<CriLogFile>>>,
    /// Its standard streams, for attach sessions.
    pub(super) io: Rc<super::session::ContainerIo>,
    /// Its cgroup directories, when it is not the init of a pid namespace of its own:
    /// whatever it started is killed when it exits (runc's kill of every process of a
    /// container that shares a pid namespace), instead of living on unseen.
    shared_pid_cgroups: Vec<PathBuf>,
}

pub(super) struct State {
    dir: PathBuf,
    pub(super) running: HashMap<String, Running>,
    clients: Vec<mpsc::UnboundedSender<Frame>>,
    shutting_down: bool,
    /// Wakes the main loop to check whether it may exit.
    wake: Rc<tokio::sync::Notify>,
    /// Exec processes waiting for their exit code, by pid.
    pub(super) execs: HashMap<i32, tokio::sync::oneshot::Sender<i32>>,
    /// The pod's shared pid namespace, once a container of mode POD asked for it.
    pod_init: Option<PodInit>,
}

pub(super) type Shared = Rc<RefCell<State>>;

fn oom_count(file: &str) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

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
            _ = sigchld.recv() => reap(&state),
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
        let _ = nix::sys::signal::kill(r.pid, Signal::SIGKILL);
    }
    st.wake.notify_one();
}

/// Reaps every exited child; records and reports container exits.
fn reap(state: &Shared) {
    loop {
        let status = match nix::sys::wait::waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(s) => s,
        };
        let (pid, code, signal) = match status {
            WaitStatus::Exited(pid, code) => (pid, code, 0),
            WaitStatus::Signaled(pid, sig, _) => (pid, 128 + sig as i32, sig as i32),
            _ => continue,
        };
        let mut st = state.borrow_mut();
        if let Some(tx) = st.execs.remove(&pid.as_raw()) {
            let _ = tx.send(code);
            continue;
        }
        if st.pod_init.as_ref().is_some_and(|i| i.pid == pid) {
            // Its namespace is gone with it; the next container of mode POD makes another.
            log(
                &st.dir,
                &format!("the pod's init (pid {pid}) exited with {code}"),
            );
            st.pod_init = None;
            continue;
        }
        let Some(id) = st
            .running
            .iter()
            .find(|(_, r)| r.pid == pid)
            .map(|(id, _)| id.clone())
        else {
            continue; // an orphan reparented to us, or an exec helper
        };
        let Some(r) = st.running.remove(&id) else {
            continue;
        };
        let oom_killed = !r.oom_file.is_empty() && oom_count(&r.oom_file) > r.oom_before;
        kill_cgroup_processes(&r.shared_pid_cgroups);
        let exited = proto::Exited {
            container_id: id.clone(),
            pid: pid.as_raw().unsigned_abs(),
            exit_code: code,
            signal,
            finished_at: now_nanos(),
            oom_killed,
        };
        // On disk first: berthd may be down right now.
        let path = super::wire::exit_record_path(&exits_dir(&st.dir), &id);
        if let Err(e) = crate::durable::write_atomic(&path, &super::wire::encode_exit(&exited)) {
            log(&st.dir, &format!("record exit of {id}: {e}"));
        }
        drop(r.log);
        let ev = Frame {
            id: 0,
            body: Some(Body::Exited(exited)),
        };
        st.clients.retain(|c| c.send(ev.clone()).is_ok());
    }
}

/// SIGKILLs every process left in these cgroup directories.
fn kill_cgroup_processes(dirs: &[PathBuf]) {
    for d in dirs {
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            if pid > 0 {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
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
            return Box::pin(super::session::exec_session(state, first.id, e, rd, wr)).await;
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
                let _ = tx.send(exec(state, req.id, e).await);
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
        Some(Body::Start(s)) => match start(state, s).inspect(|_| {
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

/// A pipe whose read end is non-blocking (for the runtime) and write end goes to the child.
pub(super) fn log_pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    nix::fcntl::fcntl(
        &r,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok((r, w))
}

fn start(state: &Shared, s: proto::Start) -> Result<(Pid, i64), (crate::ErrorKind, String)> {
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
    use super::session::{self as sess, Sink, Source};
    let internal =
        |what: &str, e: std::io::Error| (crate::ErrorKind::Internal, format!("{what}: {e}"));
    let mode = spec.stdio;
    // A terminal is made by the container itself in its own devpts; its master comes back
    // over `console` once the container has started.
    let mut console = None;
    let (stdio, mut sources, mut stdin, mut tty) = if mode.tty {
        let (parent, child) =
            sess::console_socket().map_err(|e| internal("create the console socket", e))?;
        console = Some(parent);
        (Stdio::Console(child), Vec::new(), None, None)
    } else {
        let p = sess::pipe_stdio(mode.stdin)?;
        (
            p.stdio,
            vec![(Stream::Stdout, p.stdout), (Stream::Stderr, p.stderr)],
            p.stdin,
            None,
        )
    };
    let log = if s.log_path.is_empty() {
        None
    } else {
        Some(Rc::new(RefCell::new(
            CriLogFile::open(Path::new(&s.log_path), DEFAULT_MAX_LINE).map_err(|e| {
                (
                    crate::ErrorKind::Internal,
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
    let spawned = match (&spec.pid_target, &spec.pod_pid_namespace) {
        (None, None) => spawn::spawn(&spec, stdio),
        (None, Some(cgroups)) => {
            let mut st = state.borrow_mut();
            let init = match &mut st.pod_init {
                Some(init) => init,
                slot @ None => slot
                    .insert(start_pod_init(cgroups).map_err(|e| (crate::ErrorKind::Internal, e))?),
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
    if let Some(sock) = console {
        let master = match sess::receive_terminal(&sock, 0, 0) {
            Ok(m) => m,
            Err(e) => {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                return Err((
                    crate::ErrorKind::Internal,
                    format!("the container's terminal: {e}"),
                ));
            }
        };
        sources.push((Stream::Stdout, Source::Pty(master.clone())));
        stdin = mode.stdin.then(|| Sink::Pty(master.clone()));
        tty = Some(master);
    }
    let started_at = now_nanos();
    if let Some(want) = spec.oom_score_adj {
        // The kernel refuses to lower the score without CAP_SYS_RESOURCE; the container then
        // keeps the inherited one. Clamp-and-log, as containerd's restrict_oom_score_adj.
        let got = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap_or_default();
        if got.trim().parse::<i32>().ok() != Some(want) {
            self::log(
                &state.borrow().dir,
                &format!(
                    "container {}: oom_score_adj {want} refused by this node; kept {}",
                    s.container_id,
                    got.trim()
                ),
            );
        }
    }
    let outputs = u8::try_from(sources.len()).unwrap_or(2);
    let io = Rc::new(sess::ContainerIo::new(stdin, mode.stdin_once, tty, outputs));
    for (stream, src) in sources {
        tokio::task::spawn_local(copy_output(src, stream, log.clone(), io.clone()));
    }
    state.borrow_mut().running.insert(
        s.container_id.clone(),
        Running {
            pid,
            started_at,
            oom_file: s.oom_file,
            oom_before,
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

/// Copies one output stream of a container into its CRI log until end of file, and to the
/// sessions attached to it.
async fn copy_output(
    mut src: super::session::Source,
    stream: Stream,
    log: Option<Rc<RefCell<CriLogFile>>>,
    io: Rc<super::session::ContainerIo>,
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

/// Reads a stream into a shared buffer until end of file, keeping at most `limit` bytes.
async fn collect(fd: OwnedFd, buf: Rc<RefCell<Vec<u8>>>, limit: usize) {
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut b = buf.borrow_mut();
                let room = limit.saturating_sub(b.len());
                b.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
}

/// ExecSync: runs a process in a running container and returns its exit code and output.
/// On timeout the process's whole session is killed. The answer comes when the process
/// exits, even if a background child keeps its output open (after a short grace for the
/// last bytes).
async fn exec(state: Shared, id: u64, e: proto::Exec) -> Frame {
    let spec = match super::wire::exec_of(e.exec_spec.as_ref(), &e.exec_spec_json) {
        Ok(s) => s,
        Err(err) => return error_frame(id, crate::ErrorKind::InvalidArgument, err.to_string()),
    };
    let target = match state.borrow().running.get(&e.container_id) {
        Some(r) => r.pid,
        None => {
            return error_frame(
                id,
                crate::ErrorKind::FailedPrecondition,
                format!("container {} is not running", e.container_id),
            );
        }
    };
    let pipes = log_pipe().and_then(|o| log_pipe().map(|er| (o, er)));
    let ((out_r, out_w), (err_r, err_w)) = match pipes {
        Ok(p) => p,
        Err(err) => {
            return error_frame(
                id,
                crate::ErrorKind::Internal,
                format!("create pipes: {err}"),
            );
        }
    };
    let (waiter, pid) = match spawn::spawn_exec(
        target,
        &spec,
        Stdio::Pipes {
            stdin: None,
            stdout: out_w,
            stderr: err_w,
        },
    ) {
        Ok(p) => p,
        Err(err) => return error_frame(id, crate::ErrorKind::FailedPrecondition, err.to_string()),
    };
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    // The intermediate process exits with the exec process's status.
    state.borrow_mut().execs.insert(waiter.as_raw(), tx);
    let limit = usize::try_from(e.output_limit).unwrap_or(usize::MAX).max(1);
    let (out, err) = (
        Rc::new(RefCell::new(Vec::new())),
        Rc::new(RefCell::new(Vec::new())),
    );
    let readers = [
        tokio::task::spawn_local(collect(out_r, out.clone(), limit)),
        tokio::task::spawn_local(collect(err_r, err.clone(), limit)),
    ];
    let mut timed_out = false;
    let code = if e.timeout_ms > 0 {
        let d = std::time::Duration::from_millis(u64::try_from(e.timeout_ms).unwrap_or(0));
        match tokio::time::timeout(d, &mut rx).await {
            Ok(r) => r.unwrap_or(-1),
            Err(_) => {
                timed_out = true;
                let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                rx.await.unwrap_or(-1)
            }
        }
    } else {
        rx.await.unwrap_or(-1)
    };
    // The last bytes may still be in the pipes; a background child may hold them open.
    for r in readers {
        let _ = tokio::time::timeout(std::time::Duration::from_millis(100), r).await;
    }
    let (stdout, stderr) = (out.borrow().clone(), err.borrow().clone());
    Frame {
        id,
        body: Some(Body::ExecResult(proto::ExecResult {
            exit_code: code,
            stdout,
            stderr,
            timed_out,
        })),
    }
}

//! berthd's side of the monitor: start one for a pod, send it requests, watch its events.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use berth_proto::monitor::{self as proto, Frame, frame::Body};
use tokio::io::AsyncBufReadExt;

use super::entry::{MonitorArgs, socket_path};
use super::frame;
use crate::error::ErrorKind;

/// Errors talking to a monitor.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("start monitor {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("monitor of pod {pod} failed to start: {message}")]
    NotReady { pod: String, message: String },
    #[error("monitor {socket}: {source}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("monitor {socket}: {message}")]
    Protocol { socket: PathBuf, message: String },
    #[error("{message}")]
    Remote { kind: ErrorKind, message: String },
}

impl MonitorError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            MonitorError::Remote { kind, .. } => *kind,
            MonitorError::Connect { .. } => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        }
    }
}

/// An Error frame from a monitor as an error of ours.
pub fn remote_error(e: proto::Error) -> MonitorError {
    MonitorError::Remote {
        kind: super::wire::kind_of(&e),
        message: e.message,
    }
}

/// Starts `exe monitor …` for a pod and waits until it is ready; returns its pid. The
/// process is reaped by a background task if it exits while this berthd runs.
pub async fn spawn(exe: &Path, args: &MonitorArgs) -> Result<u32, MonitorError> {
    std::fs::create_dir_all(&args.dir).map_err(|source| MonitorError::Spawn {
        exe: exe.to_owned(),
        source,
    })?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(args.dir.join("monitor.log"))
        .map_err(|source| MonitorError::Spawn {
            exe: exe.to_owned(),
            source,
        })?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("monitor")
        .arg("--pod")
        .arg(&args.pod_id)
        .arg("--dir")
        .arg(&args.dir);
    if let Some(n) = &args.new_net {
        cmd.arg("--new-net").arg(n);
    }
    if args.new_ipc {
        cmd.arg("--new-ipc");
    }
    if !args.hostname.is_empty() {
        cmd.arg("--hostname").arg(&args.hostname);
    }
    if let Some(m) = &args.userns {
        use crate::spec::userns::IdMappings;
        for r in IdMappings::to_args(&m.uids) {
            cmd.arg("--uid-map").arg(r);
        }
        for r in IdMappings::to_args(&m.gids) {
            cmd.arg("--gid-map").arg(r);
        }
    }
    if let Some(p) = &args.pod_init {
        cmd.arg("--pod-init").arg(p);
    }
    if let Some(n) = crate::linux::process::original_nofile() {
        cmd.env(crate::linux::process::NOFILE_ENV, n.to_string());
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .kill_on_drop(false);
    let mut child = cmd.spawn().map_err(|source| MonitorError::Spawn {
        exe: exe.to_owned(),
        source,
    })?;
    // A child already reaped has no pid: the monitor is gone before it said anything.
    let Some(pid) = child.id() else {
        return Err(MonitorError::NotReady {
            pod: args.pod_id.clone(),
            message: "the monitor exited at once".into(),
        });
    };
    let stdout = child.stdout.take();
    let line = async {
        let mut line = String::new();
        if let Some(out) = stdout {
            let mut r = tokio::io::BufReader::new(out);
            let _ = r.read_line(&mut line).await;
        }
        line
    };
    let line = tokio::time::timeout(Duration::from_secs(15), line)
        .await
        .unwrap_or_else(|_| "error: no answer within 15s".into());
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    if line.trim() == "ready" {
        Ok(pid)
    } else {
        Err(MonitorError::NotReady {
            pod: args.pod_id.clone(),
            message: line.trim().trim_start_matches("error: ").to_owned(),
        })
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Connects to a pod's monitor. A socket path too long for sockaddr_un (108 bytes) is
/// reached through an O_PATH descriptor of its directory.
pub async fn connect(dir: &Path) -> Result<tokio::net::UnixStream, MonitorError> {
    let socket = socket_path(dir);
    let err = |source| MonitorError::Connect {
        socket: socket.clone(),
        source,
    };
    if socket.as_os_str().len() < 100 {
        return tokio::net::UnixStream::connect(&socket).await.map_err(err);
    }
    use nix::fcntl::OFlag;
    let dirfd = nix::fcntl::open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| err(std::io::Error::from(e)))?;
    use std::os::fd::AsRawFd;
    let via = format!("/proc/self/fd/{}/monitor.sock", dirfd.as_raw_fd());
    let r = tokio::net::UnixStream::connect(&via).await.map_err(err);
    drop(dirfd);
    r
}

/// The connections berthd keeps to its pods' monitors (their event watches), by pod
/// directory: requests go over them, each with its id, rather than over a connection of
/// their own (a socket, a connect through the socket's path, the monitor's accept and a
/// client of its own at every probe of every pod).
static CHANNELS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<PathBuf, std::sync::Arc<Channel>>>,
> = std::sync::LazyLock::new(Default::default);

/// A watched monitor's connection, shared by requests.
struct Channel {
    /// Frames for the connection's writer task (which no cancelled request can leave
    /// with half a frame written).
    frames: tokio::sync::mpsc::UnboundedSender<Frame>,
    /// Requests waiting for their answer, by id.
    waiting: std::sync::Mutex<std::collections::HashMap<u64, tokio::sync::oneshot::Sender<Frame>>>,
}

impl Channel {
    fn waiting(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<u64, tokio::sync::oneshot::Sender<Frame>>,
    > {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn channels()
-> std::sync::MutexGuard<'static, std::collections::HashMap<PathBuf, std::sync::Arc<Channel>>> {
    CHANNELS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Forgets a request's wait when its caller goes away before the answer.
struct Waiting<'a> {
    channel: &'a Channel,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.channel.waiting().remove(&self.id);
    }
}

/// Sends one request and returns the response body (an Error response becomes Err): over
/// the pod's watched connection when there is one, else over a connection of its own.
pub async fn request(dir: &Path, body: Body) -> Result<Body, MonitorError> {
    let socket = socket_path(dir);
    let proto_err = |message: String| MonitorError::Protocol {
        socket: socket.clone(),
        message,
    };
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let channel = channels().get(dir).cloned();
    let answer = match channel {
        Some(channel) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            channel.waiting().insert(id, tx);
            let _waiting = Waiting {
                channel: &channel,
                id,
            };
            let sent = channel.frames.send(Frame {
                id,
                body: Some(body),
            });
            if sent.is_err() {
                return Err(proto_err("connection closed before the answer".into()));
            }
            rx.await
                .map_err(|_| proto_err("connection closed before the answer".into()))?
        }
        None => {
            let mut s = connect(dir).await?;
            frame::write(
                &mut s,
                &Frame {
                    id,
                    body: Some(body),
                },
            )
            .await
            .map_err(|e| proto_err(e.to_string()))?;
            loop {
                let f = frame::read(&mut s)
                    .await
                    .map_err(|e| proto_err(e.to_string()))?
                    .ok_or_else(|| proto_err("connection closed before the answer".into()))?;
                if f.id == id {
                    break f;
                } // else an event meant for watchers
            }
        }
    };
    match answer.body {
        Some(Body::Error(e)) => Err(remote_error(e)),
        Some(b) => Ok(b),
        None => Err(proto_err("empty answer".into())),
    }
}

/// Follows a monitor's exit events until its connection ends (the monitor exited or died).
/// `connected` runs once the monitor has answered the greeting: it counts this watcher
/// among its clients from before its answer, so every exit after that comes as an event
/// and every one before it is in its exit records already (written before any event).
pub async fn watch(
    dir: &Path,
    connected: impl FnOnce(),
    mut on_exit: impl FnMut(proto::Exited),
) -> Result<(), MonitorError> {
    let s = connect(dir).await?;
    let (mut rd, mut wr) = s.into_split();
    let socket = socket_path(dir);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    frame::write(
        &mut wr,
        &Frame {
            id,
            body: Some(Body::Hello(proto::Hello {
                protocol_version: proto::PROTOCOL_VERSION,
                agent: concat!("berth ", env!("CARGO_PKG_VERSION")).into(),
                pod_id: String::new(),
                pid: std::process::id(),
            })),
        },
    )
    .await
    .map_err(|e| MonitorError::Protocol {
        socket: socket.clone(),
        message: e.to_string(),
    })?;
    let (frames, mut outgoing) = tokio::sync::mpsc::unbounded_channel::<Frame>();
    let writer = tokio::spawn(async move {
        while let Some(f) = outgoing.recv().await {
            if frame::write(&mut wr, &f).await.is_err() {
                break;
            }
        }
    });
    let channel = std::sync::Arc::new(Channel {
        frames,
        waiting: Default::default(),
    });
    // However this ends (the monitor gone, or this watch dropped), requests waiting on the
    // connection fail and later ones connect on their own.
    let _gone = Unregister {
        dir,
        channel: &channel,
        writer,
    };
    let mut connected = Some(connected);
    while let Ok(Some(f)) = frame::read(&mut rd).await {
        match f.body {
            Some(Body::Exited(e)) => on_exit(e),
            Some(Body::Hello(_)) if f.id == id => {
                channels().insert(dir.to_owned(), channel.clone());
                if let Some(c) = connected.take() {
                    c();
                }
            }
            _ => {
                if let Some(tx) = channel.waiting().remove(&f.id) {
                    let _ = tx.send(f);
                }
            }
        }
    }
    Ok(())
}

/// Takes a watched connection out of use when its watch ends.
struct Unregister<'a> {
    dir: &'a Path,
    channel: &'a std::sync::Arc<Channel>,
    writer: tokio::task::JoinHandle<()>,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        let mut all = channels();
        if all
            .get(self.dir)
            .is_some_and(|c| std::sync::Arc::ptr_eq(c, self.channel))
        {
            all.remove(self.dir);
        }
        drop(all);
        self.channel.waiting().clear();
        self.writer.abort();
    }
}

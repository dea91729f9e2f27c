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
    /// Requests waiting for their answer, by id; None once the connection is closed (no
    /// request may wait on it then: none would ever be answered).
    waiting: std::sync::Mutex<Option<Waiters>>,
}

type Waiters = std::collections::HashMap<u64, tokio::sync::oneshot::Sender<Frame>>;

impl Channel {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Option<Waiters>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the connection out of use: its waiting requests fail (their senders go),
    /// later ones connect on their own.
    fn close(&self, dir: &Path, this: &std::sync::Arc<Channel>) {
        {
            let mut all = channels();
            if all
                .get(dir)
                .is_some_and(|c| std::sync::Arc::ptr_eq(c, this))
            {
                all.remove(dir);
            }
        }
        self.waiting().take();
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
        if let Some(w) = self.channel.waiting().as_mut() {
            w.remove(&self.id);
        }
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
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Registered as waiting only on a connection still in use.
    let channel = channels()
        .get(dir)
        .cloned()
        .filter(|c| c.waiting().as_mut().map(|w| w.insert(id, tx)).is_some());
    let answer = match channel {
        Some(channel) => {
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
    let channel = std::sync::Arc::new(Channel {
        frames,
        waiting: std::sync::Mutex::new(Some(Waiters::new())),
    });
    let writer = tokio::spawn({
        let (channel, dir) = (channel.clone(), dir.to_owned());
        async move {
            while let Some(f) = outgoing.recv().await {
                let id = f.id;
                match frame::write(&mut wr, &f).await {
                    Ok(()) => {}
                    // Too large to send: nothing was written, the connection is whole.
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                        let waiter = channel.waiting().as_mut().and_then(|w| w.remove(&id));
                        if let Some(tx) = waiter {
                            let error =
                                super::wire::error(ErrorKind::InvalidArgument, e.to_string());
                            let _ = tx.send(Frame {
                                id,
                                body: Some(Body::Error(error)),
                            });
                        }
                    }
                    Err(_) => {
                        channel.close(&dir, &channel);
                        break;
                    }
                }
            }
        }
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
                let waiter = channel.waiting().as_mut().and_then(|w| w.remove(&f.id));
                if let Some(tx) = waiter {
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
        self.channel.close(self.dir, self.channel);
        self.writer.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake monitor on `dir`'s socket: answers the first connection's Hello, then each
    /// request on it with Ok (a ReopenLog with an Error, to tell them apart) and an Exited
    /// event first, until told to hang up; a second connection gets Ok and is closed.
    async fn fake_monitor(
        dir: &Path,
        hang_up: tokio::sync::oneshot::Receiver<()>,
    ) -> tokio::task::JoinHandle<u32> {
        let listener = tokio::net::UnixListener::bind(socket_path(dir)).unwrap();
        tokio::spawn(async move {
            let (mut watch, _) = listener.accept().await.unwrap();
            let mut hang_up = hang_up;
            let mut answered = 0;
            loop {
                let f = tokio::select! {
                    f = frame::read(&mut watch) => f.unwrap().unwrap(),
                    _ = &mut hang_up => break,
                };
                let body = match f.body {
                    Some(Body::Hello(h)) => Body::Hello(h),
                    Some(Body::ReopenLog(_)) => Body::Error(super::super::wire::error(
                        ErrorKind::NotFound,
                        "no such container".into(),
                    )),
                    _ => {
                        let exited = Body::Exited(proto::Exited {
                            container_id: "c1".into(),
                            ..Default::default()
                        });
                        let event = Frame {
                            id: 0,
                            body: Some(exited),
                        };
                        frame::write(&mut watch, &event).await.unwrap();
                        Body::Ok(proto::Ok {})
                    }
                };
                answered += 1;
                frame::write(
                    &mut watch,
                    &Frame {
                        id: f.id,
                        body: Some(body),
                    },
                )
                .await
                .unwrap();
            }
            drop(watch);
            // Requests after the watch ended come on their own connection.
            let (mut own, _) = listener.accept().await.unwrap();
            let f = frame::read(&mut own).await.unwrap().unwrap();
            let ok = Frame {
                id: f.id,
                body: Some(Body::Ok(proto::Ok {})),
            };
            frame::write(&mut own, &ok).await.unwrap();
            answered
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_share_the_watched_connection_and_survive_its_end() {
        // A request that went elsewhere than the fake expects would wait for ever.
        tokio::time::timeout(Duration::from_secs(10), shared_connection())
            .await
            .expect("a request was not answered");
    }

    async fn shared_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (hang_up, hung_up) = tokio::sync::oneshot::channel();
        let monitor = fake_monitor(dir.path(), hung_up).await;
        let (connected_tx, connected) = tokio::sync::oneshot::channel();
        let exits = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let watch = tokio::spawn({
            let (dir, exits) = (dir.path().to_owned(), exits.clone());
            async move {
                watch(
                    &dir,
                    move || {
                        let _ = connected_tx.send(());
                    },
                    move |e| exits.lock().unwrap().push(e.container_id),
                )
                .await
            }
        });
        connected.await.unwrap();
        assert!(channels().contains_key(dir.path()));
        // Two at once over the one connection, each answered by its id; the event that
        // comes before each answer goes to the watch.
        let signal = || {
            request(
                dir.path(),
                Body::Signal(proto::Signal {
                    container_id: "c1".into(),
                    signal: 15,
                }),
            )
        };
        let (a, b) = tokio::join!(signal(), signal());
        assert!(matches!(a, Ok(Body::Ok(_))), "{a:?}");
        assert!(matches!(b, Ok(Body::Ok(_))), "{b:?}");
        let refused = request(
            dir.path(),
            Body::ReopenLog(proto::ReopenLog {
                container_id: "c9".into(),
            }),
        )
        .await;
        assert!(
            matches!(
                &refused,
                Err(MonitorError::Remote {
                    kind: ErrorKind::NotFound,
                    ..
                })
            ),
            "{refused:?}"
        );
        assert_eq!(exits.lock().unwrap().len(), 2);
        // The watch ends: the connection is out of use, the next request connects anew.
        hang_up.send(()).unwrap();
        watch.await.unwrap().unwrap();
        assert!(!channels().contains_key(dir.path()));
        assert!(matches!(signal().await, Ok(Body::Ok(_))));
        assert_eq!(
            monitor.await.unwrap(),
            4,
            "hello and three requests on the watch"
        );
    }
}

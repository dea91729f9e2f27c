//! Streaming sessions in the monitor: interactive exec processes and attachments to a
//! container's standard streams (what CRI Exec and Attach stream through berthd).
//!
//! Each session has a connection of its own. Output goes to berthd as `Io` frames as fast
//! as berthd takes them: an exec'd process blocks on a full pipe when berthd (or the
//! client behind it) is slow, so nothing piles up here. A container's output goes to its
//! log first; attached sessions get copies through bounded queues, and a session that
//! falls behind loses output rather than stalling the container or its log.

use std::cell::{Cell, RefCell};
use std::os::fd::OwnedFd;
use std::rc::Rc;

use berth_proto::monitor::{self as proto, Frame, frame::Body};
use nix::sys::signal::Signal;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use super::frame;
use super::stdio::{self, Sink, Source};
use crate::linux::spawn;

/// Output chunks queued per attached session before it starts losing output.
const ATTACH_QUEUE: usize = 64;
/// Bytes read from a process's output at once.
const CHUNK: usize = 32 * 1024;
/// How long output may still arrive after an exec'd process exited (a background child
/// may hold its pipes open for ever).
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

pub(super) const STDIN: u32 = 0;
pub(super) const STDOUT: u32 = 1;
pub(super) const STDERR: u32 = 2;

/// A session attached to a container's output.
pub(super) struct Attached {
    stdout: bool,
    stderr: bool,
    tx: mpsc::Sender<(u32, Vec<u8>)>,
}

/// A running container's standard streams as attach sessions see them.
pub(super) struct ContainerIo {
    pub stdin: Option<Sink>,
    pub stdin_once: bool,
    /// The terminal's master, when the container has one (for resizes).
    pub tty: Option<Rc<AsyncFd<OwnedFd>>>,
    attached: RefCell<Vec<Attached>>,
    /// Output streams not yet at their end; at 0 every session is told the output ended.
    open_outputs: Cell<u8>,
}

impl ContainerIo {
    pub(super) fn new(
        stdin: Option<Sink>,
        stdin_once: bool,
        tty: Option<Rc<AsyncFd<OwnedFd>>>,
        outputs: u8,
    ) -> ContainerIo {
        ContainerIo {
            stdin,
            stdin_once,
            tty,
            attached: RefCell::new(Vec::new()),
            open_outputs: Cell::new(outputs),
        }
    }

    /// Gives a copy of an output chunk to every session that wants that stream; one whose
    /// queue is full loses it.
    pub(super) fn publish(&self, stream: u32, data: &[u8]) {
        self.attached.borrow_mut().retain(|a| !a.tx.is_closed());
        for a in self.attached.borrow().iter() {
            if (stream == STDOUT && a.stdout) || (stream == STDERR && a.stderr) {
                // A full queue loses this chunk for that session only.
                let _ = a.tx.try_send((stream, data.to_vec()));
            }
        }
    }

    /// One output stream reached its end; after the last, sessions end.
    pub(super) fn output_ended(&self) {
        let n = self.open_outputs.get().saturating_sub(1);
        self.open_outputs.set(n);
        if n == 0 {
            self.attached.borrow_mut().clear();
        }
    }
}

fn io_frame(stream: u32, data: Vec<u8>, eof: bool) -> Frame {
    Frame {
        id: 0,
        body: Some(Body::Io(proto::Io { stream, data, eof })),
    }
}

fn ended_frame(exit_code: i32, message: String) -> Frame {
    Frame {
        id: 0,
        body: Some(Body::SessionEnded(proto::SessionEnded {
            exit_code,
            message,
        })),
    }
}

/// What berthd sends during a session: stdin bytes and its end, and terminal sizes.
/// Runs until berthd closes the connection, then tells `gone`.
async fn follow_input(
    mut rd: OwnedReadHalf,
    stdin: Option<Rc<SinkRef>>,
    tty: Option<Rc<AsyncFd<OwnedFd>>>,
    gone: Rc<tokio::sync::Notify>,
    detached: Rc<tokio::sync::Notify>,
) {
    while let Ok(Some(f)) = frame::read(&mut rd).await {
        match f.body {
            Some(Body::Io(io)) if io.stream == STDIN => {
                if let Some(s) = &stdin {
                    if let Some(sink) = s.get()
                        && !io.data.is_empty()
                    {
                        // A process that closed its stdin just loses the input. One that
                        // does not read it blocks the write: berthd hanging up must still
                        // be noticed meanwhile.
                        tokio::select! {
                            _ = sink.write_all(&io.data) => {}
                            () = hung_up(&rd) => break,
                        }
                    }
                    if io.eof && s.eof() {
                        detached.notify_one();
                        return;
                    }
                }
            }
            Some(Body::Resize(r)) => {
                if let Some(m) = &tty {
                    let (w, h) = (
                        u16::try_from(r.width).unwrap_or(u16::MAX),
                        u16::try_from(r.height).unwrap_or(u16::MAX),
                    );
                    let _ = crate::linux::sys::set_window_size(m.get_ref(), w, h);
                }
            }
            _ => {}
        }
    }
    gone.notify_one();
}

/// Resolves once berthd has closed its end of the connection, without consuming any frame
/// it sent before (peeks, and looks again a little later while frames are waiting).
///
/// The peek goes through `try_io`, which clears the socket's readiness when nothing is
/// there: a raw peek would leave it set (the last frame was read to its end without a
/// would-block), and `readable()` would then answer at once forever — a busy loop that
/// never yields, freezing the whole monitor.
async fn hung_up(rd: &OwnedReadHalf) {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd;
    let sock = rd.as_ref();
    let fd = sock.as_raw_fd();
    loop {
        if sock.readable().await.is_err() {
            return;
        }
        let mut b = [0u8; 1];
        let peeked = sock.try_io(tokio::io::Interest::READABLE, || {
            recv(fd, &mut b, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT)
                .map_err(std::io::Error::from)
        });
        match peeked {
            Ok(0) => return,
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

/// The stdin a session writes to: its exec process's own, or the attached container's
/// (which it closes only when the container asked for stdin_once).
pub(super) enum SinkRef {
    Own(Sink),
    Container(Rc<ContainerIo>),
}

impl SinkRef {
    fn get(&self) -> Option<&Sink> {
        match self {
            SinkRef::Own(s) => Some(s),
            SinkRef::Container(io) => io.stdin.as_ref(),
        }
    }

    /// The client's stdin ended. An exec'd process's stdin is closed. An attached
    /// container's is closed when it asked for stdin_once without a terminal, and its
    /// output still follows until it ends; otherwise the attach session is over (true),
    /// the container untouched, as containerd and CRI-O end it.
    fn eof(&self) -> bool {
        match self {
            SinkRef::Own(s) => {
                s.close();
                false
            }
            SinkRef::Container(io) if io.stdin_once && io.tty.is_none() => {
                if let Some(s) = &io.stdin {
                    s.close();
                }
                false
            }
            SinkRef::Container(_) => true,
        }
    }
}

/// An interactive exec session: starts the process (on a terminal or with pipes), answers
/// Started, then streams until the process has exited and its output is drained, and ends
/// with its exit code. berthd going away kills the process's whole session.
pub(super) async fn exec_session(
    state: super::entry::Shared,
    id: u64,
    e: proto::ExecSession,
    rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
) {
    let started = start_exec(&state, &e);
    let (pid, exit_rx, outputs, stdin, tty) = match started {
        Ok(x) => x,
        Err((kind, message)) => {
            let _ = frame::write(&mut wr, &super::entry::error_frame(id, kind, message)).await;
            return;
        }
    };
    let ok = Frame {
        id,
        body: Some(Body::Started(proto::Started {
            pid: pid.as_raw().unsigned_abs(),
            started_at: crate::clock::now_nanos(),
        })),
    };
    let mut alive = frame::write(&mut wr, &ok).await.is_ok();
    let gone = Rc::new(tokio::sync::Notify::new());
    let input = tokio::task::spawn_local(follow_input(
        rd,
        stdin.map(|s| Rc::new(SinkRef::Own(s))),
        tty,
        gone.clone(),
        // An exec'd process's session ends with the process, never on its input.
        Rc::new(tokio::sync::Notify::new()),
    ));
    if !alive {
        gone.notify_one();
    }
    let mut output = read_outputs(outputs);
    let mut exit_rx = exit_rx;
    let mut code = None;
    let mut drained = false;
    let mut killed = false;
    let grace = tokio::time::sleep(std::time::Duration::MAX);
    tokio::pin!(grace);
    while code.is_none() || !drained {
        // Output first; after the exit, the grace runs from the last chunk, so a slow
        // client still gets everything the process wrote (a background child holding the
        // pipes open ends the session once it has been quiet for the grace).
        tokio::select! {
            biased;
            chunk = output.recv(), if !drained => match chunk {
                Some((stream, data)) => {
                    if alive && frame::write(&mut wr, &io_frame(stream, data, false)).await.is_err() {
                        alive = false;
                        gone.notify_one();
                    }
                    if code.is_some() {
                        grace.as_mut().reset(tokio::time::Instant::now() + DRAIN_GRACE);
                    }
                }
                None => drained = true,
            },
            r = &mut exit_rx, if code.is_none() => {
                code = Some(r.unwrap_or(-1));
                grace.as_mut().reset(tokio::time::Instant::now() + DRAIN_GRACE);
            }
            () = &mut grace, if code.is_some() => drained = true,
            // Once the process has exited (and been reaped) its pid may be another's.
            () = gone.notified(), if !killed && code.is_none() => {
                killed = true;
                alive = false;
                let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            }
        }
    }
    input.abort();
    if alive {
        let _ = frame::write(&mut wr, &ended_frame(code.unwrap_or(-1), String::new())).await;
    }
}

type Started = (
    nix::unistd::Pid,
    tokio::sync::oneshot::Receiver<i32>,
    Vec<(u32, Source)>,
    Option<Sink>,
    Option<Rc<AsyncFd<OwnedFd>>>,
);

fn start_exec(
    state: &super::entry::Shared,
    e: &proto::ExecSession,
) -> Result<Started, (crate::ErrorKind, String)> {
    let spec = super::wire::exec_of(e.exec_spec.as_ref(), &e.exec_spec_json)
        .map_err(|err| (crate::ErrorKind::InvalidArgument, err.to_string()))?;
    let (target, cgroups) = super::entry::exec_target(state, &e.container_id, &spec.cgroup_dirs)?;
    let (stdio, pending) = stdio::prepare(e.tty, e.stdin)?;
    let (waiter, pid) = spawn::spawn_exec(target, &cgroups, &spec, stdio)
        .map_err(|err| (crate::ErrorKind::FailedPrecondition, err.to_string()))?;
    let streams = pending
        .finish(
            pid,
            u16::try_from(e.width).unwrap_or(u16::MAX),
            u16::try_from(e.height).unwrap_or(u16::MAX),
        )
        .inspect_err(|_| {
            // Started, but with no streams to serve: it must not run on unseen.
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(waiter, None);
        })?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    // The exec process is our direct child: its exit is reaped as any other.
    state.borrow_mut().execs.insert(waiter.as_raw(), tx);
    Ok((pid, rx, streams.outputs, streams.stdin, streams.tty))
}

/// Reads every source into one queue of (stream, bytes); the queue ends when all have.
/// The queue is short: a reader waits (and its process with it) while berthd is behind.
fn read_outputs(outputs: Vec<(u32, Source)>) -> mpsc::Receiver<(u32, Vec<u8>)> {
    let (tx, rx) = mpsc::channel(4);
    for (stream, mut src) in outputs {
        let tx = tx.clone();
        tokio::task::spawn_local(async move {
            let mut buf = vec![0u8; CHUNK];
            while let Ok(n @ 1..) = src.read(&mut buf).await {
                if tx.send((stream, buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// Attaches to a running container: its output (copies of what goes to its log) and, when
/// asked for, its stdin and terminal size. Ends when the container's output ends or berthd
/// goes away.
pub(super) async fn attach_session(
    state: super::entry::Shared,
    id: u64,
    a: proto::Attach,
    rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
) {
    let io = state
        .borrow()
        .running
        .get(&a.container_id)
        .map(|r| r.io.clone());
    let refuse = |message: String| {
        super::entry::error_frame(id, crate::ErrorKind::FailedPrecondition, message)
    };
    let io = match io {
        None => {
            let _ = frame::write(
                &mut wr,
                &refuse(format!("container {} is not running", a.container_id)),
            )
            .await;
            return;
        }
        Some(io) if a.stdin && io.stdin.is_none() => {
            let _ = frame::write(
                &mut wr,
                &refuse(format!(
                    "container {} was not created with stdin; attach without it",
                    a.container_id
                )),
            )
            .await;
            return;
        }
        Some(io) => io,
    };
    let (tx, mut rx) = mpsc::channel(ATTACH_QUEUE);
    let output_over = io.open_outputs.get() == 0;
    if !output_over {
        io.attached.borrow_mut().push(Attached {
            stdout: a.stdout,
            stderr: a.stderr,
            tx,
        });
    }
    let ok = Frame {
        id,
        body: Some(Body::Ok(proto::Ok {})),
    };
    if frame::write(&mut wr, &ok).await.is_err() {
        return;
    }
    let gone = Rc::new(tokio::sync::Notify::new());
    let detached = Rc::new(tokio::sync::Notify::new());
    let input = tokio::task::spawn_local(follow_input(
        rd,
        a.stdin.then(|| Rc::new(SinkRef::Container(io.clone()))),
        io.tty.clone(),
        gone.clone(),
        detached.clone(),
    ));
    let mut alive = true;
    if !output_over {
        loop {
            tokio::select! {
                chunk = rx.recv() => match chunk {
                    Some((stream, data)) => {
                        if frame::write(&mut wr, &io_frame(stream, data, false)).await.is_err() {
                            alive = false;
                            break;
                        }
                    }
                    None => break,
                },
                () = gone.notified() => {
                    alive = false;
                    break;
                }
                () = detached.notified() => break,
            }
        }
    }
    input.abort();
    drop(rx); // the container's copy loop drops a closed session's queue
    if a.stdin
        && io.stdin_once
        && let Some(s) = &io.stdin
    {
        s.close();
    }
    if alive {
        let _ = frame::write(
            &mut wr,
            &ended_frame(-1, "the container's output ended".into()),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// After a frame was read to its very end the socket still reads as ready; watching for
    /// the hang-up must wait (yielding) rather than spin, and must notice the hang-up.
    #[test]
    fn watching_for_a_hang_up_waits_and_notices_it() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let (a, mut b) = tokio::net::UnixStream::pair().expect("pair");
                let (mut rd, _wr) = a.into_split();
                b.write_all(b"x").await.expect("write");
                let mut one = [0u8; 1];
                rd.read_exact(&mut one).await.expect("read");
                let early = tokio::time::timeout(Duration::from_millis(100), hung_up(&rd)).await;
                assert!(early.is_err(), "the peer is still there");
                drop(b);
                tokio::time::timeout(Duration::from_secs(5), hung_up(&rd))
                    .await
                    .expect("the hang-up is noticed");
            });
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("hung_up never yielded: the monitor would freeze");
    }
}

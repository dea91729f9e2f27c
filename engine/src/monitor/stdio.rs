//! A process's standard streams in the monitor, for a container, an exec session and
//! ExecSync alike: pipes (stdin only when asked for), or a terminal the process makes in
//! its own devpts and sends back over a console socket. [`prepare`] before the spawn,
//! [`PendingStdio::finish`] after it.

use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::rc::Rc;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use super::session::{STDERR, STDOUT};
use crate::linux::spawn::Stdio;

/// A pipe whose read end is non-blocking (for the runtime) and write end goes to the child.
pub(super) fn log_pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    nix::fcntl::fcntl(
        &r,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok((r, w))
}

/// Where a process's output is read from: a pipe, or the master side of its terminal.
pub(super) enum Source {
    Pipe(pipe::Receiver),
    Pty(Rc<AsyncFd<OwnedFd>>),
}

impl Source {
    /// Reads some bytes; Ok(0) at the end (a terminal whose last user is gone reports EIO,
    /// which is its end of file).
    pub(super) async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Source::Pipe(p) => {
                use tokio::io::AsyncReadExt;
                p.read(buf).await
            }
            Source::Pty(fd) => loop {
                let mut guard = fd.readable().await?;
                match guard.try_io(|f| nix::unistd::read(f.get_ref(), buf).map_err(Into::into)) {
                    Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                    Ok(r) => return r,
                    Err(_would_block) => continue,
                }
            },
        }
    }
}

/// A buffer to read a stream into that starts at one page and doubles, up to `max`, each
/// time a read fills it: a quiet container's streams hold a page each for as long as it
/// runs, a busy one is read `max` bytes at a time.
pub(super) struct ReadBuffer {
    buf: Vec<u8>,
    max: usize,
}

impl ReadBuffer {
    pub(super) fn new(max: usize) -> ReadBuffer {
        ReadBuffer {
            buf: vec![0; 4096.min(max)],
            max,
        }
    }

    /// Reads once from `src`: the bytes read, empty at the end of the stream.
    pub(super) async fn read_from(&mut self, src: &mut Source) -> std::io::Result<&[u8]> {
        let n = src.read(&mut self.buf).await?;
        if n == self.buf.len() && n < self.max {
            let grown = (n * 2).min(self.max);
            self.buf.resize(grown, 0);
        }
        Ok(&self.buf[..n])
    }
}

/// Where a process's input is written: a pipe (closed to end it), or its terminal.
pub(super) enum Sink {
    /// Shared so that a write in progress keeps the pipe while `close` lets go of ours.
    Pipe(RefCell<Option<Rc<pipe::Sender>>>),
    Pty(Rc<AsyncFd<OwnedFd>>),
}

impl Sink {
    pub(super) fn pipe(sender: pipe::Sender) -> Sink {
        Sink::Pipe(RefCell::new(Some(Rc::new(sender))))
    }

    /// Writes all of `data`, waiting while the pipe or terminal is full.
    pub(super) async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let n = match self {
                Sink::Pipe(p) => {
                    let sender = p.borrow().clone();
                    let Some(sender) = sender else {
                        return Err(std::io::ErrorKind::BrokenPipe.into());
                    };
                    sender.writable().await?;
                    match sender.try_write(data) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(e),
                    }
                }
                Sink::Pty(fd) => {
                    let mut guard = fd.writable().await?;
                    match guard
                        .try_io(|f| nix::unistd::write(f.get_ref(), data).map_err(Into::into))
                    {
                        Ok(r) => r?,
                        Err(_would_block) => continue,
                    }
                }
            };
            data = &data[n..];
        }
        Ok(())
    }

    /// Closes the process's input (a pipe's end of file). A terminal stays open: closing it
    /// would hang it up for the process.
    pub(super) fn close(&self) {
        if let Sink::Pipe(p) = self {
            p.borrow_mut().take();
        }
    }
}

/// A socket pair for a terminal the process makes itself in its container's devpts:
/// (ours, the process's). The process opens /dev/pts/ptmx inside its own root (never a
/// path the monitor, root of the host, resolves) and sends the master back.
pub(super) fn console_socket() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// The master the process sent over `sock` before it exec'd, checked to be a terminal's
/// (char device 5:2, /dev/ptmx), non-blocking, sized `cols`x`rows` (80x24 when unknown).
pub(super) fn receive_terminal(
    sock: &OwnedFd,
    cols: u16,
    rows: u16,
) -> Result<Rc<AsyncFd<OwnedFd>>, String> {
    use nix::sys::stat::{SFlag, fstat, major, minor};
    let master = crate::linux::sys::recv_fd(sock)
        .map_err(|e| format!("receive the terminal: {e}"))?
        .ok_or_else(|| "the process sent no terminal".to_owned())?;
    let st = fstat(&master).map_err(|e| format!("the terminal: {e}"))?;
    let rdev = st.st_rdev;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFCHR
        || (major(rdev), minor(rdev)) != (5, 2)
    {
        return Err("what came back is not a terminal's master".into());
    }
    nix::fcntl::fcntl(
        &master,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(|e| format!("the terminal: {e}"))?;
    let (cols, rows) = (
        if cols == 0 { 80 } else { cols },
        if rows == 0 { 24 } else { rows },
    );
    crate::linux::sys::set_window_size(&master, cols, rows)
        .map_err(|e| format!("size the terminal: {e}"))?;
    crate::linux::sys::async_fd(master)
        .map(Rc::new)
        .map_err(|e| format!("watch the terminal: {e}"))
}

/// A process's streams as pipes: its Stdio, our stdout and stderr sources, and our stdin
/// sink when it has a stdin (else /dev/null).
pub(super) struct Pipes {
    pub stdio: Stdio,
    pub stdout: Source,
    pub stderr: Source,
    pub stdin: Option<Sink>,
}

pub(super) fn pipe_stdio(with_stdin: bool) -> Result<Pipes, (crate::ErrorKind, String)> {
    let internal =
        |what: &str, err: std::io::Error| (crate::ErrorKind::Internal, format!("{what}: {err}"));
    let pipe = || log_pipe().map_err(|err| internal("create pipes", err.into()));
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (stdin, stdin_r) = if with_stdin {
        let (s, r) = stdin_pipe().map_err(|err| internal("create a stdin pipe", err))?;
        (Some(s), Some(r))
    } else {
        (None, None)
    };
    let src = |fd: OwnedFd| {
        pipe::Receiver::from_owned_fd(fd)
            .map(Source::Pipe)
            .map_err(|err| internal("watch pipes", err))
    };
    let stdio = Stdio::Pipes {
        stdin: stdin_r,
        stdout: out_w,
        stderr: err_w,
    };
    Ok(Pipes {
        stdio,
        stdout: src(out_r)?,
        stderr: src(err_r)?,
        stdin,
    })
}

/// A pipe for a process's stdin: (our non-blocking writer, the process's reader).
pub(super) fn stdin_pipe() -> std::io::Result<(Sink, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    nix::fcntl::fcntl(
        &w,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok((Sink::pipe(pipe::Sender::from_owned_fd(w)?), r))
}

/// Streams being set up: what the process is spawned with, and what we keep.
pub(super) struct PendingStdio {
    /// Our end of the console socket, when the process makes a terminal.
    console: Option<OwnedFd>,
    outputs: Vec<(u32, Source)>,
    stdin: Option<Sink>,
    want_stdin: bool,
}

/// A started process's streams as we hold them.
pub(super) struct ProcessStreams {
    /// stdout and stderr (pipes), or stdout alone (the terminal).
    pub outputs: Vec<(u32, Source)>,
    pub stdin: Option<Sink>,
    /// The terminal's master, for resizes.
    pub tty: Option<Rc<AsyncFd<OwnedFd>>>,
}

/// Sets up a process's streams: a terminal (`tty`) or pipes, with a stdin when `stdin`.
/// Returns what to spawn the process with.
pub(super) fn prepare(
    tty: bool,
    stdin: bool,
) -> Result<(Stdio, PendingStdio), (crate::ErrorKind, String)> {
    if tty {
        let (ours, theirs) = console_socket().map_err(|err| {
            (
                crate::ErrorKind::Internal,
                format!("create the console socket: {err}"),
            )
        })?;
        return Ok((
            Stdio::Console(theirs),
            PendingStdio {
                console: Some(ours),
                outputs: Vec::new(),
                stdin: None,
                want_stdin: stdin,
            },
        ));
    }
    let p = pipe_stdio(stdin)?;
    Ok((
        p.stdio,
        PendingStdio {
            console: None,
            outputs: vec![(STDOUT, p.stdout), (STDERR, p.stderr)],
            stdin: p.stdin,
            want_stdin: stdin,
        },
    ))
}

impl PendingStdio {
    /// After process `pid` started: its terminal received (sized `cols`x`rows`, 80x24
    /// when 0). When that fails the process and its group are killed.
    pub(super) fn finish(
        self,
        pid: Pid,
        cols: u16,
        rows: u16,
    ) -> Result<ProcessStreams, (crate::ErrorKind, String)> {
        let PendingStdio {
            console,
            mut outputs,
            mut stdin,
            want_stdin,
        } = self;
        let mut tty = None;
        if let Some(sock) = console {
            match receive_terminal(&sock, cols, rows) {
                Ok(master) => {
                    outputs.push((STDOUT, Source::Pty(master.clone())));
                    stdin = want_stdin.then(|| Sink::Pty(master.clone()));
                    tty = Some(master);
                }
                Err(err) => {
                    let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
                    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                    return Err((
                        crate::ErrorKind::Internal,
                        format!("the process's terminal: {err}"),
                    ));
                }
            }
        }
        Ok(ProcessStreams {
            outputs,
            stdin,
            tty,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_buffer_grows_only_when_reads_fill_it() {
        let (r, w) = log_pipe().unwrap();
        let mut src = Source::Pipe(pipe::Receiver::from_owned_fd(r).unwrap());
        let mut buf = ReadBuffer::new(16 * 1024);
        nix::unistd::write(&w, b"short").unwrap();
        assert_eq!(buf.read_from(&mut src).await.unwrap(), b"short");
        assert_eq!(buf.buf.len(), 4096, "a short read grew the buffer");
        // 40 KiB waiting: reads of 4, 8 and then 16 KiB (the most), never more.
        nix::unistd::write(&w, &[7u8; 40 * 1024]).unwrap();
        let mut sizes = Vec::new();
        let mut total = 0;
        while total < 40 * 1024 {
            let n = buf.read_from(&mut src).await.unwrap().len();
            sizes.push(n);
            total += n;
        }
        assert_eq!(sizes, [4096, 8192, 16384, 12288]);
        drop(w);
        assert!(buf.read_from(&mut src).await.unwrap().is_empty());
    }
}

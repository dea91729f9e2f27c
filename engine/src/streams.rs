//! berthd's side of streaming sessions: interactive exec and attach (run by the pod's
//! monitor, reached over a connection of their own) and port forwarding (a TCP
//! connection made from inside the pod's network namespace).
//!
//! The streaming server turns these into SPDY or WebSocket streams; nothing here knows
//! about either.

use std::time::Duration;

use berth_proto::monitor::{self as mproto, Frame, frame::Body};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::Engine;
use crate::error::{Error, Result};
use crate::monitor::{client, frame};
use crate::state::records::PodState;

/// How long connecting to a pod's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Standard stream numbers, as the monitor protocol and the Kubernetes channels use them.
pub const STDIN: u32 = 0;
pub const STDOUT: u32 = 1;
pub const STDERR: u32 = 2;

/// What a session's process (or container) sends.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Bytes of stdout ([`STDOUT`]) or stderr ([`STDERR`]).
    Output(u32, Vec<u8>),
    /// The session is over: the exec'd process's exit code (-1 for attach sessions), and
    /// why, when it was not the process's exit.
    Ended { exit_code: i32, message: String },
}

/// The receiving half of a session.
#[derive(Debug)]
pub struct SessionOutput {
    rd: OwnedReadHalf,
}

impl SessionOutput {
    /// The next event; after `Ended` (or when the monitor vanished) there are no more.
    pub async fn next(&mut self) -> Result<Option<Event>> {
        loop {
            let f = frame::read(&mut self.rd)
                .await
                .map_err(|e| Error::Internal(format!("streaming session: {e}")))?;
            let Some(f) = f else { return Ok(None) };
            match f.body {
                Some(Body::Io(io)) if !io.data.is_empty() => {
                    return Ok(Some(Event::Output(io.stream, io.data)));
                }
                Some(Body::SessionEnded(e)) => {
                    return Ok(Some(Event::Ended {
                        exit_code: e.exit_code,
                        message: e.message,
                    }));
                }
                _ => continue,
            }
        }
    }
}

/// The sending half of a session. Dropping it (with the output half) ends an exec
/// session by killing its process.
#[derive(Debug)]
pub struct SessionInput {
    wr: OwnedWriteHalf,
}

impl SessionInput {
    async fn send(&mut self, body: Body) -> Result<()> {
        frame::write(
            &mut self.wr,
            &Frame {
                id: 0,
                body: Some(body),
            },
        )
        .await
        .map_err(|e| Error::Internal(format!("streaming session: {e}")))
    }

    /// Bytes for the process's stdin. Returns once the monitor has taken them, so a
    /// process that does not read its input slows the sender down.
    pub async fn stdin(&mut self, data: Vec<u8>) -> Result<()> {
        self.send(Body::Io(mproto::Io {
            stream: STDIN,
            data,
            eof: false,
        }))
        .await
    }

    /// Ends the process's stdin.
    pub async fn close_stdin(&mut self) -> Result<()> {
        self.send(Body::Io(mproto::Io {
            stream: STDIN,
            data: Vec::new(),
            eof: true,
        }))
        .await
    }

    /// A new terminal size.
    pub async fn resize(&mut self, width: u16, height: u16) -> Result<()> {
        self.send(Body::Resize(mproto::Resize {
            width: width.into(),
            height: height.into(),
        }))
        .await
    }
}

/// An interactive process or an attachment.
#[derive(Debug)]
pub struct Session {
    pub input: SessionInput,
    pub output: SessionOutput,
}

/// What to run in an exec session.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
}

impl Engine {
    /// Starts `req.cmd` in running container `id` (its namespaces, cgroup, identity and
    /// security profile, as ExecSync), with its streams on a session.
    pub async fn exec_session(&self, id: &str, req: &ExecRequest) -> Result<Session> {
        let c = self.running_container(id)?;
        if req.cmd.first().is_none_or(|c| c.is_empty()) {
            return Err(Error::InvalidArgument("cmd is empty".into()));
        }
        let spec = crate::linux::spawn::ExecSpec::for_container(&c.launch, req.cmd.clone());
        let protocol = self.monitor_protocol(&c.pod_id)?;
        let (exec_spec, exec_spec_json) = crate::monitor::wire::exec_request(protocol, &spec)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let (input, output) = self
            .open_session(
                &c.pod_id,
                Body::ExecSession(Box::new(mproto::ExecSession {
                    container_id: id.to_owned(),
                    exec_spec_json,
                    exec_spec,
                    tty: req.tty,
                    stdin: req.stdin,
                    // Clients send their size on the resize stream at once; until
                    // then the terminal is 80x24.
                    width: 0,
                    height: 0,
                })),
            )
            .await?;
        Ok(Session { input, output })
    }

    /// Attaches to running container `id`'s streams (those asked for; stdin only when the
    /// container was created with stdin).
    pub async fn attach_session(
        &self,
        id: &str,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Result<Session> {
        let c = self.running_container(id)?;
        if stdin && !c.launch.stdio.stdin {
            return Err(Error::FailedPrecondition(format!(
                "container {id} was not created with stdin; attach without stdin"
            )));
        }
        let (input, output) = self
            .open_session(
                &c.pod_id,
                Body::Attach(mproto::Attach {
                    container_id: id.to_owned(),
                    stdin,
                    stdout,
                    stderr: stderr && !c.launch.stdio.tty,
                }),
            )
            .await?;
        Ok(Session { input, output })
    }

    async fn open_session(
        &self,
        pod_id: &str,
        body: Body,
    ) -> Result<(SessionInput, SessionOutput)> {
        let dir = self.pod_dir(pod_id);
        let s = client::connect(&dir).await?;
        let (mut rd, mut wr) = s.into_split();
        let proto_err =
            |e: std::io::Error| Error::Internal(format!("monitor of pod {pod_id}: {e}"));
        frame::write(
            &mut wr,
            &Frame {
                id: 1,
                body: Some(body),
            },
        )
        .await
        .map_err(proto_err)?;
        let answer = frame::read(&mut rd).await.map_err(proto_err)?;
        match answer.and_then(|f| f.body) {
            Some(Body::Started(_) | Body::Ok(_)) => Ok((SessionInput { wr }, SessionOutput { rd })),
            Some(Body::Error(e)) => Err(client::remote_error(e).into()),
            other => Err(Error::Internal(format!(
                "monitor of pod {pod_id} answered {other:?} to a session request"
            ))),
        }
    }

    /// A TCP connection to `port` on the loopback of pod `pod_id`, made from inside its
    /// network namespace (the node's, for host-network pods).
    pub async fn port_forward(&self, pod_id: &str, port: u16) -> Result<tokio::net::TcpStream> {
        let pod = self.pod_status(pod_id)?;
        if pod.state != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {pod_id} is not ready"
            )));
        }
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let connect = move || {
            let s = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
            s.set_nonblocking(true)?;
            Ok(s)
        };
        let netns = pod.netns.clone();
        let std_stream = tokio::task::spawn_blocking(move || match netns {
            Some(ns) => berth_cni::netlink::in_netns(&ns, connect),
            None => connect(),
        })
        .await
        .map_err(|e| Error::Internal(format!("port forward worker: {e}")))?
        .map_err(|e| {
            Error::Unavailable(format!(
                "connect to port {port} in pod sandbox {pod_id}: {e}"
            ))
        })?;
        tokio::net::TcpStream::from_std(std_stream)
            .map_err(|e| Error::Internal(format!("port forward socket: {e}")))
    }
}

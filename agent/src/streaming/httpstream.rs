//! The SPDY/3.1 transports of Kubernetes streaming, as kubelet (proxying kubectl) speaks
//! them: remote command (`v4.channel.k8s.io` and older; `v5` is taken as v4, as the
//! kubelet library does) and port forwarding (`portforward.k8s.io`).
//!
//! After the HTTP/1.1 upgrade the client opens one SPDY stream per purpose, named by its
//! `streamtype` header: error, stdin, stdout, stderr, resize (remote command); error and
//! data pairs with `port` and `requestid` headers (port forwarding). The server opens none.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_engine::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use spdy::session::{IncomingStream, Session, SessionHandle, StreamReader, StreamWriter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::cache::StreamRequest;
use super::remotecommand::{self, Input, Outcome, Output};
use super::reply;

/// How long the client has to open the streams a session needs (kubelet's default).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait, after the status is written, for the client to close the connection.
const FINISH_TIMEOUT: Duration = Duration::from_secs(30);

const REMOTE_PROTOCOLS: [&str; 5] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
const PORTFORWARD_PROTOCOLS: [&str; 1] = ["portforward.k8s.io"];
const PROTOCOL_HEADER: &str = "x-stream-protocol-version";

fn header_has(req: &Request<Incoming>, name: http::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains(token))
    })
}

/// Whether `req` asks for SPDY/3.1.
pub fn wants_spdy(req: &Request<Incoming>) -> bool {
    header_has(req, http::header::UPGRADE, "spdy/3.1")
        && header_has(req, http::header::CONNECTION, "upgrade")
}

/// Negotiates the protocol, answers the upgrade and serves the session once the client
/// has the connection.
pub fn upgrade(
    mut req: Request<Incoming>,
    sreq: StreamRequest,
    engine: Arc<Engine>,
    idle: Option<std::time::Duration>,
) -> Response<Full<Bytes>> {
    let supported: &[&str] = match sreq {
        StreamRequest::PortForward { .. } => &PORTFORWARD_PROTOCOLS,
        _ => &REMOTE_PROTOCOLS,
    };
    let offered = super::offered_protocols(&req, http::HeaderName::from_static(PROTOCOL_HEADER));
    if offered.is_empty() {
        return reply(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: X-Stream-Protocol-Version is required\n",
        );
    }
    let Some(chosen) = offered
        .iter()
        .find(|p| supported.contains(&p.as_str()))
        .cloned()
    else {
        let mut r = reply(
            StatusCode::FORBIDDEN,
            &format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {supported:?}\n"
            ),
        );
        for p in supported {
            r.headers_mut().append(
                "x-accepted-stream-protocol-versions",
                http::HeaderValue::from_static(p),
            );
        }
        return r;
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let version = match chosen.as_str() {
        "v5.channel.k8s.io" | "v4.channel.k8s.io" => 4,
        "v3.channel.k8s.io" => 3,
        "v2.channel.k8s.io" => 2,
        _ => 1,
    };
    tokio::spawn(async move {
        let io = match upgrade.await {
            Ok(u) => super::upgraded(u, idle),
            Err(e) => {
                tracing::debug!(error = %e, "SPDY upgrade failed");
                return;
            }
        };
        match sreq {
            StreamRequest::PortForward { pod_id, .. } => {
                serve_port_forward(io, engine, pod_id).await;
            }
            sreq => {
                let (session, incoming) = Session::server(io);
                remote(session, incoming, version, sreq, engine).await;
            }
        }
    });
    super::switching_protocols(
        "SPDY/3.1",
        &[(http::HeaderName::from_static(PROTOCOL_HEADER), &chosen)],
    )
}

/// Port forwarding over an established SPDY/3.1 connection `io`: the session after an
/// HTTP/1.1 upgrade, or SPDY tunnelled in a WebSocket.
pub(super) async fn serve_port_forward<T>(io: T, engine: Arc<Engine>, pod_id: String)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (session, incoming) = Session::server(io);
    port_forward(session, incoming, engine, pod_id).await;
}

/// The streams of a remote command session.
#[derive(Default)]
struct Streams {
    error: Option<IncomingStream>,
    stdin: Option<IncomingStream>,
    stdout: Option<IncomingStream>,
    stderr: Option<IncomingStream>,
    resize: Option<IncomingStream>,
    /// Streams of types we do not use (answered, kept open, not counted).
    other: Vec<IncomingStream>,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("error", &self.error.is_some())
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("resize", &self.resize.is_some())
            .finish()
    }
}

/// Waits for the streams the request needs: error, and stdin, stdout, stderr, resize as
/// the CRI request (not the client) says.
async fn collect_streams(
    incoming: &mut mpsc::Receiver<IncomingStream>,
    version: u8,
    sreq: &StreamRequest,
) -> Result<Streams, (Streams, String)> {
    let (stdin, stdout, stderr, tty) = match sreq {
        StreamRequest::Exec {
            stdin,
            stdout,
            stderr,
            tty,
            ..
        }
        | StreamRequest::Attach {
            stdin,
            stdout,
            stderr,
            tty,
            ..
        } => (*stdin, *stdout, *stderr && !*tty, *tty),
        StreamRequest::PortForward { .. } => (false, false, false, false),
    };
    let resize = tty && version >= 3;
    let expected =
        1 + usize::from(stdin) + usize::from(stdout) + usize::from(stderr) + usize::from(resize);
    let mut s = Streams::default();
    let mut have = 0;
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while have < expected {
        let next = tokio::time::timeout_at(deadline, incoming.recv()).await;
        let stream = match next {
            Ok(Some(st)) => st,
            Ok(None) => {
                return Err((
                    s,
                    "the client closed the connection before opening its streams".into(),
                ));
            }
            Err(_) => return Err((s, "timed out waiting for client to create streams".into())),
        };
        let kind = stream
            .header("streamtype")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let slot = match kind.as_str() {
            "error" => &mut s.error,
            "stdin" if stdin => &mut s.stdin,
            "stdout" if stdout => &mut s.stdout,
            "stderr" if stderr => &mut s.stderr,
            "resize" if resize => &mut s.resize,
            _ => {
                s.other.push(stream);
                continue;
            }
        };
        if slot.is_none() {
            have += 1;
        }
        *slot = Some(stream);
    }
    Ok(s)
}

/// An exec or attach session over SPDY.
async fn remote(
    session: SessionHandle,
    mut incoming: mpsc::Receiver<IncomingStream>,
    version: u8,
    sreq: StreamRequest,
    engine: Arc<Engine>,
) {
    let streams = match collect_streams(&mut incoming, version, &sreq).await {
        Ok(s) => s,
        Err((s, why)) => {
            tracing::info!(error = %why, "SPDY session without its streams");
            // A status, so that the client does not take the silence for success.
            if let Some(err) = s.error {
                let (_, mut w) = err.into_split();
                let _ = w
                    .write_all(status_for(version, &Outcome::Failed(why)).as_bytes())
                    .await;
                let _ = w.shutdown().await;
            }
            // Let the status out before the connection goes: GOAWAY, then the client closes.
            session.goaway(spdy::GoAwayStatus::OK);
            if tokio::time::timeout(Duration::from_secs(5), session.closed())
                .await
                .is_err()
            {
                session.close();
            }
            return;
        }
    };
    let (in_tx, in_rx) = mpsc::channel::<Input>(16);
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(16);
    let mut readers = Vec::new();
    // The client going away ends the input (and so an exec'd process).
    {
        let (tx, session) = (in_tx.clone(), session.clone());
        readers.push(tokio::spawn(async move {
            session.closed().await;
            drop(tx);
        }));
    }
    if let Some(st) = streams.stdin {
        let (mut r, _w) = st.into_split();
        let tx = in_tx.clone();
        readers.push(tokio::spawn(async move {
            let _keep = _w;
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) => {
                        let _ = tx.send(Input::StdinEof).await;
                        break;
                    }
                    Ok(n) => {
                        if tx.send(Input::Stdin(buf[..n].to_vec())).await.is_err() {
                            break;
                        }
                    }
                    Err(_) => break, // reset: the client is done with its input
                }
            }
            // Dropping our sender is not the end of the session: the watcher above holds
            // one until the connection closes.
        }));
    }
    if let Some(st) = streams.resize {
        let (r, w) = st.into_split();
        readers.push(tokio::spawn(read_resizes(r, w, in_tx.clone())));
    }
    drop(in_tx);
    let (stdout, stderr) = (
        streams.stdout.map(|s| s.into_split()),
        streams.stderr.map(|s| s.into_split()),
    );
    let (mut stdout_w, mut stderr_w) = (stdout.map(|(r, w)| (w, r)), stderr.map(|(r, w)| (w, r)));
    let writer = async {
        while let Some(o) = out_rx.recv().await {
            let (target, data) = match o {
                Output::Stdout(d) => (stdout_w.as_mut(), d),
                Output::Stderr(d) => (stderr_w.as_mut(), d),
            };
            if let Some((w, _)) = target
                && w.write_all(&data).await.is_err()
            {
                // The session must see the client is gone, not wait on a full queue.
                out_rx.close();
                return false;
            }
        }
        true
    };
    let (outcome, _) = tokio::join!(remotecommand::run(engine, &sreq, in_rx, out_tx), writer);
    for r in &readers {
        r.abort();
    }
    // Status, then end of output and of the error stream; the client closes the connection
    // once it has read them.
    if let Some(err) = streams.error {
        let (_r, mut w) = err.into_split();
        let status = status_for(version, &outcome);
        if !status.is_empty() {
            let _ = w.write_all(status.as_bytes()).await;
        }
        let _ = w.shutdown().await;
    }
    for (w, _) in [stdout_w.as_mut(), stderr_w.as_mut()].into_iter().flatten() {
        let _ = w.shutdown().await;
    }
    if tokio::time::timeout(FINISH_TIMEOUT, session.closed())
        .await
        .is_err()
    {
        session.close();
    }
    drop(streams.other);
}

/// The error stream's content for protocol `version`.
fn status_for(version: u8, outcome: &Outcome) -> String {
    if version >= 4 {
        remotecommand::status_json(outcome)
    } else {
        remotecommand::status_text(outcome).unwrap_or_default()
    }
}

/// Terminal sizes from a resize stream: consecutive JSON objects.
async fn read_resizes(mut r: StreamReader, _w: StreamWriter, tx: mpsc::Sender<Input>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 4096];
    while let Ok(n @ 1..) = r.read(&mut chunk).await {
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 64 * 1024 {
            buf.clear(); // not resize messages
        }
        for obj in remotecommand::take_json_objects(&mut buf) {
            if let Some((w, h)) = remotecommand::parse_resize(&obj)
                && tx.send(Input::Resize(w, h)).await.is_err()
            {
                return;
            }
        }
    }
}

/// One forwarded connection's streams, as they arrive.
#[derive(Default)]
struct Pair {
    port: u16,
    error: Option<IncomingStream>,
    data: Option<IncomingStream>,
    since: Option<tokio::time::Instant>,
}

/// Port forwarding over SPDY: every error + data stream pair (same `requestid`) is one
/// TCP connection to its `port` inside the pod.
async fn port_forward(
    session: SessionHandle,
    mut incoming: mpsc::Receiver<IncomingStream>,
    engine: Arc<Engine>,
    pod_id: String,
) {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        let stream = tokio::select! {
            s = incoming.recv() => match s {
                Some(s) => s,
                None => break,
            },
            _ = sweep.tick() => {
                let now = tokio::time::Instant::now();
                let expired: Vec<String> = pairs
                    .iter()
                    .filter(|(_, p)| p.since.is_some_and(|t| now.duration_since(t) > STREAM_CREATION_TIMEOUT))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in expired {
                    if let Some(p) = pairs.remove(&k)
                        && let Some(e) = p.error
                    {
                        tokio::spawn(write_and_close(e, format!("timed out waiting for the streams of request {k}")));
                    }
                }
                continue;
            }
        };
        let port = stream
            .header("port")
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p > 0);
        let kind = stream
            .header("streamtype")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let (Some(port), true) = (port, matches!(kind.as_str(), "error" | "data")) else {
            stream.reset(spdy::RstStatus::PROTOCOL_ERROR);
            continue;
        };
        // Old clients send no request id: pair the data stream with the error stream
        // opened just before it.
        let rid = match stream.header("requestid") {
            Some(r) => r.to_owned(),
            None if kind == "error" => stream.id.to_string(),
            None => stream.id.saturating_sub(2).to_string(),
        };
        let pair = pairs.entry(rid.clone()).or_default();
        pair.port = port;
        pair.since.get_or_insert_with(tokio::time::Instant::now);
        let slot = if kind == "error" {
            &mut pair.error
        } else {
            &mut pair.data
        };
        if slot.is_some() {
            tracing::debug!(request = %rid, "duplicate {kind} stream");
            stream.reset(spdy::RstStatus::PROTOCOL_ERROR);
            continue;
        }
        *slot = Some(stream);
        if pair.error.is_some()
            && pair.data.is_some()
            && let Some(Pair {
                port,
                error: Some(error),
                data: Some(data),
                ..
            }) = pairs.remove(&rid)
        {
            tokio::spawn(forward(
                engine.clone(),
                session.clone(),
                pod_id.clone(),
                port,
                error,
                data,
            ));
        }
    }
    session.close();
}

async fn write_and_close(stream: IncomingStream, message: String) {
    let (_r, mut w) = stream.into_split();
    let _ = w.write_all(message.as_bytes()).await;
    let _ = w.shutdown().await;
}

/// Copies between a data stream and a connection to `port` in the pod; a failure to
/// connect is told on the error stream (kubectl prints it).
async fn forward(
    engine: Arc<Engine>,
    session: SessionHandle,
    pod_id: String,
    port: u16,
    error: IncomingStream,
    data: IncomingStream,
) {
    let conn = match engine.port_forward(&pod_id, port).await {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {pod_id}, uid : {e}");
            tracing::info!(error = %msg, "port forward");
            write_and_close(error, msg).await;
            return;
        }
    };
    let (mut from_client, mut to_client) = data.into_split();
    let (mut from_pod, mut to_pod) = conn.into_split();
    // Client to pod: its end of input (FIN) half-closes the pod connection; a reset (the
    // client went away) ends the forwarding.
    let upstream = async {
        if tokio::io::copy(&mut from_client, &mut to_pod).await.is_ok() {
            let _ = to_pod.shutdown().await;
            std::future::pending::<()>().await;
        }
    };
    // Pod to client, until the pod closes its side.
    let downstream = async {
        let _ = tokio::io::copy(&mut from_pod, &mut to_client).await;
        let _ = to_client.shutdown().await;
    };
    tokio::select! {
        () = downstream => {}
        () = upstream => {}
        // The client's connection is gone: nothing is left to forward to.
        () = session.closed() => {}
    }
    let (_r, mut w) = error.into_split();
    let _ = w.shutdown().await;
}

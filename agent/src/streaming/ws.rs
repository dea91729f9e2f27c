//! The WebSocket transports of Kubernetes streaming (what kubectl ≥ 1.30 and crictl use):
//! remote command channels `v5.channel.k8s.io` and `v4.channel.k8s.io` (and the original
//! `channel.k8s.io`), and port forwarding (`v4.channel.k8s.io` over /portforward).
//!
//! Every binary message starts with its channel number. Remote command: 0 stdin, 1
//! stdout, 2 stderr, 3 error (the final status), 4 resize; v5 adds 255, "close channel N",
//! which is how a client ends its stdin. Port forwarding: for the i-th port of the
//! `ports` query, channel 2i carries data and 2i+1 errors, and the first message on each
//! starts with the port number (2 bytes, little endian).
//!
//! Port forwarding also comes as SPDY tunnelled in WebSocket (`SPDY/3.1+portforward.k8s.io`,
//! what client-go's tunnelling dialer asks for, and crictl's `--transport websocket`): the
//! payloads of binary messages, without channel bytes, are one SPDY/3.1 byte stream each
//! way, served as the SPDY port forward is.
//!
//! Sessions end with a close frame of code 1000: Go's client takes anything else (an
//! empty close frame reads as 1005) as a failure of every stream.

use std::sync::Arc;

use berth_engine::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::cache::StreamRequest;
use super::remotecommand::{self, Input, Outcome, Output};
use super::reply;

/// The remote command subprotocols berth speaks, most preferred first.
const REMOTE_PROTOCOLS: [&str; 3] = ["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"];
/// The port forward subprotocols: SPDY tunnelled in WebSocket, and channels.
const PORTFORWARD_PROTOCOLS: [&str; 2] = [TUNNEL_PORTFORWARD, "v4.channel.k8s.io"];
/// SPDY/3.1 port forwarding tunnelled in WebSocket binary messages.
const TUNNEL_PORTFORWARD: &str = "SPDY/3.1+portforward.k8s.io";

/// How long to wait for the client's close after ours.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// Whether `req` asks for a WebSocket.
pub fn wants_websocket(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Answers the upgrade and serves the session on the WebSocket once the client has it.
pub fn upgrade(
    mut req: Request<Incoming>,
    sreq: StreamRequest,
    engine: Arc<Engine>,
    idle: Option<std::time::Duration>,
) -> Response<Full<Bytes>> {
    let Some(key) = req.headers().get(http::header::SEC_WEBSOCKET_KEY).cloned() else {
        return reply(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    let supported: &[&str] = match sreq {
        StreamRequest::PortForward { .. } => &PORTFORWARD_PROTOCOLS,
        _ => &REMOTE_PROTOCOLS,
    };
    let offered = super::offered_protocols(&req, http::header::SEC_WEBSOCKET_PROTOCOL);
    // The client's first protocol that we speak; a client that names none gets the
    // original protocol, as Kubernetes' wsstream does.
    let chosen = if offered.is_empty() {
        None
    } else {
        match offered.iter().find(|p| supported.contains(&p.as_str())) {
            Some(p) => Some(p.clone()),
            None => {
                return reply(
                    StatusCode::FORBIDDEN,
                    &format!(
                        "none of the WebSocket subprotocols {offered:?} is supported; berth speaks {supported:?}\n"
                    ),
                );
            }
        }
    };
    let tunnel = chosen.as_deref() == Some(TUNNEL_PORTFORWARD);
    // The CRI request's ports (kubelet fills them from the client's query for WebSocket),
    // else the query's own. A SPDY tunnel names its ports on its streams.
    let ports = match (&sreq, req.uri().query()) {
        (StreamRequest::PortForward { .. }, _) if tunnel => Vec::new(),
        (StreamRequest::PortForward { ports, .. }, _) if !ports.is_empty() => ports.clone(),
        (StreamRequest::PortForward { .. }, q) => match query_ports(q) {
            Ok(p) if !p.is_empty() => p,
            Ok(_) => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    "port forwarding over WebSocket needs ?port=P[&port=P...]\n",
                );
            }
            Err(e) => return reply(StatusCode::BAD_REQUEST, &format!("{e}\n")),
        },
        _ => Vec::new(),
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    let protocol = chosen.clone().unwrap_or_default();
    tokio::spawn(async move {
        let io = match upgrade.await {
            Ok(u) => super::upgraded(u, idle),
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        match sreq {
            StreamRequest::PortForward { pod_id, .. } if tunnel => {
                spdy_tunnel(ws, engine, pod_id).await;
            }
            StreamRequest::PortForward { pod_id, .. } => {
                port_forward(ws, engine, pod_id, ports).await;
            }
            sreq => remote(ws, &protocol, sreq, engine).await,
        }
    });
    let mut extra = vec![(http::header::SEC_WEBSOCKET_ACCEPT, accept.as_str())];
    if let Some(p) = &chosen {
        extra.push((http::header::SEC_WEBSOCKET_PROTOCOL, p.as_str()));
    }
    super::switching_protocols("websocket", &extra)
}

/// `port=80&port=8080` (kubelet's form; `port=80,8080` and `ports=` too).
fn query_ports(q: Option<&str>) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for pair in q.unwrap_or("").split('&') {
        let Some(v) = pair
            .strip_prefix("port=")
            .or_else(|| pair.strip_prefix("ports="))
        else {
            continue;
        };
        for p in v.split(',').filter(|p| !p.is_empty()) {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => out.push(n),
                _ => return Err(format!("invalid port {p:?} in the ports query")),
            }
        }
    }
    Ok(out)
}

/// The close frame that ends a session well (code 1000).
fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

fn framed(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::binary(v)
}

/// An exec or attach session on a WebSocket.
async fn remote<S>(ws: WebSocketStream<S>, protocol: &str, sreq: StreamRequest, engine: Arc<Engine>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (in_tx, in_rx) = mpsc::channel::<Input>(16);
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(16);
    let v5 = protocol == "v5.channel.k8s.io";
    // An empty first message on the lowest output channel tells the client the session is
    // set up (Kubernetes' wsstream does this; clients ignore 1-byte messages).
    let first =
        match &sreq {
            StreamRequest::Exec { stdout: true, .. }
            | StreamRequest::Attach { stdout: true, .. } => STDOUT,
            StreamRequest::Exec { stderr: true, .. }
            | StreamRequest::Attach { stderr: true, .. } => STDERR,
            _ => ERROR,
        };
    if sink.send(framed(first, &[])).await.is_err() {
        return;
    }
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            let data = match msg {
                Message::Binary(d) => d,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some(input) = inbound(&data, v5) else {
                continue;
            };
            if in_tx.send(input).await.is_err() {
                break;
            }
        }
        // Dropping in_tx: the client is gone (an exec'd process is killed).
    });
    let writer = async {
        while let Some(o) = out_rx.recv().await {
            let msg = match o {
                Output::Stdout(d) => framed(STDOUT, &d),
                Output::Stderr(d) => framed(STDERR, &d),
            };
            if sink.send(msg).await.is_err() {
                // The session must see the client is gone, not wait on a full queue.
                out_rx.close();
                return false;
            }
        }
        true
    };
    let (outcome, alive) = tokio::join!(remotecommand::run(engine, &sreq, in_rx, out_tx), writer);
    if alive {
        let status = if matches!(protocol, "channel.k8s.io" | "") {
            remotecommand::status_text(&outcome)
        } else {
            Some(remotecommand::status_json(&outcome))
        };
        if let Some(s) = status {
            let _ = sink.send(framed(ERROR, s.as_bytes())).await;
        }
        let _ = sink.send(normal_close()).await;
        let _ = sink.flush().await;
    }
    if let Outcome::Failed(e) = &outcome {
        tracing::debug!(error = %e, "streaming session ended");
    }
    // Let the client answer the close (dropping the socket with its bytes unread would
    // reset the connection and could lose the last output).
    let abort = reader.abort_handle();
    if tokio::time::timeout(CLOSE_WAIT, reader).await.is_err() {
        abort.abort();
    }
}

/// What a client's binary message on a remote-command WebSocket means: its first byte is
/// the channel (stdin, a terminal resize as JSON, and with v5 the close of a channel);
/// None for what the session ignores (empty messages, other channels, bad resizes).
pub fn inbound(data: &[u8], v5: bool) -> Option<Input> {
    let (&channel, payload) = data.split_first()?;
    match channel {
        STDIN => Some(Input::Stdin(payload.to_vec())),
        RESIZE => remotecommand::parse_resize(payload).map(|(w, h)| Input::Resize(w, h)),
        CLOSE if v5 && payload.first() == Some(&STDIN) => Some(Input::StdinEof),
        _ => None,
    }
}

/// Port forwarding on a WebSocket: one connection per port of the request.
async fn port_forward<S>(
    ws: WebSocketStream<S>,
    engine: Arc<Engine>,
    pod_id: String,
    ports: Vec<u16>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(16);
    let mut to_conn = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data_ch, err_ch) = match (u8::try_from(2 * i), u8::try_from(2 * i + 1)) {
            (Ok(d), Ok(e)) if e < CLOSE => (d, e),
            _ => break,
        };
        // The first message of each channel names its port.
        for ch in [data_ch, err_ch] {
            if sink.send(framed(ch, &port.to_le_bytes())).await.is_err() {
                return;
            }
        }
        let (tx, rx) = mpsc::channel::<Vec<u8>>(16);
        to_conn.push(tx);
        let (engine, pod_id, out) = (engine.clone(), pod_id.clone(), out_tx.clone());
        tokio::spawn(async move {
            match engine.port_forward(&pod_id, port).await {
                Ok(conn) => pump(conn, rx, out, data_ch).await,
                Err(e) => {
                    let _ = out.send(framed(err_ch, e.to_string().as_bytes())).await;
                }
            }
        });
    }
    drop(out_tx);
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            let data = match msg {
                Message::Binary(d) => d,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            if channel % 2 == 0
                && let Some(tx) = to_conn.get(usize::from(channel / 2))
                && !payload.is_empty()
                && tx.send(payload.to_vec()).await.is_err()
            {
                continue;
            }
        }
    });
    while let Some(m) = out_rx.recv().await {
        if sink.send(m).await.is_err() {
            break;
        }
    }
    let _ = sink.send(normal_close()).await;
    reader.abort();
}

/// Port forwarding as SPDY tunnelled in a WebSocket: the binary messages' payloads are the
/// SPDY byte stream (one frame may span several messages, or one message several frames),
/// bridged through an in-memory pipe to the SPDY port forward server. The WebSocket is
/// read all along, so the client's pings are answered whatever the streams do.
async fn spdy_tunnel<S>(ws: WebSocketStream<S>, engine: Arc<Engine>, pod_id: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (ours, theirs) = tokio::io::duplex(TUNNEL_BUFFER);
    let (mut from_spdy, mut to_spdy) = tokio::io::split(theirs);
    let server = tokio::spawn(super::httpstream::serve_port_forward(ours, engine, pod_id));
    let inbound = tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Binary(d) if to_spdy.write_all(&d).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        // The client is done: the SPDY session sees end of file and ends.
        let _ = to_spdy.shutdown().await;
    });
    let outbound = async move {
        let mut buf = vec![0u8; TUNNEL_BUFFER];
        while let Ok(n @ 1..) = from_spdy.read(&mut buf).await {
            if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
        let _ = sink.send(normal_close()).await;
        let _ = sink.flush().await;
    };
    outbound.await;
    server.abort();
    // Let the client answer our close, as for remote commands.
    let abort = inbound.abort_handle();
    if tokio::time::timeout(CLOSE_WAIT, inbound).await.is_err() {
        abort.abort();
    }
}

/// Bytes buffered each way between a SPDY tunnel's WebSocket and its SPDY session.
const TUNNEL_BUFFER: usize = 64 * 1024;

/// Copies between a pod connection and one data channel, until either side ends.
async fn pump(
    conn: tokio::net::TcpStream,
    mut from_client: mpsc::Receiver<Vec<u8>>,
    to_client: mpsc::Sender<Message>,
    channel: u8,
) {
    let (mut rd, mut wr) = conn.into_split();
    let upstream = async move {
        while let Some(d) = from_client.recv().await {
            if wr.write_all(&d).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let downstream = async move {
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n @ 1..) = rd.read(&mut buf).await {
            if to_client.send(framed(channel, &buf[..n])).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        () = downstream => {}
        () = upstream => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_messages_by_channel() {
        assert!(matches!(inbound(&[0, b'a'], false), Some(Input::Stdin(d)) if d == b"a"));
        assert!(matches!(
            inbound(br#"{"Width":80,"Height":24}"#.as_slice(), false),
            None | Some(Input::Resize(..))
        ));
        let mut resize = vec![4u8];
        resize.extend_from_slice(br#"{"Width":80,"Height":24}"#);
        assert!(matches!(
            inbound(&resize, false),
            Some(Input::Resize(80, 24))
        ));
        assert!(matches!(inbound(&[255, 0], true), Some(Input::StdinEof)));
        assert!(inbound(&[255, 0], false).is_none());
        assert!(inbound(&[], true).is_none());
        assert!(inbound(&[4, b'{'], true).is_none());
        assert!(inbound(&[9, 1, 2], true).is_none());
    }

    #[test]
    fn ports_query() {
        assert_eq!(query_ports(Some("ports=80,8080")).unwrap(), vec![80, 8080]);
        assert_eq!(query_ports(Some("a=b&port=1&port=2")).unwrap(), vec![1, 2]);
        assert_eq!(query_ports(None).unwrap(), Vec::<u16>::new());
        assert!(query_ports(Some("ports=0")).is_err());
        assert!(query_ports(Some("ports=x")).is_err());
        assert_eq!(framed(3, b"hi").into_data().as_ref(), b"\x03hi");
    }
}

//! The Kubernetes remote command protocol's meaning, apart from its transports: an exec or
//! attach session is stdin, stdout, stderr, terminal resizes in, and a status at the end
//! (the "error" stream). SPDY and WebSocket adapters turn their streams into [`Input`]s
//! and [`Output`]s; [`run`] connects them to the engine's session.

use std::sync::Arc;

use berth_engine::Engine;
use berth_engine::streams::{Event, ExecRequest, STDERR, Session};
use tokio::sync::mpsc;

use super::cache::StreamRequest;

/// Largest piece of stdin sent to the monitor at once.
const STDIN_CHUNK: usize = 64 * 1024;

/// What the client sends.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    Stdin(Vec<u8>),
    /// The client has no more input (stdin closed).
    StdinEof,
    /// A new terminal size: columns, rows.
    Resize(u16, u16),
}

/// What goes to the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// How a session ended, for the error stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The exec'd process exited with this code (attach: the container's output ended: 0).
    Exited(i32),
    /// The session could not run or broke off.
    Failed(String),
}

/// Runs the session `req` asks for: input from `input` (its end means the client went away,
/// which kills an exec'd process), output to `output` at the pace the client takes it.
pub async fn run(
    engine: Arc<Engine>,
    req: &StreamRequest,
    mut input: mpsc::Receiver<Input>,
    output: mpsc::Sender<Output>,
) -> Outcome {
    let started = match req {
        StreamRequest::Exec {
            container_id,
            cmd,
            tty,
            stdin,
            ..
        } => {
            engine
                .exec_session(
                    container_id,
                    &ExecRequest {
                        cmd: cmd.clone(),
                        tty: *tty,
                        stdin: *stdin,
                    },
                )
                .await
        }
        StreamRequest::Attach {
            container_id,
            stdin,
            stdout,
            stderr,
            ..
        } => {
            engine
                .attach_session(container_id, *stdin, *stdout, *stderr)
                .await
        }
        StreamRequest::PortForward { .. } => {
            return Outcome::Failed("not a remote command request".into());
        }
    };
    let Session {
        input: mut to_process,
        output: mut from_process,
    } = match started {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let is_attach = matches!(req, StreamRequest::Attach { .. });
    // Input: until the client goes away; then dropping our end tells the monitor.
    let forward = tokio::spawn(async move {
        while let Some(i) = input.recv().await {
            let r = match i {
                Input::Stdin(d) if d.is_empty() => Ok(()),
                Input::Stdin(d) => {
                    // Monitor frames are bounded; a client may send large messages.
                    let mut r = Ok(());
                    for chunk in d.chunks(STDIN_CHUNK) {
                        r = to_process.stdin(chunk.to_vec()).await;
                        if r.is_err() {
                            break;
                        }
                    }
                    r
                }
                Input::StdinEof => to_process.close_stdin().await,
                Input::Resize(w, h) => to_process.resize(w, h).await,
            };
            if r.is_err() {
                break;
            }
        }
    });
    let outcome = loop {
        match from_process.next().await {
            Ok(Some(Event::Output(stream, data))) => {
                let o = if stream == STDERR {
                    Output::Stderr(data)
                } else {
                    Output::Stdout(data)
                };
                if output.send(o).await.is_err() {
                    break Outcome::Failed("the client went away".into());
                }
            }
            Ok(Some(Event::Ended { exit_code, message })) => {
                break if is_attach {
                    Outcome::Exited(0)
                } else if exit_code < 0 {
                    Outcome::Failed(if message.is_empty() {
                        "the process's exit status is unknown".into()
                    } else {
                        message
                    })
                } else {
                    Outcome::Exited(exit_code)
                };
            }
            Ok(None) => break Outcome::Failed("the pod's monitor closed the session".into()),
            Err(e) => break Outcome::Failed(e.to_string()),
        }
    };
    forward.abort();
    outcome
}

/// The status a v4 (or later) client expects on the error stream, as kubelet writes it: a
/// metav1.Status, with the exit code as an `ExitCode` cause when it is not 0.
pub fn status_json(outcome: &Outcome) -> String {
    let v = match outcome {
        Outcome::Exited(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Outcome::Exited(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Outcome::Failed(msg) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("Internal error occurred: {msg}"),
            "reason": "InternalError",
            "details": {"causes": [{"message": msg}]},
            "code": 500,
        }),
    };
    v.to_string()
}

/// The error text an older (v1-v3) client expects: nothing on success.
pub fn status_text(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Exited(0) => None,
        Outcome::Exited(code) => Some(format!(
            "command terminated with non-zero exit code: error executing command, exit code {code}"
        )),
        Outcome::Failed(msg) => Some(msg.clone()),
    }
}

/// A resize message: `{"Width":W,"Height":H}` (Go's remotecommand.TerminalSize).
pub fn parse_resize(data: &[u8]) -> Option<(u16, u16)> {
    #[derive(serde::Deserialize)]
    struct Size {
        #[serde(rename = "Width", alias = "width")]
        width: u16,
        #[serde(rename = "Height", alias = "height")]
        height: u16,
    }
    serde_json::from_slice::<Size>(data)
        .ok()
        .map(|s| (s.width, s.height))
}

/// Splits a byte stream of concatenated JSON objects (Go's json.Encoder output on the
/// resize stream) into complete objects, keeping an incomplete tail in `buf`.
pub fn take_json_objects(buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let start = match buf.iter().position(|b| *b == b'{') {
            Some(i) => i,
            None => {
                buf.clear();
                return out;
            }
        };
        let mut depth = 0usize;
        let mut in_str = false;
        let mut escaped = false;
        let mut end = None;
        for (i, &b) in buf.iter().enumerate().skip(start) {
            if in_str {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_str = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_str = true,
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        match end {
            Some(e) => {
                out.push(buf[start..=e].to_vec());
                buf.drain(..=e);
            }
            None => {
                buf.drain(..start);
                return out;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_as_kubelet_writes_them() {
        let ok: serde_json::Value =
            serde_json::from_str(&status_json(&Outcome::Exited(0))).unwrap();
        assert_eq!(ok["status"], "Success");
        let five: serde_json::Value =
            serde_json::from_str(&status_json(&Outcome::Exited(5))).unwrap();
        assert_eq!(five["status"], "Failure");
        assert_eq!(five["reason"], "NonZeroExitCode");
        assert_eq!(five["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(five["details"]["causes"][0]["message"], "5");
        let failed: serde_json::Value =
            serde_json::from_str(&status_json(&Outcome::Failed("boom".into()))).unwrap();
        assert_eq!(failed["message"], "Internal error occurred: boom");
        assert_eq!(status_text(&Outcome::Exited(0)), None);
        assert!(
            status_text(&Outcome::Exited(3))
                .unwrap()
                .contains("exit code 3")
        );
    }

    #[test]
    fn resize_messages() {
        assert_eq!(
            parse_resize(br#"{"Width":120,"Height":40}"#),
            Some((120, 40))
        );
        assert_eq!(parse_resize(br#"{"width":1,"height":2}"#), Some((1, 2)));
        assert_eq!(parse_resize(b"{}"), None);
        let mut buf = br#"{"Width":80,"Height":24}{"Width":100,"He"#.to_vec();
        let objs = take_json_objects(&mut buf);
        assert_eq!(objs.len(), 1);
        assert_eq!(parse_resize(&objs[0]), Some((80, 24)));
        buf.extend_from_slice(br#"ight":50}"#);
        let objs = take_json_objects(&mut buf);
        assert_eq!(parse_resize(&objs[0]), Some((100, 50)));
        assert!(buf.is_empty());
        let mut s = br#"{"a":"}{"}"#.to_vec();
        assert_eq!(take_json_objects(&mut s).len(), 1);
    }
}

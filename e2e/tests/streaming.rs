//! Exec, attach and port-forward streams end to end, through clients berth did not write:
//! e2e/node/k8s-stream.js speaks the Kubernetes protocols with the npm packages `ws`
//! (WebSocket) and `spdy-transport` (SPDY/3.1), the way kubectl and kubelet do.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use berth_e2e::env::BusyboxEnv;
use berth_e2e::{Cri, require};
use berth_proto::cri;
use serde_json::Value;
use tonic::Code;

/// The node client, when its packages are installed (`npm ci` in e2e/node).
fn client() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node");
    let ok = dir.join("node_modules/ws").exists()
        && dir.join("node_modules/spdy-transport").exists()
        && Command::new("node").arg("--version").output().is_ok();
    if !ok {
        assert!(
            !require::required(),
            "node and e2e/node/node_modules are needed (run npm ci in e2e/node)"
        );
        return None;
    }
    Some(dir.join("k8s-stream.js"))
}

/// Runs the client; its one JSON line.
fn run_client(script: &PathBuf, args: &[&str]) -> Value {
    let out = Command::new("node")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "client {args:?}: {e}\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn container(
    env: &BusyboxEnv,
    name: &str,
    cmd: &[&str],
    stdin: bool,
    tty: bool,
) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(berth_e2e::cri::spec(&env.image)),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        stdin,
        tty,
        ..Default::default()
    }
}

fn pod(env: &BusyboxEnv, name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "streaming".into(),
            attempt: 0,
        }),
        log_directory: env.logs.path().join(name).display().to_string(),
        ..Default::default()
    }
}

/// An Attach URL with stdin and stdout (and stderr unless on a terminal).
async fn attach_url(c: &mut Cri, id: &str, tty: bool) -> String {
    c.runtime
        .attach(cri::AttachRequest {
            container_id: id.into(),
            stdin: true,
            tty,
            stdout: true,
            stderr: !tty,
        })
        .await
        .unwrap()
        .into_inner()
        .url
}

fn exit_code(v: &Value) -> i64 {
    v["exitCode"].as_i64().unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_over_websocket_and_spdy() {
    let Some(script) = client() else { return };
    let Some(mut env) = BusyboxEnv::start().await else {
        return;
    };
    let p = env.c.run_pod(pod(&env, "exec")).await;
    let id = env
        .c
        .run_container(
            &p,
            container(&env, "main", &["sleep", "3600"], false, false),
        )
        .await;

    // The container and what runs in it start with no signal ignored (berthd, a Rust
    // program, ignores SIGPIPE; that must not leak into containers).
    let r = env
        .c
        .exec(
            &id,
            &[
                "sh",
                "-c",
                "grep SigIgn /proc/1/status; cat /proc/self/status | grep SigIgn",
            ],
            5,
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "SigIgn:\t0000000000000000\nSigIgn:\t0000000000000000\n"
    );

    // One exec through the client: (its URL, its JSON).
    let script = &script;
    let exec = |c: &mut Cri,
                cmd: &'static [&'static str],
                stdin: bool,
                tty: bool,
                args: Vec<&'static str>| {
        let mut rt = c.runtime.clone();
        let id = id.clone();
        async move {
            let url = rt
                .exec(cri::ExecRequest {
                    container_id: id,
                    cmd: cmd.iter().map(|s| s.to_string()).collect(),
                    tty,
                    stdin,
                    stdout: true,
                    stderr: !tty,
                })
                .await
                .unwrap()
                .into_inner()
                .url;
            let mut all = vec!["exec", url.as_str()];
            all.extend(args);
            let v = run_client(script, &all);
            (url, v)
        }
    };

    for (transport, protocol) in [
        ("ws", "v5.channel.k8s.io"),
        ("ws", "v4.channel.k8s.io"),
        ("spdy", "v4.channel.k8s.io"),
    ] {
        let what = format!("{transport} {protocol}");
        let args = vec!["--transport", transport, "--protocol", protocol];
        // Output and exit code 0.
        let (_, v) = exec(&mut env.c, &["echo", "hello"], false, false, args.clone()).await;
        assert_eq!(v["stdout"], "hello\n", "{what}: {v}");
        assert_eq!(exit_code(&v), 0, "{what}: {v}");
        // A non-zero exit code and stderr.
        let (url, v) = exec(
            &mut env.c,
            &["sh", "-c", "echo oops >&2; exit 5"],
            false,
            false,
            args.clone(),
        )
        .await;
        assert_eq!(v["stderr"], "oops\n", "{what}: {v}");
        assert_eq!(exit_code(&v), 5, "{what}: {v}");
        // The URL works once.
        let v = run_client(script, &["raw-status", &url, "--transport", transport]);
        assert_eq!(v.as_i64(), Some(404), "{what}: a replayed URL: {v}");
    }

    // Older protocols carry the failure as text on the error stream, nothing on success.
    for (transport, protocol) in [("spdy", "v2.channel.k8s.io"), ("ws", "channel.k8s.io")] {
        let args = vec!["--transport", transport, "--protocol", protocol];
        let (_, v) = exec(
            &mut env.c,
            &["sh", "-c", "echo out; exit 5"],
            false,
            false,
            args.clone(),
        )
        .await;
        assert_eq!(v["protocol"], protocol, "{v}");
        assert_eq!(v["stdout"], "out\n", "{protocol}: {v}");
        assert!(
            v["errorText"]
                .as_str()
                .unwrap_or_default()
                .contains("exit code 5"),
            "{protocol}: {v}"
        );
        let (_, v) = exec(&mut env.c, &["true"], false, false, args).await;
        assert!(
            v["errorText"].as_str().unwrap_or_default().is_empty(),
            "{protocol}: {v}"
        );
    }

    // Stdin round trip; closing stdin ends `cat` (v5 WebSocket close signal, SPDY FIN).
    for (transport, protocol) in [("ws", "v5.channel.k8s.io"), ("spdy", "v4.channel.k8s.io")] {
        let args = vec![
            "--transport",
            transport,
            "--protocol",
            protocol,
            "--stdin",
            "ping\n",
        ];
        let (_, v) = exec(
            &mut env.c,
            &["sh", "-c", "cat; echo done"],
            true,
            false,
            args,
        )
        .await;
        assert_eq!(v["stdout"], "ping\ndone\n", "{transport}: {v}");
        assert_eq!(exit_code(&v), 0, "{transport}: {v}");
    }

    // A terminal of the container's own devpts, resized after start: the process sees the
    // new size.
    for transport in ["ws", "spdy"] {
        let args = vec![
            "--transport",
            transport,
            "--tty",
            "--stdin-hold-ms",
            "2000",
            "--resize",
            "100x30",
            "--resize-after-ms",
            "200",
        ];
        let cmd = &[
            "sh",
            "-c",
            "sleep 1; stty size; tty | grep -q '^/dev/pts/' && echo on-a-tty",
        ];
        let (_, v) = exec(&mut env.c, cmd, true, true, args).await;
        let out = v["stdout"].as_str().unwrap_or_default().replace('\r', "");
        assert!(out.contains("30 100\n"), "{transport}: {v}");
        assert!(out.contains("on-a-tty"), "{transport}: {v}");
        assert_eq!(exit_code(&v), 0, "{transport}: {v}");
    }

    // A client that goes away takes its process with it.
    let (_, v) = exec(
        &mut env.c,
        &["sleep", "1234"],
        false,
        false,
        vec!["--transport", "ws", "--timeout-ms", "500"],
    )
    .await;
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("did not finish"),
        "{v}"
    );
    let mut gone = false;
    for _ in 0..50 {
        let r = env
            .c
            .exec(&id, &["sh", "-c", "ps -o args | grep -c '^sleep 1234'"], 5)
            .await
            .unwrap();
        if String::from_utf8_lossy(&r.stdout).trim() == "0" {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gone, "the exec'd process outlived its client");

    // Bad requests are refused at the call.
    let bad = |tty: bool, stderr: bool, cmd: Vec<String>, id: String| cri::ExecRequest {
        container_id: id,
        cmd,
        tty,
        stdin: false,
        stdout: true,
        stderr,
    };
    for req in [
        bad(true, true, vec!["true".into()], id.clone()),
        bad(false, true, vec![], id.clone()),
    ] {
        let e = env.c.runtime.exec(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    let e = env
        .c
        .runtime
        .exec(bad(false, true, vec!["true".into()], "nope".into()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    env.c.stop_and_remove_pod(&p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn attach_to_a_container_with_stdin_and_tty() {
    let Some(script) = client() else { return };
    let Some(mut env) = BusyboxEnv::start().await else {
        return;
    };
    let p = env.c.run_pod(pod(&env, "attach")).await;
    // An interactive shell on a terminal: what it reads it runs.
    let tty = env
        .c
        .run_container(&p, container(&env, "shell", &["sh"], true, true))
        .await;
    for transport in ["ws", "spdy"] {
        let url = attach_url(&mut env.c, &tty, true).await;
        let marker = format!("attached-{transport}");
        let v = run_client(
            &script,
            &[
                "attach",
                &url,
                "--transport",
                transport,
                "--tty",
                "--stdin",
                &format!("echo {marker}; tty\n"),
                "--stdin-hold-ms",
                "1500",
                "--timeout-ms",
                "3000",
            ],
        );
        let out = v["stdout"].as_str().unwrap_or_default();
        // The terminal echoes the line and the shell prints the word.
        assert!(out.matches(&marker).count() >= 2, "{transport}: {v}");
        // The container's terminal is one of its own devpts.
        assert!(out.contains("\n/dev/pts/"), "{transport}: {v}");
    }
    // The terminal and the shell live in the pod's monitor: berthd killed and restarted,
    // the same shell is attached again.
    env.d.signal(nix::sys::signal::Signal::SIGKILL);
    env.d
        .wait_exit(std::time::Duration::from_secs(5))
        .expect("berthd did not die");
    env.d.restart().await;
    env.c = env.d.cri().await;
    let url = attach_url(&mut env.c, &tty, true).await;
    let v = run_client(
        &script,
        &[
            "attach",
            &url,
            "--transport",
            "ws",
            "--tty",
            "--stdin",
            "echo after-restart\n",
            "--stdin-hold-ms",
            "1500",
            "--timeout-ms",
            "3000",
        ],
    );
    assert!(
        v["stdout"]
            .as_str()
            .unwrap_or_default()
            .matches("after-restart")
            .count()
            >= 2,
        "{v}"
    );
    // Without a terminal: stdout and stderr apart, stdin to cat.
    let plain = env
        .c
        .run_container(
            &p,
            container(
                &env,
                "cat",
                &[
                    "sh",
                    "-c",
                    "while read l; do echo \"out $l\"; echo \"err $l\" >&2; done",
                ],
                true,
                false,
            ),
        )
        .await;
    let url = attach_url(&mut env.c, &plain, false).await;
    let v = run_client(
        &script,
        &[
            "attach",
            &url,
            "--transport",
            "ws",
            "--stdin",
            "a\n",
            "--stdin-hold-ms",
            "1000",
            "--timeout-ms",
            "2000",
        ],
    );
    assert!(
        v["stdout"].as_str().unwrap_or_default().contains("out a\n"),
        "{v}"
    );
    assert!(
        v["stderr"].as_str().unwrap_or_default().contains("err a\n"),
        "{v}"
    );
    // The container's log has it too.
    let log = std::fs::read_to_string(env.logs.path().join("attach/cat.log")).unwrap_or_default();
    assert!(log.contains("stdout F out a"), "{log}");
    // stdin_once: the first attach that ends its stdin closes the container's, and `cat`
    // sees the end of its input.
    let once = env
        .c
        .run_container(&p, {
            let mut c = container(
                &env,
                "once",
                &["sh", "-c", "cat; echo after-eof"],
                true,
                false,
            );
            c.stdin_once = true;
            c
        })
        .await;
    let url = attach_url(&mut env.c, &once, false).await;
    let v = run_client(
        &script,
        &[
            "attach",
            &url,
            "--transport",
            "ws",
            "--protocol",
            "v5.channel.k8s.io",
            "--stdin",
            "hello\n",
            "--timeout-ms",
            "5000",
        ],
    );
    assert_eq!(v["stdout"], "hello\nafter-eof\n", "{v}");
    let st = env.c.wait_exited(&once).await;
    assert_eq!(st.exit_code, 0);
    // A container without stdin cannot be attached with stdin.
    let nostdin = env
        .c
        .run_container(
            &p,
            container(&env, "sleeper", &["sleep", "3600"], false, false),
        )
        .await;
    let url = attach_url(&mut env.c, &nostdin, false).await;
    let v = run_client(
        &script,
        &["attach", &url, "--transport", "ws", "--timeout-ms", "2000"],
    );
    assert!(
        v["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not created with stdin"),
        "{v}"
    );
    env.c.stop_and_remove_pod(&p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn port_forward_to_httpd_in_a_pod() {
    let Some(script) = client() else { return };
    let Some(mut env) = BusyboxEnv::start().await else {
        return;
    };
    let p = env.c.run_pod(pod(&env, "pf")).await;
    env.c
        .run_container(
            &p,
            container(
                &env,
                "web",
                &["sh", "-c", "mkdir -p /www && echo hello-from-the-pod > /www/index.html && httpd -p 8081 -h /www && exec httpd -f -p 8080 -h /www"],
                false,
                false,
            ),
        )
        .await;
    // httpd is up once a request through exec succeeds.
    let url_of = |c: &mut Cri| {
        let mut rt = c.runtime.clone();
        let p = p.clone();
        async move {
            rt.port_forward(cri::PortForwardRequest {
                pod_sandbox_id: p,
                port: vec![8080],
            })
            .await
            .unwrap()
            .into_inner()
            .url
        }
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let request = "GET /index.html HTTP/1.0\r\n\r\n";
    for transport in ["spdy", "ws"] {
        // WebSocket port forwarding carries one connection per URL.
        let url = if transport == "ws" {
            let mut urls = Vec::new();
            for _ in 0..3 {
                urls.push(url_of(&mut env.c).await);
            }
            urls.join(",")
        } else {
            url_of(&mut env.c).await
        };
        let v = run_client(
            &script,
            &[
                "portforward",
                &url,
                "--transport",
                transport,
                "--port",
                "8080",
                "--send",
                request,
                "--connections",
                "3",
            ],
        );
        let conns = v["connections"].as_array().cloned().unwrap_or_default();
        assert_eq!(conns.len(), 3, "{transport}: {v}");
        for c in conns {
            let text = c["text"].as_str().unwrap_or_default();
            assert!(
                text.starts_with("HTTP/1.") && text.contains("hello-from-the-pod"),
                "{transport}: {c}"
            );
        }
    }
    // Two ports on one WebSocket (channels 0/1 and 2/3), each answered by its own httpd.
    {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let url = env
            .c
            .runtime
            .port_forward(cri::PortForwardRequest {
                pod_sandbox_id: p.clone(),
                port: vec![8080, 8081],
            })
            .await
            .unwrap()
            .into_inner()
            .url;
        let mut ws = berth_e2e::stream::ws_connect(&url, "v4.channel.k8s.io").await;
        for ch in [0u8, 2] {
            let mut m = vec![ch];
            m.extend_from_slice(b"GET /index.html HTTP/1.0\r\n\r\n");
            ws.send(Message::binary(m)).await.unwrap();
        }
        let mut got: std::collections::BTreeMap<u8, Vec<u8>> = Default::default();
        let mut prefixes = 0;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await {
            let d = m.into_data();
            let Some((&ch, rest)) = d.split_first() else {
                continue;
            };
            let buf = got.entry(ch).or_default();
            if buf.is_empty() && rest.len() == 2 && prefixes < 4 {
                prefixes += 1; // the port number that opens each channel
                let port = u16::from_le_bytes([rest[0], rest[1]]);
                assert_eq!(port, if ch < 2 { 8080 } else { 8081 }, "channel {ch}");
                continue;
            }
            buf.extend_from_slice(rest);
            let done = |c: u8| {
                got.get(&c)
                    .is_some_and(|b| String::from_utf8_lossy(b).contains("hello-from-the-pod"))
            };
            if done(0) && done(2) {
                break;
            }
        }
        for ch in [0u8, 2] {
            let text = String::from_utf8_lossy(got.get(&ch).map(Vec::as_slice).unwrap_or_default())
                .into_owned();
            assert!(text.contains("hello-from-the-pod"), "channel {ch}: {text}");
        }
    }
    // A closed port: the error stream says so.
    let url = url_of(&mut env.c).await;
    let v = run_client(
        &script,
        &[
            "portforward",
            &url,
            "--transport",
            "spdy",
            "--port",
            "9",
            "--send",
            "x",
        ],
    );
    let text = v.to_string();
    assert!(
        text.contains("refused") || text.contains("error forwarding"),
        "{v}"
    );
    env.c.stop_and_remove_pod(&p).await;
}

/// A streaming connection without traffic is closed after `idle_timeout_seconds`, and its
/// exec'd process with it.
#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed() {
    use futures_util::StreamExt;
    let Some(mut env) = BusyboxEnv::start_with(berth_e2e::DaemonOptions {
        extra_config: "\n[streaming]\nidle_timeout_seconds = 1\n".into(),
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let p = env.c.run_pod(pod(&env, "idle")).await;
    let id = env
        .c
        .run_container(
            &p,
            container(&env, "main", &["sleep", "3600"], false, false),
        )
        .await;
    let url = env
        .c
        .runtime
        .exec(cri::ExecRequest {
            container_id: id.clone(),
            cmd: vec!["sleep".into(), "4321".into()],
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let started = std::time::Instant::now();
    let mut ws = berth_e2e::stream::ws_connect(&url, "v5.channel.k8s.io").await;
    // This client sends nothing (not even pings); the server closes within the timeout.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the idle connection stayed open");
    let secs = started.elapsed().as_secs_f64();
    assert!((0.9..5.0).contains(&secs), "closed after {secs:.1}s");
    let mut gone = false;
    for _ in 0..50 {
        let r = env
            .c
            .exec(&id, &["sh", "-c", "ps -o args | grep -c '^sleep 4321'"], 5)
            .await
            .unwrap();
        if String::from_utf8_lossy(&r.stdout).trim() == "0" {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gone, "the exec'd process outlived its idle connection");
    env.c.stop_and_remove_pod(&p).await;
}

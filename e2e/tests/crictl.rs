//! crictl 1.36 (Go, cri-tools' own client: client-go's remotecommand and port-forward over
//! SPDY and WebSocket, grpc-go) against berthd, the way an operator uses it by hand: small
//! JSON configs, pull, run, exec (-i, -it), attach, port-forward, logs, stats, inspect,
//! remove.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use berth_e2e::images::catalog;
use berth_e2e::{Daemon, Registry, kit, require};

struct Env {
    d: Daemon,
    reg: Registry,
    crictl: PathBuf,
    dir: tempfile::TempDir,
}

async fn env() -> Option<Env> {
    if !(require::root() && catalog::available()) {
        return None;
    }
    let crictl = kit::crictl()?;
    let reg = Registry::start()?;
    reg.push_image("busybox", "latest", &catalog::busybox().build());
    let d = Daemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    // crictl's config file, as manifests/crictl.yaml has it for /run/berth/berth.sock.
    let endpoint = format!("unix://{}", d.socket.display());
    std::fs::write(
        dir.path().join("crictl.yaml"),
        format!("runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\ntimeout: 30\n"),
    )
    .unwrap();
    Some(Env {
        d,
        reg,
        crictl,
        dir,
    })
}

impl Env {
    /// crictl with this daemon's endpoints, bounded by `timeout` (a hang of the client is
    /// what some of these tests are about).
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("timeout");
        c.args(["-s", "KILL", "60"]).arg(&self.crictl);
        self.crictl_args(&mut c, args);
        c
    }

    /// crictl itself (for the commands that run until killed).
    fn direct(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.crictl);
        self.crictl_args(&mut c, args);
        c
    }

    fn crictl_args(&self, c: &mut Command, args: &[&str]) {
        let endpoint = format!("unix://{}", self.d.socket.display());
        c.args([
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
        ])
        .args(["--timeout", "30s"])
        .args(args)
        .env("CRI_CONFIG_FILE", self.dir.path().join("crictl.yaml"));
    }

    /// Runs crictl; its output. Panics unless it succeeded.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, None);
        assert!(
            out.status.success(),
            "crictl {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        self.run_holding_stdin(args, stdin, Duration::ZERO)
    }

    /// Runs crictl, writing `stdin` and closing it only after `hold`.
    fn run_holding_stdin(&self, args: &[&str], stdin: Option<&[u8]>, hold: Duration) -> Output {
        let mut c = self.cmd(args);
        c.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = c.spawn().expect("run crictl");
        if let Some(data) = stdin {
            let mut w = child.stdin.take().unwrap();
            w.write_all(data).unwrap();
            std::thread::sleep(hold);
        }
        child.wait_with_output().unwrap()
    }

    fn write(&self, name: &str, json: serde_json::Value) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, json.to_string()).unwrap();
        p.display().to_string()
    }

    fn image(&self) -> String {
        format!("{}/busybox:latest", self.reg.host())
    }
}

/// crictl's documented minimal pod: metadata and a log directory.
fn pod_json(env: &Env, name: &str) -> String {
    env.write(
        &format!("{name}-pod.json"),
        serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "attempt": 1},
            "log_directory": env.dir.path().join(format!("{name}-logs")).display().to_string(),
            "linux": {}
        }),
    )
}

fn container_json(env: &Env, name: &str, extra: serde_json::Value) -> String {
    let mut v = serde_json::json!({
        "metadata": {"name": name},
        "image": {"image": env.image()},
        "log_path": format!("{name}.log"),
        "linux": {}
    });
    if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    env.write(&format!("{name}.json"), v)
}

/// `crictl run`-like: create and start in pod `pod`; the container's id.
fn start_container(
    env: &Env,
    pod: &str,
    pod_file: &str,
    name: &str,
    extra: serde_json::Value,
) -> String {
    let file = container_json(env, name, extra);
    let id = env.ok(&["create", pod, &file, pod_file]).trim().to_owned();
    env.ok(&["start", &id]);
    id
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn crictl_pulls_runs_inspects_and_removes() {
    let Some(env) = env().await else { return };
    let out = env.ok(&["version"]);
    assert!(out.contains("RuntimeName:  berth"), "{out}");
    env.ok(&["pull", &env.image()]);
    assert!(env.ok(&["images"]).contains("busybox"));
    let pod_file = pod_json(&env, "hand");
    let pod = env.ok(&["runp", &pod_file]).trim().to_owned();
    let id = start_container(
        &env,
        &pod,
        &pod_file,
        "counter",
        serde_json::json!({"command": ["sh", "-c", "i=0; while true; do echo line$i; i=$((i+1)); sleep 0.1; done"]}),
    );
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", &id])).unwrap();
    assert_eq!(v["status"]["state"], "CONTAINER_RUNNING", "{v}");
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspectp", &pod])).unwrap();
    assert_eq!(v["status"]["state"], "SANDBOX_READY", "{v}");
    // The node's hostname, since the pod config names none (crictl's default).
    let r = env.ok(&["exec", &id, "hostname"]);
    let node = nix::unistd::gethostname().unwrap();
    assert_eq!(r.trim(), node.to_string_lossy());
    assert!(env.ok(&["ps"]).contains("counter"));
    assert!(env.ok(&["pods"]).contains("hand"));
    // logs (crictl reads the CRI log file itself), then -f for a moment.
    wait_for("log lines", || env.ok(&["logs", &id]).contains("line3"));
    let mut follow = env
        .direct(&["logs", "-f", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let first: Vec<String> = (0..20).map(|_| lines.next().unwrap().unwrap()).collect();
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(first[0], "line0", "{first:?}");
    assert_eq!(first[19], "line19", "-f must keep following: {first:?}");
    // stats
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["stats", "-o", "json", "--id", &id])).unwrap();
    let s = &v["stats"][0];
    assert_eq!(s["attributes"]["id"], id, "{v}");
    assert!(
        s["memory"]["workingSetBytes"]["value"]
            .as_str()
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n > 0),
        "{v}"
    );
    env.ok(&["stop", &id]);
    env.ok(&["rm", &id]);
    env.ok(&["stopp", &pod]);
    env.ok(&["rmp", &pod]);
    assert!(!env.ok(&["pods", "-q"]).contains(&pod));
    env.ok(&["rmi", &env.image()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn crictl_exec_and_attach_over_spdy_and_websocket() {
    let Some(env) = env().await else { return };
    env.ok(&["pull", &env.image()]);
    let pod_file = pod_json(&env, "streams");
    let pod = env.ok(&["runp", &pod_file]).trim().to_owned();
    let sleeper = start_container(
        &env,
        &pod,
        &pod_file,
        "sleeper",
        serde_json::json!({"command": ["sleep", "1000"]}),
    );
    for transport in ["spdy", "websocket"] {
        // Output and exit codes.
        let out = env.run(
            &[
                "exec",
                "--transport",
                transport,
                &sleeper,
                "sh",
                "-c",
                "echo out; echo err >&2",
            ],
            None,
        );
        assert!(out.status.success(), "{transport}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n", "{transport}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n", "{transport}");
        // crictl exits 1 and names the code (it does not pass it on, whatever the runtime).
        let out = env.run(
            &[
                "exec",
                "--transport",
                transport,
                &sleeper,
                "sh",
                "-c",
                "exit 3",
            ],
            None,
        );
        assert!(
            !out.status.success()
                && String::from_utf8_lossy(&out.stderr)
                    .contains("command terminated with exit code 3"),
            "{transport}: {out:?}"
        );
        // stdin, ending with the client's.
        let out = env.run(
            &[
                "exec",
                "-i",
                "--transport",
                transport,
                &sleeper,
                "sh",
                "-c",
                "cat; echo end",
            ],
            Some(b"from stdin\n"),
        );
        assert!(out.status.success(), "{transport}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "from stdin\nend\n",
            "{transport}"
        );
        // A terminal: crictl needs one of its own for -t, which `script` gives it.
        let inner = format!(
            "{} --runtime-endpoint unix://{s} --image-endpoint unix://{s} exec -it --transport {transport} {sleeper} sh -c 'tty; echo done'",
            env.crictl.display(),
            s = env.d.socket.display()
        );
        let out = Command::new("timeout")
            .args([
                "-s",
                "KILL",
                "60",
                "script",
                "-q",
                "-e",
                "-c",
                &inner,
                "/dev/null",
            ])
            .env("CRI_CONFIG_FILE", env.dir.path().join("crictl.yaml"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{transport}: {text}");
        assert!(
            text.contains("/dev/pts/") && text.contains("done"),
            "{transport}: {text}"
        );
    }
    // Attach: a shell reading its stdin; the attach ends when crictl's stdin does (what
    // the shell prints after that is the log's, not the session's, as with containerd),
    // and the container keeps running.
    let shell = start_container(
        &env,
        &pod,
        &pod_file,
        "shell",
        serde_json::json!({"command": ["sh"], "stdin": true}),
    );
    for transport in ["spdy", "websocket"] {
        let out = env.run_holding_stdin(
            &["attach", "-i", "--transport", transport, &shell],
            Some(format!("echo attached-{transport}\n").as_bytes()),
            Duration::from_secs(1),
        );
        assert!(out.status.success(), "{transport}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("attached-{transport}")),
            "{transport}: {out:?}"
        );
        let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", &shell])).unwrap();
        assert_eq!(
            v["status"]["state"], "CONTAINER_RUNNING",
            "{transport}: {v}"
        );
    }
    env.ok(&["rmp", "-f", &pod]);
}

/// Runs `crictl port-forward` until its first "Forwarding from" line; the local port.
fn port_forward(env: &Env, transport: &str, pod: &str) -> (std::process::Child, u16) {
    let mut child = env
        .direct(&["port-forward", "--transport", transport, pod, "0:8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines
        .next()
        .expect("a Forwarding line")
        .expect("crictl's output");
    // crictl goes on writing ("Handling connection for 8080"): keep reading, or it dies
    // of SIGPIPE.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    // "Forwarding from 127.0.0.1:40123 -> 8080"
    let port = line
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{transport}: {line}"));
    (child, port)
}

fn http_get(port: u16) -> String {
    let mut s = match std::net::TcpStream::connect(("127.0.0.1", port)) {
        Ok(s) => s,
        Err(e) => return format!("connect: {e}"),
    };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut body = Vec::new();
    if let Err(e) = s.read_to_end(&mut body) {
        return format!("read error after {} bytes: {e}", body.len());
    }
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn crictl_port_forward_over_spdy_and_websocket() {
    let Some(env) = env().await else { return };
    env.ok(&["pull", &env.image()]);
    let pod_file = pod_json(&env, "web");
    let pod = env.ok(&["runp", &pod_file]).trim().to_owned();
    let web = start_container(
        &env,
        &pod,
        &pod_file,
        "httpd",
        serde_json::json!({"command": ["sh", "-c", "mkdir -p /www && echo hello-through-crictl > /www/index.html && exec httpd -f -p 8080 -h /www"]}),
    );
    wait_for("httpd", || {
        env.run(
            &[
                "exec",
                &web,
                "wget",
                "-q",
                "-O",
                "-",
                "http://127.0.0.1:8080/",
            ],
            None,
        )
        .status
        .success()
    });
    for transport in ["spdy", "websocket"] {
        let (mut child, port) = port_forward(&env, transport, &pod);
        // Several connections through one forward.
        let bodies: Vec<String> = (0..3).map(|_| http_get(port)).collect();
        let _ = child.kill();
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        let _ = child.wait();
        for body in &bodies {
            assert!(
                body.contains("hello-through-crictl"),
                "{transport}: {body}\ncrictl: {err}\nberthd: {}",
                env.d
                    .log()
                    .lines()
                    .filter(|l| l.contains("forward") || l.contains("stream"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        assert!(!err.contains("error"), "{transport}: {err}");
    }
    env.ok(&["rmp", "-f", &pod]);
}

/// crictl, like kubelet, names the endpoint `unix:///…`; berthd's config takes that
/// spelling too.
#[tokio::test(flavor = "multi_thread")]
async fn berthd_listens_where_an_endpoint_url_says() {
    let Some(env) = env().await else { return };
    let d = Daemon::start_with(berth_e2e::DaemonOptions {
        socket_as_url: true,
        ..Default::default()
    })
    .await;
    let url = format!("unix://{}", d.socket.display());
    let out = Command::new(&env.crictl)
        .args(["--runtime-endpoint", &url, "version"])
        .env("CRI_CONFIG_FILE", env.dir.path().join("crictl.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("berth"),
        "{out:?}"
    );
    assert!(
        std::fs::read_to_string(&d.config)
            .unwrap()
            .contains("unix://")
    );
}

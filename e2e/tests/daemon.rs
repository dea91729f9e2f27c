//! berthd as a daemon: Version/Status over the socket, config refusal, the root lock,
//! clean SIGTERM, stale sockets, and a CRI client that berth did not write.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use berth_e2e::daemon::berthd_binary;
use berth_e2e::{Daemon, DaemonOptions, require};
use berth_proto::cri;
use tonic::Code;

fn can_run() -> bool {
    require::root()
}

#[tokio::test(flavor = "multi_thread")]
async fn version_and_status_over_the_socket() {
    if !can_run() {
        return;
    }
    let d = Daemon::start().await;
    let mut c = d.cri().await;
    let v = c
        .runtime
        .version(cri::VersionRequest {
            version: "v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "berth");
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));

    let s = c
        .runtime
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let conds = s.status.unwrap().conditions;
    let runtime = conds.iter().find(|c| c.r#type == "RuntimeReady").unwrap();
    assert!(runtime.status, "RuntimeReady false: {runtime:?}");
    let net = conds.iter().find(|c| c.r#type == "NetworkReady").unwrap();
    assert!(net.status, "NetworkReady false: {net:?}");
    let engine: serde_json::Value = serde_json::from_str(&s.info["engine"]).unwrap();
    assert_eq!(engine["root"], d.root.to_str().unwrap());
    assert!(engine["stateDb"]["schemaVersion"].as_u64().unwrap() >= 1);
    let config: serde_json::Value = serde_json::from_str(&s.info["config"]).unwrap();
    assert_eq!(config["grpc"]["listen"], d.socket.to_str().unwrap());

    // Not verbose: no info.
    let s = c
        .runtime
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(s.info.is_empty());

    let rc = c
        .runtime
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rc.linux.unwrap().cgroup_driver,
        cri::CgroupDriver::Cgroupfs as i32
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_cidr_is_validated_and_survives_restart() {
    if !can_run() {
        return;
    }
    let mut d = Daemon::start().await;
    let mut c = d.cri().await;
    let cidr = format!("{}/24", berth_e2e::net::free_slash24([10, 213]));
    let update = |cidr: &str| cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig {
            network_config: Some(cri::NetworkConfig {
                pod_cidr: cidr.into(),
            }),
        }),
    };
    let err = c
        .runtime
        .update_runtime_config(update("10.88.0.1/16"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("10.88.0.1/16"), "{}", err.message());
    c.runtime
        .update_runtime_config(update(&cidr))
        .await
        .unwrap();
    assert!(d.restart().await.success());
    let mut c = d.cri().await;
    let s = c
        .runtime
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let engine: serde_json::Value = serde_json::from_str(&s.info["engine"]).unwrap();
    assert_eq!(engine["network"]["podCIDRs"][0], cidr.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_pod_cidr_the_network_is_not_ready_until_kubelet_sends_one() {
    if !can_run() {
        return;
    }
    let d = Daemon::start_with(DaemonOptions {
        network: "pod_cidr = \"\"".into(),
        ..DaemonOptions::default()
    })
    .await;
    let mut c = d.cri().await;
    let network_ready = |s: cri::StatusResponse| {
        s.status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.r#type == "NetworkReady")
            .unwrap()
    };
    let net = network_ready(
        c.runtime
            .status(cri::StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(!net.status);
    assert_eq!(net.reason, "NoPodCIDR", "{net:?}");
    assert!(net.message.contains("pod_cidr"), "{net:?}");
    let cidr = format!("{}/24", berth_e2e::net::free_slash24([10, 213]));
    c.runtime
        .update_runtime_config(cri::UpdateRuntimeConfigRequest {
            runtime_config: Some(cri::RuntimeConfig {
                network_config: Some(cri::NetworkConfig { pod_cidr: cidr }),
            }),
        })
        .await
        .unwrap();
    let net = network_ready(
        c.runtime
            .status(cri::StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(net.status, "{net:?}");
    assert!(berth_e2e::net::link_exists(&d.bridge));
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_what_they_need_say_so() {
    if !can_run() {
        return;
    }
    let d = Daemon::start().await;
    let mut c = d.cri().await;
    let err = c
        .runtime
        .checkpoint_container(cri::CheckpointContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("container_id"), "{}", err.message());
    // Streaming calls check their requests.
    let err = c
        .runtime
        .port_forward(cri::PortForwardRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = c
        .runtime
        .attach(cri::AttachRequest {
            container_id: "nope".into(),
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

/// The 1-based line of the daemon's config file that contains `needle`.
fn line_of(d: &Daemon, needle: &str) -> usize {
    let text = std::fs::read_to_string(&d.config).unwrap();
    1 + text.lines().position(|l| l.contains(needle)).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_config_is_refused_with_its_line() {
    if !can_run() {
        return;
    }
    let mut d = Daemon::spawn(&DaemonOptions {
        network: "pod_cidr = \"10.88.0.1/16\"".into(),
        ..DaemonOptions::default()
    });
    let status = d
        .wait_exit(Duration::from_secs(10))
        .expect("berthd kept running on a bad config");
    assert_eq!(status.code(), Some(64), "log:\n{}", d.log());
    let log = d.log();
    assert!(log.contains(d.config.to_str().unwrap()), "{log}");
    assert!(
        log.contains(&format!("line {}", line_of(&d, "pod_cidr"))),
        "{log}"
    );
    assert!(
        log.contains("pod_cidr") && log.contains("host bits"),
        "{log}"
    );
    assert!(
        !d.socket.exists(),
        "a socket was bound despite the bad config"
    );

    let mut d = Daemon::spawn(&DaemonOptions {
        extra_config: "\n[grpc2]\nlisten = \"/x\"\n".into(),
        ..DaemonOptions::default()
    });
    let status = d.wait_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(64));
    let line = format!("line {}", line_of(&d, "[grpc2]"));
    assert!(
        d.log().contains("grpc2") && d.log().contains(&line),
        "{}",
        d.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn second_daemon_on_the_same_root_is_refused() {
    if !can_run() {
        return;
    }
    let d = Daemon::start().await;
    let mut second = d.command(&[]).spawn().unwrap();
    let status = tokio::task::spawn_blocking(move || {
        for _ in 0..1000 {
            if let Some(s) = second.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = second.kill();
        None
    })
    .await
    .unwrap()
    .expect("second berthd kept running");
    assert_eq!(status.code(), Some(69));
    assert!(
        d.log().contains("another berthd already uses root"),
        "{}",
        d.log()
    );
    // The first still serves, on its socket.
    let mut c = d.cri().await;
    c.runtime
        .version(cri::VersionRequest::default())
        .await
        .unwrap();

    // Another root but the same socket: refused, the socket stays the first's.
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(berthd_binary())
        .arg("--config")
        .arg(&d.config)
        .arg("--root")
        .arg(other.path().join("root"))
        .arg("--state")
        .arg(other.path().join("run"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    c.runtime
        .version(cri::VersionRequest::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_cleanly_and_removes_the_socket() {
    if !can_run() {
        return;
    }
    let mut d = Daemon::start().await;
    let status = d.stop();
    assert!(status.success(), "exit {status}; log:\n{}", d.log());
    assert!(!d.socket.exists());
    assert!(d.log().contains("SIGTERM"));
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_socket_from_a_crash_is_replaced() {
    if !can_run() {
        return;
    }
    let mut d = Daemon::start().await;
    d.signal(nix::sys::signal::Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(5)).unwrap();
    assert!(d.socket.exists(), "kill -9 should leave the socket behind");
    d.restart().await;
    let mut c = d.cri().await;
    c.runtime
        .version(cri::VersionRequest::default())
        .await
        .unwrap();
}

#[test]
fn config_default_and_check_commands() {
    let out = Command::new(berthd_binary())
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/config.toml"
    ))
    .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), shipped);

    if !can_run() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let out = Command::new(berthd_binary())
        .arg("check")
        .arg("--root")
        .arg(t.path().join("root"))
        .arg("--state")
        .arg(t.path().join("run"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for name in [
        "overlayfs",
        "namespaces",
        "cgroups",
        "netlink",
        "nftables",
        "root dir",
        "state dir",
    ] {
        assert!(text.contains(name), "check output lacks {name}:\n{text}");
    }
    assert_eq!(out.status.success(), !text.contains("FAIL"), "{text}");

    // A root that cannot be created fails the check.
    let out = Command::new(berthd_binary())
        .args(["check", "--root", "/proc/berth-cannot-exist", "--state"])
        .arg(t.path().join("run"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL root dir"), "{text}");
    assert!(
        text.contains("fix: run berthd as root, and point `root`"),
        "{text}"
    );
    // The same as JSON, for automation: every check with its fix.
    let out = Command::new(berthd_binary())
        .args([
            "check",
            "--json",
            "--root",
            "/proc/berth-cannot-exist",
            "--state",
        ])
        .arg(t.path().join("run"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let root = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "root dir")
        .unwrap();
    assert_eq!(
        (root["ok"].clone(), root["required"].clone()),
        (false.into(), true.into())
    );
    assert!(
        root["fix"]
            .as_str()
            .unwrap()
            .contains("writable local directory")
    );
    assert!(
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["ok"] == true || c["fix"].is_string()),
        "{v}"
    );
}

/// The workspace's Python venv (made by scripts/deps.sh), or $BERTH_PYTHON.
fn python() -> Option<PathBuf> {
    let p = std::env::var_os("BERTH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python3"))
        });
    let ok = Command::new(&p)
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .is_ok_and(|o| o.status.success());
    require::prerequisite(
        "a Python with grpcio and grpcio-tools (.venv, made by scripts/deps.sh)",
        ok,
    )
    .then_some(p)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_cri_client_generated_from_upstream_proto_works() {
    if !can_run() {
        return;
    }
    let Some(py) = python() else { return };
    let d = Daemon::start().await;
    let socket = d.socket.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/python/cri_client.py"))
            .arg(socket)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"]["runtime_name"], "berth");
    assert_eq!(v["version"]["runtime_api_version"], "v1");
    assert_eq!(v["cgroup_driver"], "CGROUPFS");
    assert_eq!(
        v["port_forward"], "NOT_FOUND",
        "PortForward to an unknown pod"
    );
    assert_eq!(v["info_keys"], serde_json::json!(["config", "engine"]));
    let conds = v["conditions"].as_array().unwrap();
    assert!(
        conds
            .iter()
            .any(|c| c["type"] == "RuntimeReady" && c["status"] == true)
    );
}

/// gRPC clients over a unix socket send odd `:authority` values (grpc-java and older
/// grpc-go: the socket's path; grpc-core: it percent-encoded); containerd and CRI-O serve
/// them, and so must berth (third_party/README.md). A hand-written HTTP/2 request for each.
#[tokio::test(flavor = "multi_thread")]
async fn requests_with_a_socket_path_as_authority_are_served() {
    if !can_run() {
        return;
    }
    let Some(py) = python() else { return };
    let d = Daemon::start().await;
    let socket = d.socket.display().to_string();
    let encoded = socket.trim_start_matches('/').replace('/', "%2F");
    for authority in [socket.clone(), encoded, String::new(), "localhost".into()] {
        let (py, socket, a) = (py.clone(), socket.clone(), authority.clone());
        let out = tokio::task::spawn_blocking(move || {
            Command::new(py)
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/python/raw_authority.py"
                ))
                .args([&socket, &a])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{authority:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["reset"], serde_json::Value::Null, "{authority:?}: {v}");
        assert_eq!(v["status"], "200", "{authority:?}: {v}");
        assert_eq!(v["grpc_status"], "0", "{authority:?}: {v}");
        assert!(v["body_len"].as_u64().unwrap() > 5, "{authority:?}: {v}");
    }
}

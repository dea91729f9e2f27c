//! What an attacker found (issue 17), each closed with a test that fails without its fix:
//! container logs that escape their directory, hostPath volumes of berth's own state,
//! unbounded metadata and nonsense resources, ExecSync limits, hostile registries (huge
//! manifests, absurd layer counts), a full disk, and slow clients flooding the HTTP ports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use berth_e2e::env::BusyboxEnv;
use berth_e2e::images::catalog;
use berth_e2e::suite::{fd_count, rss_kib};
use berth_e2e::{Daemon, DaemonOptions, require};
use berth_proto::cri;
use tonic::Code;

fn assert_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, needle: &str) {
    match r {
        Ok(v) => panic!("expected {code:?} mentioning {needle:?}, got Ok({v:?})"),
        Err(s) => {
            assert_eq!(s.code(), code, "{}", s.message());
            assert!(
                s.message().contains(needle),
                "{:?} does not mention {needle:?}",
                s.message()
            );
        }
    }
}

#[tokio::test]
async fn container_logs_never_leave_their_directory() {
    let Some(mut env) = BusyboxEnv::start().await else {
        return;
    };
    let outside = tempfile::tempdir().unwrap();
    // A relative log directory is refused before anything is made.
    let mut rel = env.pod_config("hostile", "rel");
    rel.log_directory = "relative/logs".into();
    assert_code(
        env.c.try_run_pod(rel).await,
        Code::InvalidArgument,
        "log_directory",
    );
    let p = env.c.run_pod(env.pod_config("hostile", "logs")).await;
    let logdir = env.logs.path().join("logs");
    for bad in ["../../escape.log", "/tmp/berth-escape.log", "a/../../x.log"] {
        let mut c = env.container_config("esc", &["true"]);
        c.log_path = bad.into();
        assert_code(env.c.create(&p, c).await, Code::InvalidArgument, "log_path");
    }
    assert!(
        !env.logs
            .path()
            .parent()
            .unwrap()
            .join("escape.log")
            .exists()
    );
    // A symlink planted in the pod's log directory (a container with it as a hostPath
    // volume could) is not followed: the container does not start, nothing is written.
    std::fs::create_dir_all(&logdir).unwrap();
    let victim = outside.path().join("victim");
    std::os::unix::fs::symlink(&victim, logdir.join("b.log")).unwrap();
    let id = env
        .c
        .create(&p, env.container_config("b", &["echo", "owned"]))
        .await
        .unwrap();
    let r = env.c.start(&id).await;
    assert!(
        r.is_err(),
        "a container whose log is a symlink must not start"
    );
    assert!(!victim.exists(), "the symlink's target was created");
    // ReopenContainerLog on a symlink swapped in after rotation fails and creates nothing.
    let id = env
        .c
        .run_container(
            &p,
            env.container_config(
                "r",
                &["sh", "-c", "while true; do echo tick; sleep 0.1; done"],
            ),
        )
        .await;
    let log = logdir.join("r.log");
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::rename(&log, logdir.join("r.log.1")).unwrap();
    let victim2 = outside.path().join("victim2");
    std::os::unix::fs::symlink(&victim2, &log).unwrap();
    let r = env
        .c
        .runtime
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await;
    assert!(r.is_err(), "reopen through a symlink must fail");
    assert!(!victim2.exists(), "reopen created the symlink's target");
    env.c.stop_and_remove_pod(&p).await;
}

#[tokio::test]
async fn hostpath_volumes_of_berths_own_state_are_refused() {
    let Some(mut env) = BusyboxEnv::start().await else {
        return;
    };
    let p = env.c.run_pod(env.pod_config("hostile", "vols")).await;
    let root = env.d.root.display().to_string();
    let state = env.d.state.display().to_string();
    let socket = env.d.socket.display().to_string();
    let cases = [
        (root.as_str(), true),
        (&format!("{root}/state.redb"), true),
        (state.as_str(), false),
        (socket.as_str(), true),
        ("/", false),
    ];
    for (i, (host, readonly)) in cases.iter().enumerate() {
        let mut c = env.container_config(&format!("v{i}"), &["true"]);
        c.mounts = vec![cri::Mount {
            container_path: "/host".into(),
            host_path: host.to_string(),
            readonly: *readonly,
            ..Default::default()
        }];
        assert_code(
            env.c.create(&p, c).await,
            Code::InvalidArgument,
            "protect_runtime_paths",
        );
    }
    // The node's root read-only (node exporters do this) is fine.
    let mut c = env.container_config("ro-root", &["true"]);
    c.mounts = vec![cri::Mount {
        container_path: "/host".into(),
        host_path: "/".into(),
        readonly: true,
        ..Default::default()
    }];
    env.c.create(&p, c).await.unwrap();
    env.c.stop_and_remove_pod(&p).await;
}

#[tokio::test]
async fn metadata_text_and_resources_out_of_range_are_refused() {
    let Some(mut env) = BusyboxEnv::start().await else {
        return;
    };
    // 4 MB of annotations on one pod.
    let mut big = env.pod_config("hostile", "big");
    big.annotations = HashMap::from([("a".to_string(), "x".repeat(4 << 20))]);
    assert_code(
        env.c.try_run_pod(big).await,
        Code::InvalidArgument,
        "annotations",
    );
    // Text that would add lines to the pod's files.
    let mut nl = env.pod_config("hostile", "nl");
    nl.hostname = "web\nevil".into();
    assert_code(
        env.c.try_run_pod(nl).await,
        Code::InvalidArgument,
        "hostname",
    );
    let mut long = env.pod_config("hostile", "long");
    long.hostname = "h".repeat(65536);
    assert_code(
        env.c.try_run_pod(long).await,
        Code::InvalidArgument,
        "hostname",
    );
    let mut dns = env.pod_config("hostile", "dns");
    dns.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.0.0.1".into()],
        searches: vec![],
        options: vec!["ndots:5\nnameserver 6.6.6.6".into()],
    });
    assert_code(
        env.c.try_run_pod(dns).await,
        Code::InvalidArgument,
        "dns_config.options",
    );
    let mut dns = env.pod_config("hostile", "dns2");
    dns.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.0.0.1\nsearch evil".into()],
        ..Default::default()
    });
    assert_code(
        env.c.try_run_pod(dns).await,
        Code::InvalidArgument,
        "dns_config.servers",
    );
    // Nothing of the refused pods exists.
    let pods = env
        .c
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
    // Negative resources are not "unlimited".
    let p = env.c.run_pod(env.pod_config("hostile", "res")).await;
    for (field, r) in [
        (
            "memory_limit_in_bytes",
            cri::LinuxContainerResources {
                memory_limit_in_bytes: -5,
                ..Default::default()
            },
        ),
        (
            "cpu_quota",
            cri::LinuxContainerResources {
                cpu_quota: -20_000,
                ..Default::default()
            },
        ),
    ] {
        let mut c = env.container_config("neg", &["true"]);
        c.linux = Some(cri::LinuxContainerConfig {
            resources: Some(r),
            ..Default::default()
        });
        assert_code(env.c.create(&p, c).await, Code::InvalidArgument, field);
    }
    env.c.stop_and_remove_pod(&p).await;
}

#[tokio::test]
async fn exec_sync_output_is_capped_and_timeouts_are_deadline_exceeded() {
    let Some(mut env) = BusyboxEnv::start().await else {
        return;
    };
    let p = env.c.run_pod(env.pod_config("hostile", "exec")).await;
    let id = env
        .c
        .run_container(&p, env.container_config("main", &["sleep", "1000"]))
        .await;
    // 8 MiB on stdout and 3 MiB on stderr: both cut off, the call succeeds.
    let r = env
        .c
        .exec(
            &id,
            &[
                "sh",
                "-c",
                "head -c 8388608 /dev/zero; head -c 3145728 /dev/zero >&2; exit 3",
            ],
            30,
        )
        .await
        .expect("ExecSync with 11 MiB of output");
    assert_eq!(r.exit_code, 3);
    let limit = 2 * 1024 * 1024 - 16 * 1024;
    assert_eq!(r.stdout.len(), limit);
    assert_eq!(r.stderr.len(), limit);
    // An endless writer past its timeout.
    let t = Instant::now();
    assert_code(
        env.c.exec(&id, &["yes"], 2).await,
        Code::DeadlineExceeded,
        "timed out",
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // A command name of 100 KiB, looked up in PATH and as a path: a clear error (its text
    // cut short), not a monitor stuck writing it to a pipe its waiting parent cannot drain.
    for (name, why) in [
        ("x".repeat(100 * 1024), "executable file not found in $PATH"),
        (format!("/{}", "x".repeat(100 * 1024)), "File name too long"),
    ] {
        let r = env.c.exec(&id, &[name.as_str()], 5).await;
        let Err(status) = r else {
            panic!("exec of a {} byte name: {r:?}", name.len())
        };
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{}",
            status.message().chars().take(80).collect::<String>()
        );
        assert!(
            status.message().starts_with("exec "),
            "{}",
            status.message().chars().take(80).collect::<String>()
        );
        assert!(status.message().len() < 8192, "{}", status.message().len());
        // The name is shortened in the message, so that the reason still fits in it.
        assert!(
            status.message().contains("(102400 bytes)")
                || status.message().contains("(102401 bytes)"),
            "{}",
            status.message().chars().take(400).collect::<String>()
        );
        assert!(status.message().contains(why), "{}", status.message());
    }
    // The container is still there to exec in.
    let r = env.c.exec(&id, &["echo", "ok"], 5).await.unwrap();
    assert_eq!(r.stdout, b"ok\n");
    // Its cgroup made again beneath it (its processes moved out, the directory removed and
    // made anew, the processes moved back): the monitor's kept files of the old directory
    // give way to the new one at once.
    if let Some(dir) = container_cgroup(&env.d.cgroup_parent(), &id) {
        let root = dir
            .ancestors()
            .find(|a| a.parent().is_some_and(|p| p == Path::new("/sys/fs/cgroup")))
            .map(Path::to_path_buf)
            .filter(|r| r.join("cgroup.procs").exists())
            .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"));
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        let move_to = |to: &Path| {
            for pid in procs.split_whitespace() {
                std::fs::write(to.join("cgroup.procs"), pid).unwrap();
            }
        };
        move_to(&root);
        std::fs::remove_dir(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
        move_to(&dir);
        for _ in 0..2 {
            let r = env.c.exec(&id, &["echo", "ok"], 5).await;
            assert!(
                r.as_ref().is_ok_and(|r| r.stdout == b"ok\n"),
                "after the cgroup was made again: {r:?}"
            );
        }
    }
    env.c.stop_and_remove_pod(&p).await;
}

/// Container `id`'s own cgroup directory in the pids v1 hierarchy, else in the cgroup2 one
/// (None: neither is there).
fn container_cgroup(parent: &str, id: &str) -> Option<PathBuf> {
    fn find(dir: &Path, id: &str, depth: usize) -> Option<PathBuf> {
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(id))
            {
                return Some(p);
            }
            if depth > 0
                && let Some(found) = find(&p, id, depth - 1)
            {
                return Some(found);
            }
        }
        None
    }
    [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ]
    .iter()
    .map(|m| Path::new(m).join(parent))
    .filter(|d| d.is_dir())
    .find_map(|d| find(&d, id, 3))
}

/// A registry that answers /v2/ and, per repository, one hostile manifest.
struct HostileRegistry {
    host: String,
    stop: Arc<AtomicBool>,
}

impl HostileRegistry {
    fn start() -> HostileRegistry {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = l.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                std::thread::spawn(move || serve_hostile(conn));
            }
        });
        HostileRegistry { host, stop }
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.host);
    }
}

fn serve_hostile(mut conn: TcpStream) {
    let Ok(req) = berth_e2e::http::read_request(&conn) else {
        return;
    };
    let digest = |n: u8| format!("sha256:{}", hex::encode([n; 32]));
    let ok = |conn: &mut TcpStream, ctype: &str, body: &[u8]| {
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(body);
    };
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let chunk = vec![b' '; 1 << 20];
    match req.target.as_str() {
        "/v2/" => ok(&mut conn, "application/json", b"{}"),
        // 100 MB announced: refused on the header, before the body.
        p if p.starts_with("/v2/announced/manifests/") => {
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: {oci}\r\nContent-Length: 104857600\r\nConnection: close\r\n\r\n"
            );
            for _ in 0..100 {
                if conn.write_all(&chunk).is_err() {
                    return;
                }
            }
        }
        // 100 MB without a length: cut off at the limit.
        p if p.starts_with("/v2/unannounced/manifests/") => {
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: {oci}\r\nConnection: close\r\n\r\n"
            );
            for _ in 0..100 {
                if conn.write_all(&chunk).is_err() {
                    return;
                }
            }
        }
        // 10,000 layers.
        p if p.starts_with("/v2/layers/manifests/") => {
            let layer = format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":32}}"#,
                digest(2)
            );
            let body = format!(
                r#"{{"schemaVersion":2,"mediaType":"{oci}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{}]}}"#,
                digest(1),
                vec![layer; 10_000].join(",")
            );
            ok(&mut conn, oci, body.as_bytes());
        }
        _ => {
            let _ = write!(
                conn,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    }
    let _ = conn.flush();
    let mut sink = [0u8; 1024];
    let _ = conn.read(&mut sink);
}

#[tokio::test]
async fn a_hostile_registry_cannot_make_berthd_hold_huge_manifests_or_absurd_images() {
    if !require::root() {
        return;
    }
    let reg = HostileRegistry::start();
    let d = Daemon::start().await;
    let mut c = d.cri().await;
    let pid = d.pid().unwrap().as_raw() as u32;
    let before = rss_kib(pid);
    for repo in ["announced", "unannounced"] {
        for _ in 0..3 {
            let e = c
                .pull(&format!("{}/{repo}:latest", reg.host), None)
                .await
                .unwrap_err();
            assert!(
                e.message().contains("more than the limit"),
                "{repo}: {}",
                e.message()
            );
        }
    }
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(
        grown < 40 * 1024,
        "berthd grew by {grown} KiB pulling 100 MB manifests"
    );
    let e = c
        .pull(&format!("{}/layers:latest", reg.host), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("at most 128"), "{}", e.message());
    assert!(
        !d.root.join("snapshots/sha256").exists()
            || std::fs::read_dir(d.root.join("snapshots/sha256"))
                .unwrap()
                .next()
                .is_none(),
        "nothing is unpacked for a refused image"
    );
}

#[tokio::test]
async fn a_full_disk_is_survived_without_a_restart() {
    if !(require::root() && catalog::available()) {
        return;
    }
    let d = Daemon::start_with(DaemonOptions {
        root_tmpfs: Some("48m".into()),
        ..Default::default()
    })
    .await;
    let mut c = d.cri().await;
    let logs = tempfile::tempdir().unwrap();
    let cfg = |name: &str| cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: name.into(),
            namespace: "disk".into(),
            attempt: 0,
        }),
        log_directory: logs.path().join(name).display().to_string(),
        ..Default::default()
    };
    let first = c.run_pod(cfg("before")).await;
    // Fill berth's root.
    let filler = d.root.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![7u8; 1 << 20];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let mut refused = 0;
    for i in 0..3 {
        if c.try_run_pod(cfg(&format!("full-{i}"))).await.is_err() {
            refused += 1;
        }
    }
    assert!(refused > 0, "a pod was recorded on a full disk?");
    // Reads keep working, and Status says what is wrong.
    let pods = c
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox on a full disk")
        .into_inner()
        .items;
    assert!(pods.iter().any(|p| p.id == first));
    let conditions = c.conditions().await;
    let ready = conditions
        .iter()
        .find(|c| c.r#type == "RuntimeReady")
        .unwrap();
    assert!(!ready.status, "{ready:?}");
    assert!(ready.message.contains("state db"), "{ready:?}");
    // Space back: berth works again without a restart.
    std::fs::remove_file(&filler).unwrap();
    let again = c
        .try_run_pod(cfg("after"))
        .await
        .expect("RunPodSandbox after space is back");
    let conditions = c.conditions().await;
    assert!(conditions.iter().all(|c| c.status), "{conditions:?}");
    for id in [first, again] {
        c.stop_and_remove_pod(&id).await;
    }
    assert!(d.log().contains("state db reopened"), "{}", d.log());
}

/// Room for this test's own thousands of sockets.
fn raise_own_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

#[tokio::test]
async fn slow_clients_cannot_exhaust_descriptors_or_starve_the_cri_socket() {
    if !require::root() {
        return;
    }
    raise_own_nofile();
    let d = Daemon::start().await;
    let mut c = d.cri().await;
    let pid = d.pid().unwrap().as_raw() as u32;
    let metrics = d.metrics_addr();
    let base = fd_count(pid);
    let mut held = Vec::new();
    for _ in 0..3000 {
        if let Ok(mut s) = TcpStream::connect(&metrics) {
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
            held.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = fd_count(pid);
    assert!(
        during < base + 200,
        "berthd holds {during} descriptors ({base} before the flood)"
    );
    // The CRI socket answers meanwhile.
    let t = Instant::now();
    c.runtime
        .version(cri::VersionRequest::default())
        .await
        .expect("Version during the flood");
    assert!(t.elapsed() < Duration::from_secs(2));
    // The header deadline frees the slots without the clients' help.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let after = fd_count(pid);
    assert!(after < base + 20, "{after} descriptors after the deadline");
    drop(held);
    let body = ureq::get(&format!("http://{metrics}/metrics"))
        .call()
        .expect("scrape after the flood")
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(body.contains("berth_"));
    assert!(d.log().contains("connection limit reached"));
}

/// berthd's RSS after the attacks above, once everything is closed: what it holds must
/// come back near its start (issue 17: 15 → 488 MB and never returned).
#[tokio::test]
async fn memory_is_returned_after_floods_big_outputs_and_hostile_registries() {
    let Some(mut env) = BusyboxEnv::start().await else {
        return;
    };
    raise_own_nofile();
    let pid = env.d.pid().unwrap().as_raw() as u32;
    let p = env.c.run_pod(env.pod_config("hostile", "mem")).await;
    let id = env
        .c
        .run_container(&p, env.container_config("main", &["sleep", "1000"]))
        .await;
    env.c.exec(&id, &["true"], 5).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = rss_kib(pid);
    let reg = HostileRegistry::start();
    let metrics = env.d.metrics_addr();
    let mut peak = start;
    for round in 0..5 {
        // A flood of half-sent requests, then the clients go away.
        let mut held = Vec::new();
        for _ in 0..2000 {
            if let Ok(mut s) = TcpStream::connect(&metrics) {
                let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
                held.push(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(held);
        // Big ExecSync answers, several at once.
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let mut c = env.d.cri().await;
            let id = id.clone();
            tasks.push(tokio::spawn(async move {
                c.exec(&id, &["sh", "-c", "head -c 8388608 /dev/zero"], 30)
                    .await
                    .map(|r| r.stdout.len())
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        // Hostile manifests, six at once.
        let mut pulls = Vec::new();
        for _ in 0..6 {
            let mut c = env.d.cri().await;
            let r = format!("{}/unannounced:latest", reg.host);
            pulls.push(tokio::spawn(async move { c.pull(&r, None).await.is_err() }));
        }
        for t in pulls {
            assert!(t.await.unwrap());
        }
        peak = peak.max(rss_kib(pid));
        eprintln!("round {round}: rss {} KiB", rss_kib(pid));
    }
    // berthd trims its heap every 10 s.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let end = rss_kib(pid);
    eprintln!("berthd RSS: start {start} KiB, peak {peak} KiB, end {end} KiB");
    assert!(
        end < start + 16 * 1024,
        "berthd kept {} KiB after the attacks (start {start} KiB, peak {peak} KiB)",
        end - start
    );
    env.c.stop_and_remove_pod(&p).await;
}

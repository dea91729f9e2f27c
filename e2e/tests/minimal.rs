//! What clients that send minimal configs get (crictl's and critest's shapes, not
//! kubelet's): no hostname, no namespace options, no security context; and the calls such
//! clients make that kubelet rarely does (idempotent stops, mixed pid modes, volumes that
//! propagate both ways, recursive read-only volumes, supplemental group policies).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use berth_e2e::images::catalog;
use berth_e2e::{Cri, Daemon, Registry, require};
use berth_proto::cri;
use tonic::Code;

struct Env {
    d: Daemon,
    reg: Registry,
    c: Cri,
    logs: tempfile::TempDir,
}

async fn env() -> Option<Env> {
    if !(require::root() && catalog::available()) {
        return None;
    }
    let reg = Registry::start()?;
    reg.push_image("busybox", "latest", &catalog::busybox().build());
    reg.push_image("by-name", "latest", &catalog::user_by_name().build());
    let d = Daemon::start().await;
    let mut c = d.cri().await;
    for i in ["busybox", "by-name"] {
        c.pull(&format!("{}/{i}", reg.host()), None).await.unwrap();
    }
    let logs = tempfile::tempdir().unwrap();
    Some(Env { d, reg, c, logs })
}

/// Metadata and a log directory, nothing else (crictl's `runp` with a small JSON file).
fn minimal_pod(env: &Env, name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: env.logs.path().join(name).display().to_string(),
        ..Default::default()
    }
}

/// An image and a command, nothing else.
fn minimal_container(env: &Env, image: &str, name: &str, cmd: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(berth_e2e::cri::spec(&format!("{}/{image}", env.reg.host()))),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

fn with_security(
    mut cfg: cri::ContainerConfig,
    sc: cri::LinuxContainerSecurityContext,
) -> cri::ContainerConfig {
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(sc),
        ..Default::default()
    });
    cfg
}

fn pid_mode(mode: cri::NamespaceMode) -> cri::LinuxContainerSecurityContext {
    cri::LinuxContainerSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            pid: mode as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The CRI log's lines (their text only).
fn log_lines(env: &Env, pod: &str, name: &str) -> Vec<String> {
    std::fs::read_to_string(env.logs.path().join(pod).join(format!("{name}.log")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_owned))
        .collect()
}

/// Runs busybox `sh -c script` as container "probe" in `pod` (named `pod_name`), waits for
/// it to exit and returns its log lines.
async fn probe_output(env: &mut Env, pod: &str, pod_name: &str, script: &str) -> Vec<String> {
    let cfg = minimal_container(env, "busybox", "probe", &["sh", "-c", script]);
    let probe = env.c.run_container(pod, cfg).await;
    env.c.wait_exited(&probe).await;
    log_lines(env, pod_name, "probe")
}

fn run(args: &[&str]) {
    let st = std::process::Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap();
    assert!(st.success(), "{args:?}");
}

fn node_hostname() -> String {
    nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_minimal_pod_has_the_nodes_hostname_and_one_pid_namespace() {
    let Some(mut env) = env().await else { return };
    let pod = env.c.run_pod(minimal_pod(&env, "plain")).await;
    let sleeper = env
        .c
        .run_container(
            &pod,
            minimal_container(&env, "busybox", "sleeper", &["sleep", "1000"]),
        )
        .await;
    let out = probe_output(
        &mut env,
        &pod,
        "plain",
        "hostname; cat /etc/hostname; echo \"HOSTNAME=$HOSTNAME\"; echo \"self=$$\"; ps -o pid,args",
    )
    .await;
    let node = node_hostname();
    assert_eq!(out[0], node, "{out:?}");
    assert_eq!(out[1], node, "{out:?}");
    assert_eq!(out[2], format!("HOSTNAME={node}"), "{out:?}");
    // Without namespace options both containers are in the pod's pid namespace (the CRI
    // default, mode POD): they see each other, and neither is its pid 1.
    assert_ne!(out[3], "self=1", "{out:?}");
    assert!(
        out.iter().any(|l| l.contains("sleep 1000")),
        "the other container is not visible: {out:?}"
    );
    // Pid 1 is the pod's init, under a name of its own (no path of the node's).
    assert!(
        out.iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1", "berth-pod-init"]),
        "{out:?}"
    );
    // So `sleep` is not a pid 1 that ignores SIGTERM: StopContainer's SIGTERM ends it
    // (exit 143), no SIGKILL after the grace period (137).
    env.c
        .runtime
        .stop_container(cri::StopContainerRequest {
            container_id: sleeper.clone(),
            timeout: 60,
        })
        .await
        .unwrap();
    let s = env.c.status(&sleeper).await;
    assert_eq!(s.exit_code, 143, "{s:?}");
    env.c.stop_and_remove_pod(&pod).await;
}

/// The processes on this host that run `program` (the file /proc/<pid>/exe leads to: the
/// pod's init runs it from a mount of its own namespace, whose path may not be the host's).
fn processes_running(program: &Path) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let want = std::fs::metadata(program)
        .map(|m| (m.dev(), m.ino()))
        .unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/exe")).is_ok_and(|m| (m.dev(), m.ino()) == want)
        })
        .collect()
}

/// A line of /proc/<pid>/status, e.g. `VmRSS`.
fn status_field(pid: i32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| Some(l.strip_prefix(name)?.strip_prefix(':')?.trim().to_owned()))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pods_init_is_the_small_program_and_reaps_orphans() {
    let Some(mut env) = env().await else { return };
    let pod = env.c.run_pod(minimal_pod(&env, "reaper")).await;
    // The subshell exits at once; the sleep it started is reparented to the pod's init and
    // exits 0.2 s later, when only the init can reap it.
    env.c
        .run_container(
            &pod,
            minimal_container(
                &env,
                "busybox",
                "parent",
                &["sh", "-c", "(sleep 0.2 &); sleep 1000"],
            ),
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let out = probe_output(
        &mut env,
        &pod,
        "reaper",
        "for f in /proc/[0-9]*/stat; do cat $f; echo; done",
    )
    .await;
    // `pid (comm) state ppid ...`: pid 1 is the init, and nothing is a zombie.
    let states: Vec<(&str, &str)> = out
        .iter()
        .filter_map(|l| {
            let (head, rest) = l.rsplit_once(") ")?;
            Some((head, rest.split_whitespace().next()?))
        })
        .collect();
    assert!(
        states.iter().any(|(h, _)| *h == "1 (berth-pod-init"),
        "{out:?}"
    );
    assert!(!states.iter().any(|(_, s)| *s == "Z"), "a zombie: {out:?}");
    // On the host it runs the program berthd wrote into its run directory (not berthd
    // re-executed), with every signal at its default, in a few pages of memory.
    let inits = processes_running(&env.d.state.join("berth-pod-init"));
    assert_eq!(inits.len(), 1, "{inits:?}");
    let init = inits[0];
    assert_eq!(status_field(init, "SigIgn"), "0000000000000000");
    let rss_kb: u64 = status_field(init, "VmRSS")
        .trim_end_matches(" kB")
        .parse()
        .unwrap();
    assert!(rss_kb <= 64, "the pod's init holds {rss_kb} kB");
    env.c.stop_and_remove_pod(&pod).await;
    // Its monitor gone, so is the init.
    assert!(
        !Path::new(&format!("/proc/{init}")).exists()
            || status_field(init, "State").starts_with('Z'),
        "the init outlived its pod"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pid_modes_mix_in_one_pod_as_containerd_allows() {
    let Some(mut env) = env().await else { return };
    // The pod asks for per-container pid namespaces, as kubelet does by default.
    let mut config = minimal_pod(&env, "mixed");
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Container as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = env.c.run_pod(config).await;
    let cmd = ["sh", "-c", "echo \"self=$$\"; sleep 1000"];
    let own = env
        .c
        .run_container(
            &pod,
            with_security(
                minimal_container(&env, "busybox", "own", &cmd),
                pid_mode(cri::NamespaceMode::Container),
            ),
        )
        .await;
    let a = env
        .c
        .run_container(&pod, minimal_container(&env, "busybox", "pod-a", &cmd))
        .await;
    let b = env
        .c
        .run_container(
            &pod,
            with_security(
                minimal_container(&env, "busybox", "pod-b", &["ps", "-o", "args"]),
                pid_mode(cri::NamespaceMode::Pod),
            ),
        )
        .await;
    env.c.wait_exited(&b).await;
    let ps = log_lines(&env, "mixed", "pod-b");
    // pod-a and pod-b share the pod's namespace; `own` has one of its own.
    assert!(ps.iter().any(|l| l.contains("sleep 1000")), "{ps:?}");
    assert_eq!(
        ps.iter().filter(|l| l.contains("sleep 1000")).count(),
        1,
        "{ps:?}"
    );
    for _ in 0..100 {
        if !log_lines(&env, "mixed", "own").is_empty()
            && !log_lines(&env, "mixed", "pod-a").is_empty()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(log_lines(&env, "mixed", "own"), vec!["self=1"]);
    assert_ne!(log_lines(&env, "mixed", "pod-a"), vec!["self=1"]);
    for id in [&own, &a] {
        assert_eq!(
            env.c.status(id).await.state,
            cri::ContainerState::ContainerRunning as i32
        );
    }
    env.c.stop_and_remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_hostnames_dns_and_groups_are_refused_before_anything_is_made() {
    let Some(mut env) = env().await else { return };
    let long = "h".repeat(65);
    for (hostname, needle) in [
        (long.as_str(), "config.hostname"),
        ("two\nlines", "config.hostname"),
        ("-dash", "config.hostname"),
        ("a b", "config.hostname"),
    ] {
        let mut config = minimal_pod(&env, "bad");
        config.hostname = hostname.into();
        let e = env.c.try_run_pod(config).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{hostname:?}: {e}");
        assert!(e.message().contains(needle), "{e}");
    }
    let mut config = minimal_pod(&env, "bad");
    config.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.0.0.10\nnameserver 6.6.6.6".into()],
        ..Default::default()
    });
    let e = env.c.try_run_pod(config).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("dns_config.servers"), "{e}");
    // The longest hostname the kernel takes is fine.
    let mut config = minimal_pod(&env, "max");
    config.hostname = "h".repeat(64);
    let pod = env.c.run_pod(config).await;
    // A group without a user.
    let e = env
        .c
        .create(
            &pod,
            with_security(
                minimal_container(&env, "busybox", "g", &["true"]),
                cri::LinuxContainerSecurityContext {
                    run_as_group: Some(cri::Int64Value { value: 1000 }),
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("run_as_group"), "{e}");
    env.c.stop_and_remove_pod(&pod).await;
    // Nothing of the refused pods exists (the fixture checks the host when it stops).
    let pods = env
        .c
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_and_removing_unknown_containers_succeeds() {
    let Some(mut env) = env().await else { return };
    let gone = "0".repeat(64);
    env.c
        .runtime
        .stop_container(cri::StopContainerRequest {
            container_id: gone.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    env.c
        .runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: gone.clone(),
        })
        .await
        .unwrap();
    // Status of it is still NotFound: only the calls kubelet retries are idempotent.
    let e = env
        .c
        .runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: gone,
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn supplemental_groups_merge_or_strict_and_status_says_which() {
    let Some(mut env) = env().await else { return };
    let status = env
        .c
        .runtime
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(
        status
            .features
            .as_ref()
            .is_some_and(|f| f.supplemental_groups_policy),
        "{status:?}"
    );
    let pod = env.c.run_pod(minimal_pod(&env, "groups")).await;
    // In the image, user `berth` (1000) is also in group `extra` (2000).
    for (name, policy, want) in [
        (
            "merge",
            cri::SupplementalGroupsPolicy::Merge,
            vec![1000, 1234, 2000],
        ),
        (
            "strict",
            cri::SupplementalGroupsPolicy::Strict,
            vec![1000, 1234],
        ),
    ] {
        let id = env
            .c
            .run_container(
                &pod,
                with_security(
                    minimal_container(&env, "by-name", name, &["id", "-G"]),
                    cri::LinuxContainerSecurityContext {
                        run_as_user: Some(cri::Int64Value { value: 1000 }),
                        supplemental_groups: vec![1234],
                        supplemental_groups_policy: policy as i32,
                        ..Default::default()
                    },
                ),
            )
            .await;
        let s = env.c.wait_exited(&id).await;
        let user = s.user.and_then(|u| u.linux).unwrap();
        assert_eq!((user.uid, user.gid), (1000, 1000), "{name}");
        assert_eq!(user.supplemental_groups, want, "{name}");
        let seen: Vec<i64> = log_lines(&env, "groups", name)[0]
            .split_whitespace()
            .map(|g| g.parse().unwrap())
            .collect();
        let mut seen_sorted = seen.clone();
        seen_sorted.sort();
        assert_eq!(seen_sorted, want, "{name}: the process has {seen:?}");
    }
    env.c.stop_and_remove_pod(&pod).await;
}

/// A host directory that is its own shared mount point, unmounted (with what is below it)
/// when dropped.
struct SharedDir {
    dir: tempfile::TempDir,
}

impl SharedDir {
    fn new() -> SharedDir {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().to_str().unwrap().to_owned();
        run(&["mount", "--bind", &p, &p]);
        run(&["mount", "--make-rshared", &p]);
        SharedDir { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-R", "-l"])
            .arg(self.dir.path())
            .status();
    }
}

fn mounted_on_host(p: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(p.to_str().unwrap()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bidirectional_volume_shows_the_containers_mounts_on_the_host() {
    let Some(mut env) = env().await else { return };
    let shared = SharedDir::new();
    std::fs::create_dir(shared.path().join("inner")).unwrap();
    let mut config = minimal_pod(&env, "bidi");
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = env.c.run_pod(config).await;
    let mut cfg = with_security(
        minimal_container(&env, "busybox", "mounter", &["sleep", "1000"]),
        cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        },
    );
    cfg.mounts = vec![cri::Mount {
        container_path: "/shared".into(),
        host_path: shared.path().display().to_string(),
        propagation: cri::MountPropagation::PropagationBidirectional as i32,
        ..Default::default()
    }];
    let id = env.c.run_container(&pod, cfg).await;
    let r = env
        .c
        .exec(
            &id,
            &["mount", "-t", "tmpfs", "berth-e2e-bidi", "/shared/inner"],
            10,
        )
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stderr));
    let inner = shared.path().join("inner");
    assert!(
        mounted_on_host(&inner),
        "the container's mount did not reach the host"
    );
    // The container's own root and its other mounts did not reach the host (the pod's
    // namespace and /dev/shm mounts are the monitor's, made on the host on purpose).
    let containers = env.d.state.join("containers");
    let leaked: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(containers.to_str().unwrap()))
        .map(str::to_owned)
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");
    env.c.stop_and_remove_pod(&pod).await;
    run(&["umount", inner.to_str().unwrap()]);

    // Propagation needs a host mount that propagates: a private one is refused, clearly.
    let private = tempfile::tempdir().unwrap();
    let p = private.path().to_str().unwrap().to_owned();
    run(&["mount", "--bind", &p, &p]);
    run(&["mount", "--make-private", &p]);
    let mut config = minimal_pod(&env, "bidi2");
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = env.c.run_pod(config).await;
    let mut cfg = minimal_container(&env, "busybox", "refused", &["true"]);
    cfg.mounts = vec![cri::Mount {
        container_path: "/shared".into(),
        host_path: p.clone(),
        propagation: cri::MountPropagation::PropagationBidirectional as i32,
        ..Default::default()
    }];
    let e = env.c.create(&pod, cfg).await.unwrap_err();
    run(&["umount", &p]);
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("not shared"), "{e}");
    env.c.stop_and_remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn recursive_read_only_volumes_cover_the_mounts_below_them() {
    let Some(mut env) = env().await else { return };
    let status = env
        .c
        .runtime
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let features = status.runtime_handlers[0].features.unwrap();
    // Linux 5.12+ (mount_setattr); this node's kernel has it.
    assert!(features.recursive_read_only_mounts, "{status:?}");
    let host = tempfile::tempdir().unwrap();
    let sub = host.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    run(&[
        "mount",
        "-t",
        "tmpfs",
        "berth-e2e-rro",
        sub.to_str().unwrap(),
    ]);
    let pod = env.c.run_pod(minimal_pod(&env, "rro")).await;
    let volume = |rro: bool, readonly: bool, propagation: cri::MountPropagation| cri::Mount {
        container_path: "/v".into(),
        host_path: host.path().display().to_string(),
        readonly,
        recursive_read_only: rro,
        propagation: propagation as i32,
        ..Default::default()
    };
    let try_write = "touch /v/sub/x 2>/dev/null && echo wrote || echo refused";
    for (name, rro, want) in [("rro", true, "refused"), ("ro", false, "wrote")] {
        let mut cfg = minimal_container(&env, "busybox", name, &["sh", "-c", try_write]);
        cfg.mounts = vec![volume(rro, true, cri::MountPropagation::PropagationPrivate)];
        let id = env.c.run_container(&pod, cfg).await;
        env.c.wait_exited(&id).await;
        assert_eq!(log_lines(&env, "rro", name), vec![want], "{name}");
    }
    // What the CRI rules out.
    for (rw, prop, needle) in [
        (false, cri::MountPropagation::PropagationPrivate, "readonly"),
        (
            true,
            cri::MountPropagation::PropagationHostToContainer,
            "PROPAGATION_PRIVATE",
        ),
        (
            true,
            cri::MountPropagation::PropagationBidirectional,
            "PROPAGATION_PRIVATE",
        ),
    ] {
        let mut cfg = minimal_container(&env, "busybox", "bad", &["true"]);
        cfg.mounts = vec![volume(true, rw, prop)];
        let e = env.c.create(&pod, cfg).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.message().contains(needle), "{e}");
    }
    env.c.stop_and_remove_pod(&pod).await;
    run(&["umount", sub.to_str().unwrap()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_advertises_what_this_node_supports() {
    let Some(mut env) = env().await else { return };
    let s = env
        .c
        .runtime
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.runtime_handlers.len(), 1);
    let h = &s.runtime_handlers[0];
    assert_eq!(h.name, "");
    let f = h.features.unwrap();
    // This node's kernel (6.x, overlayfs on ext4) id-maps the root's file system.
    assert!(f.user_namespaces && f.recursive_read_only_mounts, "{f:?}");
    assert!(s.features.is_some_and(|f| f.supplemental_groups_policy));
    // And what is advertised works: a pod with a user namespace runs.
    let mut config = minimal_pod(&env, "userns");
    berth_e2e::cri::with_user_namespace(&mut config, 1_000_000, 65536);
    let pod = env.c.run_pod(config).await;
    let id = env
        .c
        .run_container(
            &pod,
            minimal_container(&env, "busybox", "map", &["cat", "/proc/self/uid_map"]),
        )
        .await;
    env.c.wait_exited(&id).await;
    let out = log_lines(&env, "userns", "map");
    let fields: Vec<&str> = out[0].split_whitespace().collect();
    assert_eq!(fields, vec!["0", "1000000", "65536"], "{out:?}");
    env.c.stop_and_remove_pod(&pod).await;
}

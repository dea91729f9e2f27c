//! The security profile end to end, from inside real containers: seccomp RuntimeDefault,
//! Unconfined and Localhost profiles, in containers and in exec'd processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use berth_e2e::env::BusyboxEnv;
use berth_e2e::{Cri, require};
use berth_proto::cri;
use tonic::Code;

type Env = BusyboxEnv;

async fn env() -> Option<Env> {
    BusyboxEnv::start().await
}

fn pod(env: &Env, name: &str, privileged: bool) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "security".into(),
            attempt: 0,
        }),
        log_directory: env.logs.path().join(name).display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                privileged,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn sleeper(
    env: &Env,
    seccomp: Option<cri::SecurityProfile>,
    privileged: bool,
) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "main".into(),
            attempt: 0,
        }),
        image: Some(berth_e2e::cri::spec(&env.image)),
        command: vec!["sleep".into(), "3600".into()],
        log_path: "main.log".into(),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                seccomp,
                privileged,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn profile(t: cri::security_profile::ProfileType, localhost: &str) -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile {
        profile_type: t as i32,
        localhost_ref: localhost.into(),
    })
}

/// Runs `sh -c script` in the container; (exit code, stdout + stderr).
async fn sh(c: &mut Cri, id: &str, script: &str) -> (i32, String) {
    let r = c.exec(id, &["sh", "-c", script], 10).await.unwrap();
    (
        r.exit_code,
        format!(
            "{}{}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn seccomp_profiles_confine_containers_and_execs() {
    use cri::security_profile::ProfileType;
    let Some(mut env) = env().await else { return };
    let p = env.c.run_pod(pod(&env, "sc", false)).await;

    // RuntimeDefault: filter mode, and unshare (allowed to an unprivileged process by the
    // kernel, refused by the profile) fails with EPERM, in an exec too.
    let confined = env
        .c
        .run_container(
            &p,
            sleeper(&env, profile(ProfileType::RuntimeDefault, ""), false),
        )
        .await;
    let (code, out) = sh(
        &mut env.c,
        &confined,
        "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    let (code, out) = sh(&mut env.c, &confined, "unshare -U true").await;
    assert_ne!(code, 0, "unshare succeeded under RuntimeDefault: {out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    // Ordinary work is unaffected.
    let (code, out) = sh(
        &mut env.c,
        &confined,
        "mkdir /tmp/d && echo ok > /tmp/d/f && cat /tmp/d/f && ls / >/dev/null",
    )
    .await;
    assert_eq!((code, out.trim()), (0, "ok"));

    // Unconfined: mode 0, and the same unshare works.
    let free = env
        .c
        .run_container(&p, {
            let mut c = sleeper(&env, profile(ProfileType::Unconfined, ""), false);
            c.metadata.as_mut().unwrap().name = "free".into();
            c
        })
        .await;
    let (_, out) = sh(&mut env.c, &free, "grep '^Seccomp:' /proc/self/status").await;
    assert!(out.contains("Seccomp:\t0"), "{out}");
    let (code, out) = sh(&mut env.c, &free, "unshare -U true && echo done").await;
    assert_eq!((code, out.trim()), (0, "done"), "unconfined unshare: {out}");

    // Localhost: a profile that denies mkdir makes mkdir fail, nothing else.
    let dir = tempfile::tempdir().unwrap();
    let deny = dir.path().join("deny-mkdir.json");
    std::fs::write(
        &deny,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )
    .unwrap();
    let local = env
        .c
        .run_container(&p, {
            let mut c = sleeper(
                &env,
                profile(ProfileType::Localhost, deny.to_str().unwrap()),
                false,
            );
            c.metadata.as_mut().unwrap().name = "local".into();
            c
        })
        .await;
    let (code, out) = sh(&mut env.c, &local, "mkdir /tmp/nope").await;
    assert_ne!(code, 0);
    assert!(out.contains("Operation not permitted"), "{out}");
    let (code, _) = sh(&mut env.c, &local, "touch /tmp/yes").await;
    assert_eq!(code, 0);

    // A missing or malformed profile is refused at CreateContainer.
    for (name, path, text) in [
        ("missing", dir.path().join("missing.json"), None),
        ("malformed", dir.path().join("bad.json"), Some("{ nope")),
    ] {
        if let Some(t) = text {
            std::fs::write(&path, t).unwrap();
        }
        let mut c = sleeper(
            &env,
            profile(ProfileType::Localhost, path.to_str().unwrap()),
            false,
        );
        c.metadata.as_mut().unwrap().name = name.into();
        let err = env.c.create(&p, c).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("seccomp"), "{}", err.message());
    }
    env.c.stop_and_remove_pod(&p).await;

    // A privileged container runs unconfined whatever it asks.
    let pp = env.c.run_pod(pod(&env, "priv", true)).await;
    let privileged = env
        .c
        .run_container(
            &pp,
            sleeper(&env, profile(ProfileType::RuntimeDefault, ""), true),
        )
        .await;
    let (_, out) = sh(
        &mut env.c,
        &privileged,
        "grep '^Seccomp:' /proc/self/status",
    )
    .await;
    assert!(out.contains("Seccomp:\t0"), "{out}");
    env.c.stop_and_remove_pod(&pp).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_sysctls_and_lsm_options() {
    let Some(mut env) = env().await else { return };
    let p = env.c.run_pod(pod(&env, "dev", false)).await;

    // Unprivileged: a device node made by hand cannot be opened (device cgroup), and
    // /proc/sysrq-trigger is read-only ('h' only prints help, should it ever get through).
    let plain = env.c.run_container(&p, sleeper(&env, None, false)).await;
    let (_, out) = sh(&mut env.c, &plain, "mknod /tmp/lc c 10 237 && (: < /tmp/lc) 2>&1; (echo h > /proc/sysrq-trigger) 2>/dev/null && echo WROTE-SYSRQ; ls /dev/loop0 2>&1").await;
    assert!(
        out.contains("Operation not permitted"),
        "device opened: {out}"
    );
    assert!(
        !out.contains("WROTE-SYSRQ"),
        "sysrq-trigger writable: {out}"
    );
    assert!(
        out.contains("No such file or directory"),
        "host devices visible: {out}"
    );

    // A granted device is usable with the granted access only.
    let granted = env
        .c
        .run_container(&p, {
            let mut c = sleeper(&env, None, false);
            c.metadata.as_mut().unwrap().name = "granted".into();
            c.devices = vec![cri::Device {
                container_path: "/dev/loop-control".into(),
                host_path: "/dev/loop-control".into(),
                permissions: "r".into(),
            }];
            c
        })
        .await;
    let (code, out) = sh(
        &mut env.c,
        &granted,
        "(: < /dev/loop-control) && echo opened",
    )
    .await;
    assert_eq!((code, out.trim()), (0, "opened"), "{out}");
    let (code, out) = sh(&mut env.c, &granted, "(: > /dev/loop-control) 2>&1").await;
    assert_ne!(code, 0, "opened for writing: {out}");
    // A host path that is not a device is refused.
    let mut c = sleeper(&env, None, false);
    c.metadata.as_mut().unwrap().name = "notdev".into();
    c.devices = vec![cri::Device {
        container_path: "/dev/x".into(),
        host_path: "/etc/hostname".into(),
        permissions: "r".into(),
    }];
    let err = env.c.create(&p, c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // No AppArmor or SELinux on this node: named profiles and labels are refused clearly.
    if !std::path::Path::new("/sys/module/apparmor/parameters/enabled").exists() {
        let mut c = sleeper(&env, None, false);
        c.metadata.as_mut().unwrap().name = "aa".into();
        c.linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
            .apparmor = profile(cri::security_profile::ProfileType::Localhost, "my-profile");
        let err = env.c.create(&p, c).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains("AppArmor is not enabled"),
            "{}",
            err.message()
        );
    }
    if !std::path::Path::new("/sys/fs/selinux/enforce").exists() {
        let mut c = sleeper(&env, None, false);
        c.metadata.as_mut().unwrap().name = "se".into();
        c.linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
            .selinux_options = Some(cri::SeLinuxOption {
            r#type: "spc_t".into(),
            ..Default::default()
        });
        let err = env.c.create(&p, c).await.unwrap_err();
        assert!(
            err.message().contains("SELinux is not enabled"),
            "{}",
            err.message()
        );
    }
    env.c.stop_and_remove_pod(&p).await;

    // Privileged: the node's devices are there.
    let pp = env.c.run_pod(pod(&env, "devpriv", true)).await;
    let privileged = env.c.run_container(&pp, sleeper(&env, None, true)).await;
    let (code, out) = sh(
        &mut env.c,
        &privileged,
        "ls /dev/loop0 && (: < /dev/loop-control) && echo opened",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    env.c.stop_and_remove_pod(&pp).await;

    // Sysctls: node-wide ones, and net.* in the node's network namespace, are refused.
    for (name, value, host_net) in [
        ("kernel.panic", "1", false),
        ("net.core.somaxconn", "1024", true),
    ] {
        let mut config = pod(&env, &format!("sysctl-{host_net}"), false);
        let linux = config.linux.as_mut().unwrap();
        linux.sysctls = std::collections::HashMap::from([(name.to_owned(), value.to_owned())]);
        if host_net {
            linux.security_context.as_mut().unwrap().namespace_options =
                Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    ..Default::default()
                });
        }
        let err = env.c.try_run_pod(config).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        assert!(err.message().contains(name), "{}", err.message());
    }
}

fn userns_pod(env: &Env, name: &str, host_id: u32, host_network: bool) -> cri::PodSandboxConfig {
    let mut config = pod(env, name, false);
    let range = vec![cri::IdMapping {
        host_id,
        container_id: 0,
        length: 65536,
    }];
    config
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options = Some(cri::NamespaceOption {
        network: if host_network {
            cri::NamespaceMode::Node
        } else {
            cri::NamespaceMode::Pod
        } as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        userns_options: Some(cri::UserNamespace {
            mode: cri::NamespaceMode::Pod as i32,
            uids: range.clone(),
            gids: range,
        }),
        ..Default::default()
    });
    config
}

/// The (device, inode) of a namespace file.
fn ns_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// A pod in its own user namespace (kubelet's hostUsers: false): root inside is root of the
/// image's files and of what it writes, and an unprivileged uid of the node outside.
#[tokio::test(flavor = "multi_thread")]
async fn user_namespaced_pod_maps_root_to_an_unprivileged_range() {
    let Some(mut env) = env().await else { return };
    // A range no process of this machine uses (kubelet hands out multiples of 65536).
    let base: u32 = 65536 * 300;
    let p = env.c.run_pod(userns_pod(&env, "userns", base, false)).await;
    let status = env.c.pod_status(&p).await;
    let opts = status
        .linux
        .and_then(|l| l.namespaces)
        .and_then(|n| n.options)
        .and_then(|o| o.userns_options)
        .unwrap();
    assert_eq!(opts.mode, cri::NamespaceMode::Pod as i32);
    assert_eq!(opts.uids[0].host_id, base);

    let mut config = sleeper(&env, None, false);
    config.mounts = vec![cri::Mount {
        container_path: "/deep/vol".into(),
        host_path: env.logs.path().display().to_string(),
        ..Default::default()
    }];
    let c = env.c.run_container(&p, config).await;
    let (code, out) = sh(
        &mut env.c,
        &c,
        "id -u; id -g; cat /proc/self/uid_map | tr -s ' '; stat -c %u:%g /etc/passwd /bin /; \
         echo x > /etc/written && stat -c %u /etc/written; stat -c %u /deep/vol /deep; \
         (mknod /tmp/null c 1 3 2>&1 && echo MKNOD-WORKED) | grep -c 'not permitted'; \
         mkdir -p /tmp/www && httpd -p 80 -h /tmp/www && echo bound-port-80",
    )
    .await;
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            format!("0\n0\n 0 {base} 65536\n0:0\n0:0\n0:0\n0\n0\n0\n1\nbound-port-80\n").as_str()
        ),
        "inside the user namespace"
    );
    // Entering a user namespace fills the bounding set, the node's missing capabilities
    // included (this node's lacks CAP_SYS_RESOURCE): the container's process (pid 1 is
    // berth's init of the namespace) and an exec both keep exactly the default set.
    let (code, out) = sh(
        &mut env.c,
        &c,
        "grep CapBnd /proc/$(pidof sleep)/status /proc/self/status | cut -d: -f2-",
    )
    .await;
    assert_eq!(
        (code, out.as_str()),
        (0, "CapBnd:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\n"),
        "bounding sets in the user namespace"
    );

    // Outside: every process of the pod's namespace runs as an id of its range, and what the
    // container wrote belongs to its root's host uid.
    let pod_dir = env.d.state.join("pods").join(&p);
    let userns = ns_id(&pod_dir.join("userns")).expect("the pod's user namespace is bound");
    let mut seen = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
            .is_none()
            || ns_id(&e.path().join("ns/user")) != Some(userns)
        {
            continue;
        }
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        for field in ["Uid:", "Gid:"] {
            let ids: Vec<u32> = status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .unwrap()
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect();
            assert!(
                ids.iter().all(|&id| (base..base + 65536).contains(&id)),
                "{field} {ids:?} of {:?} outside the pod's range",
                e.path()
            );
        }
        seen += 1;
    }
    assert!(seen >= 1, "no process in the pod's user namespace");
    let upper = env.d.root.join("containers").join(&c).join("upper");
    use std::os::unix::fs::MetadataExt;
    let written = std::fs::metadata(upper.join("etc/written")).unwrap();
    assert_eq!((written.uid(), written.gid()), (base, base));
    // The volume's files keep their owner on the host (the mount is id-mapped, not chowned).
    assert_eq!(std::fs::metadata(env.logs.path()).unwrap().uid(), 0);

    // Mappings that would not isolate, or a host namespace, are refused.
    let err = env
        .c
        .try_run_pod(userns_pod(&env, "userns-root", 0, false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("host id 0"), "{}", err.message());
    let err = env
        .c
        .try_run_pod(userns_pod(&env, "userns-hostnet", base + 65536, true))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    env.c.stop_and_remove_pod(&p).await;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(pod_dir.to_str().unwrap()),
        "the pod's user namespace is still mounted"
    );
}

/// berth's cgroup2 device program, as the kernel runs it (on cgroup v2 nodes it is the only
/// device control): a process in a cgroup2 directory with the default policy attached can
/// open /dev/null and cannot open /dev/loop-control.
#[test]
fn the_kernel_enforces_the_cgroup2_device_program() {
    use berth_engine::spec::devices::{DevicePolicy, default_rules};
    if !require::root() {
        return;
    }
    let Some(unified) = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(std::path::Path::new)
        .find(|p| p.join("cgroup.controllers").exists())
    else {
        assert!(!require::required(), "no cgroup2 mount");
        return;
    };
    let dir = unified.join(format!("berth-e2e-devfilter-{}", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    let f = std::fs::File::open(&dir).unwrap();
    let program = berth_engine::linux::devfilter::program(&DevicePolicy {
        allow_all: false,
        rules: default_rules(),
    });
    berth_engine::linux::sys::attach_device_filter(&f, &program).unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs; (: < /dev/null) && echo null-ok; (: < /dev/loop-control) 2>/dev/null && echo loop-opened; true",
            dir.display()
        ))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("null-ok"), "{text}");
    assert!(!text.contains("loop-opened"), "{text}");
}

/// berth's default AppArmor profile is valid policy: the node's apparmor_parser compiles it
/// (without loading it: this node's kernel may not run AppArmor).
#[test]
fn the_default_apparmor_profile_compiles() {
    use berth_engine::spec::apparmor::{DEFAULT_PROFILE, PolicyDir, default_profile};
    let Some(parser) = ["/sbin/apparmor_parser", "/usr/sbin/apparmor_parser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        assert!(!require::required(), "apparmor_parser is not installed");
        return;
    };
    for dir in [PolicyDir::of_node(), PolicyDir::default()] {
        let text = default_profile(DEFAULT_PROFILE, dir);
        let mut child = std::process::Command::new(parser)
            // -Q: do not load; -K: no cache; -S: the compiled policy to stdout.
            .args(["-QKS"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "{dir:?}: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

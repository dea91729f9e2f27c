//! A containerd under test, for berth-bench's side-by-side comparison: Debian's containerd
//! and runc, its CRI plugin on its own socket, root and state under a temporary directory,
//! images from the local registry over plain HTTP, pods on a bridge network from Debian's
//! CNI plugins (comparable to berth's built-in bridge). Started in its own session and
//! stopped, with whatever it left (shims, mounts, the bridge), when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::net;

/// A running containerd.
#[derive(Debug)]
pub struct Containerd {
    dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub bridge: String,
    child: Option<Child>,
    _nat: net::HostNatGuard,
    /// What containerd creates outside its directory that was not there before it started
    /// (its shim socket directory, the pods' cgroup parent), removed on stop.
    created: Vec<PathBuf>,
}

/// Paths containerd 1.6 uses outside its configured directories.
fn outside_paths() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("/run/containerd")];
    for e in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        v.push(e.path().join("k8s.io"));
    }
    v
}

/// A static pause program for containerd's sandboxes (berth needs none: its monitor
/// holds a pod's namespaces), compiled with the machine's gcc in `dir`.
pub fn pause_image(dir: &std::path::Path) -> crate::images::TestImage {
    use crate::images::{Entry, Layer, RunConfig, TestImage};
    let src = dir.join("pause.c");
    std::fs::write(
        &src,
        "#include <signal.h>\n#include <unistd.h>\n#include <stdlib.h>\nstatic void bye(int s) { (void)s; _exit(0); }\nint main(void) { signal(SIGINT, bye); signal(SIGTERM, bye); for (;;) pause(); }\n",
    )
    .expect("write pause.c");
    let bin = dir.join("pause");
    let ok = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("gcc (apt install gcc libc6-dev)");
    assert!(ok.success(), "gcc failed to build pause");
    let bytes = std::fs::read(&bin).expect("read pause");
    TestImage::new(vec![Layer::new(vec![Entry::exe("pause", bytes)])]).with_config(RunConfig {
        entrypoint: vec!["/pause".into()],
        ..Default::default()
    })
}

/// containerd's version line, if it is installed.
pub fn version() -> Option<String> {
    let out = Command::new("containerd").arg("--version").output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Containerd {
    /// Starts containerd with its CRI plugin pulling from `registry` (host:port, plain
    /// HTTP) and using `pause_image` as the sandbox image; None when containerd or runc is
    /// not installed.
    pub fn start(registry: &str, pause_image: &str) -> Option<Containerd> {
        Self::start_with_range(registry, pause_image, false)
    }

    /// As [`Containerd::start`], with a pod range of a /22 when `large` (a full node).
    pub fn start_with_range(registry: &str, pause_image: &str, large: bool) -> Option<Containerd> {
        Self::start_on(registry, pause_image, large, None)
    }

    /// As [`Containerd::start_with_range`], with its root on a fresh ext4 of that size
    /// when `root_ext4` (berth's `DaemonOptions::root_ext4`, for the pull benchmark).
    pub fn start_on(
        registry: &str,
        pause_image: &str,
        large: bool,
        root_ext4: Option<&str>,
    ) -> Option<Containerd> {
        version()?;
        Command::new("runc").arg("--version").output().ok()?;
        let nat = net::HostNatGuard::new();
        let created: Vec<PathBuf> = outside_paths()
            .into_iter()
            .filter(|p| !p.exists())
            .collect();
        let dir = tempfile::Builder::new()
            .prefix("berth-bench-containerd-")
            .tempdir()
            .ok()?;
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let bridge = format!("bcd{}", std::process::id() % 100_000);
        let cidr = if large {
            format!("{}/22", net::free_slash22([10, 213]))
        } else {
            format!("{}/24", net::free_slash24([10, 213]))
        };
        net::write_bridge_conflist(
            &d.join("net.d"),
            "containerd-bench",
            &bridge,
            &cidr,
            &d.join("ipam"),
        );
        // No portmap in the bench: pods have no host ports.
        let list = d.join("net.d/10-containerd-bench.conflist");
        if let Ok(text) = std::fs::read_to_string(&list)
            && let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&text)
        {
            if let Some(p) = v["plugins"].as_array_mut() {
                p.retain(|x| x["type"] != "portmap");
            }
            let _ = std::fs::write(&list, v.to_string());
        }
        let config = format!(
            r#"version = 2
root = {root:?}
state = {state:?}
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = {socket:?}
[ttrpc]
  address = {ttrpc:?}
[debug]
  level = "warn"
# Collect garbage right after a deletion, as berth does, so that a pull after RemoveImage
# is cold for both.
[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = 1
  schedule_delay = "0ms"
[plugins."io.containerd.internal.v1.opt"]
  path = {opt:?}
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {pause_image:?}
  # This machine's bounding set lacks CAP_SYS_RESOURCE: lowering oom_score_adj fails.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = {runc_root:?}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = {conf_dir:?}
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors.{registry:?}]
    endpoint = ["http://{registry}"]
"#,
            root = d.join("root"),
            state = d.join("state"),
            socket = socket,
            ttrpc = d.join("containerd.sock.ttrpc"),
            opt = d.join("opt"),
            runc_root = d.join("runc"),
            conf_dir = d.join("net.d"),
        );
        std::fs::write(d.join("config.toml"), config).ok()?;
        if let Some(size) = root_ext4 {
            crate::daemon::mount_fresh_ext4(&d.join("root.ext4"), &d.join("root"), size);
        }
        let Some(child) = spawn_daemon(d) else {
            crate::daemon::unmount_under(d);
            return None;
        };
        let c = Containerd {
            dir,
            socket,
            bridge,
            child: Some(child),
            _nat: nat,
            created,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.socket.exists() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(c)
    }

    /// Sends `sig` to containerd, waits for it to exit (SIGKILL after 30 s), and starts it
    /// again on the same state without waiting for it to answer (shims live on).
    pub fn kill_and_spawn(&mut self, sig: Signal) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(i32::try_from(child.id()).unwrap_or(0)), sig);
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.child = spawn_daemon(self.dir.path());
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The per-pod processes containerd adds: its shims (for this containerd's socket) and
    /// the pause processes they run.
    pub fn overhead_pids(&self) -> Vec<u32> {
        let me = self.socket.to_string_lossy().into_owned();
        let mut shims = Vec::new();
        let mut all = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("containerd-shim") && cmd.contains(&me) {
                shims.push(pid);
            }
            all.push((pid, cmd));
        }
        let parent = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok())
                })
        };
        let mut out = shims.clone();
        for (pid, cmd) in all {
            if cmd.trim() == "/pause" && parent(pid).is_some_and(|p| shims.contains(&p)) {
                out.push(pid);
            }
        }
        out
    }

    /// Stops containerd and removes everything it left: shims, mounts under its
    /// directory, the bridge.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(
                Pid::from_raw(i32::try_from(child.id()).unwrap_or(0)),
                Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in self.overhead_pids() {
            let _ = kill(
                Pid::from_raw(i32::try_from(pid).unwrap_or(0)),
                Signal::SIGKILL,
            );
        }
        crate::daemon::unmount_under(self.dir.path());
        net::remove_daemon_network(&self.bridge, "berth_bench_none");
        for p in &self.created {
            if p.starts_with("/sys/fs/cgroup") {
                crate::daemon::remove_cgroup_tree(p);
            } else {
                let _ = std::fs::remove_dir_all(p);
            }
        }
    }
}

/// `setsid containerd --config <dir>/config.toml`, its output appended to its log.
fn spawn_daemon(d: &std::path::Path) -> Option<Child> {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(d.join("containerd.log"))
        .ok()?;
    Command::new("setsid")
        .arg("containerd")
        .arg("--config")
        .arg(d.join("config.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().ok()?)
        .stderr(log)
        .spawn()
        .ok()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

//! `Daemon`: a real berthd on a temporary root, run dir and socket.
//!
//! It is started in its own session (`setsid`), so that signals meant for the test runner
//! never reach it. Dropping the fixture stops it (SIGTERM, then SIGKILL after a bound) and
//! asserts that nothing of berth's is left on the host: no process and no mount that
//! refers to its directories, no socket.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cri::Cri;

/// Extra settings for a daemon under test.
#[derive(Debug, Default, Clone)]
pub struct DaemonOptions {
    /// TOML appended to the generated config (paths are always set by the fixture).
    pub extra_config: String,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Lines for the `[network]` section. The fixture gives every daemon its own pod
    /// CIDR, bridge and nft table unless these lines set them.
    pub network: String,
    /// Name the socket in the config as kubelet names endpoints (`unix:///…`).
    pub socket_as_url: bool,
    /// Extra environment of berthd (e.g. BERTH_FAILPOINTS).
    pub env: Vec<(String, String)>,
    /// Put berth's root on a tmpfs of this size (e.g. "64m"), to fill it in tests.
    pub root_tmpfs: Option<String>,
    /// Put berth's root on a fresh ext4 of this size (e.g. "4G", a sparse file on a loop
    /// device), for figures on a fresh file system.
    pub root_ext4: Option<String>,
}

/// The environment variable that sets the cgroup driver of every daemon under test.
pub const CGROUP_DRIVER_ENV: &str = "BERTH_E2E_CGROUP_DRIVER";

/// A running berthd under test.
#[derive(Debug)]
pub struct Daemon {
    dir: tempfile::TempDir,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// This daemon's bridge and nft table (the fixture removes them on drop).
    pub bridge: String,
    pub nft_table: String,
    /// This daemon's pod CIDR as configured.
    pub pod_cidr: String,
    /// Extra environment berthd is started with (changed by [`Daemon::set_env`]).
    env: Vec<(String, String)>,
    /// The root is a file system the fixture mounted (not a leftover of berthd's).
    root_mounted: bool,
}

/// The berthd binary under test: `$BERTH_BIN`, else `berthd` of the same cargo profile as
/// the running test or bench (`target/<profile>/berthd`).
pub fn berthd_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("BERTH_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // A test runs from target/<profile>/deps/, a bench binary from target/<profile>/.
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("berthd"))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "berthd not found at {candidates:?}: build it first (`cargo build --workspace --bins`) or set BERTH_BIN"
            )
        })
}

/// Makes a fresh ext4 of `size` (truncate's spelling) in the file `img` and mounts it on
/// `at` (created): a file system on which no file was ever created or deleted, the "fresh
/// file system" of the pull benchmark. Unmounted by the owner's `unmount_under`.
pub fn mount_fresh_ext4(img: &Path, at: &Path, size: &str) {
    std::fs::create_dir_all(at).expect("create the mount point");
    let ok = Command::new("truncate")
        .args(["-s", size])
        .arg(img)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(img)
            .status()
            .is_ok_and(|s| s.success())
        && Command::new("mount")
            .args(["-o", "loop"])
            .arg(img)
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
    assert!(ok, "make and mount a fresh ext4 on {}", at.display());
}

impl Daemon {
    /// Starts a daemon with default options and waits until it answers Version.
    pub async fn start() -> Daemon {
        Self::start_with(DaemonOptions::default()).await
    }

    /// Starts a daemon and waits until it answers Version.
    pub async fn start_with(opts: DaemonOptions) -> Daemon {
        let mut d = Self::spawn(&opts);
        d.wait_ready().await;
        d
    }

    /// The environment the next start (a [`Daemon::restart`]) gives berthd.
    pub fn set_env(&mut self, env: Vec<(String, String)>) {
        self.env = env;
    }

    /// Stops berthd (SIGTERM) and starts it again on the same root, run dir and config,
    /// waiting until it answers; returns the stop's exit status.
    pub async fn restart(&mut self) -> ExitStatus {
        let status = self.stop();
        self.child = Some(self.command(&[]).spawn().expect("spawn berthd"));
        self.wait_ready().await;
        status
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.try_status() {
                panic!(
                    "berthd exited during start with {status}; log:\n{}",
                    self.log()
                );
            }
            if self.socket.exists()
                && let Ok(mut cri) = Cri::connect(&self.socket).await
                && cri
                    .runtime
                    .version(berth_proto::cri::VersionRequest::default())
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "berthd did not answer within 20s; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Spawns berthd without waiting for it (for tests of failed starts).
    pub fn spawn(opts: &DaemonOptions) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().join("root");
        let state = dir.path().join("run");
        let socket = state.join("berth.sock");
        let config = dir.path().join("config.toml");
        let log = dir.path().join("berthd.log");
        let cgroup_parent = cgroup_parent_of(dir.path());
        let suffix = suffix_of(dir.path());
        let net = crate::net::DaemonNetwork::new(&suffix, &opts.network);
        let listen = if opts.socket_as_url {
            format!("unix://{}", socket.display())
        } else {
            socket.display().to_string()
        };
        // The cgroup driver of the node the tests run on (the VM lane runs them with
        // `systemd` too); berth's default otherwise.
        let driver = match std::env::var(CGROUP_DRIVER_ENV).ok().as_deref() {
            Some(d @ ("systemd" | "cgroupfs")) => format!("driver = {d:?}\n"),
            _ => String::new(),
        };
        let text = format!(
            "root = {root:?}\nstate = {state:?}\n\n[grpc]\nlisten = {listen:?}\nshutdown_grace_seconds = 5\n\n[log]\nlevel = \"debug\"\n\n[cgroup]\n{driver}parent = {cgroup_parent:?}\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n[network]\n{}\n{}",
            net.config, opts.extra_config
        );
        std::fs::write(&config, text).expect("write config");
        if let Some(size) = &opts.root_tmpfs {
            std::fs::create_dir_all(&root).expect("create root");
            let ok = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&root)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "mount a tmpfs on {}", root.display());
        }
        if let Some(size) = &opts.root_ext4 {
            mount_fresh_ext4(&dir.path().join("root.ext4"), &root, size);
        }
        let mut d = Daemon {
            dir,
            root,
            state,
            socket,
            config,
            log,
            child: None,
            bridge: net.bridge,
            nft_table: net.nft_table,
            pod_cidr: net.pod_cidr,
            env: opts.env.clone(),
            root_mounted: opts.root_tmpfs.is_some() || opts.root_ext4.is_some(),
        };
        let child = d.command(&opts.args).spawn().expect("spawn berthd");
        d.child = Some(child);
        d
    }

    /// A `setsid berthd --config <this daemon's config> ARGS` command with output to the
    /// daemon's log file.
    pub fn command(&self, args: &[String]) -> Command {
        let logf = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let mut cmd = Command::new("setsid");
        cmd.arg(berthd_binary())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup log"))
            .stderr(logf);
        cmd
    }

    /// Runs `berthd --config <this daemon's config> ARGS` as a client of this daemon (the
    /// `image` commands), with `stdin` (None: /dev/null); its output, captured.
    pub fn cli<S: AsRef<std::ffi::OsStr>>(
        &self,
        args: &[S],
        stdin: Option<&Path>,
    ) -> std::process::Output {
        Command::new(berthd_binary())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(match stdin {
                Some(p) => Stdio::from(File::open(p).expect("open stdin file")),
                None => Stdio::null(),
            })
            .output()
            .expect("run berthd")
    }

    /// The temporary directory holding everything of this daemon.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A CRI client for this daemon.
    pub async fn cri(&self) -> Cri {
        Cri::connect(&self.socket).await.expect("connect to berthd")
    }

    /// The metrics endpoint of the running berthd (the fixture lets it pick a port; the
    /// log says which).
    pub fn metrics_addr(&self) -> String {
        self.log()
            .lines()
            .rev()
            .find(|l| l.contains("metrics endpoint listening"))
            .and_then(|l| l.split("addr=").nth(1))
            .and_then(|a| a.split_whitespace().next())
            .map(str::to_owned)
            .expect("berthd logged no metrics address")
    }

    /// What berthd wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<Pid> {
        self.child
            .as_ref()
            .map(|c| Pid::from_raw(i32::try_from(c.id()).expect("pid fits i32")))
    }

    /// Sends a signal to berthd.
    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, sig);
        }
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for berthd to exit, at most `timeout`; None if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `sig`, waits for berthd to exit (SIGKILL after 30 s), and starts it again on
    /// the same root, run dir and config without waiting for it to answer.
    pub fn kill_and_spawn(&mut self, sig: Signal) {
        self.signal(sig);
        if self.wait_exit(Duration::from_secs(30)).is_none() {
            self.signal(Signal::SIGKILL);
            let _ = self.wait_exit(Duration::from_secs(5));
        }
        self.child = Some(self.command(&[]).spawn().expect("spawn berthd"));
    }

    /// SIGTERM and wait (SIGKILL after 15 s); returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        match self.wait_exit(Duration::from_secs(15)) {
            Some(s) => s,
            None => {
                self.signal(Signal::SIGKILL);
                self.wait_exit(Duration::from_secs(5))
                    .expect("berthd did not die after SIGKILL")
            }
        }
    }

    /// This daemon's configured cgroup parent (unique per fixture).
    pub fn cgroup_parent(&self) -> String {
        cgroup_parent_of(self.dir.path())
    }

    /// This daemon's cgroup parent (unique per fixture) in every hierarchy.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let parent = cgroup_parent_of(self.dir.path());
        std::fs::read_dir("/sys/fs/cgroup")
            .map(|d| {
                d.flatten()
                    .map(|e| e.path().join(&parent))
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What of this daemon is still on the host: processes and mounts that name its
    /// directory, cgroups under its cgroup parent, and its socket. Empty when it cleaned up.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in self.cgroup_dirs() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(format!("cgroup {}", e.path().display()));
                }
            }
        }
        let needle = self.dir.path().to_string_lossy().into_owned();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let name = e.file_name();
                let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if pid == std::process::id() {
                    continue;
                }
                let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if cmdline.contains(&needle) {
                    out.push(format!("process {pid}: {cmdline}"));
                }
            }
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own_root = format!(" {} ", self.root.display());
        for line in mountinfo.lines() {
            if self.root_mounted
                && line.contains(&own_root)
                && (line.contains(" - tmpfs ") || line.contains(" - ext4 "))
            {
                continue;
            }
            if line.contains(&needle) {
                out.push(format!("mount: {line}"));
            }
        }
        if self.socket.exists() {
            out.push(format!("socket {}", self.socket.display()));
        }
        for port in crate::net::settled_bridge_ports(&self.bridge) {
            out.push(format!("veth {port} on bridge {}", self.bridge));
        }
        for e in crate::net::nft_map_elements(&self.nft_table) {
            out.push(format!("nft element {e} in table {}", self.nft_table));
        }
        // Pods and containers that were removed leave no file behind either.
        for dir in [
            self.state.join("pods"),
            self.state.join("netns"),
            self.state.join("containers"),
            self.root.join("containers"),
        ] {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                out.push(format!("file {}", e.path().display()));
            }
        }
        out
    }
}

impl Daemon {
    /// Kills every process of this daemon's pods and monitors, unmounts what is mounted
    /// under its directory and removes its cgroups.
    fn clean_up(&self) {
        let needle = self.dir.path().to_string_lossy().into_owned();
        for _ in 0..3 {
            // Monitors (their command line names our directory) and container processes
            // (in our cgroups).
            let mut pids = Vec::new();
            if let Ok(entries) = std::fs::read_dir("/proc") {
                for e in entries.flatten() {
                    let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok())
                    else {
                        continue;
                    };
                    let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                    if String::from_utf8_lossy(&cmdline).contains(&needle)
                        && pid != std::process::id() as i32
                    {
                        pids.push(pid);
                    }
                }
            }
            for d in self.cgroup_dirs() {
                let mut stack = vec![d];
                while let Some(dir) = stack.pop() {
                    for p in std::fs::read_to_string(dir.join("cgroup.procs"))
                        .unwrap_or_default()
                        .lines()
                    {
                        if let Ok(p) = p.trim().parse() {
                            pids.push(p);
                        }
                    }
                    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            stack.push(e.path());
                        }
                    }
                }
            }
            if pids.is_empty() {
                break;
            }
            for p in pids {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        unmount_under(self.dir.path());
        for d in self.cgroup_dirs() {
            remove_cgroup_tree(&d);
        }
        crate::net::remove_daemon_network(&self.bridge, &self.nft_table);
    }
}

/// Unmounts (lazily, deepest first) every mount below `dir`.
pub(crate) fn unmount_under(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(&needle))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Removes a cgroup directory and its children, deepest first.
pub(crate) fn remove_cgroup_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A cgroup parent unique to one fixture: `berth-e2e-<temp dir name>`.
fn cgroup_parent_of(dir: &Path) -> String {
    format!(
        "berth-e2e-{}",
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    )
}

/// The random part of the fixture's temporary directory name (`berth-e2e-XXXXXX`).
fn suffix_of(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .trim_start_matches("berth-e2e-")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let running = self.child.is_some() && self.try_status().is_none();
        if running {
            let status = self.stop();
            if !status.success() && !std::thread::panicking() {
                panic!(
                    "berthd exited with {status} on SIGTERM; log:\n{}",
                    self.log()
                );
            }
        }
        let left = self.leftovers();
        // Whatever happened, leave the machine as we found it: the fixture started this
        // berthd and everything under its directory and cgroup parent is its doing.
        self.clean_up();
        if std::thread::panicking() {
            eprintln!(
                "--- berthd log ({}) ---\n{}",
                self.log.display(),
                self.log()
            );
            return;
        }
        assert!(
            left.is_empty(),
            "berthd left things behind:\n{}\nlog:\n{}",
            left.join("\n"),
            self.log()
        );
    }
}

//! berth-conformance: SIG Node's CRI conformance suite (critest) against a berthd of this
//! build, as containerd and CRI-O run it in their CI.
//!
//!     berth-conformance [--transport spdy|websocket|both] [-- CRITEST ARGS...]
//!
//! A registry on loopback (Debian's docker-registry) gets every image the suite pulls,
//! built offline by the kit's `images.sh`; a berthd on a temporary root mirrors the
//! suite's registries (registry.k8s.io, k8s.gcr.io, gcr.io, public.ecr.aws, docker.io) to
//! it; critest runs over SPDY, then with WebSocket streaming. Only `public image with
//! digest` is skipped: it pulls an upstream manifest by digest, whose bytes cannot be
//! rebuilt offline. Logs go to `target/conformance/`; the summary lines and wall times
//! are printed. Exit status: 0 when every run passed (or the kit is missing and
//! BERTH_E2E_REQUIRED is not 1), 1 otherwise.
//!
//! The kit (critest and crictl v1.36.0, `images.sh`): `$BERTH_CRITEST_KIT`, else the copy
//! in `third_party/critest`.

#![allow(clippy::print_stdout, clippy::print_stderr, clippy::exit)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::{Daemon, DaemonOptions, Registry, kit, require};

/// The one spec skipped: its image's upstream manifest bytes cannot be rebuilt offline.
const SKIP: &str = "public image with digest";
/// The registries the suite's images come from, all mirrored to the local one.
const MIRRORED: [&str; 5] = [
    "registry.k8s.io",
    "k8s.gcr.io",
    "gcr.io",
    "public.ecr.aws",
    "docker.io",
];
/// A whole critest run takes under a minute here; this bounds a hang.
const RUN_TIMEOUT: Duration = Duration::from_secs(20 * 60);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Spdy,
    WebSocket,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Spdy => "spdy",
            Transport::WebSocket => "websocket",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Transport::Spdy => &[],
            Transport::WebSocket => &[
                "-websocket-exec",
                "-websocket-attach",
                "-websocket-portforward",
            ],
        }
    }
}

struct Args {
    transports: Vec<Transport>,
    extra: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut transports = vec![Transport::Spdy, Transport::WebSocket];
    let mut extra = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--transport" => {
                transports = match it.next().as_deref() {
                    Some("spdy") => vec![Transport::Spdy],
                    Some("websocket") => vec![Transport::WebSocket],
                    Some("both") => vec![Transport::Spdy, Transport::WebSocket],
                    other => return Err(format!("--transport {other:?}: spdy, websocket or both")),
                };
            }
            "--" => extra.extend(it.by_ref()),
            "-h" | "--help" => {
                return Err("usage: berth-conformance [--transport spdy|websocket|both] [-- CRITEST ARGS...]".into());
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?} (critest's own go after --)"
                ));
            }
        }
    }
    Ok(Args { transports, extra })
}

/// Builds the suite's images (cached in `work`) and pushes them to `registry`.
fn push_images(kit: &Path, work: &Path, registry: &str) -> Result<(), String> {
    let log = work.join("images.log");
    let logf = std::fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let st = Command::new("bash")
        .arg(kit.join("images.sh"))
        .env("REGISTRY_ADDR", registry)
        .env("WORK", work.join("images"))
        .stdin(Stdio::null())
        .stdout(logf.try_clone().map_err(|e| e.to_string())?)
        .stderr(logf)
        .status()
        .map_err(|e| format!("run images.sh: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!(
            "images.sh failed ({st}); its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ))
    }
}

/// What one critest run reported.
struct Outcome {
    transport: Transport,
    passed: bool,
    summary: Vec<String>,
    failures: Vec<String>,
    wall: Duration,
    log: PathBuf,
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn run_critest(
    critest: &Path,
    socket: &Path,
    transport: Transport,
    extra: &[String],
    out: &Path,
) -> Result<Outcome, String> {
    let log = out.join(format!("critest-{}.log", transport.name()));
    let logf = std::fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let endpoint = format!("unix://{}", socket.display());
    let start = Instant::now();
    let mut child = Command::new(critest)
        .args([
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
        ])
        .args(["--ginkgo.skip", SKIP])
        .args(transport.args())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(logf.try_clone().map_err(|e| e.to_string())?)
        .stderr(logf)
        .spawn()
        .map_err(|e| format!("run critest: {e}"))?;
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(st);
        }
        if start.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let wall = start.elapsed();
    let text = strip_ansi(&std::fs::read_to_string(&log).unwrap_or_default());
    let summary: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("Ran ") || l.contains(" Passed | "))
        .map(str::to_owned)
        .collect();
    let failures: Vec<String> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("[FAIL]"))
        .map(|l| l.trim().to_owned())
        .collect();
    let passed =
        status.is_some_and(|s| s.success()) && summary.iter().any(|l| l.starts_with("SUCCESS!"));
    let mut summary = summary;
    if status.is_none() {
        summary.push(format!(
            "critest did not finish within {RUN_TIMEOUT:?} and was killed"
        ));
    }
    Ok(Outcome {
        transport,
        passed,
        summary,
        failures,
        wall,
        log,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let Some(kit) = kit::dir() else {
        let what = "the critest kit (critest and crictl v1.36.0, images.sh): third_party/critest, or \
                    $BERTH_CRITEST_KIT naming a directory with bin/critest.xz and images.sh; critest \
                    itself is cri-tools' release asset critest-v1.36.0-linux-amd64.tar.gz \
                    (https://github.com/kubernetes-sigs/cri-tools/releases/tag/v1.36.0)";
        return if require::required() {
            eprintln!("FAIL: missing {what} (BERTH_E2E_REQUIRED=1 makes this a failure)");
            ExitCode::FAILURE
        } else {
            eprintln!("SKIP: CRI conformance not run: missing {what}");
            ExitCode::SUCCESS
        };
    };
    if !require::root() {
        return if require::required() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    match run(&kit, &args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("conformance: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(kit: &Path, args: &Args) -> Result<bool, String> {
    let out = kit::work_dir();
    let critest = kit::unpack(kit, "critest")?;
    let Some(registry) = Registry::start() else {
        return Err("docker-registry (Debian package docker-registry) is needed".into());
    };
    let t = Instant::now();
    push_images(kit, &out, &registry.host())?;
    println!(
        "conformance: the suite's images are in the registry at {} ({:.1} s)",
        registry.host(),
        t.elapsed().as_secs_f64()
    );
    let mut mirrors = String::new();
    for host in MIRRORED {
        mirrors.push_str(&format!(
            "\n[registries.\"{host}\"]\nmirrors = [\"http://{}\"]\nmirrors_only = true\n",
            registry.host()
        ));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let daemon = rt.block_on(Daemon::start_with(DaemonOptions {
        extra_config: mirrors,
        ..DaemonOptions::default()
    }));
    let mut outcomes = Vec::new();
    for &tr in &args.transports {
        println!("conformance: critest over {} ...", tr.name());
        outcomes.push(run_critest(
            &critest,
            &daemon.socket,
            tr,
            &args.extra,
            &out,
        )?);
    }
    // critest removes what it made; anything left is a failure, removed here so that the
    // fixture's own check (nothing of berthd's left on the host) still runs.
    let leftover = rt.block_on(async {
        let mut c = daemon.cri().await;
        let pods = c
            .runtime
            .list_pod_sandbox(berth_proto::cri::ListPodSandboxRequest { filter: None })
            .await
            .map(|r| r.into_inner().items)
            .unwrap_or_default();
        for p in &pods {
            let id = p.id.clone();
            let _ = c
                .runtime
                .remove_pod_sandbox(berth_proto::cri::RemovePodSandboxRequest {
                    pod_sandbox_id: id,
                })
                .await;
        }
        pods.len()
    });
    let mut all_passed = true;
    for o in &outcomes {
        println!(
            "critest v1.36.0 over {} ({:.0} s, log {}):",
            o.transport.name(),
            o.wall.as_secs_f64(),
            o.log.display()
        );
        for l in &o.summary {
            println!("  {l}");
        }
        for f in &o.failures {
            println!("  {f}");
        }
        all_passed &= o.passed;
    }
    if leftover > 0 {
        println!("critest left {leftover} pod sandboxes behind");
        all_passed = false;
    }
    if !all_passed {
        let log = daemon.log();
        let path = out.join("berthd.log");
        let _ = std::fs::write(&path, &log);
        println!("berthd's log: {}", path.display());
    }
    drop(daemon);
    drop(rt);
    Ok(all_passed)
}

//! berthd: berth's CRI daemon. The only place where `anyhow` and process exit codes live.
//!
//! Startup order: parse and validate the whole config (a bad config exits with EX_USAGE
//! before anything is bound), initialise tracing, log the build line, open the engine
//! (root lock, state db), bind the socket, notify systemd, serve. Shutdown on SIGTERM or
//! SIGINT: stop accepting, drain within the grace period, remove the socket, exit 0.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

use berth_agent::{config, metrics_http, server, shutdown, streaming, telemetry};

mod image_cmd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use config::{Config, Overrides};

/// Exit codes (sysexits.h), so that systemd and operators can tell failures apart.
mod exit {
    pub const USAGE: u8 = 64;
    pub const UNAVAILABLE: u8 = 69;
    pub const SOFTWARE: u8 = 70;
    pub const CHECK_FAILED: u8 = 1;
}

#[derive(Debug, Parser)]
#[command(name = "berthd", version = berth_engine::VERSION, about = "berth: a container runtime for Kubernetes nodes (CRI v1)")]
struct Cli {
    /// Config file (default: /etc/berth/config.toml when it exists, else built-in defaults).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Overrides `root`: persistent state (state db, images, layers).
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Overrides `state`: run state (sockets, netns, exit records).
    #[arg(long, global = true, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Overrides `grpc.listen`: the CRI socket path.
    #[arg(long, global = true, value_name = "SOCKET")]
    listen: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Serve,
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Check that this node has what berth needs, saying how to fix what it lacks; exits
    /// non-zero only if something berth cannot run without is missing.
    Check {
        /// Print the checks as JSON (for automation).
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), as the Debian package installs it.
    #[command(hide = true)]
    Manpage,
    /// Image archives, through the running daemon (for nodes without a registry).
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// The per-pod monitor (started by berthd itself; not for interactive use).
    #[command(hide = true)]
    Monitor {
        #[arg(long)]
        pod: String,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        new_net: Option<PathBuf>,
        #[arg(long)]
        new_ipc: bool,
        #[arg(long, default_value = "")]
        hostname: String,
        /// A line of the pod's uid map, `container:host:size` (gives the pod a user
        /// namespace).
        #[arg(long, value_parser = berth_engine::spec::userns::IdMappings::parse_arg)]
        uid_map: Vec<berth_engine::spec::userns::IdRange>,
        #[arg(long, value_parser = berth_engine::spec::userns::IdMappings::parse_arg)]
        gid_map: Vec<berth_engine::spec::userns::IdRange>,
        /// The program a shared pid namespace's init executes (berthd itself if absent).
        #[arg(long)]
        pod_init: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Import an OCI image layout or `docker save` archive (tar or tar.gz; `-`: stdin).
    /// Every digest is checked; the layers are unpacked as a pull unpacks them.
    Import {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Name for an image the archive leaves unnamed (or an extra name for its one image).
        #[arg(long, value_name = "REF")]
        tag: Option<String>,
    },
    /// Export images as one OCI image layout archive (also readable by `docker load`).
    Export {
        /// The images (names, ids or repo digests), then the file to write (`-`: stdout).
        #[arg(value_name = "IMAGE... FILE", num_args = 2.., required = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the full default config as commented TOML.
    Default,
}

fn main() -> ExitCode {
    // A pod's shared pid namespace's init: a monitor re-executes berthd under this name.
    if std::env::args_os().next().as_deref()
        == Some(std::ffi::OsStr::new(
            berth_engine::monitor::podinit::POD_INIT_NAME,
        ))
    {
        berth_engine::monitor::podinit::pod_init();
    }
    // The sleeper that keeps berth's own delegated scope alive (cgroupfs on systemd).
    if std::env::args_os().next().as_deref()
        == Some(std::ffi::OsStr::new(
            berth_engine::pods::own_scope::KEEPER_NAME,
        ))
    {
        berth_engine::pods::own_scope::keeper();
    }
    let cli = Cli::parse();
    let overrides = Overrides {
        root: cli.root.clone(),
        state: cli.state.clone(),
        listen: cli.listen.clone(),
    };
    match cli.command {
        Some(Command::Config {
            command: ConfigCommand::Default,
        }) => {
            print!("{}", config::DEFAULT_TOML);
            ExitCode::SUCCESS
        }
        Some(Command::Completions { shell }) => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "berthd", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Some(Command::Manpage) => {
            use clap::CommandFactory;
            let cmd = Cli::command();
            match clap_mangen::Man::new(cmd)
                .section("8")
                .manual("berth")
                .render(&mut std::io::stdout())
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("berthd: write the man page: {e}");
                    ExitCode::from(exit::SOFTWARE)
                }
            }
        }
        Some(Command::Check { json }) => check(cli.config.as_deref(), &overrides, json),
        Some(Command::Image { command }) => image(cli.config.as_deref(), &overrides, command),
        Some(Command::Monitor {
            pod,
            dir,
            new_net,
            new_ipc,
            hostname,
            uid_map,
            gid_map,
            pod_init,
        }) => {
            // A fresh exec of berthd, single-threaded from here on: no tokio runtime and no
            // tracing subscriber of the daemon exist in this process.
            let code =
                berth_engine::monitor::entry::main(berth_engine::monitor::entry::MonitorArgs {
                    pod_id: pod,
                    dir,
                    new_net,
                    new_ipc,
                    hostname,
                    userns: (!uid_map.is_empty()).then_some(
                        berth_engine::spec::userns::IdMappings {
                            uids: uid_map,
                            gids: gid_map,
                        },
                    ),
                    pod_init,
                });
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Some(Command::Serve) | None => serve(cli.config.as_deref(), &overrides),
    }
}

fn load(
    path: Option<&std::path::Path>,
    overrides: &Overrides,
) -> Result<(Config, String), ExitCode> {
    Config::load(path, overrides).map_err(|e| {
        eprintln!("berthd: {e}");
        ExitCode::from(exit::USAGE)
    })
}

fn image(path: Option<&std::path::Path>, overrides: &Overrides, cmd: ImageCommand) -> ExitCode {
    let (cfg, _) = match load(path, overrides) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let socket = cfg.grpc.listen.clone();
    let done = match cmd {
        ImageCommand::Import { file, tag } => image_cmd::import(&socket, &file, tag),
        ImageCommand::Export { mut args } => {
            let file = PathBuf::from(args.pop().unwrap_or_default());
            image_cmd::export(&socket, args, &file)
        }
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berthd: {e:#}");
            ExitCode::from(exit::UNAVAILABLE)
        }
    }
}

fn check(path: Option<&std::path::Path>, overrides: &Overrides, json: bool) -> ExitCode {
    let (cfg, origin) = match load(path, overrides) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let checks = berth_engine::linux::probe::run(&berth_engine::linux::probe::ProbeInput {
        root: cfg.root.clone(),
        state: cfg.state.clone(),
        builtin_network: cfg.network.mode == berth_cni::NetworkMode::Builtin,
        cni: (cfg.network.mode == berth_cni::NetworkMode::Cni).then(|| {
            berth_cni::plugin::CniSettings {
                conf_dir: cfg.network.cni_conf_dir.clone(),
                bin_dirs: cfg.network.cni_bin_dirs.clone(),
                cache_dir: cfg.root.join("cni"),
                timeout: Duration::from_secs(60),
            }
        }),
        // Still single-threaded here, as the probe's clone needs.
        kernel: Some(berth_engine::linux::probe::kernel_features(&cfg.root)),
    });
    let mut checks = checks;
    // The systemd driver talks to systemd; so does cgroupfs on a node systemd manages, to
    // make the delegated scope berth's own pods go under.
    if cfg.cgroup.driver == berth_engine::CgroupDriver::Systemd
        || berth_engine::pods::own_scope::systemd_manages_cgroups(
            berth_engine::linux::cgroups::CgroupLayout::detect()
                .ok()
                .as_ref(),
        )
    {
        checks.push(systemd_check(cfg.cgroup.driver));
    }
    let failed = checks.iter().any(|c| c.required && !c.ok);
    if json {
        let v = serde_json::json!({
            "config": origin,
            "ok": !failed,
            "checks": checks,
        });
        println!("{v:#}");
    } else {
        println!("config: {origin}");
        for c in &checks {
            let tag = match (c.ok, c.required) {
                (true, _) => "ok  ",
                (false, true) => "FAIL",
                (false, false) => "warn",
            };
            println!("{tag} {:<12} {}", c.name, c.detail);
            if let Some(f) = &c.fix {
                println!("     {:<12} fix: {f}", "");
            }
        }
    }
    if failed {
        ExitCode::from(exit::CHECK_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

/// systemd answers on the system bus (the systemd driver's scopes, or with cgroupfs the
/// delegated scope of berth's own pods).
fn systemd_check(driver: berth_engine::CgroupDriver) -> berth_engine::linux::probe::Check {
    let what = match driver {
        berth_engine::CgroupDriver::Systemd => "cgroup driver systemd",
        berth_engine::CgroupDriver::Cgroupfs => {
            "cgroup driver cgroupfs on a systemd node (berth's own pods in a delegated scope)"
        }
    };
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(async {
                let sd = berth_engine::systemd::Systemd::connect().await?;
                sd.version().await
            })
            .map_err(|e| e.to_string())
        });
    let ok = answer.is_ok();
    berth_engine::linux::probe::Check {
        name: "systemd".into(),
        required: true,
        ok,
        detail: match answer {
            Ok(v) => format!("{what}: systemd {v} answers on the system bus"),
            Err(e) => e,
        },
        fix: (!ok).then(|| {
            "boot with systemd as PID 1 and install dbus, or set [cgroup] driver = \"cgroupfs\""
                .to_owned()
        }),
    }
}

fn serve(path: Option<&std::path::Path>, overrides: &Overrides) -> ExitCode {
    let (cfg, origin) = match load(path, overrides) {
        Ok(c) => c,
        Err(code) => return code,
    };
    telemetry::init(&cfg.log);
    tracing::info!(build = %telemetry::build_info(), config = %origin, "starting berthd");
    match berth_engine::linux::process::raise_nofile_limit() {
        Ok((from, to)) if from != to => {
            tracing::info!(
                from,
                to,
                "raised the open-file limit (RLIMIT_NOFILE) to its hard limit; containers keep the original"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
    // Before any thread exists: few malloc arenas, so that freed memory can go back.
    berth_engine::linux::sys::limit_malloc_arenas(2);
    // Before the runtime's threads exist: the probe clones a child.
    let kernel = berth_engine::linux::probe::kernel_features(&cfg.root);
    tracing::info!(?kernel, "kernel features");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("berthd")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(exit::SOFTWARE);
        }
    };
    match runtime.block_on(run(cfg, kernel)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, error }) => {
            tracing::error!("{error:#}");
            ExitCode::from(code)
        }
    }
}

#[derive(Debug)]
struct Failure {
    code: u8,
    error: anyhow::Error,
}

fn fail(code: u8) -> impl FnOnce(anyhow::Error) -> Failure {
    move |error| Failure { code, error }
}

async fn run(
    cfg: Config,
    kernel: berth_engine::linux::probe::KernelFeatures,
) -> Result<(), Failure> {
    let engine_cfg = berth_engine::EngineConfig {
        kernel,
        ..cfg.engine()
    };
    let engine = tokio::task::spawn_blocking(move || berth_engine::Engine::open(engine_cfg))
        .await
        .map_err(|e| anyhow::anyhow!("engine start task: {e}"))
        .map_err(fail(exit::SOFTWARE))?;
    let engine = match engine {
        Ok(e) => Arc::new(e),
        Err(e) => {
            let code = match e.kind() {
                berth_engine::ErrorKind::FailedPrecondition => exit::UNAVAILABLE,
                _ => exit::SOFTWARE,
            };
            return Err(Failure {
                code,
                error: anyhow::Error::new(e).context("cannot open the engine"),
            });
        }
    };
    if engine.cgroup_driver() == berth_engine::CgroupDriver::Systemd {
        // The driver cannot work without systemd: say so now, not at the first pod.
        match engine.systemd_version().await {
            Ok(v) => tracing::info!(systemd = %v, "cgroup driver systemd: connected to systemd"),
            Err(e) => {
                return Err(Failure {
                    code: exit::UNAVAILABLE,
                    error: anyhow::Error::new(e).context("cgroup driver systemd"),
                });
            }
        }
    }
    if let Err(e) = engine.recover_pods().await {
        tracing::error!(error = %e, "pod recovery failed; continuing with what could be read");
    }
    // The containers' disk usage is measured in the background, so that kubelet's stats
    // rounds walk no directory (containerd's stats_collect_period).
    if let Err(e) = berth_engine::Engine::spawn_disk_usage_sync(&engine) {
        tracing::warn!(error = %e, "no thread for measuring disk usage; stats calls will measure it");
    }
    // Freed memory goes back to the kernel every 10 s (a peak of connections, streams or
    // pulls leaves free pages in malloc's arenas that it would otherwise keep).
    tokio::spawn(async {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let _ =
                tokio::task::spawn_blocking(berth_engine::linux::sys::release_free_memory).await;
        }
    });
    // The metrics port first: if it is taken, berthd stops before touching the socket.
    let metrics_task = match cfg.metrics.listen.0 {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| Failure {
                code: exit::UNAVAILABLE,
                error: anyhow::anyhow!(
                    "cannot listen for metrics on {addr}: {e} (set [metrics] listen to another address, or \"\" to turn it off)"
                ),
            })?;
            let bound = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(addr = %bound, "metrics endpoint listening");
            Some(tokio::spawn(metrics_http::serve(l, engine.clone())))
        }
        None => None,
    };
    let (streaming, streaming_task) = streaming::Streaming::start(
        cfg.streaming.listen,
        Duration::from_secs(cfg.streaming.token_ttl_seconds),
        (cfg.streaming.idle_timeout_seconds > 0)
            .then(|| Duration::from_secs(cfg.streaming.idle_timeout_seconds)),
        engine.clone(),
    )
    .await
    .map_err(|e| Failure {
        code: exit::UNAVAILABLE,
        error: anyhow::anyhow!(
            "cannot listen for streams on {}: {e} (set [streaming] listen to another address)",
            cfg.streaming.listen
        ),
    })?;
    tracing::info!(addr = %streaming.base(), "streaming server listening");
    let listener = server::bind(&cfg.grpc.listen).await.map_err(|e| {
        let code = match e {
            server::BindError::InUse(_) => exit::UNAVAILABLE,
            server::BindError::Io { .. } => exit::SOFTWARE,
        };
        Failure {
            code,
            error: anyhow::Error::new(e),
        }
    })?;
    tracing::info!(socket = %cfg.grpc.listen.display(), "CRI server listening");
    if let Some(dir) = cfg.images.preload_dir.clone() {
        tokio::spawn(berth_engine::images::preload::run(engine.clone(), dir));
    }
    let config_json = serde_json::to_string(&cfg)
        .context("serialize config")
        .map_err(fail(exit::SOFTWARE))?;

    let (signal_tx, signal_rx) = tokio::sync::oneshot::channel::<&'static str>();
    let signals = shutdown::terminated();
    tokio::spawn(async move {
        match signals.await {
            Ok(name) => {
                let _ = signal_tx.send(name);
            }
            Err(e) => tracing::error!(error = %e, "cannot listen for signals"),
        }
    });
    let shutdown_signal = async move {
        if let Ok(name) = signal_rx.await {
            tracing::info!(signal = name, "shutting down: no new calls accepted");
            let _ = shutdown::sd_notify("STOPPING=1");
        }
    };

    match shutdown::sd_notify("READY=1") {
        Ok(true) => tracing::info!("notified systemd: ready"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "sd_notify READY=1 failed"),
    }
    let grace = Duration::from_secs(cfg.grpc.shutdown_grace_seconds);
    let served = server::serve(
        listener,
        engine.clone(),
        config_json,
        streaming,
        shutdown_signal,
        grace,
    )
    .await;
    streaming_task.abort();
    if let Err(e) = std::fs::remove_file(&cfg.grpc.listen) {
        tracing::warn!(socket = %cfg.grpc.listen.display(), error = %e, "cannot remove socket");
    }
    served
        .context("CRI server failed")
        .map_err(fail(exit::SOFTWARE))?;
    if let Some(t) = metrics_task {
        t.abort();
        let _ = t.await;
    }
    drop(engine);
    tracing::info!("berthd stopped; containers keep running under their monitors");
    Ok(())
}

//! The one logging stack: a `tracing` subscriber writing text or JSON to stderr.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. `RUST_LOG`, when set, overrides the configured level.
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::builder().parse(cfg.level.as_str()))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true);
    let result = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A subscriber already installed (tests) is fine.
    let _ = result;
}

/// The build line logged at start and reported by `berthd --version`.
pub fn build_info() -> String {
    format!(
        "berthd {} (git {}, rustc target {})",
        berth_engine::VERSION,
        env!("BERTH_GIT_SHA"),
        std::env::consts::ARCH
    )
}

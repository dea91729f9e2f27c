//! Signalling processes by pid, safely: berth keeps pids as u32 (0 for "none"), and
//! `kill(0, sig)` would signal berthd's own process group, so 0 (or a pid out of range) is
//! never passed to the kernel.

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Sends `sig` to process `pid`. False when there is no such process or `pid` is not a
/// process id at all (0, or beyond i32): nothing is sent then.
pub fn signal(pid: u32, sig: Signal) -> bool {
    match i32::try_from(pid) {
        Ok(p) if p > 0 => nix::sys::signal::kill(Pid::from_raw(p), sig).is_ok(),
        _ => false,
    }
}

/// SIGKILLs every process listed in the `cgroup.procs` of these cgroup directories;
/// how many were signalled.
pub fn kill_cgroup_procs(dirs: &[std::path::PathBuf]) -> usize {
    let mut n = 0;
    for d in dirs {
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            n += usize::from(signal(pid, Signal::SIGKILL));
        }
    }
    n
}

/// The environment variable through which berthd hands its original RLIMIT_NOFILE soft
/// limit to the monitors it starts, which restore it: containers get the limit berthd was
/// started with, not the one berthd raised for itself.
pub const NOFILE_ENV: &str = "BERTH_NOFILE_SOFT";

static ORIGINAL_NOFILE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Raises this process's RLIMIT_NOFILE soft limit to its hard limit (berthd holds a socket
/// per client, stream and pod; the usual soft limit of 1024 is easily reached), remembering
/// the original for [`original_nofile`]. Returns (original soft, new soft).
pub fn raise_nofile_limit() -> nix::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let _ = ORIGINAL_NOFILE.set(soft);
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((soft, hard.max(soft)))
}

/// The soft RLIMIT_NOFILE berthd started with, when it raised its own.
pub fn original_nofile() -> Option<u64> {
    ORIGINAL_NOFILE.get().copied()
}

/// In a monitor: restores the soft RLIMIT_NOFILE that berthd was started with (handed over
/// in [`NOFILE_ENV`]), so that its containers inherit that one.
pub fn restore_nofile_from_env() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Some(soft) = std::env::var(NOFILE_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_out_of_range_pids_are_never_signalled() {
        // kill(0, SIGKILL) would end this very process group: the test surviving is the
        // assertion, besides the answers.
        assert!(!signal(0, Signal::SIGKILL));
        assert!(!signal(u32::MAX, Signal::SIGKILL));
        // Signal 0 checks a pid exists.
        assert!(signal(std::process::id(), Signal::SIGCONT));
    }
}

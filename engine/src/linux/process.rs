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

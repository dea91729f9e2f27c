//! Running OCI hooks: each hook a process of its own (in a process group of its own, so
//! that a timeout kills what it started too), with exactly the environment the spec gives
//! it, the container's state on stdin, and its output kept (the last few KiB) for the
//! error a failure reports. No threads: the monitor and the container's child that run
//! hooks are single-threaded, so one poll loop feeds stdin and drains the output.
//!
//! Where each point runs is `spec::hooks`'s business; this only runs them.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::spec::hooks::{Hook, Hooks, Point};

/// How much of a hook's output an error quotes.
const OUTPUT_TAIL: usize = 2048;

/// Runs the hooks of `point` in order; the first that fails ends the run with an error
/// naming the point, the hook and why.
pub fn run_point(point: Point, hooks: &Hooks, id: &str, pid: Option<i32>) -> Result<(), String> {
    let list = hooks.at(point);
    if list.is_empty() {
        return Ok(());
    }
    let state = hooks.state(id, point, pid);
    for h in list {
        run_one(h, state.as_bytes())
            .map_err(|e| format!("{} hook {}: {e}", point.name(), h.path))?;
    }
    Ok(())
}

/// Every hook of `point`, whatever fails (poststart, poststop: the OCI spec has them
/// logged, not fatal); the failures' messages.
pub fn run_point_all(point: Point, hooks: &Hooks, id: &str, pid: Option<i32>) -> Vec<String> {
    let state = hooks.state(id, point, pid);
    hooks
        .at(point)
        .iter()
        .filter_map(|h| {
            run_one(h, state.as_bytes())
                .err()
                .map(|e| format!("{} hook {}: {e}", point.name(), h.path))
        })
        .collect()
}

fn nonblocking(fd: impl AsFd) -> Result<(), String> {
    let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL).map_err(|e| format!("F_GETFL: {e}"))?;
    fcntl(
        fd.as_fd(),
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(|e| format!("F_SETFL: {e}"))?;
    Ok(())
}

/// The last `OUTPUT_TAIL` bytes written to it.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
        if self.0.len() > OUTPUT_TAIL {
            self.0.drain(..self.0.len() - OUTPUT_TAIL);
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).trim().to_owned()
    }
}

fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id())
        && pid > 0
    {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn run_one(h: &Hook, state: &[u8]) -> Result<(), String> {
    let argv = h.argv();
    let mut cmd = Command::new(&h.path);
    cmd.arg0(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for kv in &h.env {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot run it: {e}"))?;
    let timeout = Duration::from_secs(u64::from(h.timeout_secs()));
    let deadline = Instant::now() + timeout;
    let file = |fd: Option<OwnedFd>| fd.map(std::fs::File::from);
    let (mut stdin, mut stdout, mut stderr) = (
        file(child.stdin.take().map(OwnedFd::from)),
        file(child.stdout.take().map(OwnedFd::from)),
        file(child.stderr.take().map(OwnedFd::from)),
    );
    for r in [
        stdin.as_ref().map(nonblocking),
        stdout.as_ref().map(nonblocking),
        stderr.as_ref().map(nonblocking),
    ]
    .into_iter()
    .flatten()
    {
        if let Err(e) = r {
            kill_group(&mut child);
            return Err(e);
        }
    }
    let mut written = 0;
    let mut tail = Tail::default();
    let mut buf = [0u8; 4096];
    let timed_out = |child: &mut Child| {
        kill_group(child);
        Err(format!(
            "did not finish within {}s; killed",
            timeout.as_secs()
        ))
    };
    while stdin.is_some() || stdout.is_some() || stderr.is_some() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return timed_out(&mut child);
        }
        let wait =
            PollTimeout::try_from(left.min(Duration::from_secs(30))).unwrap_or(PollTimeout::MAX);
        let (mut in_ev, mut out_ev, mut err_ev) = (None, None, None);
        {
            let mut fds = Vec::with_capacity(3);
            if let Some(f) = &stdin {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLOUT));
            }
            if let Some(f) = &stdout {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
            }
            if let Some(f) = &stderr {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, wait) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    kill_group(&mut child);
                    return Err(format!("poll its pipes: {e}"));
                }
            }
            let mut it = fds
                .iter()
                .map(|f| f.revents().unwrap_or(PollFlags::empty()));
            if stdin.is_some() {
                in_ev = it.next();
            }
            if stdout.is_some() {
                out_ev = it.next();
            }
            if stderr.is_some() {
                err_ev = it.next();
            }
        }
        if in_ev.is_some_and(|e| !e.is_empty())
            && let Some(f) = stdin.as_mut()
        {
            match f.write(&state[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                // It closed its stdin without reading all of the state: its choice.
                Err(_) => written = state.len(),
            }
            if written >= state.len() {
                stdin = None;
            }
        }
        for (ev, pipe) in [(out_ev, &mut stdout), (err_ev, &mut stderr)] {
            if ev.is_none_or(|e| e.is_empty()) {
                continue;
            }
            if let Some(f) = pipe.as_mut() {
                match f.read(&mut buf) {
                    Ok(0) => *pipe = None,
                    Ok(n) => tail.push(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => *pipe = None,
                }
            }
        }
        // Pipes a hook closed are done; those of an exited hook whose children keep them
        // open must not hold the start up: stop reading once the hook itself has exited.
        if stdin.is_none()
            && let Ok(Some(_)) = child.try_wait()
        {
            break;
        }
    }
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() >= deadline => return timed_out(&mut child),
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(format!("wait: {e}")),
        }
    };
    if status.success() {
        return Ok(());
    }
    let how = match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    };
    let out = tail.text();
    Err(if out.is_empty() {
        how
    } else {
        format!("{how}: {out}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: Option<u32>) -> Hook {
        Hook {
            path: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec!["WHO=hook".into()],
            timeout,
        }
    }

    fn hooks(point: &str, h: Hook) -> Hooks {
        let mut all = Hooks {
            bundle: "/b".into(),
            ..Default::default()
        };
        all.add(point, h).unwrap();
        all
    }

    #[test]
    fn a_hook_reads_the_state_and_gets_only_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        let (state, env) = (dir.path().join("state"), dir.path().join("env"));
        let h = hooks(
            "createRuntime",
            sh(
                &format!(
                    "cat > {}; echo \"$WHO:$HOME\" > {}",
                    state.display(),
                    env.display()
                ),
                None,
            ),
        );
        run_point(Point::CreateRuntime, &h, "c1", Some(7)).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
        assert_eq!(v["id"], "c1");
        assert_eq!(v["pid"], 7);
        assert_eq!(v["status"], "creating");
        assert_eq!(v["bundle"], "/b");
        assert_eq!(std::fs::read_to_string(&env).unwrap(), "hook:\n");
    }

    #[test]
    fn a_failing_hook_is_named_with_its_output() {
        let h = hooks("createContainer", sh("echo no GPU here >&2; exit 3", None));
        let e = run_point(Point::CreateContainer, &h, "c1", Some(1)).unwrap_err();
        assert!(
            e.starts_with("createContainer hook /bin/sh: exit status 3"),
            "{e}"
        );
        assert!(e.contains("no GPU here"), "{e}");
        let missing = hooks(
            "startContainer",
            Hook {
                path: "/nonexistent/hook".into(),
                ..Default::default()
            },
        );
        let e = run_point(Point::StartContainer, &missing, "c1", Some(1)).unwrap_err();
        assert!(e.contains("/nonexistent/hook: cannot run it"), "{e}");
    }

    #[test]
    fn a_hook_over_its_timeout_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let h = hooks(
            "prestart",
            sh(
                &format!("sleep 30 & echo $! > {}; wait", pidfile.display()),
                Some(1),
            ),
        );
        let t = Instant::now();
        let e = run_point(Point::Prestart, &h, "c1", Some(1)).unwrap_err();
        assert!(e.contains("did not finish within 1s"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
        let bg: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background sleep went with the group (a zombie at most until init reaps it).
        std::thread::sleep(Duration::from_millis(100));
        let alive = std::fs::read_to_string(format!("/proc/{bg}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false);
        assert!(!alive, "background process {bg} survived the timeout");
    }

    #[test]
    fn poststop_failures_are_all_reported_and_do_not_stop_the_rest() {
        let mut h = hooks("poststop", sh("exit 1", None));
        h.add("poststop", sh("exit 0", None)).unwrap();
        h.add("poststop", sh("exit 2", None)).unwrap();
        let errs = run_point_all(Point::Poststop, &h, "c1", None);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[1].contains("exit status 2"));
    }
}

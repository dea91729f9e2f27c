//! ExecSync: a process run in a running container, its exit code and output collected.

use std::cell::RefCell;
use std::rc::Rc;

use berth_proto::monitor::{self as proto, Frame, frame::Body};
use nix::sys::signal::Signal;

use super::entry::{Shared, error_frame};
use super::session::STDERR;
use super::stdio::{self, Source};
use crate::linux::spawn;

/// Reads a stream into a shared buffer until end of file, keeping at most `limit` bytes.
async fn collect(mut src: Source, buf: Rc<RefCell<Vec<u8>>>, limit: usize) {
    let mut chunk = super::stdio::ReadBuffer::new(16 * 1024);
    loop {
        match chunk.read_from(&mut src).await {
            Ok([]) | Err(_) => break,
            Ok(data) => {
                let mut b = buf.borrow_mut();
                let room = limit.saturating_sub(b.len());
                b.extend_from_slice(&data[..data.len().min(room)]);
            }
        }
    }
}

/// ExecSync: runs a process in a running container and returns its exit code and output.
/// On timeout the process's whole session is killed. The answer comes when the process
/// exits, even if a background child keeps its output open (after a short grace for the
/// last bytes).
pub(super) async fn exec(state: Shared, id: u64, e: proto::Exec) -> Frame {
    let spec = match super::wire::exec_of(e.exec_spec.as_ref(), &e.exec_spec_json) {
        Ok(s) => s,
        Err(err) => return error_frame(id, crate::ErrorKind::InvalidArgument, err.to_string()),
    };
    let (target, cgroups) =
        match super::entry::exec_target(&state, &e.container_id, &spec.cgroup_dirs) {
            Ok(t) => t,
            Err((kind, msg)) => return error_frame(id, kind, msg),
        };
    let (stdio, pending) = match stdio::prepare(false, false) {
        Ok(p) => p,
        Err((kind, msg)) => return error_frame(id, kind, msg),
    };
    let (waiter, pid) = match spawn::spawn_exec(target, &cgroups, &spec, stdio) {
        Ok(p) => p,
        Err(err) => return error_frame(id, crate::ErrorKind::FailedPrecondition, err.to_string()),
    };
    let streams = match pending.finish(pid, 0, 0) {
        Ok(s) => s,
        Err((kind, msg)) => {
            // Started, but with no streams to serve: it must not run on unseen.
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(waiter, None);
            return error_frame(id, kind, msg);
        }
    };
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    // The exec process is our direct child: its exit is reaped as any other.
    state.borrow_mut().execs.insert(waiter.as_raw(), tx);
    let limit = usize::try_from(e.output_limit).unwrap_or(usize::MAX).max(1);
    let (out, err) = (
        Rc::new(RefCell::new(Vec::new())),
        Rc::new(RefCell::new(Vec::new())),
    );
    let readers: Vec<_> = streams
        .outputs
        .into_iter()
        .map(|(stream, src)| {
            let buf = if stream == STDERR {
                err.clone()
            } else {
                out.clone()
            };
            tokio::task::spawn_local(collect(src, buf, limit))
        })
        .collect();
    let mut timed_out = false;
    let code = if e.timeout_ms > 0 {
        let d = std::time::Duration::from_millis(u64::try_from(e.timeout_ms).unwrap_or(0));
        match tokio::time::timeout(d, &mut rx).await {
            Ok(r) => r.unwrap_or(-1),
            Err(_) => {
                timed_out = true;
                let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                rx.await.unwrap_or(-1)
            }
        }
    } else {
        rx.await.unwrap_or(-1)
    };
    // The last bytes may still be in the pipes; a background child may hold them open.
    for r in readers {
        let _ = tokio::time::timeout(std::time::Duration::from_millis(100), r).await;
    }
    let (stdout, stderr) = (out.borrow().clone(), err.borrow().clone());
    Frame {
        id,
        body: Some(Body::ExecResult(proto::ExecResult {
            exit_code: code,
            stdout,
            stderr,
            timed_out,
        })),
    }
}

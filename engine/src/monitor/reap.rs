//! Reaping the monitor's children: a container's exit is recorded on disk (an encoded
//! ExitRecord) before it is told to anyone, since berthd may be down.

use berth_proto::monitor::{self as proto, Frame, frame::Body};
use nix::sys::wait::{WaitPidFlag, WaitStatus};

use super::entry::{Shared, exits_dir};
use crate::clock::now_nanos;

/// Reaps every exited child; records and reports container exits.
pub(super) fn reap(state: &Shared) {
    loop {
        let status = match nix::sys::wait::waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(s) => s,
        };
        let (pid, code, signal) = match status {
            WaitStatus::Exited(pid, code) => (pid, code, 0),
            WaitStatus::Signaled(pid, sig, _) => (pid, 128 + sig as i32, sig as i32),
            _ => continue,
        };
        let mut st = state.borrow_mut();
        if let Some(tx) = st.execs.remove(&pid.as_raw()) {
            let _ = tx.send(code);
            continue;
        }
        if st.pod_init.as_ref().is_some_and(|i| i.pid == pid) {
            // Its namespace is gone with it; the next container of mode POD makes another.
            super::entry::log(
                &st.dir,
                &format!("the pod's init (pid {pid}) exited with {code}"),
            );
            st.pod_init = None;
            continue;
        }
        let Some(id) = st
            .running
            .iter()
            .find(|(_, r)| r.pid == pid)
            .map(|(id, _)| id.clone())
        else {
            continue; // an orphan reparented to us, or an exec helper
        };
        let Some(r) = st.running.remove(&id) else {
            continue;
        };
        let oom_killed = r.oom.verdict(signal);
        crate::linux::process::kill_cgroup_procs(&r.shared_pid_cgroups);
        let exited = proto::Exited {
            container_id: id.clone(),
            pid: pid.as_raw().unsigned_abs(),
            exit_code: code,
            signal,
            finished_at: now_nanos(),
            oom_killed,
        };
        // On disk first: berthd may be down right now.
        let path = super::wire::exit_record_path(&exits_dir(&st.dir), &id);
        if let Err(e) = crate::durable::write_atomic(&path, &super::wire::encode_exit(&exited)) {
            super::entry::log(&st.dir, &format!("record exit of {id}: {e}"));
        }
        drop(r.log);
        let ev = Frame {
            id: 0,
            body: Some(Body::Exited(exited)),
        };
        st.clients.retain(|c| c.send(ev.clone()).is_ok());
    }
}

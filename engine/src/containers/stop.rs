//! StopContainer.

use std::time::Duration;

use berth_proto::monitor::{self as mproto, frame::Body};

use super::parse_signal;
use crate::Engine;
use crate::clock::now_nanos;
use crate::error::Result;
use crate::monitor::client;
use crate::state::records::{ContainerRecord, ContainerState};

impl Engine {
    /// StopContainer: the stop signal, then SIGKILL after `timeout` seconds. Idempotent: a stopped or unknown container is not an error (kubelet
    /// retries stops after crashes, of containers that may be gone).
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let Some(c) = self.db.container_get(id)? else {
            return Ok(());
        };
        let _pg = self.locks.lock(&c.pod_id).await;
        self.stop_container_locked(id, timeout).await
    }

    pub(crate) async fn stop_container_locked(&self, id: &str, timeout: i64) -> Result<()> {
        let _g = self.locks.lock(id).await;
        let Some(mut c) = self.db.container_get(id)? else {
            return Ok(()); // removed while we waited for the lock
        };
        match c.state {
            ContainerState::Exited => return Ok(()),
            ContainerState::Created => {
                c.reason = "Stopped".into();
                self.transition_container(&mut c, ContainerState::Exited, now_nanos())?;
                return Ok(());
            }
            ContainerState::Running => {}
        }
        let pod = self.pod(&c.pod_id)?;
        let sig = parse_signal(&c.stop_signal).unwrap_or(nix::sys::signal::Signal::SIGTERM);
        let send = |s: nix::sys::signal::Signal| {
            client::request(
                &pod.dir,
                Body::Signal(mproto::Signal {
                    container_id: id.to_owned(),
                    signal: s as i32,
                }),
            )
        };
        if timeout > 0 {
            let _ = send(sig).await;
            if self
                .wait_exited(&c, Duration::from_secs(u64::try_from(timeout).unwrap_or(0)))
                .await
            {
                return Ok(());
            }
        }
        let _ = send(nix::sys::signal::Signal::SIGKILL).await;
        if self.wait_exited(&c, Duration::from_secs(10)).await {
            return Ok(());
        }
        // The monitor did not answer: kill through the cgroup and record it ourselves.
        if let Ok(cg) = self.cgroup_manager() {
            crate::pods::empty_cgroup(&cg, &c.cgroup).await;
        }
        if !self.apply_exit_file(&c)? {
            self.record_exit(id, 137, 9, now_nanos(), false)?;
        }
        Ok(())
    }

    async fn wait_exited(&self, c: &ContainerRecord, d: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            // Registered before the check, so an exit recorded in between still wakes us.
            let notified = self.exits.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Ok(Some(now)) = self.db.container_get(&c.id)
                && now.state == ContainerState::Exited
            {
                return true;
            }
            if self.apply_exit_file(c).unwrap_or(false) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            // Exit events wake us at once; the timer covers a monitor that cannot send one.
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }
}

//! StartContainer.

use berth_proto::monitor::frame::Body;

use crate::Engine;
use crate::clock::now_nanos;
use crate::error::{Error, Result};
use crate::monitor::{client, wire};
use crate::state::records::{ContainerState, PodState};

impl Engine {
    /// StartContainer.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        let c = self.container(id)?;
        let _pg = self.locks.lock(&c.pod_id).await;
        let _g = self.locks.lock(id).await;
        let mut c = self.container(id)?;
        if !c.state.can_start() {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is {:?}, not Created",
                c.state
            )));
        }
        let pod = self.pod(&c.pod_id)?;
        if pod.state != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        let mut start = wire::start_request(
            pod.monitor_protocol,
            &c.launch,
            pod.log_directory.clone(),
            c.log_path.clone(),
            c.oom_file.clone(),
        )
        .map_err(|e| Error::Internal(e.to_string()))?;
        if let Some(checkpoint) = &c.restore_from {
            self.criu().await?;
            start.restore = Some((&self.restore_spec(&c, &pod, checkpoint)?).into());
        }

        crate::fail_point!("start_container.before_monitor");
        let r = if super::scope::is_scope(&c.cgroup) {
            self.start_in_scope(&c, &pod.dir, start).await
        } else {
            client::request(&pod.dir, Body::Start(Box::new(start))).await
        };
        if let Some(d) = &c.restore_from {
            // CRIU's images hold every page of the checkpointed memory: gone once the
            // monitor has answered, whatever it said (CRIU's restore.log stays, beside the
            // metadata). A start cut short keeps them until the container is removed.
            let _ = std::fs::remove_dir_all(d.join(super::checkpoint::IMAGES_DIR));
            let _ = std::fs::remove_file(d.join(super::checkpoint::ROOTFS_DIFF));
        }
        match r {
            Ok(Body::Started(s)) => {
                crate::fail_point!(async "start_container.started");
                c.pid = s.pid;
                self.transition_container(&mut c, ContainerState::Running, s.started_at)?;
                tracing::info!(container_id = %id, pid = s.pid, "container started");
                // An exit the monitor reported before Running was written found the
                // container Created and was not recorded; its exit record was written
                // before the report, so it is on disk now.
                if let Err(e) = self.apply_exit_file(&c) {
                    tracing::warn!(container_id = %id, error = %e, "cannot read the container's exit record");
                    // Lists look for it on disk again, as after an exit not recorded.
                    self.follow(&c.pod_id, false);
                }
                Ok(())
            }
            Ok(other) => Err(Error::Internal(format!(
                "monitor answered {other:?} to Start"
            ))),
            Err(e) => {
                let msg = e.to_string();
                c.exit_code = 128;
                c.reason = "StartError".into();
                c.message = msg.clone();
                let now = now_nanos();
                c.started_at = now;
                self.transition_container(&mut c, ContainerState::Exited, now)?;
                tracing::warn!(container_id = %id, error = %msg, "container failed to start");
                Err(Error::FailedPrecondition(format!(
                    "container {id}: start failed: {msg}"
                )))
            }
        }
    }
}

impl Engine {
    /// Start with the systemd driver: while the monitor spawns the container, its child
    /// waits on berthd's socket until its scope is made; then it goes on. A scope that
    /// cannot be made fails the start with systemd's reason (the child reads end of file
    /// and fails too).
    async fn start_in_scope(
        &self,
        c: &crate::state::records::ContainerRecord,
        pod_dir: &std::path::Path,
        start: berth_proto::monitor::Start,
    ) -> std::result::Result<Body, crate::monitor::client::MonitorError> {
        let listener = match self.park_listen(c) {
            Ok(l) => l,
            Err(e) => {
                return Err(crate::monitor::client::MonitorError::Remote {
                    kind: e.kind(),
                    message: e.to_string(),
                });
            }
        };
        let req = client::request(pod_dir, Body::Start(Box::new(start)));
        tokio::pin!(req);
        let placed = tokio::select! {
            r = &mut req => {
                // The monitor answered before the child reached us: it failed early.
                cleanup_park(c);
                return r;
            }
            p = self.place_in_scope(c, listener) => p,
        };
        let r = req.await;
        cleanup_park(c);
        match placed {
            Ok(()) => r,
            Err(e) => {
                tracing::warn!(container_id = %c.id, error = %e, "cannot place the container in its systemd scope");
                Err(crate::monitor::client::MonitorError::Remote {
                    kind: e.kind(),
                    message: e.to_string(),
                })
            }
        }
    }
}

fn cleanup_park(c: &crate::state::records::ContainerRecord) {
    if let Some(p) = &c.launch.cgroup_park {
        let _ = std::fs::remove_file(p);
    }
}

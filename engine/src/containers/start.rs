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
        let start = wire::start_request(
            pod.monitor_protocol,
            &c.launch,
            pod.log_directory.clone(),
            c.log_path.clone(),
            c.oom_file.clone(),
        )
        .map_err(|e| Error::Internal(e.to_string()))?;
        crate::fail_point!("start_container.before_monitor");
        let r = client::request(&pod.dir, Body::Start(start)).await;
        match r {
            Ok(Body::Started(s)) => {
                crate::fail_point!("start_container.started");
                c.pid = s.pid;
                self.transition_container(&mut c, ContainerState::Running, s.started_at)?;
                tracing::info!(container_id = %id, pid = s.pid, "container started");
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

//! StopPodSandbox.

use super::Scope;
use crate::Engine;
use crate::error::Result;
use crate::state::records::{ContainerState, PodState};

impl Engine {
    /// StopPodSandbox: stops the pod's running containers, then tears the pod down as far
    /// as a stop goes (processes, network and leases, mounts). Idempotent; an unknown id is
    /// not an error. The pod is NOTREADY afterwards even when a step failed (its processes
    /// are gone by then); the failure is returned, and a retry does what is left.
    pub async fn stop_pod(&self, id: &str) -> Result<()> {
        let _g = self.locks.lock(id).await;
        let Some(mut pod) = self.db.pod_get(id)? else {
            return Ok(());
        };
        for c in self.db.container_list()? {
            if c.pod_id == pod.id && c.state == ContainerState::Running {
                self.stop_container_locked(&c.id, 0).await?;
            }
        }
        crate::fail_point!("stop_pod.containers_stopped");
        let torn = self.teardown_pod(&mut pod, Scope::Stop).await;
        crate::fail_point!("stop_pod.torn_down");
        if !self.transition_pod(&mut pod, PodState::NotReady, "")? {
            self.db.pod_put(&pod)?;
        }
        torn?;
        tracing::info!(pod_id = %id, "pod sandbox stopped");
        Ok(())
    }
}

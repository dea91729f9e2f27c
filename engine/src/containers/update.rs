//! UpdateContainerResources and ReopenContainerLog.

use crate::api;
use berth_proto::monitor::{self as mproto, frame::Body};

use super::resource_request;
use crate::Engine;
use crate::error::{Error, Result};
use crate::monitor::client;
use crate::spec::resources;
use crate::state::records::ContainerState;

impl Engine {
    /// UpdateContainerResources: applies new limits to the container's cgroup at once and
    /// keeps them in its record.
    pub async fn update_container_resources(
        &self,
        id: &str,
        r: &api::LinuxContainerResources,
    ) -> Result<()> {
        let _g = self.locks.lock(id).await;
        let mut c = self.container(id)?;
        if c.state == ContainerState::Exited {
            return Err(Error::FailedPrecondition(format!(
                "container {id} has exited"
            )));
        }
        let res = resources::resources(&resource_request(r))?;
        if super::scope::is_scope(&c.cgroup) {
            // A scope exists from the start on; before, the record's limits are what the
            // start will make it with.
            if c.state == ContainerState::Running {
                self.set_unit_resources(&c.cgroup, &res).await?;
                self.cgroup_manager()?.apply(&c.cgroup, &res)?;
            }
        } else {
            self.cgroup_manager()?.apply(&c.cgroup, &res)?;
        }
        c.launch.oom_score_adj = res.oom_score_adj;
        // Unset fields keep their previous values, as in the cgroup.
        let old = std::mem::take(&mut c.resources);
        c.resources = crate::spec::resources::Resources {
            cpu_shares: res.cpu_shares.or(old.cpu_shares),
            cpu_quota: res.cpu_quota.or(old.cpu_quota),
            cpu_period: res.cpu_period.or(old.cpu_period),
            cpuset_cpus: res.cpuset_cpus.clone().or(old.cpuset_cpus),
            cpuset_mems: res.cpuset_mems.clone().or(old.cpuset_mems),
            memory_limit: res.memory_limit.or(old.memory_limit),
            memory_swap_limit: res.memory_swap_limit.or(old.memory_swap_limit),
            pids_limit: res.pids_limit.or(old.pids_limit),
            hugepages: if res.hugepages.is_empty() {
                old.hugepages
            } else {
                res.hugepages.clone()
            },
            unified: if res.unified.is_empty() {
                old.unified
            } else {
                res.unified.clone()
            },
            oom_score_adj: res.oom_score_adj.or(old.oom_score_adj),
        };
        self.db.container_put(&c)?;
        tracing::info!(container_id = %id, "container resources updated");
        Ok(())
    }

    /// ReopenContainerLog.
    pub async fn reopen_container_log(&self, id: &str) -> Result<()> {
        let c = self.container(id)?;
        if c.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        client::request(
            &self.pod_dir(&c.pod_id),
            Body::ReopenLog(mproto::ReopenLog {
                container_id: id.to_owned(),
            }),
        )
        .await?;
        Ok(())
    }
}

//! RemovePodSandbox.

use super::Scope;
use crate::Engine;
use crate::clock::now_nanos;
use crate::error::Result;
use crate::events::EventKind;

impl Engine {
    /// RemovePodSandbox: stops the pod if needed, removes its containers, then everything
    /// the pod had on the node (cgroups, run directory) and its record. Idempotent.
    pub async fn remove_pod(&self, id: &str) -> Result<()> {
        if self.db.pod_get(id)?.is_none() {
            return Ok(());
        }
        self.stop_pod(id).await?;
        let _g = self.locks.lock(id).await;
        let Some(mut pod) = self.db.pod_get(id)? else {
            return Ok(());
        };
        let cg = self.cgroup_manager()?;
        for c in self.db.container_list()? {
            if c.pod_id == pod.id {
                // Processes its main process left (it shared a pid namespace) go with it.
                super::empty_cgroup(&cg, &c.cgroup).await;
                crate::containers::remove::run_poststop_hooks(&c).await;
                self.remove_container_files(&c).await?;
                self.db.container_remove(&c.id)?;
                self.events.emit(&c.id, id, EventKind::Deleted, now_nanos());
            }
        }
        crate::fail_point!("remove_pod.containers_removed");
        self.teardown_pod(&mut pod, Scope::Remove).await?;
        crate::fail_point!("remove_pod.torn_down");
        self.db.pod_remove(id)?;
        self.events.emit(id, id, EventKind::Deleted, now_nanos());
        tracing::info!(pod_id = %id, "pod sandbox removed");
        self.collect_garbage()?;
        Ok(())
    }
}

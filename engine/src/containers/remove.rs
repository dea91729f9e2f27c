//! RemoveContainer.

use crate::Engine;
use crate::clock::now_nanos;
use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::monitor::wire;
use crate::state::records::{ContainerRecord, ContainerState};

impl Engine {
    /// RemoveContainer: kills it if running, then removes its cgroup, writable layer and
    /// record. Idempotent.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let Some(c) = self.db.container_get(id)? else {
            return Ok(());
        };
        if c.state == ContainerState::Running {
            self.stop_container(id, 0).await?;
        }
        let _pg = self.locks.lock(&c.pod_id).await;
        let _g = self.locks.lock(id).await;
        let Some(c) = self.db.container_get(id)? else {
            return Ok(());
        };
        // Processes its main process left (it shared a pid namespace) go with it.
        crate::pods::empty_cgroup(&self.cgroup_manager()?, &c.cgroup).await;
        run_poststop_hooks(&c).await;
        self.remove_container_files(&c).await?;
        self.db.container_remove(id)?;
        self.events
            .emit(id, &c.pod_id, EventKind::Deleted, now_nanos());
        tracing::info!(container_id = %id, "container removed");
        // Its layers may have been held only by it (its image removed meanwhile).
        self.collect_garbage()?;
        Ok(())
    }

    /// Removes a container's cgroup, directories (its bundle among them) and exit record.
    pub(crate) async fn remove_container_files(&self, c: &ContainerRecord) -> Result<()> {
        if super::scope::is_scope(&c.cgroup) {
            self.remove_scope(&c.cgroup).await?;
        } else if let Ok(cg) = self.cgroup_manager() {
            cg.remove(&c.cgroup)?;
        }
        crate::linux::image_volume::unmount_all(&c.dir);
        for d in [c.dir.clone(), self.cfg.state.join("containers").join(&c.id)] {
            if d.exists() {
                std::fs::remove_dir_all(&d)
                    .map_err(|e| Error::Internal(format!("remove {}: {e}", d.display())))?;
            }
        }
        wire::remove_exit(
            &crate::monitor::entry::exits_dir(&self.pod_dir(&c.pod_id)),
            &c.id,
        );
        Ok(())
    }
}

/// The poststop hooks of a container whose start was attempted (hooks of the earlier
/// points may have run), before its bundle goes; failures are logged, as the OCI spec
/// has them.
pub(crate) async fn run_poststop_hooks(c: &ContainerRecord) {
    let Some(hooks) = c.launch.hooks.clone() else {
        return;
    };
    if hooks.poststop.is_empty() || c.started_at == 0 {
        return;
    }
    let id = c.id.clone();
    let errors = tokio::task::spawn_blocking(move || {
        crate::linux::hooks::run_point_all(crate::spec::hooks::Point::Poststop, &hooks, &id, None)
    })
    .await
    .unwrap_or_else(|e| vec![format!("poststop hooks: {e}")]);
    for e in errors {
        tracing::warn!(container_id = %c.id, error = %e, "OCI hook failed");
    }
}

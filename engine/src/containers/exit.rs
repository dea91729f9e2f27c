//! Container exits: reported by the pod's monitor, or found in its exit records.

use super::reason_for;
use crate::Engine;
use crate::error::{Error, Result};
use crate::monitor::wire;
use crate::state::records::{ContainerRecord, ContainerState};

impl Engine {
    /// Records an exit reported by a monitor (or found in its exit records).
    pub fn record_exit(
        &self,
        id: &str,
        exit_code: i32,
        _signal: i32,
        finished_at: i64,
        oom_killed: bool,
    ) -> Result<()> {
        // The monitor's report and the exit file can both bring the same exit at once:
        // only one of them may record it (and emit its event).
        let _one = self
            .exit_record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(mut c) = self.db.container_get(id)? else {
            return Ok(());
        };
        if c.state != ContainerState::Running {
            return Ok(());
        }
        c.exit_code = exit_code;
        c.reason = reason_for(exit_code, oom_killed).into();
        self.transition_container(&mut c, ContainerState::Exited, finished_at)?;
        if oom_killed {
            self.metrics.oom_kills.inc();
        }
        tracing::info!(container_id = %id, exit_code, oom_killed, "container exited");
        Ok(())
    }

    /// Applies the monitor's exit record of a running container, if it wrote one.
    pub(crate) fn apply_exit_file(&self, c: &ContainerRecord) -> Result<bool> {
        let exits = crate::monitor::entry::exits_dir(&self.pod_dir(&c.pod_id));
        let Some(e) = wire::read_exit(&exits, &c.id).map_err(|e| Error::Internal(e.to_string()))?
        else {
            return Ok(false);
        };
        self.record_exit(&c.id, e.exit_code, e.signal, e.finished_at, e.oom_killed)?;
        Ok(true)
    }
}

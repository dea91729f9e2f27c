//! The systemd driver's part of a container's life: its scope is made at its start, with
//! the container's first process (waiting on berthd's socket) in it; limits go to the unit
//! and to the cgroup; the unit is stopped at removal. The pod's slice is made (or found)
//! when the pod runs.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::Engine;
use crate::error::{Error, Result};
use crate::state::records::ContainerRecord;
use crate::systemd::{Systemd, unit_of};

/// How long the container's child may take to reach the socket: it connects first thing
/// after clone, so this only runs out when the monitor failed to spawn it, which its Start
/// answer reports.
const PARK_TIMEOUT: Duration = Duration::from_secs(60);

/// How long berthd may take to make a container's scope (connecting to the bus included).
const PLACE_TIMEOUT: Duration = Duration::from_secs(40);

/// Whether a container's cgroup is a systemd scope made at its start.
pub(crate) fn is_scope(cgroup: &str) -> bool {
    cgroup.ends_with(".scope")
}

impl Engine {
    /// The connection to systemd, made at first use.
    pub(crate) async fn systemd(&self) -> Result<&Systemd> {
        Ok(self.systemd.get_or_try_init(Systemd::connect).await?)
    }

    /// systemd's version, over the driver's connection (made now if it was not).
    pub async fn systemd_version(&self) -> Result<String> {
        Ok(self.systemd().await?.version().await?)
    }

    /// Where a container's child waits for its scope (short: a socket path has 108 bytes).
    pub(crate) fn park_socket(&self, container_id: &str) -> PathBuf {
        let short = container_id.get(..16).unwrap_or(container_id);
        self.cfg.state.join("park").join(short)
    }

    /// Listens where the container's child will wait.
    pub(crate) fn park_listen(&self, c: &ContainerRecord) -> Result<tokio::net::UnixListener> {
        let Some(path) = &c.launch.cgroup_park else {
            return Err(Error::Internal(format!(
                "container {} has a scope but no socket to wait on",
                c.id
            )));
        };
        if let Some(dir) = path.parent() {
            crate::durable::create_dir_all(dir, 0o700)?;
        }
        let _ = std::fs::remove_file(path);
        tokio::net::UnixListener::bind(path)
            .map_err(|e| Error::Internal(format!("listen on {}: {e}", path.display())))
    }

    /// Takes the child's connection, makes the container's scope with the child in it,
    /// writes what systemd cannot express into its cgroup, and lets the child go on.
    pub(crate) async fn place_in_scope(
        &self,
        c: &ContainerRecord,
        listener: tokio::net::UnixListener,
    ) -> Result<()> {
        let (mut conn, _) = tokio::time::timeout(PARK_TIMEOUT, listener.accept())
            .await
            .map_err(|_| {
                Error::DeadlineExceeded(format!(
                    "container {}: its process did not reach berthd within {PARK_TIMEOUT:?}",
                    c.id
                ))
            })?
            .map_err(|e| Error::Internal(format!("accept the container's process: {e}")))?;
        let pid = conn
            .peer_cred()
            .ok()
            .and_then(|cred| cred.pid())
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| Error::Internal("the container's process has no pid".into()))?;
        let (slice_path, scope) = c
            .cgroup
            .rsplit_once('/')
            .ok_or_else(|| Error::Internal(format!("scope {} has no slice", c.cgroup)))?;
        let slice = unit_of(slice_path);
        // The pod's monitor waits for its child meanwhile: bounded, even if the bus does
        // not answer at all (the job itself has its own 30 s).
        let made = tokio::time::timeout(PLACE_TIMEOUT, async {
            self.systemd()
                .await?
                .start_scope(
                    scope,
                    slice,
                    pid,
                    format!("berth container {} ({})", c.name, c.id),
                    &c.resources,
                )
                .await
                .map_err(Error::from)
        })
        .await
        .map_err(|_| {
            Error::DeadlineExceeded(format!(
                "container {}: systemd did not make its scope {scope} within {PLACE_TIMEOUT:?}",
                c.id
            ))
        })?;
        made?;
        // Directories in the hierarchies systemd does not manage (v1 cpuset, hugetlb…),
        // then every limit written as it is meant (systemd rounds some), and the devices.
        let cg = self.cgroup_manager()?;
        cg.create(&c.cgroup)?;
        cg.apply(&c.cgroup, &c.resources)?;
        if let Some(policy) = &c.device_policy {
            cg.set_devices(&c.cgroup, policy)?;
        }
        conn.write_all(&[1])
            .await
            .map_err(|e| Error::Internal(format!("let the container's process go on: {e}")))?;
        Ok(())
    }

    /// Stops a container's scope (what is left in it is killed) and removes its leftover
    /// directories; a scope that is gone already is fine.
    pub(crate) async fn remove_scope(&self, cgroup: &str) -> Result<()> {
        // Its processes were killed already; a systemd that cannot be asked leaves only the
        // unit's name behind, and the directories below say whether anything is left.
        if let Err(e) = self.stop_unit_of(cgroup).await {
            tracing::warn!(cgroup, error = %e, "cannot stop the container's systemd scope");
        }
        if let Ok(cg) = self.cgroup_manager() {
            cg.remove(cgroup)?;
        }
        Ok(())
    }

    /// Stops the unit at the end of an expanded cgroup path (a scope or a slice of ours).
    pub(crate) async fn stop_unit_of(&self, cgroup: &str) -> Result<()> {
        Ok(self.systemd().await?.stop_unit(unit_of(cgroup)).await?)
    }

    /// Sets a scope's (or slice's) limits as unit properties, before the cgroup writes.
    pub(crate) async fn set_unit_resources(
        &self,
        cgroup: &str,
        res: &crate::spec::resources::Resources,
    ) -> Result<()> {
        let props = crate::systemd::resource_props(res);
        self.systemd()
            .await?
            .set_properties(unit_of(cgroup), &props)
            .await?;
        Ok(())
    }
}

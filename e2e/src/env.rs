//! The environment most end-to-end tests start from: a local registry holding the busybox
//! test image, a berthd that has pulled it, a CRI client and a directory for pod logs.

use berth_proto::cri;

use crate::images::catalog;
use crate::{Cri, Daemon, DaemonOptions, Registry, require};

/// A berthd with the busybox image pulled from a registry of the test's own.
#[derive(Debug)]
pub struct BusyboxEnv {
    pub d: Daemon,
    pub reg: Registry,
    pub c: Cri,
    /// The busybox image's reference in the registry.
    pub image: String,
    pub logs: tempfile::TempDir,
}

impl BusyboxEnv {
    /// With the default daemon options; None when the prerequisites are missing.
    pub async fn start() -> Option<BusyboxEnv> {
        Self::start_with(DaemonOptions::default()).await
    }

    /// With `opts` for the daemon; None when the prerequisites are missing.
    pub async fn start_with(opts: DaemonOptions) -> Option<BusyboxEnv> {
        if !(require::root() && catalog::available()) {
            return None;
        }
        let reg = Registry::start()?;
        reg.push_image("busybox", "latest", &catalog::busybox().build());
        let d = Daemon::start_with(opts).await;
        let mut c = d.cri().await;
        let image = format!("{}/busybox", reg.host());
        c.pull(&image, None).await.expect("pull busybox");
        Some(BusyboxEnv {
            d,
            reg,
            c,
            image,
            logs: tempfile::tempdir().expect("tempdir"),
        })
    }
}

impl BusyboxEnv {
    /// A pod config with metadata and a log directory of this environment, nothing else.
    pub fn pod_config(&self, namespace: &str, name: &str) -> cri::PodSandboxConfig {
        crate::cri::pod_config(namespace, name, self.logs.path())
    }

    /// A busybox container running `cmd`, logging to `<name>.log`.
    pub fn container_config(&self, name: &str, cmd: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(crate::cri::spec(&self.image)),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            ..Default::default()
        }
    }
}

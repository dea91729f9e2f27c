//! The environment most end-to-end tests start from: a local registry holding the busybox
//! test image, a berthd that has pulled it, a CRI client and a directory for pod logs.

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

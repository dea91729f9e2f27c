//! berth-cni: pod networking for berth.
//!
//! Two modes: **built-in** (berth's own bridge, veth pairs, IPAM and nftables masquerade, all
//! through netlink) and **cni** (standard CNI plugin conflists). This crate knows nothing of
//! the engine; the engine calls it with a pod's network namespace path and gets addresses back.
//!
//! The pieces: [`netlink`] (a small synchronous route-netlink client), [`builtin`] (bridge,
//! veth, IPAM, nftables), and the readiness rule that CRI `Status` reports as
//! `NetworkReady`.
#![forbid(unsafe_code)]

pub mod builtin;
mod cidr;
pub mod netlink;
pub mod plugin;

pub use cidr::PodCidr;

/// Errors of pod networking.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid pod CIDR {value:?}: {reason}")]
    InvalidCidr { value: String, reason: String },
    #[error("netlink: {op} {name}: {source}")]
    Netlink {
        op: &'static str,
        name: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Sysctl {
        path: String,
        source: std::io::Error,
    },
    #[error("nftables: {0}")]
    Nft(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Ipam(#[from] builtin::ipam::IpamError),
    #[error("CNI plugin {plugin} {command}: {message}")]
    Cni {
        plugin: String,
        command: String,
        message: String,
    },
    #[error("CNI configuration: {0}")]
    CniConfig(String),
}

/// How pods get their network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// berth's own bridge, veth and IPAM.
    #[default]
    Builtin,
    /// Standard CNI plugins from a conflist.
    Cni,
}

/// Whether pods can be given a network now, and if not, why (CRI's NetworkReady condition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady { reason: String, message: String },
}

/// Decides the NetworkReady condition from what is known of the node.
///
/// `pod_cidrs` are the node's pod ranges (from config or kubelet); `backend_error` is why
/// the chosen mode could not set up the node network the last time it tried, if it failed.
pub fn readiness(
    mode: NetworkMode,
    pod_cidrs: &[PodCidr],
    backend_error: Option<&str>,
) -> Readiness {
    if let Some(e) = backend_error {
        return Readiness::NotReady {
            reason: "NetworkPluginNotReady".into(),
            message: format!(
                "{} pod networking is not set up: {e}",
                match mode {
                    NetworkMode::Builtin => "built-in",
                    NetworkMode::Cni => "CNI plugin",
                }
            ),
        };
    }
    if mode == NetworkMode::Builtin && pod_cidrs.is_empty() {
        return Readiness::NotReady {
            reason: "NoPodCIDR".into(),
            message: "no pod CIDR: set network.pod_cidr in the config or let kubelet send one (UpdateRuntimeConfig)".into(),
        };
    }
    Readiness::Ready
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_needs_a_cidr() {
        let r = readiness(NetworkMode::Builtin, &[], None);
        assert!(matches!(r, Readiness::NotReady { ref reason, .. } if reason == "NoPodCIDR"));
        let c: PodCidr = "10.88.0.0/16".parse().unwrap();
        assert_eq!(
            readiness(NetworkMode::Builtin, &[c], None),
            Readiness::Ready
        );
    }

    #[test]
    fn a_failed_backend_is_never_ready() {
        let c: PodCidr = "10.88.0.0/16".parse().unwrap();
        assert!(matches!(
            readiness(NetworkMode::Cni, &[c], Some("no conflist")),
            Readiness::NotReady { .. }
        ));
    }
}

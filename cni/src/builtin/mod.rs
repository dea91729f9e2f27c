//! berth's built-in pod network: a node bridge holding the gateway address of each pod
//! range, a veth pair per pod (host end on the bridge, `eth0` in the pod), addresses from
//! the node's pod CIDR ([`ipam`]), and NAT in berth's own nftables table ([`nft`]).
//!
//! Everything here is stateless: the engine keeps the leases and port mappings in its
//! store and calls these functions to make the kernel match them.

pub mod ipam;
pub mod nft;

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::path::Path;

use crate::netlink::{Netlink, in_netns};
use crate::{NetworkError, PodCidr};

/// The node bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    pub name: String,
    pub mtu: u32,
    pub cidrs: Vec<PodCidr>,
}

/// What one pod gets: the host end's name, its addresses (with the range's prefix) and
/// the default gateways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    pub host_ifname: String,
    pub addrs: Vec<(IpAddr, u8)>,
    pub gateways: Vec<IpAddr>,
}

/// The interface name inside every pod.
pub const POD_IFNAME: &str = "eth0";

fn nl_error<'a>(op: &'static str, name: &'a str) -> impl FnOnce(io::Error) -> NetworkError + 'a {
    move |source| NetworkError::Netlink {
        op,
        name: name.to_owned(),
        source,
    }
}

/// The host-side name of a pod's veth: `berth` and ten hex digits of the pod id (the
/// kernel allows 15 characters). Ten digits are 40 random bits: a clash among a node's
/// pods is as likely as a lottery win, and `attach` refuses rather than reuses a name.
pub fn host_ifname(pod_id: &str) -> String {
    let short: String = pod_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(10)
        .collect();
    format!("berth{short}")
}

/// The gateway (bridge) address of a range: its first host address.
pub fn gateway(cidr: &PodCidr) -> IpAddr {
    ipam::Allocator::new(*cidr).gateway()
}

/// The MTU of the interface that holds the node's IPv4 default route, else 1500: pods
/// must not send frames larger than the node's uplink carries.
pub fn default_mtu() -> u32 {
    let iface = std::fs::read_to_string("/proc/net/route")
        .ok()
        .and_then(|t| {
            t.lines().skip(1).find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_owned())
            })
        });
    iface
        .and_then(|i| std::fs::read_to_string(format!("/sys/class/net/{i}/mtu")).ok())
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or(1500)
}

fn write_sysctl(path: &str, value: &str) -> Result<(), NetworkError> {
    std::fs::write(path, value).map_err(|e| NetworkError::Sysctl {
        path: path.to_owned(),
        source: e,
    })
}

/// Creates the bridge if it is missing, brings it up with the configured MTU and puts the
/// gateway address of every range on it. Forwarding is switched on for the bridge only
/// (not node-wide), and `route_localnet` lets hostPorts answer on 127.0.0.1 (the nft
/// table drops martian traffic to 127/8 arriving from pods, CVE-2020-8558). Returns the
/// bridge's interface index.
pub fn ensure_bridge(cfg: &BridgeConfig) -> Result<u32, NetworkError> {
    let name = cfg.name.as_str();
    let mut nl = Netlink::open().map_err(nl_error("open", name))?;
    let link = match nl.link(name).map_err(nl_error("get link", name))? {
        Some(l) => {
            if l.kind.as_deref() != Some("bridge") {
                return Err(NetworkError::Conflict(format!(
                    "interface {name} exists and is not a bridge ({}); choose another network.bridge",
                    l.kind.as_deref().unwrap_or("unknown kind")
                )));
            }
            if !l.up || l.mtu != Some(cfg.mtu) {
                nl.set_up(l.index, Some(cfg.mtu))
                    .map_err(nl_error("set up", name))?;
            }
            l
        }
        None => {
            match nl.add_bridge(name, cfg.mtu) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                r => r.map_err(nl_error("create bridge", name))?,
            }
            nl.link(name)
                .map_err(nl_error("get link", name))?
                .ok_or_else(|| {
                    NetworkError::Conflict(format!("bridge {name} vanished while being set up"))
                })?
        }
    };
    for c in &cfg.cidrs {
        nl.add_address(link.index, gateway(c), c.prefix())
            .map_err(nl_error("add gateway address", name))?;
    }
    if cfg.cidrs.iter().any(PodCidr::is_ipv4) {
        write_sysctl(&format!("/proc/sys/net/ipv4/conf/{name}/forwarding"), "1")?;
        write_sysctl(
            &format!("/proc/sys/net/ipv4/conf/{name}/route_localnet"),
            "1",
        )?;
    }
    Ok(link.index)
}

/// Whether the node forwards IPv4 at all (pods reach beyond the node only if it does;
/// Kubernetes requires `net.ipv4.ip_forward=1`).
pub fn node_forwards_ipv4() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "1")
}

/// Removes the bridge (when no pod is left and the operator asked for it).
pub fn remove_bridge(name: &str) -> Result<(), NetworkError> {
    let mut nl = Netlink::open().map_err(nl_error("open", name))?;
    nl.del_link(name).map_err(nl_error("delete bridge", name))
}

/// Gives the pod whose network namespace is bind-mounted at `netns` its interface: a veth
/// pair created in one request with the pod end already inside the namespace, then the
/// pod end's addresses, link and default routes, set from inside. On failure nothing is
/// left: deleting the host end deletes its peer.
pub fn attach(
    bridge_index: u32,
    netns: &Path,
    iface: &PodInterface,
    mtu: u32,
) -> Result<(), NetworkError> {
    let host = iface.host_ifname.as_str();
    let ns = File::open(netns).map_err(nl_error("open network namespace", host))?;
    let mut nl = Netlink::open().map_err(nl_error("open", host))?;
    nl.add_veth(host, bridge_index, POD_IFNAME, &ns, mtu)
        .map_err(nl_error("create veth pair", host))?;
    let (addrs, gateways) = (iface.addrs.clone(), iface.gateways.clone());
    let inside = in_netns(netns, move || {
        let mut nl = Netlink::open()?;
        let eth = nl
            .link(POD_IFNAME)?
            .ok_or_else(|| io::Error::other("eth0 did not appear in the pod"))?;
        for (ip, prefix) in &addrs {
            nl.add_address(eth.index, *ip, *prefix)?;
        }
        nl.set_up(eth.index, None)?;
        for gw in &gateways {
            nl.add_default_route(eth.index, *gw)?;
        }
        Ok(())
    });
    if let Err(e) = inside {
        let _ = nl.del_link(host);
        return Err(NetworkError::Netlink {
            op: "configure eth0 in the pod",
            name: host.to_owned(),
            source: e,
        });
    }
    Ok(())
}

/// Removes a pod's veth pair. Idempotent.
pub fn detach(host_ifname: &str) -> Result<(), NetworkError> {
    let mut nl = Netlink::open().map_err(nl_error("open", host_ifname))?;
    nl.del_link(host_ifname)
        .map_err(nl_error("delete veth", host_ifname))
}

/// The names of the links enslaved to bridge `bridge` (the host ends of pod veths).
pub fn bridge_ports(bridge: &str) -> Result<Vec<String>, NetworkError> {
    let mut nl = Netlink::open().map_err(nl_error("open", bridge))?;
    let Some(br) = nl.link(bridge).map_err(nl_error("get link", bridge))? else {
        return Ok(Vec::new());
    };
    Ok(nl
        .links()
        .map_err(nl_error("list links", bridge))?
        .into_iter()
        .filter(|l| l.controller == Some(br.index))
        .map(|l| l.name)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_fit_the_kernel_limit() {
        let n = host_ifname("0123456789abcdef0123");
        assert_eq!(n, "berth0123456789");
        assert!(n.len() <= 15);
    }

    #[test]
    fn gateway_is_the_first_host() {
        let c: PodCidr = "10.88.0.0/16".parse().unwrap();
        assert_eq!(gateway(&c).to_string(), "10.88.0.1");
        let c: PodCidr = "fd00:88::/64".parse().unwrap();
        assert_eq!(gateway(&c).to_string(), "fd00:88::1");
    }

    #[test]
    fn default_mtu_is_sane() {
        let m = default_mtu();
        assert!((576..=65536).contains(&m), "{m}");
    }
}

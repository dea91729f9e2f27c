//! Pod networking as the engine drives it: which backend sets a pod up, the IPAM leases
//! (kept in the pod records, so a lease is durable exactly when its pod is), the hostPort
//! mappings in force, and the repair at start-up.
//!
//! Built-in mode: [`berth_cni::builtin`] does the kernel work; this module decides. The
//! addresses in memory are rebuilt from the records at start-up, and any veth on the
//! bridge that no record owns (a crash between creating it and committing its pod) is
//! deleted before the first allocation, so no address is ever handed out twice.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, MutexGuard};

use berth_cni::builtin::ipam::Allocator;
use berth_cni::builtin::nft::{self, PortMapping};
use berth_cni::builtin::{self as bridge, BridgeConfig, PodInterface};
use berth_cni::plugin::{Attachment, Cni, CniSettings};
use berth_cni::{NetworkMode, PodCidr};

/// How long one CNI plugin may run.
const CNI_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
use crate::api;

use crate::Engine;
use crate::error::{Error, Result};
use crate::state::records::{NetBackend, PodNet, PodRecord};

mod ports;
pub use ports::port_mappings;
use ports::{cni_port_mappings, host_port_of, host_port_record};

/// What the engine knows of the node network between calls.
#[derive(Debug, Default)]
pub(crate) struct NetState {
    /// The bridge's index once it is set up (built-in mode).
    bridge_index: Option<u32>,
    /// Why setting up the node network failed last, for NetworkReady.
    error: Option<String>,
    allocators: Vec<Allocator>,
    /// hostPort mappings by pod id.
    mappings: BTreeMap<String, Vec<PortMapping>>,
    /// Stopped pods whose veth goes away with their namespace (the kernel frees it in the
    /// background; deleting it by hand costs 30-40 ms of RCU waiting on every stop). Their
    /// addresses stay leased until the veth is gone.
    draining: Vec<Draining>,
}

#[derive(Debug)]
struct Draining {
    pod_id: String,
    host_ifname: String,
    since: std::time::Instant,
}

/// How long a stopped pod's veth may linger before berth deletes it itself.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

impl NetState {
    /// Releases the addresses of stopped pods whose veth is gone; with `force` (a full
    /// range), or past [`DRAIN_LIMIT`], deletes the veth first.
    fn reap_draining(&mut self, force: bool) {
        let NetState {
            draining,
            allocators,
            ..
        } = self;
        draining.retain(|d| {
            let gone = !Path::new("/sys/class/net").join(&d.host_ifname).exists();
            let overdue = d.since.elapsed() > DRAIN_LIMIT;
            if !gone
                && (force || overdue)
                && let Err(e) = bridge::detach(&d.host_ifname)
            {
                tracing::warn!(veth = %d.host_ifname, error = %e, "cannot delete a stopped pod's veth");
                return true;
            }
            if gone || force || overdue {
                for a in allocators.iter_mut() {
                    a.release(&d.pod_id);
                }
                return false;
            }
            true
        });
    }

    /// One address per range for `pod_id`, or none at all.
    fn allocate(
        &mut self,
        pod_id: &str,
    ) -> std::result::Result<Vec<(IpAddr, u8, IpAddr)>, berth_cni::builtin::ipam::IpamError> {
        let mut out = Vec::new();
        for a in &mut self.allocators {
            match a.allocate(pod_id) {
                Ok(ip) => out.push((ip, a.cidr().prefix(), a.gateway())),
                Err(e) => {
                    for a in &mut self.allocators {
                        a.release(pod_id);
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }
}

/// Network settings of the engine.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    pub mode: NetworkMode,
    /// The node bridge (built-in mode).
    pub bridge: String,
    /// Pod interface MTU; 0 picks the MTU of the node's default-route interface.
    pub mtu: u32,
    /// berth's nftables table (family inet).
    pub nft_table: String,
    /// Remove the bridge and the table when the last pod network is gone.
    pub remove_idle: bool,
    /// CNI mode: where the network configuration lists are.
    pub cni_conf_dir: PathBuf,
    /// CNI mode: where the plugins are, searched in order.
    pub cni_bin_dirs: Vec<PathBuf>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            mode: NetworkMode::Builtin,
            bridge: "berth0".into(),
            mtu: 0,
            nft_table: "berth".into(),
            remove_idle: false,
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            cni_bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
        }
    }
}

fn in_range(cidr: &PodCidr, ip: IpAddr) -> bool {
    let bits = |ip: IpAddr| match ip {
        IpAddr::V4(v) => u128::from(u32::from(v)) << 96,
        IpAddr::V6(v) => u128::from(v),
    };
    if cidr.is_ipv4() != ip.is_ipv4() {
        return false;
    }
    // IPv4 addresses sit in the top 32 bits, so one mask of `prefix` top bits fits both.
    let mask = u128::MAX
        .checked_shl(128 - u32::from(cidr.prefix()))
        .unwrap_or(0);
    bits(ip) & mask == bits(cidr.addr()) & mask
}

impl Engine {
    /// Addresses leased now (pods not yet released, draining ones included), and hostPort
    /// mappings held: for verbose Status, and for checks that nothing of a removed pod
    /// stays.
    pub fn network_holdings(&self) -> (usize, usize) {
        let mut st = self.net_state();
        st.reap_draining(false);
        (
            st.allocators.iter().map(Allocator::leased).sum(),
            st.mappings.values().map(Vec::len).sum(),
        )
    }

    fn net_state(&self) -> MutexGuard<'_, NetState> {
        self.net
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// berth's nftables table for `cidrs` (element changes need no ranges).
    fn nft_table<'a>(&'a self, cidrs: &'a [PodCidr]) -> nft::Table<'a> {
        nft::Table {
            name: &self.cfg.network.nft_table,
            bridge: &self.cfg.network.bridge,
            cidrs,
        }
    }

    /// Sets up the bridge and berth's table unless already done. Called with the state
    /// locked; the error is kept for NetworkReady.
    fn ensure_node_network(&self, st: &mut NetState) -> Result<u32> {
        if let Some(i) = st.bridge_index {
            return Ok(i);
        }
        let cidrs = self.pod_cidrs();
        if cidrs.is_empty() {
            return Err(Error::FailedPrecondition(
                "the pod network is not ready: no pod CIDR (set network.pod_cidr or let kubelet send one)".into(),
            ));
        }
        let cfg = BridgeConfig {
            name: self.cfg.network.bridge.clone(),
            mtu: self.mtu,
            cidrs: cidrs.clone(),
        };
        let all: Vec<PortMapping> = st.mappings.values().flatten().cloned().collect();
        let script = self.nft_table(&cidrs).replace_script(&all);
        match bridge::ensure_bridge(&cfg).and_then(|i| nft::apply(&script).map(|()| i)) {
            Ok(i) => {
                st.bridge_index = Some(i);
                st.error = None;
                tracing::info!(bridge = %cfg.name, mtu = cfg.mtu, table = %self.cfg.network.nft_table, "node pod network set up");
                Ok(i)
            }
            Err(e) => {
                st.error = Some(e.to_string());
                Err(Error::Network(e))
            }
        }
    }

    /// Why pods cannot get a network now, if they cannot (for NetworkReady).
    pub(crate) fn network_error(&self) -> Option<String> {
        match self.cfg.network.mode {
            NetworkMode::Builtin => self.net_state().error.clone(),
            NetworkMode::Cni => self.cni().load().err().map(|e| e.to_string()),
        }
    }

    /// The CNI runner: configuration from the operator's directories, results cached
    /// under berth's root.
    pub(crate) fn cni(&self) -> Cni {
        Cni {
            settings: CniSettings {
                conf_dir: self.cfg.network.cni_conf_dir.clone(),
                bin_dirs: self.cfg.network.cni_bin_dirs.clone(),
                cache_dir: self.cfg.root.join("cni"),
                timeout: CNI_TIMEOUT,
            },
        }
    }

    /// At start-up, after the pods are recovered: leases and port mappings from the
    /// records, the bridge and table set up, and any veth on the bridge that no pod owns
    /// removed.
    pub(crate) fn recover_network(&self) -> Result<()> {
        let pods = self.db.pod_list()?;
        if self.cfg.network.mode == NetworkMode::Cni {
            // CHECK that what the plugins set up is still there.
            let cni = self.cni();
            for p in &pods {
                if let (Some(net), Some(ns)) = (&p.net, &p.netns)
                    && net.mode == NetBackend::Cni
                    && let Err(e) = cni.check(&net.cni_network, &p.id, ns)
                {
                    tracing::warn!(pod_id = %p.id, error = %e, "CNI CHECK failed for a running pod");
                }
            }
            return Ok(());
        }
        let mut st = self.net_state();
        st.allocators = self.pod_cidrs().into_iter().map(Allocator::new).collect();
        let mut owned = BTreeSet::new();
        for p in &pods {
            let Some(net) = &p.net else { continue };
            owned.insert(net.host_ifname.clone());
            for ip in &net.ips {
                if let Some(a) = st.allocators.iter_mut().find(|a| in_range(&a.cidr(), *ip))
                    && let Err(e) = a.restore(*ip, &p.id)
                {
                    tracing::warn!(pod_id = %p.id, %ip, error = %e, "cannot restore an address lease");
                }
            }
            if !net.port_mappings.is_empty() {
                st.mappings.insert(
                    p.id.clone(),
                    net.port_mappings.iter().filter_map(host_port_of).collect(),
                );
            }
        }
        st.bridge_index = None;
        st.draining.clear();
        if st.allocators.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.ensure_node_network(&mut st) {
            tracing::error!(error = %e, "cannot set up the node's pod network; pods cannot start until it is fixed");
            return Ok(());
        }
        drop(st);
        for port in bridge::bridge_ports(&self.cfg.network.bridge)? {
            if !owned.contains(&port) {
                tracing::warn!(veth = %port, "removing a veth no pod owns (left by a crash)");
                bridge::detach(&port)?;
            }
        }
        if !bridge::node_forwards_ipv4() {
            tracing::warn!(
                "net.ipv4.ip_forward is 0: pods reach each other and the node, but nothing beyond it (Kubernetes requires it to be 1)"
            );
        }
        Ok(())
    }

    /// The pod CIDRs changed: new allocators (keeping every lease that fits), and the
    /// bridge and table set up again for the new ranges.
    pub(crate) fn network_cidrs_changed(&self) {
        if self.cfg.network.mode != NetworkMode::Builtin {
            return;
        }
        let mut st = self.net_state();
        let mut fresh: Vec<Allocator> = self.pod_cidrs().into_iter().map(Allocator::new).collect();
        let mut held: Vec<(IpAddr, String)> = Vec::new();
        for p in self.db.pod_list().unwrap_or_default() {
            for ip in p.net.iter().flat_map(|n| n.ips.iter()) {
                held.push((*ip, p.id.clone()));
            }
        }
        // Stopped pods whose veths are still going keep their addresses too.
        for d in &st.draining {
            for a in &st.allocators {
                if let Some(ip) = a.address_of(&d.pod_id) {
                    held.push((ip, d.pod_id.clone()));
                }
            }
        }
        for (ip, owner) in held {
            if let Some(a) = fresh.iter_mut().find(|a| in_range(&a.cidr(), ip)) {
                let _ = a.restore(ip, &owner);
            }
        }
        st.allocators = fresh;
        st.bridge_index = None;
        if let Err(e) = self.ensure_node_network(&mut st) {
            tracing::error!(error = %e, "cannot set up the pod network for the new pod CIDR");
        }
    }

    /// Gives a pod its network (RunPodSandbox). On error nothing is left.
    pub(crate) async fn setup_pod_network(
        self: &Arc<Self>,
        pod_id: &str,
        netns: &Path,
        md: &api::PodSandboxMetadata,
        mappings: &[api::PortMapping],
    ) -> Result<PodNet> {
        let (engine, id, ns, m) = (
            self.clone(),
            pod_id.to_owned(),
            netns.to_owned(),
            mappings.to_vec(),
        );
        let md = md.clone();
        let started = std::time::Instant::now();
        let net = tokio::task::spawn_blocking(move || match engine.cfg.network.mode {
            NetworkMode::Builtin => engine.builtin_attach(&id, &ns, &m),
            NetworkMode::Cni => engine.cni_attach(&id, &ns, &md, &m),
        })
        .await
        .map_err(|e| Error::Internal(format!("network set-up task: {e}")))??;
        self.metrics
            .network_setup_duration
            .with_label_values(&[match net.mode {
                NetBackend::Builtin => "builtin",
                NetBackend::Cni => "cni",
            }])
            .observe(started.elapsed().as_secs_f64());
        // berth-bench reads this line for the time networking adds to RunPodSandbox.
        tracing::debug!(
            pod_id,
            mode = ?net.mode,
            ips = ?net.ips,
            elapsed_us = started.elapsed().as_micros(),
            "pod network set up"
        );
        Ok(net)
    }

    fn cni_attach(
        &self,
        pod_id: &str,
        netns: &Path,
        md: &api::PodSandboxMetadata,
        cri_mappings: &[api::PortMapping],
    ) -> Result<PodNet> {
        let port_mappings = cni_port_mappings(cri_mappings)?;
        let att = Attachment {
            container_id: pod_id.to_owned(),
            netns: netns.to_owned(),
            ifname: bridge::POD_IFNAME.to_owned(),
            args: vec![
                ("K8S_POD_NAMESPACE".into(), md.namespace.clone()),
                ("K8S_POD_NAME".into(), md.name.clone()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), pod_id.to_owned()),
                ("K8S_POD_UID".into(), md.uid.clone()),
            ],
            port_mappings,
        };
        let (list, result) = self.cni().add(&att)?;
        Ok(PodNet {
            mode: NetBackend::Cni,
            host_ifname: String::new(),
            ips: berth_cni::plugin::result_ips(&result),
            port_mappings: Vec::new(),
            cni_network: list.name,
        })
    }

    fn builtin_attach(
        &self,
        pod_id: &str,
        netns: &Path,
        cri_mappings: &[api::PortMapping],
    ) -> Result<PodNet> {
        let (index, addrs, gateways, mappings) = {
            let mut st = self.net_state();
            let index = self.ensure_node_network(&mut st)?;
            st.reap_draining(false);
            let mut got = st.allocate(pod_id);
            if got.is_err() && !st.draining.is_empty() {
                // The range is full, but stopped pods still hold addresses while their
                // veths go away: take those back now.
                st.reap_draining(true);
                got = st.allocate(pod_id);
            }
            let (addrs, gateways): (Vec<(IpAddr, u8)>, Vec<IpAddr>) = got
                .as_ref()
                .map(|v| v.iter().map(|(ip, p, gw)| ((*ip, *p), *gw)).unzip())
                .unwrap_or_default();
            let ips: Vec<IpAddr> = addrs.iter().map(|(ip, _)| *ip).collect();
            let mapped = match got {
                Err(e) => Err(Error::Network(e.into())),
                Ok(_) => port_mappings(cri_mappings, &ips),
            };
            let mappings = match mapped.and_then(|m| {
                for (other, theirs) in &st.mappings {
                    if let Some(c) = m.iter().find(|n| theirs.iter().any(|t| n.clashes_with(t))) {
                        return Err(Error::AlreadyExists(format!(
                            "hostPort {}/{} is already mapped to pod {other}",
                            c.host_port,
                            c.protocol.as_str()
                        )));
                    }
                }
                Ok(m)
            }) {
                Ok(m) => m,
                Err(e) => {
                    for a in &mut st.allocators {
                        a.release(pod_id);
                    }
                    return Err(e);
                }
            };
            if !mappings.is_empty() {
                st.mappings.insert(pod_id.to_owned(), mappings.clone());
            }
            (index, addrs, gateways, mappings)
        };
        let iface = PodInterface {
            host_ifname: bridge::host_ifname(pod_id),
            addrs,
            gateways,
        };
        let table = self.nft_table(&[]);
        let done = bridge::attach(index, netns, &iface, self.mtu).and_then(|()| {
            if mappings.is_empty() {
                Ok(())
            } else {
                nft::apply(&table.add_script(&mappings))
            }
        });
        if let Err(e) = done {
            let _ = bridge::detach(&iface.host_ifname);
            let mut st = self.net_state();
            st.mappings.remove(pod_id);
            for a in &mut st.allocators {
                a.release(pod_id);
            }
            // The bridge may have been removed behind berth's back: check it next time.
            st.bridge_index = None;
            return Err(Error::Network(e));
        }
        Ok(PodNet {
            mode: NetBackend::Builtin,
            host_ifname: iface.host_ifname,
            ips: iface.addrs.iter().map(|(ip, _)| *ip).collect(),
            port_mappings: mappings.iter().map(host_port_record).collect(),
            cni_network: String::new(),
        })
    }

    /// Undoes [`Engine::setup_pod_network`]: the port mappings now; the veth pair goes
    /// with the pod's namespace (the caller ends it), and the leases once the veth is
    /// gone, so an address is free only when nothing uses it. Idempotent.
    pub(crate) fn teardown_pod_network(&self, pod_id: &str, net: &PodNet) -> Result<()> {
        match net.mode {
            NetBackend::Builtin => {
                let mut st = self.net_state();
                if !st.draining.iter().any(|d| d.pod_id == pod_id) {
                    st.draining.push(Draining {
                        pod_id: pod_id.to_owned(),
                        host_ifname: net.host_ifname.clone(),
                        since: std::time::Instant::now(),
                    });
                }
                if let Some(ms) = st.mappings.remove(pod_id) {
                    let table = self.nft_table(&[]);
                    if let Err(e) = nft::apply(&table.delete_script(&ms)) {
                        tracing::warn!(pod_id, error = %e, "cannot delete the pod's host ports; reloading berth's table");
                        st.bridge_index = None;
                        self.ensure_node_network(&mut st)?;
                    }
                }
                st.reap_draining(false);
                let draining = st.draining.len();
                if self.cfg.network.remove_idle
                    && st.allocators.iter().all(|a| a.leased() == draining)
                    && st.bridge_index.is_some()
                {
                    // Only stopped pods are left: their veths go with their namespaces
                    // whether or not the bridge is there.
                    for d in std::mem::take(&mut st.draining) {
                        for a in &mut st.allocators {
                            a.release(&d.pod_id);
                        }
                    }
                    bridge::remove_bridge(&self.cfg.network.bridge)?;
                    nft::apply(&nft::Table::drop_script(&self.cfg.network.nft_table))?;
                    st.bridge_index = None;
                    tracing::info!(bridge = %self.cfg.network.bridge, "last pod network gone; bridge and table removed");
                }
                Ok(())
            }
            NetBackend::Cni => Ok(self.cni().del(
                &net.cni_network,
                pod_id,
                &self.cfg.state.join("netns").join(pod_id),
            )?),
        }
    }

    /// Tears down a pod's network if it has one and clears it from the record (the
    /// caller saves the record).
    pub(crate) fn release_pod_network(&self, pod: &mut PodRecord) -> Result<()> {
        if let Some(net) = pod.net.clone() {
            let started = std::time::Instant::now();
            self.teardown_pod_network(&pod.id, &net)?;
            pod.net = None;
            tracing::debug!(
                pod_id = %pod.id,
                elapsed_us = started.elapsed().as_micros(),
                "pod network torn down"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_membership() {
        let c: PodCidr = "10.88.0.0/16".parse().unwrap();
        assert!(in_range(&c, "10.88.3.4".parse().unwrap()));
        assert!(!in_range(&c, "10.89.0.1".parse().unwrap()));
        assert!(!in_range(&c, "fd00::1".parse().unwrap()));
        let c: PodCidr = "fd00:88::/64".parse().unwrap();
        assert!(in_range(&c, "fd00:88::9".parse().unwrap()));
        assert!(!in_range(&c, "fd00:89::9".parse().unwrap()));
    }
}

//! hostPorts: the CRI port mappings checked and expanded per pod address, and their form
//! in the pod record.

use std::net::IpAddr;

use berth_cni::builtin::nft::{PortMapping, Protocol};

use berth_cni::plugin::CniPortMapping;

use crate::api;
use crate::error::{Error, Result};
use crate::state::records::HostPortRecord;
/// One CRI hostPort, checked: ports, protocol, and the host address (None is any).
struct HostPort {
    protocol: Protocol,
    host_port: u16,
    container_port: u16,
    host_ip: Option<IpAddr>,
    /// The family the host address restricts the mapping to (None: both).
    family_v4: Option<bool>,
}

/// The CRI port mappings that are host ports (kubelet sends only those, but a mapping
/// without a host port is skipped anyway), checked.
fn port_mappings_of(cri: &[api::PortMapping]) -> Result<Vec<HostPort>> {
    let mut out = Vec::new();
    for m in cri {
        if m.host_port == 0 {
            continue;
        }
        let port = |v: i32, what: &str| {
            u16::try_from(v).ok().filter(|p| *p != 0).ok_or_else(|| {
                Error::InvalidArgument(format!("port_mappings: {what} {v} is not a port (1-65535)"))
            })
        };
        let (host_port, container_port) = (
            port(m.host_port, "host_port")?,
            port(m.container_port, "container_port")?,
        );
        let protocol = match m.protocol {
            0 => Protocol::Tcp,
            1 => Protocol::Udp,
            2 => Protocol::Sctp,
            p => {
                return Err(Error::InvalidArgument(format!(
                    "port_mappings: unknown protocol {p}"
                )));
            }
        };
        // "" is every local address of both families; 0.0.0.0 and :: every address of
        // one family; anything else that address only.
        let (host_ip, family): (Option<IpAddr>, Option<bool>) = match m.host_ip.as_str() {
            "" => (None, None),
            s => {
                let ip: IpAddr = s.parse().map_err(|_| {
                    Error::InvalidArgument(format!(
                        "port_mappings: host_ip {s:?} is not an IP address"
                    ))
                })?;
                ((!ip.is_unspecified()).then_some(ip), Some(ip.is_ipv4()))
            }
        };
        out.push(HostPort {
            protocol,
            host_port,
            container_port,
            host_ip,
            family_v4: family,
        });
    }
    Ok(out)
}

/// The CRI port mappings of a pod as nft mappings for its addresses.
pub fn port_mappings(cri: &[api::PortMapping], pod_ips: &[IpAddr]) -> Result<Vec<PortMapping>> {
    let mut out = Vec::new();
    for m in port_mappings_of(cri)? {
        for pod_ip in pod_ips {
            if m.family_v4.is_some_and(|v4| v4 != pod_ip.is_ipv4()) {
                continue;
            }
            out.push(PortMapping {
                protocol: m.protocol,
                host_ip: m.host_ip,
                host_port: m.host_port,
                pod_ip: *pod_ip,
                container_port: m.container_port,
            });
        }
    }
    Ok(out)
}

/// The CRI port mappings as a CNI plugin's `portMappings` capability takes them.
pub(super) fn cni_port_mappings(cri: &[api::PortMapping]) -> Result<Vec<CniPortMapping>> {
    Ok(port_mappings_of(cri)?
        .into_iter()
        .map(|m| CniPortMapping {
            host_port: m.host_port,
            container_port: m.container_port,
            protocol: m.protocol.as_str().to_owned(),
            host_ip: m.host_ip.map(|i| i.to_string()).unwrap_or_default(),
        })
        .collect())
}

/// A hostPort as the pod's record keeps it.
pub(super) fn host_port_record(m: &PortMapping) -> HostPortRecord {
    HostPortRecord {
        protocol: m.protocol.as_str().to_owned(),
        host_ip: m.host_ip,
        host_port: m.host_port,
        pod_ip: m.pod_ip,
        container_port: m.container_port,
    }
}

/// A recorded hostPort back as the nft table's (None for a protocol this berth no longer
/// knows, which is logged and skipped).
pub(super) fn host_port_of(r: &HostPortRecord) -> Option<PortMapping> {
    let protocol = match r.protocol.as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        other => {
            tracing::warn!(
                protocol = other,
                "a recorded host port has an unknown protocol"
            );
            return None;
        }
    };
    Some(PortMapping {
        protocol,
        host_ip: r.host_ip,
        host_port: r.host_port,
        pod_ip: r.pod_ip,
        container_port: r.container_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(protocol: i32, host: i32, cport: i32, host_ip: &str) -> api::PortMapping {
        api::PortMapping {
            protocol,
            container_port: cport,
            host_port: host,
            host_ip: host_ip.into(),
        }
    }

    #[test]
    fn mappings_per_family() {
        let ips: Vec<IpAddr> = vec!["10.88.0.2".parse().unwrap(), "fd00::2".parse().unwrap()];
        let m = port_mappings(
            &[
                pm(0, 8080, 80, ""),
                pm(1, 53, 53, "0.0.0.0"),
                pm(0, 0, 9, ""),
            ],
            &ips,
        )
        .unwrap();
        assert_eq!(m.len(), 3);
        assert!(m.iter().all(|x| x.host_ip.is_none()));
        assert_eq!(m[2].protocol, Protocol::Udp);
        assert!(m[2].pod_ip.is_ipv4());
        let m = port_mappings(&[pm(0, 80, 80, "127.0.0.1")], &ips).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].host_ip, Some("127.0.0.1".parse().unwrap()));
        assert!(port_mappings(&[pm(0, 70000, 80, "")], &ips).is_err());
        assert!(port_mappings(&[pm(7, 80, 80, "")], &ips).is_err());
        assert!(port_mappings(&[pm(0, 80, 80, "x")], &ips).is_err());
    }
}

//! berth's nftables table (`inet berth` by default): masquerade for pod traffic leaving
//! the pod ranges, and hostPort DNAT. berth never touches another table, and it replaces
//! its own atomically (one `nft -f` transaction), so a reload never opens a window with
//! half a ruleset.
//!
//! Host ports live in four maps keyed by protocol and port (and by destination address
//! for mappings bound to a hostIP); adding or removing a pod's ports adds or deletes map
//! elements, so no rule handle has to be remembered. The text is generated here (pure,
//! unit-tested) and fed to the `nft` binary, as kube-proxy's nftables mode does.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use crate::{NetworkError, PodCidr};

/// A transport protocol of a port mapping.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One hostPort: traffic to `host_ip` (any local address when `None`) on `host_port`
/// goes to `pod_ip:container_port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PortMapping {
    pub protocol: Protocol,
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub pod_ip: IpAddr,
    pub container_port: u16,
}

impl PortMapping {
    /// Whether two mappings would catch the same packets.
    pub fn clashes_with(&self, o: &PortMapping) -> bool {
        self.protocol == o.protocol
            && self.host_port == o.host_port
            && self.pod_ip.is_ipv4() == o.pod_ip.is_ipv4()
            && (self.host_ip.is_none() || o.host_ip.is_none() || self.host_ip == o.host_ip)
    }

    fn map(&self) -> &'static str {
        match (self.pod_ip.is_ipv4(), self.host_ip.is_some()) {
            (true, false) => "hostport4",
            (true, true) => "hostport4_ip",
            (false, false) => "hostport6",
            (false, true) => "hostport6_ip",
        }
    }

    fn key(&self) -> String {
        match self.host_ip {
            Some(ip) => format!("{ip} . {} . {}", self.protocol.as_str(), self.host_port),
            None => format!("{} . {}", self.protocol.as_str(), self.host_port),
        }
    }

    fn element(&self) -> String {
        format!("{} : {} . {}", self.key(), self.pod_ip, self.container_port)
    }
}

/// What the table must hold.
#[derive(Debug, Clone)]
pub struct Table<'a> {
    pub name: &'a str,
    pub bridge: &'a str,
    pub cidrs: &'a [PodCidr],
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', ""))
}

impl Table<'_> {
    /// The whole table, replacing any previous one in the same transaction, with
    /// `mappings` as the host-port elements.
    pub fn replace_script(&self, mappings: &[PortMapping]) -> String {
        let (t, br) = (self.name, quote(self.bridge));
        let mut s = String::new();
        // `add` then `delete` makes the delete succeed whether or not the table existed.
        let _ = writeln!(
            s,
            "add table inet {t}\ndelete table inet {t}\ntable inet {t} {{"
        );
        for (name, key, value) in [
            (
                "hostport4",
                "inet_proto . inet_service",
                "ipv4_addr . inet_service",
            ),
            (
                "hostport4_ip",
                "ipv4_addr . inet_proto . inet_service",
                "ipv4_addr . inet_service",
            ),
            (
                "hostport6",
                "inet_proto . inet_service",
                "ipv6_addr . inet_service",
            ),
            (
                "hostport6_ip",
                "ipv6_addr . inet_proto . inet_service",
                "ipv6_addr . inet_service",
            ),
        ] {
            let _ = writeln!(s, "\tmap {name} {{\n\t\ttype {key} : {value}\n\t}}");
        }
        s.push_str(
            "\tchain hostports {\n\
             \t\tdnat ip to ip daddr . meta l4proto . th dport map @hostport4_ip\n\
             \t\tmeta nfproto ipv4 dnat ip to meta l4proto . th dport map @hostport4\n\
             \t\tdnat ip6 to ip6 daddr . meta l4proto . th dport map @hostport6_ip\n\
             \t\tmeta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @hostport6\n\
             \t}\n\
             \tchain prerouting {\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\tfib daddr type local jump hostports\n\
             \t}\n\
             \tchain output {\n\
             \t\ttype nat hook output priority -100; policy accept;\n\
             \t\tfib daddr type local jump hostports\n\
             \t}\n\
             \tchain postrouting {\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n",
        );
        for c in self.cidrs {
            let ip = if c.is_ipv4() { "ip" } else { "ip6" };
            let _ = writeln!(s, "\t\t{ip} saddr {c} {ip} daddr != {c} masquerade");
        }
        let _ = write!(
            s,
            "\t\toifname {br} ct status dnat ip saddr 127.0.0.0/8 masquerade\n\
             \t\toifname {br} iifname {br} ct status dnat masquerade\n\
             \t}}\n\
             \tchain guard {{\n\
             \t\ttype filter hook prerouting priority raw; policy accept;\n\
             \t\tiifname {br} ip daddr 127.0.0.0/8 drop\n\
             \t}}\n\
             }}\n"
        );
        s.push_str(&Self::elements_script("add", self.name, mappings));
        s
    }

    /// Adds the elements of `mappings`.
    pub fn add_script(&self, mappings: &[PortMapping]) -> String {
        Self::elements_script("add", self.name, mappings)
    }

    /// Deletes the elements of `mappings` (fails if one is missing: the caller then
    /// replaces the whole table).
    pub fn delete_script(&self, mappings: &[PortMapping]) -> String {
        let mut s = String::new();
        for m in mappings {
            let _ = writeln!(
                s,
                "delete element inet {} {} {{ {} }}",
                self.name,
                m.map(),
                m.key()
            );
        }
        s
    }

    fn elements_script(verb: &str, table: &str, mappings: &[PortMapping]) -> String {
        let mut s = String::new();
        for m in mappings {
            let _ = writeln!(
                s,
                "{verb} element inet {table} {} {{ {} }}",
                m.map(),
                m.element()
            );
        }
        s
    }

    /// Removes the table. Idempotent.
    pub fn drop_script(name: &str) -> String {
        format!("add table inet {name}\ndelete table inet {name}\n")
    }
}

/// Runs an nft script as one transaction.
pub fn apply(script: &str) -> Result<(), NetworkError> {
    if script.is_empty() {
        return Ok(());
    }
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            NetworkError::Nft(format!(
                "cannot run nft (install the nftables package): {e}"
            ))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| NetworkError::Nft(format!("write to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetworkError::Nft(format!("wait for nft: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetworkError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(host_ip: Option<&str>, port: u16, pod: &str) -> PortMapping {
        PortMapping {
            protocol: Protocol::Tcp,
            host_ip: host_ip.map(|h| h.parse().unwrap()),
            host_port: port,
            pod_ip: pod.parse().unwrap(),
            container_port: 80,
        }
    }

    #[test]
    fn script_has_masquerade_per_range_and_the_guard() {
        let cidrs: Vec<PodCidr> = PodCidr::parse_list("10.88.0.0/16,fd00:88::/64").unwrap();
        let t = Table {
            name: "berth",
            bridge: "berth0",
            cidrs: &cidrs,
        };
        let s = t.replace_script(&[m(None, 8080, "10.88.0.5")]);
        assert!(s.starts_with("add table inet berth\ndelete table inet berth\n"));
        assert!(s.contains("ip saddr 10.88.0.0/16 ip daddr != 10.88.0.0/16 masquerade"));
        assert!(s.contains("ip6 saddr fd00:88::/64 ip6 daddr != fd00:88::/64 masquerade"));
        assert!(s.contains("iifname \"berth0\" ip daddr 127.0.0.0/8 drop"));
        assert!(s.ends_with("add element inet berth hostport4 { tcp . 8080 : 10.88.0.5 . 80 }\n"));
    }

    #[test]
    fn elements_go_to_the_map_of_their_family_and_binding() {
        let t = Table {
            name: "t",
            bridge: "b",
            cidrs: &[],
        };
        assert_eq!(
            t.add_script(&[m(Some("127.0.0.1"), 80, "10.0.0.2")]),
            "add element inet t hostport4_ip { 127.0.0.1 . tcp . 80 : 10.0.0.2 . 80 }\n"
        );
        assert_eq!(
            t.delete_script(&[m(None, 80, "fd00::2")]),
            "delete element inet t hostport6 { tcp . 80 }\n"
        );
    }

    #[test]
    fn clashes() {
        let a = m(None, 80, "10.0.0.2");
        assert!(a.clashes_with(&m(Some("1.2.3.4"), 80, "10.0.0.3")));
        assert!(!a.clashes_with(&m(None, 81, "10.0.0.3")));
        assert!(!a.clashes_with(&m(None, 80, "fd00::3")));
        assert!(!m(Some("1.2.3.4"), 80, "10.0.0.2").clashes_with(&m(
            Some("1.2.3.5"),
            80,
            "10.0.0.3"
        )));
    }
}

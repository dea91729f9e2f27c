//! A pod's own files and names, as pure functions: its hostname, /etc/hosts, resolv.conf,
//! and its cgroup path from kubelet's cgroup parent.

use crate::api;

use crate::CgroupDriver;
use crate::error::{Error, Result};

/// kubelet's cgroup parent as a relative cgroupfs path. With the systemd driver kubelet
/// names slices (`kubepods-burstable-pod123.slice`); they nest by their dashes (systemd's
/// rules, as `cgroups-rs`'s `expand_slice` applies them). Refused: the root cgroup (`/`,
/// systemd's `-.slice`), which is never a pod's; a path that would leave the cgroup tree
/// (`..`); and a slice name with an empty part (`a--b.slice`).
pub fn cgroup_parent_path(driver: CgroupDriver, parent: &str) -> Result<String> {
    let bad = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "linux.cgroup_parent {parent:?}: {why}"
        )))
    };
    let p = parent.trim_matches('/');
    if p.is_empty() || p == "-.slice" {
        return bad("the root cgroup cannot hold a pod");
    }
    if p.split('/').any(|c| c == ".." || c == ".") {
        return bad("a cgroup path cannot contain '.' or '..'");
    }
    if p.contains("//") {
        return bad("a cgroup path cannot have empty components");
    }
    if driver == CgroupDriver::Systemd && p.ends_with(".slice") && !p.contains('/') {
        let name = p.trim_end_matches(".slice");
        if name.split('-').any(str::is_empty) {
            return bad("a slice name's dash-separated parts cannot be empty");
        }
        let mut out = Vec::new();
        let mut acc = String::new();
        for part in name.split('-') {
            if !acc.is_empty() {
                acc.push('-');
            }
            acc.push_str(part);
            out.push(format!("{acc}.slice"));
        }
        return Ok(out.join("/"));
    }
    Ok(p.to_owned())
}

/// The slice of a pod berth places itself (no cgroup parent from kubelet) with the systemd
/// driver: `<parent>-pod<id>.slice`, under the configured parent taken as a slice prefix
/// (`berth` or `berth.slice` → `berth-pod<id>.slice`, in `berth.slice`), as the relative
/// cgroupfs path of its nested slices. Characters a unit name cannot hold become `_`.
pub fn own_pod_slice(parent: &str, pod_id: &str) -> Result<String> {
    let stem = slice_stem(parent);
    let name = if stem.is_empty() {
        format!("pod{pod_id}.slice")
    } else {
        format!("{stem}-pod{pod_id}.slice")
    };
    cgroup_parent_path(CgroupDriver::Systemd, &name)
}

/// The configured cgroup parent as the dash-joined stem of a unit name (`berth.slice` →
/// `berth`, `a/b c` → `a-b_c`): characters a unit name cannot hold become `_`, and empty
/// dash parts go.
pub fn slice_stem(parent: &str) -> String {
    let stem: String = parent
        .trim_matches('/')
        .trim_end_matches(".slice")
        .chars()
        .map(|c| match c {
            '/' => '-',
            c if c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '-') => c,
            _ => '_',
        })
        .collect();
    stem.split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// The kernel's limit on a host name (HOST_NAME_MAX).
const HOST_NAME_MAX: usize = 64;

/// Checks a pod's explicit hostname: what the kernel takes (1 to 64 bytes) and what DNS
/// names are made of (letters, digits, '-' and '.', starting and ending with a letter or
/// digit), so that it can go into /etc/hostname and /etc/hosts as one word.
pub fn check_hostname(h: &str) -> Result<()> {
    let valid_chars = h
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    let ends = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if h.is_empty()
        || h.len() > HOST_NAME_MAX
        || !valid_chars
        || !ends(h.bytes().next())
        || !ends(h.bytes().last())
        || h.contains("..")
    {
        let shown: String = h.chars().take(80).collect();
        return Err(Error::InvalidArgument(format!(
            "config.hostname {shown:?}{}: a hostname is 1 to {HOST_NAME_MAX} bytes of letters, digits, '-' and '.', starting and ending with a letter or digit (leave it empty for the node's hostname)",
            if h.chars().count() > 80 { "..." } else { "" }
        )));
    }
    Ok(())
}

/// The hostname a pod gets: none (the node's UTS namespace) with the node's network; the
/// one asked for; or, when none was asked for, the node's own, as containerd and CRI-O do
/// (crictl's and critest's pod configs leave it empty).
pub fn pod_hostname(
    asked: &str,
    node_network: bool,
    node_name: impl FnOnce() -> String,
) -> Result<String> {
    if node_network {
        return Ok(String::new());
    }
    if asked.is_empty() {
        let node = node_name();
        // A node whose own name the kernel holds is always a valid UTS name; anything odd
        // (empty, unreadable) falls back to a name every tool accepts.
        return Ok(if node.is_empty() {
            "localhost".into()
        } else {
            node
        });
    }
    check_hostname(asked)?;
    Ok(asked.to_owned())
}

/// Checks kubelet's DNS config before it becomes lines of resolv.conf: servers are IP
/// addresses, search domains and options single words without control characters.
pub fn check_dns_config(dns: Option<&api::DnsConfig>) -> Result<()> {
    let Some(d) = dns else { return Ok(()) };
    for s in &d.servers {
        if s.parse::<std::net::IpAddr>().is_err() {
            return Err(Error::InvalidArgument(format!(
                "config.dns_config.servers: {:?} is not an IP address",
                s.chars().take(80).collect::<String>()
            )));
        }
    }
    let word = |w: &str| {
        !w.is_empty() && w.len() <= 253 && w.chars().all(|c| !c.is_whitespace() && !c.is_control())
    };
    for (field, items) in [("searches", &d.searches), ("options", &d.options)] {
        if let Some(bad) = items.iter().find(|w| !word(w)) {
            return Err(Error::InvalidArgument(format!(
                "config.dns_config.{field}: {:?} is not a single word of at most 253 bytes",
                bad.chars().take(80).collect::<String>()
            )));
        }
    }
    Ok(())
}

/// Checks the pod's log directory: absolute (the monitor opens container logs beneath
/// it, never resolved against its own working directory), without `..` or control
/// characters. Empty means no logs.
pub fn check_log_directory(dir: &str) -> Result<()> {
    if dir.is_empty() {
        return Ok(());
    }
    let p = std::path::Path::new(dir);
    if !p.is_absolute()
        || p.components().any(|c| c == std::path::Component::ParentDir)
        || dir.chars().any(char::is_control)
        || dir.len() > 4096
    {
        return Err(Error::InvalidArgument(format!(
            "config.log_directory {:?}: must be an absolute path without '..'",
            dir.chars().take(200).collect::<String>()
        )));
    }
    Ok(())
}

/// The pod's /etc/resolv.conf: kubelet's DNS config, or the node's file.
pub fn resolv_conf(dns: Option<&api::DnsConfig>) -> String {
    match dns {
        Some(d) if !d.servers.is_empty() || !d.searches.is_empty() || !d.options.is_empty() => {
            let mut s = String::new();
            if !d.searches.is_empty() {
                s.push_str(&format!("search {}\n", d.searches.join(" ")));
            }
            for n in &d.servers {
                s.push_str(&format!("nameserver {n}\n"));
            }
            if !d.options.is_empty() {
                s.push_str(&format!("options {}\n", d.options.join(" ")));
            }
            s
        }
        _ => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    }
}

/// The pod's /etc/hosts.
pub fn hosts_file(hostname: &str) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    if !hostname.is_empty() {
        s.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pod_slices_nest_under_the_configured_parent() {
        assert_eq!(
            own_pod_slice("berth", "ab").unwrap(),
            "berth.slice/berth-podab.slice"
        );
        assert_eq!(
            own_pod_slice("/berth.slice", "ab").unwrap(),
            "berth.slice/berth-podab.slice"
        );
        assert_eq!(
            own_pod_slice("kube/berth-e2e-x y", "ab").unwrap(),
            "kube.slice/kube-berth.slice/kube-berth-e2e.slice/kube-berth-e2e-x_y.slice/kube-berth-e2e-x_y-podab.slice"
        );
    }

    #[test]
    fn systemd_slices_nest_by_dashes() {
        let path = cgroup_parent_path;
        assert_eq!(
            path(CgroupDriver::Systemd, "kubepods-burstable-pod12.slice").unwrap(),
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12.slice"
        );
        assert_eq!(
            path(CgroupDriver::Cgroupfs, "/kubepods/burstable/pod12").unwrap(),
            "kubepods/burstable/pod12"
        );
        for bad in ["a--b.slice", "-a.slice", "a-.slice", "-.slice", "/"] {
            assert!(path(CgroupDriver::Systemd, bad).is_err(), "{bad}");
        }
        for bad in ["../../etc", "kubepods/../x", "a//b", "./a"] {
            assert!(path(CgroupDriver::Cgroupfs, bad).is_err(), "{bad}");
            assert!(path(CgroupDriver::Systemd, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hostnames_are_checked() {
        assert!(check_hostname(&"h".repeat(64)).is_ok());
        for bad in ["", "-x", "x-", "a..b", "a b", "a\nb"] {
            assert!(check_hostname(bad).is_err(), "{bad:?}");
        }
        assert!(check_hostname(&"h".repeat(65)).is_err());
        let node = || "node-1".to_owned();
        assert_eq!(pod_hostname("", false, node).unwrap(), "node-1");
        assert_eq!(pod_hostname("", true, node).unwrap(), "");
        assert_eq!(pod_hostname("web", false, node).unwrap(), "web");
        assert_eq!(pod_hostname("", false, String::new).unwrap(), "localhost");
    }

    #[test]
    fn dns_config_is_checked() {
        let ok = api::DnsConfig {
            servers: vec!["10.0.0.10".into(), "fd00::a".into()],
            searches: vec!["svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert!(check_dns_config(Some(&ok)).is_ok());
        for bad in [
            api::DnsConfig {
                servers: vec!["dns.example".into()],
                ..Default::default()
            },
            api::DnsConfig {
                searches: vec!["a\nnameserver 6.6.6.6".into()],
                ..Default::default()
            },
            api::DnsConfig {
                options: vec!["".into()],
                ..Default::default()
            },
        ] {
            assert!(check_dns_config(Some(&bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn resolv_conf_from_dns_config() {
        let d = api::DnsConfig {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&d)),
            "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n"
        );
        assert!(hosts_file("web-0").ends_with("127.0.1.1\tweb-0\n"));
    }
}

//! Network fixtures: each daemon under test gets its own pod CIDR, bridge and nft table
//! (so daemons never share or disturb anything), and tests can create a client network
//! namespace joined to the host by a veth pair of their own.
//!
//! Traffic in these tests goes only to loopback, to the pods' namespaces the daemon under
//! test created, and to the client namespace the test created: the addresses used are
//! 10.213.0.0/16 (pods) and 198.18.0.0/15 (RFC 2544 benchmarking range, client links).

use std::collections::BTreeSet;
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The network part of one daemon's config.
#[derive(Debug)]
pub struct DaemonNetwork {
    pub config: String,
    pub bridge: String,
    pub nft_table: String,
    pub pod_cidr: String,
}

static TAKEN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Destinations of the host's IPv4 routes (network addresses, host order).
fn routed_networks() -> BTreeSet<u32> {
    std::fs::read_to_string("/proc/net/route")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|d| u32::from_str_radix(d, 16).ok())
        .map(u32::from_be)
        .collect()
}

/// A free /24 inside `base`/16: not routed on this host and not handed out by this
/// process. The starting point depends on the pid, so that test processes that overlap
/// rarely probe the same ranges first.
pub fn free_slash24(base: [u8; 2]) -> Ipv4Addr {
    let routed = routed_networks();
    let mut taken = TAKEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let start = std::process::id().wrapping_mul(37) % 256;
    for i in 0..256u32 {
        let third = (start + i) % 256;
        let key = (u32::from(base[0]) << 8 | u32::from(base[1])) << 8 | third;
        let net = Ipv4Addr::new(base[0], base[1], u8::try_from(third).unwrap_or(0), 0);
        if !routed.contains(&u32::from(net)) && taken.insert(key) {
            return net;
        }
    }
    panic!("no free /24 in {}.{}.0.0/16", base[0], base[1]);
}

/// A /22 (four /24s, aligned) in `base`.0.0/16 that no route covers and no fixture of this
/// process took: for a node of hundreds of pods.
pub fn free_slash22(base: [u8; 2]) -> Ipv4Addr {
    let routed = routed_networks();
    let mut taken = TAKEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let start = (std::process::id().wrapping_mul(37) % 64) * 4;
    for i in 0..64u32 {
        let first = (start + i * 4) % 256;
        let keys: Vec<u32> = (first..first + 4)
            .map(|third| (u32::from(base[0]) << 8 | u32::from(base[1])) << 8 | third)
            .collect();
        let free = (first..first + 4).all(|third| {
            let net = Ipv4Addr::new(base[0], base[1], u8::try_from(third).unwrap_or(0), 0);
            !routed.contains(&u32::from(net))
        }) && keys.iter().all(|k| !taken.contains(k));
        if free {
            taken.extend(keys);
            return Ipv4Addr::new(base[0], base[1], u8::try_from(first).unwrap_or(0), 0);
        }
    }
    panic!("no free /22 in {}.{}.0.0/16", base[0], base[1]);
}

impl DaemonNetwork {
    /// Names from the fixture's random suffix; `lines` (the test's own `[network]` lines)
    /// win over the fixture's choices.
    pub fn new(suffix: &str, lines: &str) -> DaemonNetwork {
        let set = |key: &str| {
            lines
                .lines()
                .any(|l| l.trim_start().starts_with(key) && l.contains('='))
        };
        let value = |key: &str| -> Option<String> {
            lines.lines().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
            })
        };
        let bridge = value("bridge").unwrap_or_else(|| format!("bt{suffix}"));
        let nft_table = value("nft_table").unwrap_or_else(|| format!("berth_e2e_{suffix}"));
        let pod_cidr =
            value("pod_cidr").unwrap_or_else(|| format!("{}/24", free_slash24([10, 213])));
        let mut config = lines.trim().to_owned();
        for (key, v) in [
            ("bridge", &bridge),
            ("nft_table", &nft_table),
            ("pod_cidr", &pod_cidr),
        ] {
            if !set(key) {
                config.push_str(&format!("\n{key} = {v:?}"));
            }
        }
        DaemonNetwork {
            config,
            bridge,
            nft_table,
            pod_cidr,
        }
    }
}

/// The links enslaved to `bridge`.
pub fn bridge_ports(bridge: &str) -> Vec<String> {
    berth_cni::builtin::bridge_ports(bridge).unwrap_or_default()
}

/// The ports left on `bridge` once stopped pods' veths had up to 5 s to go away (the
/// kernel frees them with their namespaces, in the background).
pub fn settled_bridge_ports(bridge: &str) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let ports = bridge_ports(bridge);
        if ports.is_empty() || std::time::Instant::now() > deadline {
            return ports;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Whether an interface exists on the host.
pub fn link_exists(name: &str) -> bool {
    PathBuf::from("/sys/class/net").join(name).exists()
}

/// The map elements of nft table `inet <table>` (empty when the table does not exist).
pub fn nft_map_elements(table: &str) -> Vec<String> {
    let out = Command::new("nft")
        .args(["list", "table", "inet", table])
        .output();
    let Ok(out) = out else { return Vec::new() };
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("elements = {"))
        .map(|e| e.trim_end_matches('}').trim().to_owned())
        .collect()
}

/// Whether nft table `inet <table>` exists.
pub fn nft_table_exists(table: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", table])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Removes a daemon's bridge, its ports and its nft table.
pub fn remove_daemon_network(bridge: &str, table: &str) {
    for p in bridge_ports(bridge) {
        let _ = berth_cni::builtin::detach(&p);
    }
    let _ = berth_cni::builtin::remove_bridge(bridge);
    let _ = berth_cni::builtin::nft::apply(&berth_cni::builtin::nft::Table::drop_script(table));
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run ip");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace the test creates (`ip netns add`), joined to the host by a veth
/// pair with addresses from 198.18.0.0/15: `host_ip` on the host end, `client_ip` inside.
#[derive(Debug)]
pub struct ClientNetns {
    pub name: String,
    pub host_if: String,
    pub host_ip: Ipv4Addr,
    pub client_ip: Ipv4Addr,
}

impl ClientNetns {
    pub fn create() -> ClientNetns {
        let net = free_slash24([198, 18]);
        let o = net.octets();
        let suffix = format!("{:02x}{:02x}", o[2], std::process::id() % 256);
        let name = format!("berth-e2e-client-{suffix}");
        let host_if = format!("bc{suffix}");
        let (host_ip, client_ip) = (
            Ipv4Addr::new(o[0], o[1], o[2], 1),
            Ipv4Addr::new(o[0], o[1], o[2], 2),
        );
        let c = ClientNetns {
            name,
            host_if,
            host_ip,
            client_ip,
        };
        run(Command::new("ip").args(["netns", "add", &c.name]));
        run(Command::new("ip").args([
            "link", "add", &c.host_if, "type", "veth", "peer", "name", "eth0", "netns", &c.name,
        ]));
        run(Command::new("ip").args(["addr", "add", &format!("{host_ip}/30"), "dev", &c.host_if]));
        run(Command::new("ip").args(["link", "set", &c.host_if, "up"]));
        // Packets from the client to a hostPort are forwarded to the pod bridge: this
        // interface (the test's own) must forward.
        std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{}/forwarding", c.host_if),
            "1",
        )
        .expect("enable forwarding on the client link");
        let inside = |args: &[&str]| {
            let mut v = vec!["netns", "exec", &c.name, "ip"];
            v.extend_from_slice(args);
            run(Command::new("ip").args(&v));
        };
        inside(&["addr", "add", &format!("{client_ip}/30"), "dev", "eth0"]);
        inside(&["link", "set", "eth0", "up"]);
        inside(&["link", "set", "lo", "up"]);
        inside(&["route", "add", "default", "via", &host_ip.to_string()]);
        c
    }

    /// Runs `f` on a thread inside the client namespace.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        berth_cni::netlink::in_netns(&PathBuf::from("/run/netns").join(&self.name), f)
    }
}

impl Drop for ClientNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Puts back what CNI plugins change on the host beyond the test's own bridge: the
/// `bridge` plugin turns on `net.ipv4.ip_forward` and `portmap` adds iptables nat chains
/// and rules (IPv4 and IPv6). On drop, every nat chain and rule that appeared since `new`
/// is removed (the whole table when it did not exist before) and ip_forward is restored.
#[derive(Debug)]
pub struct HostNatGuard {
    families: Vec<NatSnapshot>,
    ip_forward: String,
}

#[derive(Debug)]
struct NatSnapshot {
    tool: &'static str,
    family: &'static str,
    existed: bool,
    rules: BTreeSet<String>,
    chains: BTreeSet<String>,
}

fn nat_rules(tool: &str) -> Vec<String> {
    Command::new(tool)
        .args(["-t", "nat", "-S"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn nft_has_table(family: &str, name: &str) -> bool {
    Command::new("nft")
        .args(["list", "tables", family])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == format!("table {family} {name}"))
        })
}

impl NatSnapshot {
    fn take(tool: &'static str, family: &'static str) -> NatSnapshot {
        let existed = nft_has_table(family, "nat");
        let lines = if existed { nat_rules(tool) } else { Vec::new() };
        NatSnapshot {
            tool,
            family,
            existed,
            chains: lines
                .iter()
                .filter_map(|l| l.strip_prefix("-N "))
                .map(str::to_owned)
                .collect(),
            rules: lines.into_iter().filter(|l| l.starts_with("-A ")).collect(),
        }
    }

    fn restore(&self) {
        if !self.existed {
            let _ = Command::new("nft")
                .args(["delete", "table", self.family, "nat"])
                .output();
            return;
        }
        let now = nat_rules(self.tool);
        // New rules in chains that existed before, deleted by position, last first.
        let mut per_chain: std::collections::BTreeMap<String, Vec<(usize, bool)>> =
            std::collections::BTreeMap::new();
        for l in now.iter().filter(|l| l.starts_with("-A ")) {
            let chain = l.split_whitespace().nth(1).unwrap_or_default().to_owned();
            let v = per_chain.entry(chain).or_default();
            let n = v.len() + 1;
            v.push((n, !self.rules.contains(l)));
        }
        for (chain, rules) in &per_chain {
            let builtin = chain.chars().all(|c| c.is_ascii_uppercase());
            if !builtin && !self.chains.contains(chain) {
                continue; // a new chain: flushed and deleted below
            }
            for (n, new) in rules.iter().rev() {
                if *new {
                    let _ = Command::new(self.tool)
                        .args(["-t", "nat", "-D", chain, &n.to_string()])
                        .output();
                }
            }
        }
        let new_chains: Vec<&str> = now
            .iter()
            .filter_map(|l| l.strip_prefix("-N "))
            .filter(|c| !self.chains.contains(*c))
            .collect();
        // Flush them all first: new chains may jump to each other.
        for op in ["-F", "-X"] {
            for c in &new_chains {
                let _ = Command::new(self.tool).args(["-t", "nat", op, c]).output();
            }
        }
    }
}

impl HostNatGuard {
    pub fn new() -> HostNatGuard {
        HostNatGuard {
            families: vec![
                NatSnapshot::take("iptables", "ip"),
                NatSnapshot::take("ip6tables", "ip6"),
            ],
            ip_forward: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .unwrap_or_else(|_| "0".into()),
        }
    }
}

impl Default for HostNatGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for HostNatGuard {
    fn drop(&mut self) {
        for f in &self.families {
            f.restore();
        }
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", self.ip_forward.trim());
    }
}

/// Writes `<conf_dir>/10-<name>.conflist`: Debian's `bridge` plugin on `bridge` (gateway,
/// no masquerade, hairpin), `host-local` addresses from `subnet` kept in `data_dir`, and
/// `portmap` for hostPorts.
pub fn write_bridge_conflist(
    conf_dir: &std::path::Path,
    name: &str,
    bridge: &str,
    subnet: &str,
    data_dir: &std::path::Path,
) {
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": subnet }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": data_dir,
                }
            },
            { "type": "portmap", "capabilities": { "portMappings": true }, "snat": false }
        ]
    });
    std::fs::create_dir_all(conf_dir).expect("create the CNI conf dir");
    std::fs::write(
        conf_dir.join(format!("10-{name}.conflist")),
        conflist.to_string(),
    )
    .expect("write the conflist");
}

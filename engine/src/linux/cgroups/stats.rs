//! Resource usage read from cgroup files (v1 and v2) and from `/proc/<pid>/net/dev`:
//! plain file reads, no processes spawned. The parsers are pure and unit-tested on
//! fixture text.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::manager::CgroupManager;

/// One cgroup's usage at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Cumulative CPU time, nanoseconds.
    pub cpu_usage_ns: Option<u64>,
    pub memory_usage: Option<u64>,
    /// Usage minus inactive file pages: what the kernel cannot simply drop (kubelet's
    /// eviction figure).
    pub working_set: Option<u64>,
    pub rss: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    pub swap_usage: Option<u64>,
    /// The memory limit, when there is one.
    pub memory_limit: Option<u64>,
    pub swap_limit: Option<u64>,
    pub pids: Option<u64>,
}

/// `key value` lines (memory.stat, cpu.stat) as a map.
pub fn parse_flat_keyed(text: &str) -> BTreeMap<&str, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?, it.next()?.parse().ok()?))
        })
        .collect()
}

/// A single number, with v2's "max" and v1's near-2^63 values meaning no limit.
pub fn parse_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    t.parse::<u64>().ok().filter(|v| *v < (1 << 62))
}

fn read_u64(p: &Path) -> Option<u64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// v1 files of a cgroup (cpuacct, memory and pids directories) into stats.
pub fn v1_stats(cpuacct: Option<&Path>, memory: Option<&Path>, pids: Option<&Path>) -> CgroupStats {
    let mut s = CgroupStats {
        cpu_usage_ns: cpuacct.and_then(|d| read_u64(&d.join("cpuacct.usage"))),
        pids: pids.and_then(|d| read_u64(&d.join("pids.current"))),
        ..CgroupStats::default()
    };
    if let Some(d) = memory {
        let stat = fs::read_to_string(d.join("memory.stat")).unwrap_or_default();
        let m = parse_flat_keyed(&stat);
        s.memory_usage = read_u64(&d.join("memory.usage_in_bytes"));
        let inactive = m.get("total_inactive_file").copied().unwrap_or(0);
        s.working_set = s.memory_usage.map(|u| u.saturating_sub(inactive));
        s.rss = m.get("total_rss").copied();
        s.page_faults = m.get("total_pgfault").copied();
        s.major_page_faults = m.get("total_pgmajfault").copied();
        s.swap_usage = m.get("total_swap").copied();
        s.memory_limit = fs::read_to_string(d.join("memory.limit_in_bytes"))
            .ok()
            .and_then(|t| parse_limit(&t));
        s.swap_limit = fs::read_to_string(d.join("memory.memsw.limit_in_bytes"))
            .ok()
            .and_then(|t| parse_limit(&t));
    }
    s
}

/// v2 files of a cgroup directory into stats.
pub fn v2_stats(dir: &Path) -> CgroupStats {
    let cpu = fs::read_to_string(dir.join("cpu.stat")).unwrap_or_default();
    let cpu = parse_flat_keyed(&cpu);
    let stat = fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
    let m = parse_flat_keyed(&stat);
    let usage = read_u64(&dir.join("memory.current"));
    let inactive = m.get("inactive_file").copied().unwrap_or(0);
    CgroupStats {
        cpu_usage_ns: cpu.get("usage_usec").map(|u| u.saturating_mul(1000)),
        memory_usage: usage,
        working_set: usage.map(|u| u.saturating_sub(inactive)),
        rss: m.get("anon").copied(),
        page_faults: m.get("pgfault").copied(),
        major_page_faults: m.get("pgmajfault").copied(),
        swap_usage: read_u64(&dir.join("memory.swap.current")),
        memory_limit: fs::read_to_string(dir.join("memory.max"))
            .ok()
            .and_then(|t| parse_limit(&t)),
        swap_limit: fs::read_to_string(dir.join("memory.swap.max"))
            .ok()
            .and_then(|t| parse_limit(&t)),
        pids: read_u64(&dir.join("pids.current")),
    }
}

impl CgroupManager {
    /// The usage of cgroup `rel`, from whichever hierarchy holds each controller.
    pub fn stats(&self, rel: &str) -> CgroupStats {
        let Ok(relp) = super::manager::check_rel(rel) else {
            return CgroupStats::default();
        };
        let cpu = self.dir("cpuacct", relp).or_else(|| self.dir("cpu", relp));
        let (mem, pids) = (self.dir("memory", relp), self.dir("pids", relp));
        // A controller on v2 reports from the unified files; on v1 from its own hierarchy.
        let v1_dir = |d: &Option<(std::path::PathBuf, bool)>| {
            d.as_ref().filter(|(_, v2)| !v2).map(|(p, _)| p.clone())
        };
        let v1 = v1_stats(
            v1_dir(&cpu).as_deref(),
            v1_dir(&mem).as_deref(),
            v1_dir(&pids).as_deref(),
        );
        let v2_dir = [&cpu, &mem, &pids]
            .into_iter()
            .flatten()
            .find(|(_, v2)| *v2)
            .map(|(d, _)| d.clone());
        let Some(v2_dir) = v2_dir else { return v1 };
        let v2 = v2_stats(&v2_dir);
        CgroupStats {
            cpu_usage_ns: v1.cpu_usage_ns.or(v2.cpu_usage_ns),
            memory_usage: v1.memory_usage.or(v2.memory_usage),
            working_set: v1.working_set.or(v2.working_set),
            rss: v1.rss.or(v2.rss),
            page_faults: v1.page_faults.or(v2.page_faults),
            major_page_faults: v1.major_page_faults.or(v2.major_page_faults),
            swap_usage: v1.swap_usage.or(v2.swap_usage),
            memory_limit: v1.memory_limit.or(v2.memory_limit),
            swap_limit: v1.swap_limit.or(v2.swap_limit),
            pids: v1.pids.or(v2.pids),
        }
    }
}

/// One interface's counters from `/proc/<pid>/net/dev`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceStats {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// Parses `/proc/net/dev` (the namespace of the process it is read through); loopback
/// is left out, as kubelet and cAdvisor do.
pub fn parse_net_dev(text: &str) -> Vec<InterfaceStats> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            (f.len() >= 16).then(|| InterfaceStats {
                name: name.to_owned(),
                rx_bytes: f[0],
                rx_errors: f[2],
                tx_bytes: f[8],
                tx_errors: f[10],
            })
        })
        .collect()
}

/// The interfaces of the network namespace process `pid` lives in.
pub fn net_dev_of(pid: u32) -> Vec<InterfaceStats> {
    fs::read_to_string(format!("/proc/{pid}/net/dev"))
        .map(|t| parse_net_dev(&t))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_files() {
        let t = tempfile::tempdir().unwrap();
        let (cpu, mem, pids) = (
            t.path().join("cpu"),
            t.path().join("mem"),
            t.path().join("pids"),
        );
        for d in [&cpu, &mem, &pids] {
            fs::create_dir(d).unwrap();
        }
        fs::write(cpu.join("cpuacct.usage"), "123456789\n").unwrap();
        fs::write(mem.join("memory.usage_in_bytes"), "10485760\n").unwrap();
        fs::write(
            mem.join("memory.stat"),
            "cache 1\nrss 2\ntotal_rss 4194304\ntotal_inactive_file 2097152\ntotal_pgfault 77\ntotal_pgmajfault 3\n",
        )
        .unwrap();
        fs::write(mem.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        fs::write(pids.join("pids.current"), "4\n").unwrap();
        let s = v1_stats(Some(&cpu), Some(&mem), Some(&pids));
        assert_eq!(s.cpu_usage_ns, Some(123_456_789));
        assert_eq!(s.working_set, Some(10_485_760 - 2_097_152));
        assert_eq!(s.rss, Some(4_194_304));
        assert_eq!((s.page_faults, s.major_page_faults), (Some(77), Some(3)));
        assert_eq!(s.memory_limit, None, "v1's huge default is no limit");
        assert_eq!(s.pids, Some(4));
    }

    #[test]
    fn v2_files() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        fs::write(
            d.join("cpu.stat"),
            "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
        )
        .unwrap();
        fs::write(d.join("memory.current"), "8192\n").unwrap();
        fs::write(
            d.join("memory.stat"),
            "anon 4096\nfile 4096\ninactive_file 1024\npgfault 9\npgmajfault 1\n",
        )
        .unwrap();
        fs::write(d.join("memory.max"), "65536\n").unwrap();
        fs::write(d.join("memory.swap.current"), "0\n").unwrap();
        fs::write(d.join("memory.swap.max"), "max\n").unwrap();
        fs::write(d.join("pids.current"), "2\n").unwrap();
        let s = v2_stats(d);
        assert_eq!(s.cpu_usage_ns, Some(2_500_000));
        assert_eq!(s.working_set, Some(8192 - 1024));
        assert_eq!(s.rss, Some(4096));
        assert_eq!(s.memory_limit, Some(65536));
        assert_eq!(s.swap_limit, None);
        assert_eq!(s.pids, Some(2));
    }

    #[test]
    fn net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  eth0:    5000      40    2    0    0     0          0         0     3000      30    1    0    0     0       0          0\n";
        let v = parse_net_dev(text);
        assert_eq!(
            v,
            vec![InterfaceStats {
                name: "eth0".into(),
                rx_bytes: 5000,
                rx_errors: 2,
                tx_bytes: 3000,
                tx_errors: 1
            }]
        );
    }
}

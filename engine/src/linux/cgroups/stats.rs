//! Resource usage read from cgroup files (v1 and v2) and from `/proc/<pid>/net/dev`:
//! plain file reads, no processes spawned. The parsers are pure and unit-tested on
//! fixture text.

use std::fs;
use std::path::{Path, PathBuf};

use super::manager::CgroupManager;
use super::{CgroupLayout, Hierarchy};

/// One cgroup's usage at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
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
    /// Pressure stall information (cgroup v2 `cpu.pressure`, `memory.pressure`,
    /// `io.pressure`); absent where the kernel or the layout has none for this cgroup.
    pub cpu_pressure: Option<Pressure>,
    pub memory_pressure: Option<Pressure>,
    pub io_pressure: Option<Pressure>,
}

/// One `*.pressure` file: the share of time some (or all) tasks of the cgroup stalled.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressure {
    pub some: PressureLine,
    /// Absent in `cpu.pressure` before Linux 5.13 (reported as zero there).
    pub full: PressureLine,
}

/// Averages in percent over 10, 60 and 300 s, and the total stall time in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PressureLine {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    pub total_us: u64,
}

/// Parses a `*.pressure` file (`some avg10=0.00 avg60=0.00 avg300=0.00 total=0` and a
/// `full` line); None when there is no `some` line.
pub fn parse_pressure(text: &str) -> Option<Pressure> {
    let line = |kind: &str| -> Option<PressureLine> {
        let l = text.lines().find(|l| l.starts_with(kind))?;
        let mut out = PressureLine::default();
        for kv in l.split_whitespace().skip(1) {
            let (k, v) = kv.split_once('=')?;
            match k {
                "avg10" => out.avg10 = v.parse().ok()?,
                "avg60" => out.avg60 = v.parse().ok()?,
                "avg300" => out.avg300 = v.parse().ok()?,
                "total" => out.total_us = v.parse().ok()?,
                _ => {}
            }
        }
        Some(out)
    };
    Some(Pressure {
        some: line("some ")?,
        full: line("full ").unwrap_or_default(),
    })
}

/// The mount points of the cgroup hierarchies, each opened once (O_PATH) for as long as
/// the engine runs: a stats read opens `<cgroup>/<file>` beneath one. Opening each cgroup
/// directory first cost an open and a close per directory, four directories per cgroup on
/// a v1 node and two cgroups per pod, at every stats call: a sixth of a round's system
/// calls. Mount points do not move under a running node (containerd's cgroup library
/// keeps their paths the same way).
#[derive(Debug, Default)]
pub struct HierarchyRoots {
    roots: Vec<(PathBuf, std::os::fd::OwnedFd)>,
    /// The v1 memory hierarchy has no `memory.memsw.*` files (swap accounting is off, as
    /// on a kernel booted without it): its root has none, so no cgroup has them, and a
    /// stats read does not look for them (two failed opens per pod a round).
    no_memsw: bool,
}

impl HierarchyRoots {
    /// Opens the mount point of every hierarchy of `layout` (one that cannot be opened is
    /// left out: its cgroups are then read by their full paths).
    pub fn open(layout: &CgroupLayout) -> HierarchyRoots {
        let mut roots: Vec<(PathBuf, std::os::fd::OwnedFd)> = Vec::new();
        let mounts = layout
            .controllers
            .values()
            .map(|h| match h {
                Hierarchy::V1 { mountpoint } | Hierarchy::V2 { mountpoint } => mountpoint,
            })
            .chain(layout.unified.as_ref());
        for m in mounts {
            if roots.iter().any(|(p, _)| p == m) {
                continue;
            }
            if let Ok(fd) = open_path(m) {
                roots.push((m.clone(), fd));
            }
        }
        let no_memsw = match layout.controllers.get("memory") {
            Some(Hierarchy::V1 { mountpoint }) => {
                mountpoint.join("memory.usage_in_bytes").exists()
                    && !mountpoint.join("memory.memsw.limit_in_bytes").exists()
            }
            _ => false,
        };
        HierarchyRoots { roots, no_memsw }
    }

    fn get(&self, mount: &Path) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.roots
            .iter()
            .find(|(p, _)| p == mount)
            .map(|(_, fd)| fd.as_fd())
    }
}

fn open_path(dir: &Path) -> nix::Result<std::os::fd::OwnedFd> {
    use nix::fcntl::{OFlag, open};
    open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
}

/// Where a [`DirReader`] opens its files.
enum Base<'a> {
    /// The cgroup's directory, opened for this reader.
    Dir(std::os::fd::OwnedFd),
    /// A hierarchy's mount point and the cgroup's path beneath it (`rel/`).
    Beneath(std::os::fd::BorrowedFd<'a>, String),
    /// The directory could not be opened: every read fails.
    None,
}

/// Reads the small files of one cgroup directory: each file is opened relative to the
/// directory (or to its hierarchy's mount point, kept open), so the kernel resolves a
/// name or two rather than the whole cgroup path, and read into one reused buffer with as
/// few reads as it takes (cgroup files are seq files: a read shorter than asked is their
/// end). At a few hundred cgroups per stats call, path walks and probe reads were most of
/// the time.
struct DirReader<'a> {
    base: Base<'a>,
    /// `rel/name` of the file being opened, when beneath a mount point.
    path: String,
    buf: Vec<u8>,
}

impl<'a> DirReader<'a> {
    fn open(dir: &Path) -> DirReader<'a> {
        DirReader::with_base(open_path(dir).map_or(Base::None, Base::Dir))
    }

    /// The cgroup `rel` of the hierarchy mounted at `mount`: beneath the mount point's
    /// descriptor in `roots` when it holds one.
    fn beneath(roots: Option<&'a HierarchyRoots>, mount: &Path, rel: &Path) -> DirReader<'a> {
        match (roots.and_then(|r| r.get(mount)), rel.to_str()) {
            (Some(fd), Some(rel)) => DirReader::with_base(Base::Beneath(fd, format!("{rel}/"))),
            _ => DirReader::open(&mount.join(rel)),
        }
    }

    fn with_base(base: Base<'a>) -> DirReader<'a> {
        DirReader {
            base,
            path: String::new(),
            buf: Vec::with_capacity(4096),
        }
    }

    /// The text of file `name`, None if it cannot be read.
    fn read(&mut self, name: &str) -> Option<&str> {
        use nix::fcntl::{OFlag, openat};
        use std::io::Read;
        let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC;
        let mode = nix::sys::stat::Mode::empty();
        let fd = match &self.base {
            Base::Dir(dir) => openat(dir, name, flags, mode),
            Base::Beneath(root, rel) => {
                self.path.clear();
                self.path.push_str(rel);
                self.path.push_str(name);
                openat(root, self.path.as_str(), flags, mode)
            }
            Base::None => return None,
        }
        .ok()?;
        let mut f = fs::File::from(fd);
        self.buf.clear();
        loop {
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(4096);
            }
            let len = self.buf.len();
            let room = self.buf.capacity() - len;
            self.buf.resize(len + room, 0);
            match f.read(&mut self.buf[len..]) {
                Ok(n) => {
                    self.buf.truncate(len + n);
                    if n == 0 || n < room {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    self.buf.truncate(len);
                }
                Err(_) => return None,
            }
        }
        std::str::from_utf8(&self.buf).ok()
    }

    fn u64(&mut self, name: &str) -> Option<u64> {
        self.read(name)?.trim().parse().ok()
    }

    fn limit(&mut self, name: &str) -> Option<u64> {
        parse_limit(self.read(name)?)
    }

    fn pressure(&mut self, name: &str) -> Option<Pressure> {
        parse_pressure(self.read(name)?)
    }

    /// The three pressure files of a cgroup2 directory: cpu, memory, io.
    fn pressures(&mut self) -> [Option<Pressure>; 3] {
        [
            self.pressure("cpu.pressure"),
            self.pressure("memory.pressure"),
            self.pressure("io.pressure"),
        ]
    }

    /// The values of `keys` in flat keyed file `name` (memory.stat, cpu.stat).
    fn keyed<const N: usize>(&mut self, name: &str, keys: [&str; N]) -> [Option<u64>; N] {
        self.read(name)
            .map_or([None; N], |text| parse_flat_keyed(text, keys))
    }
}

/// The values of `keys` in `key value` lines (memory.stat, cpu.stat), in one pass: these
/// files have some forty lines, of which a stats read wants four or five.
pub fn parse_flat_keyed<const N: usize>(text: &str, keys: [&str; N]) -> [Option<u64>; N] {
    let mut out = [None; N];
    for line in text.lines() {
        let Some((k, v)) = line.split_once(' ') else {
            continue;
        };
        if let Some(i) = keys.iter().position(|want| *want == k) {
            out[i] = v.trim().parse().ok();
        }
    }
    out
}

/// A single number, with v2's "max" and v1's near-2^63 values meaning no limit.
pub fn parse_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    t.parse::<u64>().ok().filter(|v| *v < (1 << 62))
}

/// v1 files of a cgroup (cpuacct, memory and pids directories) into stats.
pub fn v1_stats(cpuacct: Option<&Path>, memory: Option<&Path>, pids: Option<&Path>) -> CgroupStats {
    v1_from(
        cpuacct.map(DirReader::open),
        memory.map(DirReader::open),
        pids.map(DirReader::open),
        true,
    )
}

/// `memsw`: whether to look for `memory.memsw.limit_in_bytes`.
fn v1_from(
    cpuacct: Option<DirReader>,
    memory: Option<DirReader>,
    pids: Option<DirReader>,
    memsw: bool,
) -> CgroupStats {
    let mut s = CgroupStats {
        cpu_usage_ns: cpuacct.and_then(|mut r| r.u64("cpuacct.usage")),
        pids: pids.and_then(|mut r| r.u64("pids.current")),
        ..CgroupStats::default()
    };
    if let Some(mut r) = memory {
        s.memory_usage = r.u64("memory.usage_in_bytes");
        s.memory_limit = r.limit("memory.limit_in_bytes");
        if memsw {
            s.swap_limit = r.limit("memory.memsw.limit_in_bytes");
        }
        let [inactive, rss, faults, major, swap] = r.keyed(
            "memory.stat",
            [
                "total_inactive_file",
                "total_rss",
                "total_pgfault",
                "total_pgmajfault",
                "total_swap",
            ],
        );
        s.working_set = s
            .memory_usage
            .map(|u| u.saturating_sub(inactive.unwrap_or(0)));
        (s.rss, s.page_faults, s.major_page_faults, s.swap_usage) = (rss, faults, major, swap);
    }
    s
}

/// v2 files of a cgroup directory into stats.
pub fn v2_stats(dir: &Path) -> CgroupStats {
    v2_from(DirReader::open(dir))
}

fn v2_from(mut r: DirReader) -> CgroupStats {
    let usage = r.u64("memory.current");
    let mut s = CgroupStats {
        memory_usage: usage,
        swap_usage: r.u64("memory.swap.current"),
        memory_limit: r.limit("memory.max"),
        swap_limit: r.limit("memory.swap.max"),
        pids: r.u64("pids.current"),
        ..CgroupStats::default()
    };
    [s.cpu_pressure, s.memory_pressure, s.io_pressure] = r.pressures();
    let [usage_usec] = r.keyed("cpu.stat", ["usage_usec"]);
    s.cpu_usage_ns = usage_usec.map(|u| u.saturating_mul(1000));
    let [inactive, anon, faults, major] = r.keyed(
        "memory.stat",
        ["inactive_file", "anon", "pgfault", "pgmajfault"],
    );
    s.working_set = usage.map(|u| u.saturating_sub(inactive.unwrap_or(0)));
    (s.rss, s.page_faults, s.major_page_faults) = (anon, faults, major);
    s
}

impl CgroupManager {
    /// The usage of cgroup `rel`, from whichever hierarchy holds each controller; its
    /// files opened beneath the mount points of `roots` when given.
    pub fn stats(&self, rel: &str, roots: Option<&HierarchyRoots>) -> CgroupStats {
        let Ok(relp) = super::manager::check_rel(rel) else {
            return CgroupStats::default();
        };
        let mount = |c: &str| self.mount(c);
        let cpu = mount("cpuacct").or_else(|| mount("cpu"));
        let (mem, pids) = (mount("memory"), mount("pids"));
        // A controller on v2 reports from the unified files; on v1 from its own hierarchy.
        let v1_dir = |m: Option<(&Path, bool)>| {
            m.filter(|(_, v2)| !v2)
                .map(|(m, _)| DirReader::beneath(roots, m, relp))
        };
        let memsw = roots.is_none_or(|r| !r.no_memsw);
        let v1 = v1_from(v1_dir(cpu), v1_dir(mem), v1_dir(pids), memsw);
        let v2_mount = [cpu, mem, pids]
            .into_iter()
            .flatten()
            .find(|(_, v2)| *v2)
            .map(|(m, _)| m);
        let Some(v2_mount) = v2_mount else {
            // Pressure files are cgroup2 core files: they exist in the unified hierarchy
            // of a hybrid node too, whichever controllers it holds.
            let mut s = v1;
            if let Some(u) = self.layout().unified.as_deref() {
                [s.cpu_pressure, s.memory_pressure, s.io_pressure] =
                    DirReader::beneath(roots, u, relp).pressures();
            }
            return s;
        };
        let v2 = v2_from(DirReader::beneath(roots, v2_mount, relp));
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
            cpu_pressure: v2.cpu_pressure,
            memory_pressure: v2.memory_pressure,
            io_pressure: v2.io_pressure,
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

/// The interfaces of the network namespace process `pid` lives in. Read into a page-sized
/// buffer: the file says its size is 0, and a read sized by that probes in small steps
/// (six reads for a pod's two interfaces, at every stats call for every pod).
pub fn net_dev_of(pid: u32) -> Vec<InterfaceStats> {
    use std::io::Read;
    let mut text = String::with_capacity(4096);
    match fs::File::open(format!("/proc/{pid}/net/dev"))
        .and_then(|mut f| f.read_to_string(&mut text))
    {
        Ok(_) => parse_net_dev(&text),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_files_parse() {
        let p = parse_pressure(
            "some avg10=1.99 avg60=7.94 avg300=25.16 total=1444542908\nfull avg10=0.00 avg60=0.50 avg300=0.00 total=12\n",
        )
        .unwrap();
        assert_eq!(p.some.total_us, 1_444_542_908);
        assert!((p.some.avg300 - 25.16).abs() < 1e-9);
        assert!((p.full.avg60 - 0.5).abs() < 1e-9);
        // cpu.pressure before Linux 5.13 has no `full` line.
        let p = parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n").unwrap();
        assert_eq!((p.some.total_us, p.full.total_us), (5, 0));
        assert!(parse_pressure("").is_none());
        assert!(parse_pressure("some avg10=x total=1\n").is_none());
    }

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

    /// A hybrid node's layout over a fake tree: v1 cpuacct, memory and pids, and cgroup2
    /// beside them with its pressure files only.
    fn hybrid_tree(t: &Path, rel: &str) -> CgroupManager {
        let mut controllers = std::collections::BTreeMap::new();
        for (c, files) in [
            ("cpuacct", &[("cpuacct.usage", "42\n")][..]),
            (
                "memory",
                &[
                    ("memory.usage_in_bytes", "4096\n"),
                    ("memory.limit_in_bytes", "8192\n"),
                    ("memory.stat", "total_inactive_file 1024\ntotal_rss 2048\n"),
                ][..],
            ),
            ("pids", &[("pids.current", "3\n")][..]),
            (
                "unified",
                &[(
                    "cpu.pressure",
                    "some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
                )][..],
            ),
        ] {
            let dir = t.join(c).join(rel);
            fs::create_dir_all(&dir).unwrap();
            for (f, text) in files {
                fs::write(dir.join(f), text).unwrap();
            }
            if c != "unified" {
                controllers.insert(
                    c.to_owned(),
                    Hierarchy::V1 {
                        mountpoint: t.join(c),
                    },
                );
            }
        }
        CgroupManager::with_layout(CgroupLayout {
            controllers,
            unified: Some(t.join("unified")),
        })
    }

    #[test]
    fn memsw_files_are_looked_for_only_where_the_memory_root_has_them() {
        let t = tempfile::tempdir().unwrap();
        let m = hybrid_tree(t.path(), "berth/pod-a/c1");
        let mem = t.path().join("memory");
        fs::write(mem.join("memory.usage_in_bytes"), "1\n").unwrap();
        fs::write(
            mem.join("berth/pod-a/c1/memory.memsw.limit_in_bytes"),
            "16384\n",
        )
        .unwrap();
        // Swap accounting off: the root has no memsw files, so none are opened.
        let roots = HierarchyRoots::open(m.layout());
        assert!(roots.no_memsw);
        assert_eq!(m.stats("berth/pod-a/c1", Some(&roots)).swap_limit, None);
        // On: the root has them, and the cgroup's limit is read.
        fs::write(
            mem.join("memory.memsw.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        let roots = HierarchyRoots::open(m.layout());
        assert!(!roots.no_memsw);
        assert_eq!(
            m.stats("berth/pod-a/c1", Some(&roots)).swap_limit,
            Some(16384)
        );
    }

    #[test]
    fn a_cgroup_reads_the_same_beneath_kept_mount_points_as_by_its_path() {
        let t = tempfile::tempdir().unwrap();
        let m = hybrid_tree(t.path(), "berth/pod-a/c1");
        let roots = HierarchyRoots::open(m.layout());
        assert_eq!(roots.roots.len(), 4);
        let beneath = m.stats("berth/pod-a/c1", Some(&roots));
        assert_eq!(beneath, m.stats("berth/pod-a/c1", None));
        assert_eq!(beneath.cpu_usage_ns, Some(42));
        assert_eq!(beneath.working_set, Some(3072));
        assert_eq!(beneath.rss, Some(2048));
        assert_eq!(beneath.memory_limit, Some(8192));
        assert_eq!(beneath.pids, Some(3));
        assert_eq!(beneath.cpu_pressure.map(|p| p.some.total_us), Some(7));
        assert_eq!(
            m.stats("berth/pod-a/gone", Some(&roots)),
            CgroupStats::default()
        );
        assert_eq!(m.stats("../escape", Some(&roots)), CgroupStats::default());
    }

    #[test]
    fn flat_keyed_files_give_the_asked_keys_in_one_pass() {
        let text = "cache 1\nrss 2\ntotal_rss 4\nbad\ntotal_swap x\n";
        assert_eq!(
            parse_flat_keyed(text, ["total_rss", "rss", "total_swap", "absent"]),
            [Some(4), Some(2), None, None]
        );
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

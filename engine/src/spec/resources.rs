//! Resource limits: CRI's LinuxContainerResources -> what the cgroup gets.
//!
//! Values are kept in cgroup v1 terms (shares, quota/period, bytes); the cgroup layer
//! converts them for v2 (`cpu.weight`, `cpu.max`, `memory.max`, `memory.swap.max`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::SpecError;

/// Limits for one cgroup. `None` means "not limited" (the cgroup's default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    pub memory_limit: Option<i64>,
    /// Memory plus swap (v1 `memory.memsw.limit_in_bytes` semantics).
    pub memory_swap_limit: Option<i64>,
    pub pids_limit: Option<i64>,
    /// Page size (`2MB`, `1GB`) -> limit in bytes.
    pub hugepages: BTreeMap<String, u64>,
    /// cgroup v2 files set verbatim (CRI `unified`), checked by the cgroup layer.
    pub unified: BTreeMap<String, String>,
    pub oom_score_adj: Option<i32>,
}

/// The fields of CRI's LinuxContainerResources that berth reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceRequest {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
    pub memory_swap_limit_in_bytes: i64,
    pub oom_score_adj: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    pub hugepage_limits: Vec<(String, u64)>,
    pub unified: BTreeMap<String, String>,
}

fn valid_cpuset(s: &str) -> bool {
    s.split(',').all(|part| {
        let mut it = part.splitn(2, '-');
        let a = it.next().unwrap_or("");
        let ok = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
        match it.next() {
            None => ok(a),
            Some(b) => ok(a) && ok(b) && a.parse::<u32>().ok() <= b.parse::<u32>().ok(),
        }
    })
}

/// Checks and converts a resource request. Zero means "unset" in CRI.
pub fn resources(req: &ResourceRequest) -> Result<Resources, SpecError> {
    let f = |name: &str| format!("linux.resources.{name}");
    let mut r = Resources::default();
    if req.cpu_shares > 0 {
        // The kernel's range for cpu.shares.
        r.cpu_shares = Some(u64::try_from(req.cpu_shares.clamp(2, 262_144)).unwrap_or(2));
    } else if req.cpu_shares < 0 {
        return Err(SpecError::new(f("cpu_shares"), "must not be negative"));
    }
    // Negative values are refused rather than read as "unlimited", except -1, which runc
    // and the cgroup files take as "no limit" (the same as 0, unset, here).
    for (name, v) in [
        ("cpu_quota", req.cpu_quota),
        ("cpu_period", req.cpu_period),
        ("memory_limit_in_bytes", req.memory_limit_in_bytes),
        ("memory_swap_limit_in_bytes", req.memory_swap_limit_in_bytes),
    ] {
        if v < -1 || (v == -1 && name == "cpu_period") {
            return Err(SpecError::new(
                f(name),
                format!(
                    "{v} is negative (0 means unset{})",
                    if name == "cpu_period" {
                        ""
                    } else {
                        ", as does -1"
                    }
                ),
            ));
        }
    }
    if req.cpu_quota > 0 {
        if req.cpu_quota < 1000 {
            return Err(SpecError::new(
                f("cpu_quota"),
                "must be at least 1000 microseconds",
            ));
        }
        r.cpu_quota = Some(req.cpu_quota);
    }
    if req.cpu_period > 0 {
        if !(1000..=1_000_000).contains(&req.cpu_period) {
            return Err(SpecError::new(
                f("cpu_period"),
                "must be between 1000 and 1000000 microseconds",
            ));
        }
        r.cpu_period = u64::try_from(req.cpu_period).ok();
    }
    if req.memory_limit_in_bytes > 0 {
        // Below this the kernel or the process cannot work; runc refuses under 6 MiB too.
        if req.memory_limit_in_bytes < 6 << 20 {
            return Err(SpecError::new(
                f("memory_limit_in_bytes"),
                "must be at least 6 MiB",
            ));
        }
        r.memory_limit = Some(req.memory_limit_in_bytes);
    }
    if req.memory_swap_limit_in_bytes > 0 {
        let limit = r.memory_limit.ok_or_else(|| {
            SpecError::new(
                f("memory_swap_limit_in_bytes"),
                "needs memory_limit_in_bytes",
            )
        })?;
        if req.memory_swap_limit_in_bytes < limit {
            return Err(SpecError::new(
                f("memory_swap_limit_in_bytes"),
                "must be at least memory_limit_in_bytes (it is memory plus swap)",
            ));
        }
        r.memory_swap_limit = Some(req.memory_swap_limit_in_bytes);
    }
    for (name, v) in [
        ("cpuset_cpus", &req.cpuset_cpus),
        ("cpuset_mems", &req.cpuset_mems),
    ] {
        if v.is_empty() {
            continue;
        }
        if !valid_cpuset(v) {
            return Err(SpecError::new(
                f(name),
                format!("{v:?} is not a list of ranges like 0-3,5"),
            ));
        }
        if name == "cpuset_cpus" {
            r.cpuset_cpus = Some(v.clone());
        } else {
            r.cpuset_mems = Some(v.clone());
        }
    }
    for (size, limit) in &req.hugepage_limits {
        let ok = size
            .strip_suffix("KB")
            .or_else(|| size.strip_suffix("MB"))
            .or_else(|| size.strip_suffix("GB"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !ok {
            return Err(SpecError::new(
                f("hugepage_limits"),
                format!("page size {size:?} is not like 2MB or 1GB"),
            ));
        }
        r.hugepages.insert(size.clone(), *limit);
    }
    for k in req.unified.keys() {
        if k.contains('/') || k.starts_with('.') || !k.contains('.') {
            return Err(SpecError::new(
                f("unified"),
                format!("{k:?} is not a cgroup v2 file name"),
            ));
        }
    }
    r.unified = req.unified.clone();
    if req.oom_score_adj != 0 {
        if !(-1000..=1000).contains(&req.oom_score_adj) {
            return Err(SpecError::new(
                f("oom_score_adj"),
                "must be between -1000 and 1000",
            ));
        }
        r.oom_score_adj = i32::try_from(req.oom_score_adj).ok();
    }
    Ok(r)
}

/// cgroup v2 `cpu.weight` for v1 `cpu.shares`: the conversion runc, crun and Kubernetes
/// moved to in 2025 (opencontainers/cgroups#20), a quadratic in log2(shares) that maps the
/// default 1024 shares to the default weight 100 (the old linear one gave 39) and keeps
/// 2 → 1 and 262144 → 10000.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares <= 2 {
        return 1;
    }
    if shares >= 262_144 {
        return 10_000;
    }
    let l = (shares as f64).log2();
    let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
    (10f64.powf(exponent).ceil() as u64).clamp(1, 10_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_and_validates() {
        let r = resources(&ResourceRequest {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 64 << 20,
            memory_swap_limit_in_bytes: 128 << 20,
            cpuset_cpus: "0-1,3".into(),
            hugepage_limits: vec![("2MB".into(), 4 << 20)],
            oom_score_adj: 900,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.cpu_shares, Some(512));
        assert_eq!((r.cpu_quota, r.cpu_period), (Some(50_000), Some(100_000)));
        assert_eq!(r.memory_limit, Some(64 << 20));
        assert_eq!(r.memory_swap_limit, Some(128 << 20));
        assert_eq!(r.hugepages["2MB"], 4 << 20);
        assert_eq!(r.oom_score_adj, Some(900));
        assert_eq!(
            resources(&ResourceRequest::default()).unwrap(),
            Resources::default()
        );
    }

    #[test]
    fn refuses_nonsense_with_the_field() {
        for (req, field) in [
            (
                ResourceRequest {
                    memory_limit_in_bytes: -2,
                    ..Default::default()
                },
                "memory_limit_in_bytes",
            ),
            (
                ResourceRequest {
                    cpu_quota: -5000,
                    ..Default::default()
                },
                "cpu_quota",
            ),
            (
                ResourceRequest {
                    cpu_period: -1,
                    ..Default::default()
                },
                "cpu_period",
            ),
            (
                ResourceRequest {
                    memory_swap_limit_in_bytes: -100,
                    ..Default::default()
                },
                "memory_swap_limit_in_bytes",
            ),
            (
                ResourceRequest {
                    cpu_quota: 10,
                    ..Default::default()
                },
                "cpu_quota",
            ),
            (
                ResourceRequest {
                    cpu_period: 5,
                    ..Default::default()
                },
                "cpu_period",
            ),
            (
                ResourceRequest {
                    memory_limit_in_bytes: 4096,
                    ..Default::default()
                },
                "memory_limit_in_bytes",
            ),
            (
                ResourceRequest {
                    memory_swap_limit_in_bytes: 1 << 30,
                    ..Default::default()
                },
                "memory_swap_limit_in_bytes",
            ),
            (
                ResourceRequest {
                    memory_limit_in_bytes: 1 << 30,
                    memory_swap_limit_in_bytes: 64 << 20,
                    ..Default::default()
                },
                "memory_swap_limit_in_bytes",
            ),
            (
                ResourceRequest {
                    cpuset_cpus: "3-1".into(),
                    ..Default::default()
                },
                "cpuset_cpus",
            ),
            (
                ResourceRequest {
                    cpuset_mems: "a".into(),
                    ..Default::default()
                },
                "cpuset_mems",
            ),
            (
                ResourceRequest {
                    hugepage_limits: vec![("huge".into(), 1)],
                    ..Default::default()
                },
                "hugepage_limits",
            ),
            (
                ResourceRequest {
                    oom_score_adj: 2000,
                    ..Default::default()
                },
                "oom_score_adj",
            ),
            (
                ResourceRequest {
                    unified: [("../x".to_owned(), "1".to_owned())].into(),
                    ..Default::default()
                },
                "unified",
            ),
        ] {
            let e = resources(&req).unwrap_err();
            assert!(e.field.ends_with(field), "{field}: {e}");
        }
    }

    #[test]
    fn shares_to_weight_matches_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(3), 2);
        assert_eq!(shares_to_weight(512), 59);
        assert_eq!(shares_to_weight(1024), 100);
        assert_eq!(shares_to_weight(2048), 174);
        assert_eq!(shares_to_weight(262_143), 10_000);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }
}

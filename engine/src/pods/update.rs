//! UpdatePodSandboxResources: pod-level resources (Kubernetes pod-level resources and
//! in-place resize) applied live to the pod cgroup and kept in the pod's record.

use crate::Engine;
use crate::api;
use crate::containers::resource_request;
use crate::error::{Error, Result};
use crate::spec::resources::{self, Resources};
use crate::state::records::PodState;

/// The pod's limits: the containers' sum (`resources`) plus the pod's `overhead`. Memory,
/// CPU quota (over the resources' period), shares and hugepages add up; the rest is the
/// resources'.
pub fn pod_level(res: &Resources, overhead: &Resources) -> Resources {
    let add = |a: Option<i64>, b: Option<i64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.saturating_add(b)),
        (a, b) => a.or(b),
    };
    let period = res.cpu_period.or(overhead.cpu_period);
    // Overhead's quota, in the resources' period.
    let overhead_quota = match (overhead.cpu_quota, overhead.cpu_period, period) {
        (Some(q), Some(op), Some(p)) if op > 0 => {
            i64::try_from(u128::from(q.unsigned_abs()) * u128::from(p) / u128::from(op)).ok()
        }
        (q, _, _) => q,
    };
    let mut hugepages = res.hugepages.clone();
    for (size, limit) in &overhead.hugepages {
        let e = hugepages.entry(size.clone()).or_insert(0);
        *e = e.saturating_add(*limit);
    }
    Resources {
        cpu_shares: match (res.cpu_shares, overhead.cpu_shares) {
            (Some(a), Some(b)) => Some(a.saturating_add(b).min(262_144)),
            (a, b) => a.or(b),
        },
        cpu_quota: add(res.cpu_quota, overhead_quota),
        cpu_period: period,
        memory_limit: add(res.memory_limit, overhead.memory_limit),
        memory_swap_limit: add(res.memory_swap_limit, overhead.memory_swap_limit),
        hugepages,
        cpuset_cpus: res.cpuset_cpus.clone(),
        cpuset_mems: res.cpuset_mems.clone(),
        unified: res.unified.clone(),
        pids_limit: res.pids_limit,
        oom_score_adj: None,
    }
}

impl Engine {
    /// UpdatePodSandboxResources: checks both parts as container resources are checked,
    /// writes their sum to the pod cgroup at once (the kernel refuses a memory limit below
    /// what the pod uses: InvalidArgument then, nothing changed) and records it.
    pub async fn update_pod_resources(
        &self,
        id: &str,
        overhead: Option<&api::LinuxContainerResources>,
        res: Option<&api::LinuxContainerResources>,
    ) -> Result<()> {
        let _g = self.locks.lock(id).await;
        let mut pod = self.pod(id)?;
        if pod.state != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {id} is not ready"
            )));
        }
        let check = |r: Option<&api::LinuxContainerResources>, field: &str| {
            r.map(|r| resources::resources(&resource_request(r)))
                .transpose()
                .map_err(|e| Error::InvalidArgument(format!("{field}: {e}")))
                .map(Option::unwrap_or_default)
        };
        let total = pod_level(&check(res, "resources")?, &check(overhead, "overhead")?);
        if pod.cgroup_owned && pod.cgroup.ends_with(".slice") {
            // Our own slice: systemd keeps the limits too (kubelet sets its own slices').
            self.set_unit_resources(&pod.cgroup, &total).await?;
        }
        if let Err(e) = self.cgroup_manager()?.apply(&pod.cgroup, &total) {
            return Err(Error::InvalidArgument(format!(
                "pod sandbox {id}: the pod cgroup {} refused the resources ({e}); a memory limit below what the pod uses now is refused by the kernel",
                pod.cgroup
            )));
        }
        pod.resources = Some(total);
        self.db.pod_put(&pod)?;
        tracing::info!(pod_id = %id, "pod resources updated");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_and_overhead_add_up() {
        let res = Resources {
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            cpu_shares: Some(512),
            memory_limit: Some(256 << 20),
            ..Default::default()
        };
        let overhead = Resources {
            cpu_quota: Some(5_000),
            cpu_period: Some(50_000),
            memory_limit: Some(32 << 20),
            ..Default::default()
        };
        let t = pod_level(&res, &overhead);
        assert_eq!(t.cpu_quota, Some(60_000));
        assert_eq!(t.cpu_period, Some(100_000));
        assert_eq!(t.cpu_shares, Some(512));
        assert_eq!(t.memory_limit, Some(288 << 20));
        let only = pod_level(&Resources::default(), &overhead);
        assert_eq!(only.memory_limit, Some(32 << 20));
    }
}

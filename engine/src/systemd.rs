//! The systemd cgroup driver's conversation with systemd (as runc's and crun's systemd
//! drivers have it): every container is a transient scope unit, `berth-<id>.scope`, in its
//! pod's slice, made over D-Bus with the container's pid in it, `Delegate=yes` and its
//! limits as unit properties; berth's own pods (no cgroup parent from kubelet) get a
//! transient slice of their own. What systemd cannot express is then written into the
//! scope's cgroup by the cgroup layer, as runc does.
//!
//! Only berthd speaks D-Bus (one shared connection, calls multiplexed on tokio); the pod
//! monitor, which clones containers, never links a bus connection's threads. The
//! container's child waits on a socket of berthd's until its scope exists
//! (`LaunchSpec::cgroup_park`), which keeps its pid from being reused meanwhile: it is the
//! monitor's unreaped child.

use std::time::Duration;

use futures_util::StreamExt;
use zbus::zvariant::{OwnedObjectPath, Value};

use crate::spec::resources::{Resources, shares_to_weight};

/// How long a unit's job may take (runc's 30 s).
const JOB_TIMEOUT: Duration = Duration::from_secs(30);

/// The unit of a container.
pub fn container_scope(container_id: &str) -> String {
    format!("berth-{container_id}.scope")
}

/// The unit name at the end of an expanded cgroup path (`a.slice/a-b.slice` → `a-b.slice`).
pub fn unit_of(rel: &str) -> &str {
    rel.rsplit('/').next().unwrap_or(rel)
}

/// Errors of the conversation with systemd.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error(
        "cannot reach systemd over D-Bus ({0}); the systemd cgroup driver needs systemd as PID 1 and the system bus (the dbus package), or set [cgroup] driver = \"cgroupfs\""
    )]
    Connect(zbus::Error),
    #[error("systemd: {call} {unit}: {error}")]
    Call {
        call: &'static str,
        unit: String,
        error: zbus::Error,
    },
    #[error("systemd: the job of {call} {unit} ended {result:?}, not \"done\"")]
    Job {
        call: &'static str,
        unit: String,
        result: String,
    },
    #[error("systemd: the job of {call} {unit} did not end within {JOB_TIMEOUT:?}")]
    Timeout { call: &'static str, unit: String },
}

/// A unit property's value, in the D-Bus types systemd takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prop {
    Str(String),
    Bool(bool),
    U64(u64),
    U32s(Vec<u32>),
    Bytes(Vec<u8>),
}

impl Prop {
    fn value(&self) -> Value<'_> {
        match self {
            Prop::Str(s) => Value::from(s.as_str()),
            Prop::Bool(b) => Value::from(*b),
            Prop::U64(v) => Value::from(*v),
            Prop::U32s(v) => Value::from(v.clone()),
            Prop::Bytes(v) => Value::from(v.clone()),
        }
    }
}

/// Named properties, in the order they are sent.
pub type Props = Vec<(&'static str, Prop)>;

/// Properties as D-Bus `a(sv)`.
fn values(props: &Props) -> Vec<(&'static str, Value<'_>)> {
    props.iter().map(|(k, v)| (*k, v.value())).collect()
}

/// systemd's "infinity".
const INFINITY: u64 = u64::MAX;

/// The unit properties that carry `res` (systemd's names; what has no property, such as
/// hugetlb or unified keys without one, is left to the cgroup layer's direct writes).
pub fn resource_props(res: &Resources) -> Props {
    let mut p: Props = Vec::new();
    if let Some(shares) = res.cpu_shares {
        p.push(("CPUWeight", Prop::U64(shares_to_weight(shares))));
    }
    if res.cpu_quota.is_some() || res.cpu_period.is_some() {
        let period = res.cpu_period.unwrap_or(100_000).max(1);
        p.push(("CPUQuotaPeriodUSec", Prop::U64(period)));
        let per_sec = match res.cpu_quota {
            Some(q) if q > 0 => {
                // systemd keeps the quota per second in 10 ms steps: round up, as runc,
                // so that the limit never shrinks below what was asked.
                let us = (q as u64).saturating_mul(1_000_000) / period;
                us.div_ceil(10_000).max(1) * 10_000
            }
            _ => INFINITY,
        };
        p.push(("CPUQuotaPerSecUSec", Prop::U64(per_sec)));
    }
    if let Some(c) = &res.cpuset_cpus {
        p.push(("AllowedCPUs", Prop::Bytes(cpuset_bits(c))));
    }
    if let Some(m) = &res.cpuset_mems {
        p.push(("AllowedMemoryNodes", Prop::Bytes(cpuset_bits(m))));
    }
    if let Some(limit) = res.memory_limit {
        let max = u64::try_from(limit)
            .ok()
            .filter(|&l| l > 0)
            .unwrap_or(INFINITY);
        p.push(("MemoryMax", Prop::U64(max)));
        if let Some(swap) = res.memory_swap_limit {
            let v = if swap < 0 || max == INFINITY {
                INFINITY
            } else {
                u64::try_from(swap).unwrap_or(0).saturating_sub(max)
            };
            p.push(("MemorySwapMax", Prop::U64(v)));
        }
    }
    if let Some(pids) = res.pids_limit {
        let v = u64::try_from(pids)
            .ok()
            .filter(|&v| v > 0)
            .unwrap_or(INFINITY);
        p.push(("TasksMax", Prop::U64(v)));
    }
    for (key, value) in &res.unified {
        let name = match key.as_str() {
            "memory.high" => "MemoryHigh",
            "memory.low" => "MemoryLow",
            "memory.min" => "MemoryMin",
            "memory.max" => "MemoryMax",
            "memory.swap.max" => "MemorySwapMax",
            "pids.max" => "TasksMax",
            "cpu.weight" => "CPUWeight",
            "io.weight" => "IOWeight",
            _ => continue,
        };
        // io.weight may read "default 100"; "max" is infinity; anything else that is not
        // a number stays with the direct write.
        let v = value.trim().trim_start_matches("default").trim();
        let parsed = if v == "max" {
            Some(INFINITY)
        } else {
            v.parse::<u64>().ok()
        };
        if let Some(n) = parsed {
            p.retain(|(k, _)| *k != name);
            p.push((name, Prop::U64(n)));
        }
    }
    p
}

/// A cpuset list (`0-3,8`) as systemd's bitmask: byte i, bit j is cpu 8i+j.
pub fn cpuset_bits(list: &str) -> Vec<u8> {
    let mut bits: Vec<u8> = Vec::new();
    let mut set = |n: usize| {
        if bits.len() <= n / 8 {
            bits.resize(n / 8 + 1, 0);
        }
        bits[n / 8] |= 1 << (n % 8);
    };
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut it = part.splitn(2, '-');
        let a = it.next().and_then(|x| x.trim().parse::<usize>().ok());
        let b = match it.next() {
            Some(x) => x.trim().parse::<usize>().ok(),
            None => a,
        };
        if let (Some(a), Some(b)) = (a, b) {
            // Bounded by what a kernel can have (CONFIG_NR_CPUS ≤ 8192).
            for n in a..=b.min(8191) {
                set(n);
            }
        }
    }
    bits
}

/// The properties every berth scope is made with (runc's, plus CollectMode so that a
/// failed scope never lingers to block a restart).
fn scope_props(description: String, slice: &str, pid: u32) -> Props {
    vec![
        ("Description", Prop::Str(description)),
        ("Slice", Prop::Str(slice.to_owned())),
        ("Delegate", Prop::Bool(true)),
        ("PIDs", Prop::U32s(vec![pid])),
        ("MemoryAccounting", Prop::Bool(true)),
        ("CPUAccounting", Prop::Bool(true)),
        ("IOAccounting", Prop::Bool(true)),
        ("TasksAccounting", Prop::Bool(true)),
        ("DefaultDependencies", Prop::Bool(false)),
        ("CollectMode", Prop::Str("inactive-or-failed".into())),
    ]
}

/// A unit berth made, as systemd lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitState {
    pub name: String,
    /// active, activating, deactivating, failed, inactive.
    pub active: String,
}

/// One connection to systemd's manager.
#[derive(Debug, Clone)]
pub struct Systemd {
    manager: zbus::Proxy<'static>,
}

const DEST: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

impl Systemd {
    /// Connects to the system bus.
    pub async fn connect() -> Result<Systemd, SystemdError> {
        let conn = zbus::Connection::system()
            .await
            .map_err(SystemdError::Connect)?;
        let manager = zbus::Proxy::new(&conn, DEST, PATH, MANAGER)
            .await
            .map_err(SystemdError::Connect)?;
        Ok(Systemd { manager })
    }

    /// systemd's version (the manager's `Version` property, e.g. "252.38-1~deb12u1").
    pub async fn version(&self) -> Result<String, SystemdError> {
        self.manager
            .get_property::<String>("Version")
            .await
            .map_err(|e| SystemdError::Call {
                call: "Version",
                unit: String::new(),
                error: e,
            })
    }

    /// Runs a unit job method and waits for its JobRemoved signal; `Ok(false)` when the
    /// method failed with one of `tolerated` (a D-Bus error name).
    async fn job<B>(
        &self,
        call: &'static str,
        unit: &str,
        body: &B,
        tolerated: &[&str],
    ) -> Result<bool, SystemdError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        let err = |error: zbus::Error| SystemdError::Call {
            call,
            unit: unit.to_owned(),
            error,
        };
        // Subscribed first, so that the signal of a fast job is not missed.
        let mut removed = self
            .manager
            .receive_signal("JobRemoved")
            .await
            .map_err(err)?;
        let reply = match self.manager.call_method(call, body).await {
            Ok(r) => r,
            Err(zbus::Error::MethodError(name, _, _)) if tolerated.contains(&name.as_str()) => {
                return Ok(false);
            }
            Err(e) => return Err(err(e)),
        };
        let job: OwnedObjectPath = reply.body().deserialize().map_err(err)?;
        let wait = async {
            while let Some(m) = removed.next().await {
                let Ok((_, path, _, result)) = m
                    .body()
                    .deserialize::<(u32, OwnedObjectPath, String, String)>()
                else {
                    continue;
                };
                if path == job {
                    return Some(result);
                }
            }
            None
        };
        match tokio::time::timeout(JOB_TIMEOUT, wait).await {
            Ok(Some(r)) if r == "done" => Ok(true),
            Ok(Some(result)) => Err(SystemdError::Job {
                call,
                unit: unit.to_owned(),
                result,
            }),
            Ok(None) => Err(err(zbus::Error::Failure(
                "the bus connection closed while waiting for the job".into(),
            ))),
            Err(_) => Err(SystemdError::Timeout {
                call,
                unit: unit.to_owned(),
            }),
        }
    }

    /// Makes the transient scope `unit` in `slice` with `pid` in it, `Delegate=yes` and
    /// `resources`, and waits until systemd has made it. A failed leftover of the same name
    /// (a crash between a start and a removal) is reset and the start tried once more.
    pub async fn start_scope(
        &self,
        unit: &str,
        slice: &str,
        pid: u32,
        description: String,
        resources: &Resources,
    ) -> Result<(), SystemdError> {
        let mut props = scope_props(description, slice, pid);
        props.extend(resource_props(resources));
        let values = values(&props);
        let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
        let body = (unit, "fail", &values, &aux);
        const EXISTS: &str = "org.freedesktop.systemd1.UnitExists";
        if self
            .job("StartTransientUnit", unit, &body, &[EXISTS])
            .await?
        {
            return Ok(());
        }
        self.reset_failed(unit).await;
        self.job("StartTransientUnit", unit, &body, &[]).await?;
        Ok(())
    }

    /// Makes sure the slice `unit` exists (a transient slice when nobody has made it);
    /// one that exists already is left as it is, as runc's driver does for kubelet.
    pub async fn ensure_slice(&self, unit: &str, description: String) -> Result<(), SystemdError> {
        let props: Props = vec![
            ("Description", Prop::Str(description)),
            ("MemoryAccounting", Prop::Bool(true)),
            ("CPUAccounting", Prop::Bool(true)),
            ("IOAccounting", Prop::Bool(true)),
            ("TasksAccounting", Prop::Bool(true)),
            ("DefaultDependencies", Prop::Bool(false)),
        ];
        let values = values(&props);
        let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
        self.job(
            "StartTransientUnit",
            unit,
            &(unit, "replace", &values, &aux),
            &["org.freedesktop.systemd1.UnitExists"],
        )
        .await?;
        Ok(())
    }

    /// Sets a running unit's properties (runtime only: nothing is written to /etc).
    pub async fn set_properties(&self, unit: &str, props: &Props) -> Result<(), SystemdError> {
        if props.is_empty() {
            return Ok(());
        }
        let values = values(props);
        self.manager
            .call_method("SetUnitProperties", &(unit, true, &values))
            .await
            .map(drop)
            .map_err(|error| SystemdError::Call {
                call: "SetUnitProperties",
                unit: unit.to_owned(),
                error,
            })
    }

    /// Stops a unit (killing what is left in it) and waits for it; a unit that does not
    /// exist (any more) is fine. A failed unit is then reset, so that its name is free.
    pub async fn stop_unit(&self, unit: &str) -> Result<(), SystemdError> {
        self.job(
            "StopUnit",
            unit,
            &(unit, "replace"),
            &[
                "org.freedesktop.systemd1.NoSuchUnit",
                "org.freedesktop.systemd1.LoadFailed",
            ],
        )
        .await?;
        self.reset_failed(unit).await;
        Ok(())
    }

    /// Forgets a failed unit; nothing to do for one that is not failed or not there.
    pub async fn reset_failed(&self, unit: &str) {
        let _ = self.manager.call_method("ResetFailedUnit", &(unit,)).await;
    }

    /// The loaded units whose names match `pattern` (shell glob, e.g. `berth-*.scope`).
    pub async fn list_units(&self, pattern: &str) -> Result<Vec<UnitState>, SystemdError> {
        type Row = (
            String,
            String,
            String,
            String,
            String,
            String,
            OwnedObjectPath,
            u32,
            String,
            OwnedObjectPath,
        );
        let states: Vec<&str> = Vec::new();
        let reply = self
            .manager
            .call_method("ListUnitsByPatterns", &(states, vec![pattern]))
            .await
            .and_then(|m| m.body().deserialize::<Vec<Row>>())
            .map_err(|error| SystemdError::Call {
                call: "ListUnitsByPatterns",
                unit: pattern.to_owned(),
                error,
            })?;
        Ok(reply
            .into_iter()
            .map(|r| UnitState {
                name: r.0,
                active: r.3,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(p: &'a Props, k: &str) -> Option<&'a Prop> {
        p.iter().find(|(n, _)| *n == k).map(|(_, v)| v)
    }

    #[test]
    fn resources_become_unit_properties() {
        let res = Resources {
            cpu_shares: Some(1024),
            cpu_quota: Some(25_000),
            cpu_period: Some(100_000),
            cpuset_cpus: Some("0-1,9".into()),
            memory_limit: Some(64 << 20),
            memory_swap_limit: Some(96 << 20),
            pids_limit: Some(0),
            unified: [
                ("memory.high".to_string(), "50331648".to_string()),
                ("io.weight".to_string(), "default 300".to_string()),
                ("memory.oom.group".to_string(), "1".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        let p = resource_props(&res);
        assert_eq!(get(&p, "CPUWeight"), Some(&Prop::U64(100)));
        assert_eq!(get(&p, "CPUQuotaPerSecUSec"), Some(&Prop::U64(250_000)));
        assert_eq!(get(&p, "CPUQuotaPeriodUSec"), Some(&Prop::U64(100_000)));
        assert_eq!(get(&p, "AllowedCPUs"), Some(&Prop::Bytes(vec![0b11, 0b10])));
        assert_eq!(get(&p, "MemoryMax"), Some(&Prop::U64(64 << 20)));
        assert_eq!(get(&p, "MemorySwapMax"), Some(&Prop::U64(32 << 20)));
        assert_eq!(get(&p, "TasksMax"), Some(&Prop::U64(INFINITY)));
        assert_eq!(get(&p, "MemoryHigh"), Some(&Prop::U64(48 << 20)));
        assert_eq!(get(&p, "IOWeight"), Some(&Prop::U64(300)));
        // No property for it: left to the direct write.
        assert!(p.iter().all(|(k, _)| !k.contains("OOM")));
        assert!(resource_props(&Resources::default()).is_empty());
    }

    #[test]
    fn quotas_round_up_to_systemds_step_and_unset_means_infinity() {
        let q = |quota, period| {
            let p = resource_props(&Resources {
                cpu_quota: quota,
                cpu_period: period,
                ..Default::default()
            });
            get(&p, "CPUQuotaPerSecUSec").cloned()
        };
        // 1234 µs per 100 ms is 12340 µs per second: 20 ms in systemd's 10 ms steps.
        assert_eq!(q(Some(1234), Some(100_000)), Some(Prop::U64(20_000)));
        assert_eq!(q(Some(50_000), None), Some(Prop::U64(500_000)));
        assert_eq!(q(Some(-1), Some(100_000)), Some(Prop::U64(INFINITY)));
        assert_eq!(q(None, None), None);
    }

    #[test]
    fn cpuset_lists_become_bitmasks() {
        assert_eq!(cpuset_bits("0"), vec![1]);
        assert_eq!(cpuset_bits("0-7"), vec![0xff]);
        assert_eq!(cpuset_bits("3,8"), vec![0b1000, 1]);
        assert_eq!(cpuset_bits(""), Vec::<u8>::new());
    }

    #[test]
    fn unit_names() {
        assert_eq!(container_scope("ab12"), "berth-ab12.scope");
        assert_eq!(unit_of("a.slice/a-b.slice"), "a-b.slice");
        assert_eq!(unit_of("a-b.slice"), "a-b.slice");
    }
}

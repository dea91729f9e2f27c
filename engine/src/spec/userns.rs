//! User namespaces (CRI `userns_options`): which host ids a pod's ids map to.
//!
//! kubelet (hostUsers: false) sends mode POD with one range of 65536 ids for uids and for
//! gids, distinct per pod; mode NODE (or no options) means the host's user namespace.
//! The container's root must map to an unprivileged host id: a mapping that covers host
//! id 0 would make root inside root outside, so it is refused rather than honoured.

use crate::api;
use serde::{Deserialize, Serialize};

use super::SpecError;

/// One line of a uid_map or gid_map: `size` ids from `container_id` inside are `host_id`…
/// outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

/// The id mappings of a pod's user namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMappings {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
}

/// The id an unmapped id shows as (the kernel's overflowuid/overflowgid default).
pub const OVERFLOW_ID: u32 = 65534;

/// The kernel accepts at most this many lines in a map (since Linux 4.15).
const MAX_RANGES: usize = 340;

impl IdMappings {
    /// The pod's user namespace from its CRI options: `None` for the host's.
    pub fn from_cri(
        ns: Option<&api::UserNamespace>,
        host_namespaces: &[(&str, bool)],
    ) -> Result<Option<IdMappings>, SpecError> {
        const FIELD: &str = "config.linux.security_context.namespace_options.userns_options";
        let Some(u) = ns else { return Ok(None) };
        match u.mode {
            api::namespace_mode::NODE => {
                if !u.uids.is_empty() || !u.gids.is_empty() {
                    return Err(SpecError::new(
                        FIELD,
                        "mode NODE uses the host's ids; uids and gids must be empty",
                    ));
                }
                return Ok(None);
            }
            api::namespace_mode::POD => {}
            _ => {
                return Err(SpecError::new(
                    FIELD,
                    format!(
                        "mode {} is not supported for user namespaces (only POD and NODE are)",
                        u.mode
                    ),
                ));
            }
        }
        if let Some((which, _)) = host_namespaces.iter().find(|(_, host)| *host) {
            return Err(SpecError::new(
                FIELD,
                format!(
                    "a pod in its own user namespace cannot share the node's {which} namespace"
                ),
            ));
        }
        let conv = |v: &[api::IdMapping]| -> Vec<IdRange> {
            v.iter()
                .map(|m| IdRange {
                    container_id: m.container_id,
                    host_id: m.host_id,
                    size: m.length,
                })
                .collect()
        };
        let m = IdMappings {
            uids: conv(&u.uids),
            gids: conv(&u.gids),
        };
        check_ranges(&format!("{FIELD}.uids"), &m.uids)?;
        check_ranges(&format!("{FIELD}.gids"), &m.gids)?;
        Ok(Some(m))
    }

    /// The host uid of the container's uid `id`.
    pub fn host_uid(&self, id: u32) -> Option<u32> {
        to_host(&self.uids, id)
    }

    /// The host gid of the container's gid `id`.
    pub fn host_gid(&self, id: u32) -> Option<u32> {
        to_host(&self.gids, id)
    }

    /// Rewrites `uid=N` / `gid=N` mount options (tmpfs, devpts) from container ids to the
    /// host ids the kernel expects from a mounter in the host's user namespace.
    pub fn map_mount_options(&self, opts: &[String]) -> Vec<String> {
        opts.iter()
            .map(|o| {
                // An id outside the mapping becomes the overflow id, never a host id
                // that might be another pod's.
                if let Some(v) = o.strip_prefix("uid=") {
                    let h = v.parse().ok().and_then(|n| self.host_uid(n));
                    format!("uid={}", h.unwrap_or(OVERFLOW_ID))
                } else if let Some(v) = o.strip_prefix("gid=") {
                    let h = v.parse().ok().and_then(|n| self.host_gid(n));
                    format!("gid={}", h.unwrap_or(OVERFLOW_ID))
                } else {
                    o.clone()
                }
            })
            .collect()
    }

    /// Refuses a process identity with an id the namespace does not map (it would fail
    /// at start with a bare EINVAL from setresuid or setgroups).
    pub fn check_identity(&self, uid: u32, gid: u32, groups: &[u32]) -> Result<(), SpecError> {
        const FIELD: &str = "config.linux.security_context";
        if self.host_uid(uid).is_none() {
            return Err(SpecError::new(
                FIELD,
                format!(
                    "uid {uid} is outside the pod's user namespace (uids {:?})",
                    self.uids
                ),
            ));
        }
        if let Some(g) = std::iter::once(&gid)
            .chain(groups)
            .find(|g| self.host_gid(**g).is_none())
        {
            return Err(SpecError::new(
                FIELD,
                format!(
                    "gid {g} is outside the pod's user namespace (gids {:?})",
                    self.gids
                ),
            ));
        }
        Ok(())
    }

    /// Text for /proc/<pid>/uid_map.
    pub fn uid_map(&self) -> String {
        map_text(&self.uids)
    }

    /// Text for /proc/<pid>/gid_map.
    pub fn gid_map(&self) -> String {
        map_text(&self.gids)
    }

    /// The ranges as command-line values (`container:host:size`).
    pub fn to_args(ranges: &[IdRange]) -> Vec<String> {
        ranges
            .iter()
            .map(|r| format!("{}:{}:{}", r.container_id, r.host_id, r.size))
            .collect()
    }

    /// Parses [`IdMappings::to_args`] output.
    pub fn parse_arg(s: &str) -> Result<IdRange, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let n = |p: &str| {
            p.parse::<u32>()
                .map_err(|_| format!("{s:?}: not container:host:size"))
        };
        match parts.as_slice() {
            [c, h, l] => Ok(IdRange {
                container_id: n(c)?,
                host_id: n(h)?,
                size: n(l)?,
            }),
            _ => Err(format!("{s:?}: not container:host:size")),
        }
    }
}

fn to_host(ranges: &[IdRange], id: u32) -> Option<u32> {
    ranges.iter().find_map(|r| {
        let off = id.checked_sub(r.container_id)?;
        (off < r.size).then(|| r.host_id + off)
    })
}

fn map_text(ranges: &[IdRange]) -> String {
    ranges
        .iter()
        .map(|r| format!("{} {} {}\n", r.container_id, r.host_id, r.size))
        .collect()
}

fn check_ranges(field: &str, ranges: &[IdRange]) -> Result<(), SpecError> {
    if ranges.is_empty() {
        return Err(SpecError::new(
            field,
            "mode POD needs at least one mapping (kubelet sends 65536 ids per pod)",
        ));
    }
    if ranges.len() > MAX_RANGES {
        return Err(SpecError::new(
            field,
            format!(
                "{} mappings; the kernel takes at most {MAX_RANGES}",
                ranges.len()
            ),
        ));
    }
    let end = |start: u32, size: u32| u64::from(start) + u64::from(size);
    for (i, r) in ranges.iter().enumerate() {
        if r.size == 0 {
            return Err(SpecError::new(field, format!("mapping {i} has length 0")));
        }
        if end(r.container_id, r.size) > u64::from(u32::MAX)
            || end(r.host_id, r.size) > u64::from(u32::MAX)
        {
            return Err(SpecError::new(
                field,
                format!("mapping {i} runs past the largest id"),
            ));
        }
        if r.host_id == 0 {
            return Err(SpecError::new(
                field,
                format!(
                    "mapping {i} maps container id {} to host id 0: root of the node must never be mapped into a pod",
                    r.container_id
                ),
            ));
        }
        for (j, o) in ranges.iter().enumerate().skip(i + 1) {
            let overlap =
                |a: u32, b: u32| u64::from(a) < end(b, o.size) && u64::from(b) < end(a, r.size);
            if overlap(r.container_id, o.container_id) {
                return Err(SpecError::new(
                    field,
                    format!("mappings {i} and {j} overlap inside the container"),
                ));
            }
            if overlap(r.host_id, o.host_id) {
                return Err(SpecError::new(
                    field,
                    format!("mappings {i} and {j} overlap on the host"),
                ));
            }
        }
    }
    if to_host(ranges, 0).is_none() {
        return Err(SpecError::new(
            field,
            "container id 0 is not mapped; root inside must map to an unprivileged host id",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(mode: i32, uids: &[(u32, u32, u32)], gids: &[(u32, u32, u32)]) -> api::UserNamespace {
        let conv = |v: &[(u32, u32, u32)]| {
            v.iter()
                .map(|&(c, h, l)| api::IdMapping {
                    container_id: c,
                    host_id: h,
                    length: l,
                })
                .collect()
        };
        api::UserNamespace {
            mode,
            uids: conv(uids),
            gids: conv(gids),
        }
    }

    #[test]
    fn kubelet_pod_range() {
        let u = ns(
            api::namespace_mode::POD,
            &[(0, 65536 * 3, 65536)],
            &[(0, 65536 * 3, 65536)],
        );
        let m = IdMappings::from_cri(Some(&u), &[("network", false)])
            .unwrap()
            .unwrap();
        assert_eq!(m.host_uid(0), Some(196_608));
        assert_eq!(m.host_gid(5), Some(196_613));
        assert_eq!(m.host_uid(65535), Some(262_143));
        assert_eq!(m.host_uid(65536), None);
        assert_eq!(m.uid_map(), "0 196608 65536\n");
        assert_eq!(
            m.map_mount_options(&["gid=5".into(), "mode=620".into(), "uid=70000".into()]),
            vec!["gid=196613", "mode=620", "uid=65534"]
        );
        assert!(m.check_identity(1000, 1000, &[5, 100]).is_ok());
        assert!(m.check_identity(70000, 0, &[]).is_err());
        assert!(m.check_identity(0, 0, &[65536]).is_err());
        let args = IdMappings::to_args(&m.uids);
        assert_eq!(args, vec!["0:196608:65536"]);
        assert_eq!(IdMappings::parse_arg(&args[0]).unwrap(), m.uids[0]);
        assert!(IdMappings::parse_arg("0:1").is_err());
        assert!(IdMappings::parse_arg("a:1:2").is_err());
    }

    #[test]
    fn node_mode_and_absent_mean_host() {
        assert_eq!(IdMappings::from_cri(None, &[]).unwrap(), None);
        let u = ns(api::namespace_mode::NODE, &[], &[]);
        assert_eq!(IdMappings::from_cri(Some(&u), &[]).unwrap(), None);
        let u = ns(api::namespace_mode::NODE, &[(0, 1000, 1)], &[]);
        assert!(IdMappings::from_cri(Some(&u), &[]).is_err());
    }

    #[test]
    fn refuses_what_would_not_isolate() {
        let bad = [
            // host root mapped
            ns(
                api::namespace_mode::POD,
                &[(0, 0, 65536)],
                &[(0, 100000, 65536)],
            ),
            // container root unmapped
            ns(
                api::namespace_mode::POD,
                &[(1, 100000, 10)],
                &[(0, 100000, 65536)],
            ),
            // no gids
            ns(api::namespace_mode::POD, &[(0, 100000, 65536)], &[]),
            // overlapping inside
            ns(
                api::namespace_mode::POD,
                &[(0, 100000, 100), (50, 200000, 100)],
                &[(0, 100000, 65536)],
            ),
            // overlapping on the host
            ns(
                api::namespace_mode::POD,
                &[(0, 100000, 100), (100, 100050, 100)],
                &[(0, 100000, 65536)],
            ),
            // past the end
            ns(
                api::namespace_mode::POD,
                &[(0, u32::MAX - 5, 10)],
                &[(0, 100000, 65536)],
            ),
            // zero length
            ns(
                api::namespace_mode::POD,
                &[(0, 100000, 0)],
                &[(0, 100000, 65536)],
            ),
            // unsupported modes
            ns(
                api::namespace_mode::CONTAINER,
                &[(0, 100000, 65536)],
                &[(0, 100000, 65536)],
            ),
            ns(
                api::namespace_mode::TARGET,
                &[(0, 100000, 65536)],
                &[(0, 100000, 65536)],
            ),
        ];
        for u in &bad {
            assert!(IdMappings::from_cri(Some(u), &[]).is_err(), "{u:?}");
        }
        let ok = ns(
            api::namespace_mode::POD,
            &[(0, 100000, 65536)],
            &[(0, 100000, 65536)],
        );
        let e = IdMappings::from_cri(Some(&ok), &[("network", true)]).unwrap_err();
        assert!(e.message.contains("network"), "{e}");
        // Two disjoint ranges are fine.
        let two = ns(
            api::namespace_mode::POD,
            &[(0, 100000, 1000), (1000, 300000, 1000)],
            &[(0, 100000, 65536)],
        );
        let m = IdMappings::from_cri(Some(&two), &[]).unwrap().unwrap();
        assert_eq!(m.host_uid(1500), Some(300_500));
        assert_eq!(m.uid_map(), "0 100000 1000\n1000 300000 1000\n");
    }
}

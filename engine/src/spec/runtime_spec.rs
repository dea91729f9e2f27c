//! A container's launch spec rendered as an OCI runtime spec (config.json): what OCI
//! hooks read from the bundle (NVIDIA's `nvidia-ctk hook …` find the root there), and what
//! `crictl inspect` shows as `info.runtimeSpec`, as it does for containerd. berth does not
//! run from this file: it describes what berth does, in the format tools already read.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::hooks::{Hooks, OCI_VERSION, spec_hooks};
use super::mounts::Propagation;
use super::security::ALL_CAPABILITIES;
use crate::linux::spawn::LaunchSpec;

fn cap_names(set: &std::collections::BTreeSet<u8>) -> Vec<&'static str> {
    set.iter()
        .filter_map(|c| ALL_CAPABILITIES.get(usize::from(*c)).copied())
        .collect()
}

/// The spec for `l`; `hostname` and `annotations` are the pod's and the container's.
pub fn render(
    l: &LaunchSpec,
    hostname: Option<&str>,
    annotations: &BTreeMap<String, String>,
    hooks: Option<&Hooks>,
) -> Value {
    let p = &l.process;
    let mut process = json!({
        "terminal": l.stdio.tty,
        "user": {
            "uid": p.user.uid,
            "gid": p.user.gid,
            "additionalGids": p.user.additional_gids,
        },
        "args": p.args,
        "env": p.env,
        "cwd": p.cwd,
        "capabilities": {
            "bounding": cap_names(&p.capabilities.bounding),
            "effective": cap_names(&p.capabilities.effective),
            "permitted": cap_names(&p.capabilities.permitted),
            "inheritable": cap_names(&p.capabilities.inheritable),
            "ambient": cap_names(&p.capabilities.ambient),
        },
        "noNewPrivileges": p.no_new_privs,
    });
    if let Some(a) = &p.apparmor {
        process["apparmorProfile"] = a.clone().into();
    }
    if let Some(s) = &p.selinux_label {
        process["selinuxLabel"] = s.clone().into();
    }
    if let Some(adj) = l.oom_score_adj {
        process["oomScoreAdj"] = adj.into();
    }
    let mounts: Vec<Value> = l
        .mounts
        .iter()
        .map(|m| {
            let mut options = m.options.clone();
            match m.propagation {
                Some(Propagation::Private) => options.push("rprivate".into()),
                Some(Propagation::RSlave) => options.push("rslave".into()),
                Some(Propagation::RShared) => options.push("rshared".into()),
                None => {}
            }
            json!({
                "destination": m.destination,
                "type": m.kind,
                "source": m.source,
                "options": options,
            })
        })
        .collect();
    let devices: Vec<Value> = l
        .devices
        .iter()
        .map(|d| {
            json!({
                "path": d.path,
                "type": d.kind.to_string(),
                "major": d.major,
                "minor": d.minor,
                "fileMode": d.mode,
                "uid": d.uid,
                "gid": d.gid,
            })
        })
        .collect();
    let mut namespaces = vec![json!({"type": "mount"})];
    if l.new_pid_namespace {
        namespaces.push(json!({"type": "pid"}));
    }
    if l.userns.is_some() {
        namespaces.push(json!({"type": "user"}));
    }
    let mut linux = json!({
        "namespaces": namespaces,
        "devices": devices,
        "sysctl": l.sysctls,
        "maskedPaths": l.masked_paths,
        "readonlyPaths": l.readonly_paths,
    });
    if let Some(dir) = l.cgroup_dirs.first() {
        linux["cgroupsPath"] = dir.display().to_string().into();
    }
    let mut spec = json!({
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {
            "path": l.rootfs.target.display().to_string(),
            "readonly": l.rootfs.readonly,
        },
        "mounts": mounts,
        "annotations": annotations,
        "linux": linux,
    });
    if let Some(h) = hostname {
        spec["hostname"] = h.into();
    }
    if let Some(h) = hooks.filter(|h| !h.is_empty()) {
        spec["hooks"] = spec_hooks(h);
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::spawn::{ProcessSpec, Rootfs, StdioMode};
    use crate::spec::hooks::Hook;

    fn launch() -> LaunchSpec {
        LaunchSpec {
            id: "c1".into(),
            rootfs: Rootfs {
                lowerdirs: vec!["/l1".into()],
                upperdir: "/u".into(),
                workdir: "/w".into(),
                target: "/run/berth/containers/c1/rootfs".into(),
                readonly: true,
            },
            process: ProcessSpec {
                args: vec!["sleep".into(), "1".into()],
                env: vec!["A=b".into()],
                cwd: "/".into(),
                user: crate::spec::process::User {
                    uid: 0,
                    gid: 0,
                    additional_gids: vec![],
                    name: None,
                    home: "/".into(),
                },
                capabilities: crate::spec::security::Capabilities {
                    bounding: [0u8, 21].into(),
                    ..Default::default()
                },
                no_new_privs: true,
                seccomp: vec![],
                apparmor: None,
                selinux_label: None,
            },
            devices: vec![],
            oom_score_adj: Some(-997),
            mounts: vec![],
            masked_paths: vec!["/proc/kcore".into()],
            readonly_paths: vec![],
            cgroup_dirs: vec!["/sys/fs/cgroup/memory/berth/p/c1".into()],
            cgroup_view: vec![],
            cgroup_park: None,
            new_pid_namespace: false,
            pid_target: None,
            pod_pid_namespace: None,
            sysctls: Default::default(),
            userns: None,
            stdio: StdioMode::default(),
            hooks: None,
        }
    }

    #[test]
    fn the_root_process_and_hooks_are_where_oci_tools_look() {
        let mut h = Hooks::default();
        h.add(
            "createContainer",
            Hook {
                path: "/usr/bin/nvidia-ctk".into(),
                args: vec!["nvidia-ctk".into(), "hook".into()],
                ..Default::default()
            },
        )
        .unwrap();
        let s = render(
            &launch(),
            Some("web-0"),
            &[("k".to_owned(), "v".to_owned())].into(),
            Some(&h),
        );
        assert_eq!(s["ociVersion"], OCI_VERSION);
        assert_eq!(s["root"]["path"], "/run/berth/containers/c1/rootfs");
        assert_eq!(s["root"]["readonly"], true);
        assert_eq!(s["process"]["args"][0], "sleep");
        assert_eq!(s["process"]["oomScoreAdj"], -997);
        assert_eq!(
            s["process"]["capabilities"]["bounding"],
            json!(["CAP_CHOWN", "CAP_SYS_ADMIN"])
        );
        assert_eq!(s["hostname"], "web-0");
        assert_eq!(s["annotations"]["k"], "v");
        assert_eq!(
            s["hooks"]["createContainer"][0]["path"],
            "/usr/bin/nvidia-ctk"
        );
        assert_eq!(
            s["linux"]["cgroupsPath"],
            "/sys/fs/cgroup/memory/berth/p/c1"
        );
        assert!(
            render(&launch(), None, &BTreeMap::new(), None)
                .get("hooks")
                .is_none()
        );
    }
}

//! Container Device Interface (CDI): device specs that device plugins and DRA drivers
//! write to `/etc/cdi` and `/var/run/cdi` (JSON or YAML, spec versions 0.5.0 to 1.0.0),
//! and the fully qualified device names (`vendor.com/class=name`) kubelet asks for in
//! `ContainerConfig.CDI_devices` and in `cdi.k8s.io/` annotations.
//!
//! As the CDI reference implementation: the spec directories are read in order of rising
//! priority (a device in a later directory replaces one of the same name in an earlier
//! one; two of the same priority conflict and neither is used); a device's edits are its
//! spec's container edits followed by its own. This module reads and resolves; what the
//! edits do to a container is applied by the container planner.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Spec versions berth reads.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0"];
/// The annotation prefix under which kubelet (device plugins) passes device names.
pub const ANNOTATION_PREFIX: &str = "cdi.k8s.io/";

/// A CDI spec file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    #[serde(default)]
    pub devices: Vec<Device>,
    #[serde(default)]
    pub container_edits: ContainerEdits,
}

/// One device of a spec.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub name: String,
    #[serde(default)]
    pub container_edits: ContainerEdits,
}

/// What a device does to a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default)]
    pub hooks: Vec<Hook>,
    #[serde(default)]
    pub mounts: Vec<CdiMount>,
    #[serde(default, rename = "additionalGIDs")]
    pub additional_gids: Vec<u32>,
}

/// A device node to create in the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    pub path: String,
    #[serde(default)]
    pub host_path: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub major: Option<i64>,
    #[serde(default)]
    pub minor: Option<i64>,
    #[serde(default)]
    pub file_mode: Option<u32>,
    #[serde(default)]
    pub permissions: Option<String>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
}

/// A mount to add.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CdiMount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

/// An OCI hook to run at the point `hookName` names (path, args, env and timeout as the
/// OCI runtime spec has them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    pub hook_name: String,
    #[serde(flatten)]
    pub hook: super::hooks::Hook,
}

impl ContainerEdits {
    fn extend(&mut self, o: &ContainerEdits) {
        self.env.extend(o.env.iter().cloned());
        self.device_nodes.extend(o.device_nodes.iter().cloned());
        self.hooks.extend(o.hooks.iter().cloned());
        self.mounts.extend(o.mounts.iter().cloned());
        self.additional_gids
            .extend(o.additional_gids.iter().copied());
    }
}

fn valid_vendor(v: &str) -> bool {
    // A DNS-like name: letters, digits, '-', '.', starting and ending with an alphanumeric.
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && v.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

fn valid_class(c: &str) -> bool {
    !c.is_empty()
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
}

fn valid_device_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        && n.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// Splits a fully qualified device name `vendor.com/class=name` into (kind, name).
pub fn parse_qualified(q: &str) -> Option<(&str, &str)> {
    let (kind, name) = q.split_once('=')?;
    let (vendor, class) = kind.split_once('/')?;
    (valid_vendor(vendor) && valid_class(class) && valid_device_name(name)).then_some((kind, name))
}

/// Parses and checks one spec file's text (`yaml`: YAML, else JSON).
pub fn parse_spec(text: &str, yaml: bool) -> std::result::Result<Spec, String> {
    let spec: Spec = if yaml {
        serde_yaml::from_str(text).map_err(|e| e.to_string())?
    } else {
        serde_json::from_str(text).map_err(|e| e.to_string())?
    };
    if !SUPPORTED_VERSIONS.contains(&spec.cdi_version.as_str()) {
        return Err(format!(
            "cdiVersion {:?} is not one berth reads ({})",
            spec.cdi_version,
            SUPPORTED_VERSIONS.join(", ")
        ));
    }
    let Some((vendor, class)) = spec.kind.split_once('/') else {
        return Err(format!("kind {:?} is not vendor/class", spec.kind));
    };
    if !(valid_vendor(vendor) && valid_class(class)) {
        return Err(format!("kind {:?} is not vendor/class", spec.kind));
    }
    if spec.devices.is_empty() {
        return Err("no devices".into());
    }
    for d in &spec.devices {
        if !valid_device_name(&d.name) {
            return Err(format!("device name {:?} is not valid", d.name));
        }
    }
    let all = spec
        .devices
        .iter()
        .map(|d| &d.container_edits)
        .chain([&spec.container_edits]);
    for e in all {
        for n in &e.device_nodes {
            if !n.path.starts_with('/') {
                return Err(format!("device node path {:?} is not absolute", n.path));
            }
            if let Some(t) = &n.kind
                && !matches!(t.as_str(), "b" | "c" | "u" | "p")
            {
                return Err(format!("device node {} has type {t:?}", n.path));
            }
        }
        for m in &e.mounts {
            if !m.container_path.starts_with('/') || !m.host_path.starts_with('/') {
                return Err(format!(
                    "mount {} -> {} needs absolute paths",
                    m.host_path, m.container_path
                ));
            }
        }
        for Hook { hook_name, hook } in &e.hooks {
            if !hook.path.starts_with('/') {
                return Err(format!("hook path {:?} is not absolute", hook.path));
            }
            if super::hooks::Point::parse(hook_name).is_none() {
                return Err(format!(
                    "hook {}: {hook_name:?} is not an OCI hook name",
                    hook.path
                ));
            }
            if hook.timeout == Some(0) {
                return Err(format!("hook {}: timeout must be positive", hook.path));
            }
        }
        for v in &e.env {
            if !v.contains('=') {
                return Err(format!("env {v:?} is not NAME=value"));
            }
        }
    }
    Ok(spec)
}

/// A device as the registry keeps it: its edits (spec's, then its own) and where it came
/// from.
#[derive(Debug, Clone)]
struct Entry {
    edits: ContainerEdits,
    file: PathBuf,
    priority: usize,
    conflict: Option<PathBuf>,
}

/// The devices of the spec directories, by qualified name, with what could not be read.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    devices: BTreeMap<String, Entry>,
    /// Spec files that were refused, and why.
    pub errors: Vec<(PathBuf, String)>,
}

impl Registry {
    /// Reads every `*.json`, `*.yaml` and `*.yml` of `dirs` (rising priority; missing
    /// directories are skipped).
    pub fn load(dirs: &[PathBuf]) -> Registry {
        let mut r = Registry::default();
        for (priority, dir) in dirs.iter().enumerate() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("json" | "yaml" | "yml")
                    )
                })
                .collect();
            files.sort();
            for f in files {
                let yaml = f.extension().is_some_and(|e| e != "json");
                match std::fs::read_to_string(&f)
                    .map_err(|e| e.to_string())
                    .and_then(|t| parse_spec(&t, yaml))
                {
                    Ok(spec) => r.add(&spec, &f, priority),
                    Err(e) => r.errors.push((f, e)),
                }
            }
        }
        r
    }

    fn add(&mut self, spec: &Spec, file: &Path, priority: usize) {
        for d in &spec.devices {
            let mut edits = spec.container_edits.clone();
            edits.extend(&d.container_edits);
            let name = format!("{}={}", spec.kind, d.name);
            let new = Entry {
                edits,
                file: file.to_owned(),
                priority,
                conflict: None,
            };
            match self.devices.get_mut(&name) {
                Some(old) if old.priority == priority => old.conflict = Some(file.to_owned()),
                _ => {
                    self.devices.insert(name, new);
                }
            }
        }
    }

    /// Qualified names of every usable device.
    pub fn names(&self) -> Vec<&str> {
        self.devices
            .iter()
            .filter(|(_, e)| e.conflict.is_none())
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// The edits of `names`, in order; an unknown, malformed or conflicting name is
    /// InvalidArgument naming it (and the refused spec files, when there are).
    pub fn resolve(&self, names: &[String]) -> Result<ContainerEdits> {
        let mut out = ContainerEdits::default();
        for n in names {
            if parse_qualified(n).is_none() {
                return Err(Error::InvalidArgument(format!(
                    "CDI device {n:?} is not a fully qualified name (vendor.com/class=name)"
                )));
            }
            let Some(e) = self.devices.get(n) else {
                let refused = self
                    .errors
                    .iter()
                    .map(|(f, e)| format!("{}: {e}", f.display()))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(Error::InvalidArgument(format!(
                    "CDI device {n:?} is in no spec{}",
                    if refused.is_empty() {
                        String::new()
                    } else {
                        format!(" (refused specs: {refused})")
                    }
                )));
            };
            if let Some(other) = &e.conflict {
                return Err(Error::InvalidArgument(format!(
                    "CDI device {n:?} is defined by both {} and {}, of the same priority",
                    e.file.display(),
                    other.display()
                )));
            }
            out.extend(&e.edits);
        }
        Ok(out)
    }
}

/// The device names a container asks for: `CDI_devices`, then the values of its
/// `cdi.k8s.io/` annotations (comma-separated), each once, in order.
pub fn requested(devices: &[String], annotations: &BTreeMap<String, String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let from_annotations = annotations
        .iter()
        .filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX))
        .flat_map(|(_, v)| v.split(',').map(|s| s.trim().to_owned()))
        .filter(|s| !s.is_empty());
    for n in devices.iter().cloned().chain(from_annotations) {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const VENDOR_JSON: &str = r#"{
      "cdiVersion": "0.6.0",
      "kind": "example.com/gpu",
      "containerEdits": {"env": ["EXAMPLE_DRIVER=1"]},
      "devices": [
        {"name": "0", "containerEdits": {
          "deviceNodes": [{"path": "/dev/example0", "hostPath": "/dev/null", "permissions": "rw"}],
          "mounts": [{"hostPath": "/etc/hostname", "containerPath": "/etc/example", "options": ["ro", "nosuid", "bind"]}],
          "env": ["EXAMPLE_VISIBLE=0"]}},
        {"name": "all", "containerEdits": {"additionalGIDs": [44]}}
      ]}"#;

    const VENDOR_YAML: &str = "cdiVersion: 1.0.0\nkind: vendor.io/loop\ndevices:\n  - name: l0\n    containerEdits:\n      deviceNodes:\n        - path: /dev/loop-example\n          type: b\n          major: 7\n          minor: 0\n";

    #[test]
    fn specs_parse_and_resolve_with_the_spec_edits_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("example.json"), VENDOR_JSON).unwrap();
        std::fs::write(dir.path().join("loop.yaml"), VENDOR_YAML).unwrap();
        std::fs::write(dir.path().join("broken.json"), "{").unwrap();
        let r = Registry::load(&[dir.path().to_owned()]);
        assert_eq!(
            r.names(),
            [
                "example.com/gpu=0",
                "example.com/gpu=all",
                "vendor.io/loop=l0"
            ]
        );
        assert_eq!(r.errors.len(), 1);
        let e = r.resolve(&["example.com/gpu=0".into()]).unwrap();
        assert_eq!(e.env, ["EXAMPLE_DRIVER=1", "EXAMPLE_VISIBLE=0"]);
        assert_eq!(e.device_nodes[0].host_path.as_deref(), Some("/dev/null"));
        assert_eq!(e.mounts[0].container_path, "/etc/example");
        let e = r
            .resolve(&["vendor.io/loop=l0".into(), "example.com/gpu=all".into()])
            .unwrap();
        assert_eq!(e.device_nodes[0].major, Some(7));
        assert_eq!(e.additional_gids, [44]);
        let err = r.resolve(&["example.com/gpu=9".into()]).unwrap_err();
        assert!(err.to_string().contains("in no spec"), "{err}");
        assert!(err.to_string().contains("broken.json"), "{err}");
        assert!(r.resolve(&["gpu0".into()]).is_err());
    }

    #[test]
    fn later_directories_win_and_equal_ones_conflict() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(a.path().join("x.json"), VENDOR_JSON).unwrap();
        let newer = VENDOR_JSON.replace("EXAMPLE_VISIBLE=0", "EXAMPLE_VISIBLE=new");
        std::fs::write(b.path().join("x.json"), &newer).unwrap();
        let r = Registry::load(&[a.path().to_owned(), b.path().to_owned()]);
        let e = r.resolve(&["example.com/gpu=0".into()]).unwrap();
        assert!(e.env.contains(&"EXAMPLE_VISIBLE=new".to_owned()));
        std::fs::write(b.path().join("y.json"), &newer).unwrap();
        let r = Registry::load(&[a.path().to_owned(), b.path().to_owned()]);
        let err = r.resolve(&["example.com/gpu=0".into()]).unwrap_err();
        assert!(err.to_string().contains("same priority"), "{err}");
    }

    #[test]
    fn bad_specs_and_names_are_refused() {
        for (text, why) in [
            (
                r#"{"cdiVersion":"0.2.0","kind":"a.com/b","devices":[{"name":"x"}]}"#,
                "cdiVersion",
            ),
            (
                r#"{"cdiVersion":"0.6.0","kind":"nokind","devices":[{"name":"x"}]}"#,
                "kind",
            ),
            (
                r#"{"cdiVersion":"0.6.0","kind":"a.com/b","devices":[]}"#,
                "no devices",
            ),
            (
                r#"{"cdiVersion":"0.6.0","kind":"a.com/b","devices":[{"name":"x","containerEdits":{"deviceNodes":[{"path":"dev/x"}]}}]}"#,
                "absolute",
            ),
            (
                r#"{"cdiVersion":"0.6.0","kind":"a.com/b","devices":[{"name":"x","containerEdits":{"env":["NOVALUE"]}}]}"#,
                "NAME=value",
            ),
            (
                r#"{"cdiVersion":"0.6.0","kind":"a.com/b","devices":[{"name":"x"}],"containerEdits":{"hooks":[{"hookName":"onStart","path":"/bin/x"}]}}"#,
                "not an OCI hook name",
            ),
            (
                r#"{"cdiVersion":"0.6.0","kind":"a.com/b","devices":[{"name":"x"}],"containerEdits":{"hooks":[{"hookName":"poststop","path":"/bin/x","timeout":0}]}}"#,
                "timeout must be positive",
            ),
        ] {
            let e = parse_spec(text, false).unwrap_err();
            assert!(e.contains(why), "{e} / {why}");
        }
        assert_eq!(
            parse_qualified("nvidia.com/gpu=0"),
            Some(("nvidia.com/gpu", "0"))
        );
        assert_eq!(
            parse_qualified("nvidia.com/gpu=all"),
            Some(("nvidia.com/gpu", "all"))
        );
        assert!(parse_qualified("nvidia.com/gpu").is_none());
        assert!(parse_qualified("-x.com/gpu=0").is_none());
        let ann: BTreeMap<String, String> = [
            (
                "cdi.k8s.io/plugin".to_string(),
                "a.com/b=1, a.com/b=2".to_string(),
            ),
            ("other".to_string(), "a.com/b=9".to_string()),
        ]
        .into();
        assert_eq!(
            requested(&["a.com/b=2".into()], &ann),
            ["a.com/b=2", "a.com/b=1"]
        );
    }
}

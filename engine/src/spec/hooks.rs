//! OCI lifecycle hooks (runtime spec, config.md "POSIX-platform Hooks"): the programs a
//! CDI spec asks to run at fixed points of a container's life, each given the container's
//! OCI state as JSON on its standard input.
//!
//! Where berth runs each point (its spawn path has the same moments as runc's):
//! - `prestart` (deprecated) and `createRuntime`: in the monitor, the runtime's namespaces,
//!   once the container's namespaces and mounts exist and before pivot_root;
//! - `createContainer`: in the container's mount namespace, before pivot_root (the host's
//!   paths still visible, the root at `root.path` of the bundle's config.json);
//! - `startContainer`: inside the container, after pivot_root, before the command's exec;
//! - `poststart`: in the monitor once the command has exec'd (failures are logged, not
//!   fatal);
//! - `poststop`: in berthd when the container is removed (failures are logged).
//!
//! A hook of the first three points that fails (non-zero exit, killed, over its timeout)
//! fails the start, naming the hook and what it wrote to stderr.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The OCI runtime spec version berth's bundles and states say they follow.
pub const OCI_VERSION: &str = "1.2.0";

/// How long a hook without a timeout of its own may run. The OCI spec sets no bound; a
/// start that can hang forever is worse for a node than a hook cut off after two minutes
/// (kubelet's own runtime request timeout).
pub const DEFAULT_TIMEOUT_SECS: u32 = 120;

/// One hook: a program, its argv (with argv\[0\]) and its whole environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    pub path: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    /// Seconds; none: [`DEFAULT_TIMEOUT_SECS`].
    #[serde(default)]
    pub timeout: Option<u32>,
}

impl Hook {
    /// The argv to run: `args` as given (args\[0\] included), or just the path.
    pub fn argv(&self) -> Vec<String> {
        if self.args.is_empty() {
            vec![self.path.clone()]
        } else {
            self.args.clone()
        }
    }

    pub fn timeout_secs(&self) -> u32 {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS)
    }
}

/// The hooks of a container, by point, and what they are told about it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hooks {
    #[serde(default)]
    pub prestart: Vec<Hook>,
    #[serde(default)]
    pub create_runtime: Vec<Hook>,
    #[serde(default)]
    pub create_container: Vec<Hook>,
    #[serde(default)]
    pub start_container: Vec<Hook>,
    #[serde(default)]
    pub poststart: Vec<Hook>,
    #[serde(default)]
    pub poststop: Vec<Hook>,
    /// The bundle directory (holding config.json) named in the state.
    #[serde(default)]
    pub bundle: String,
    /// The container's annotations, as the state carries them.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// Where a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl Point {
    pub fn name(self) -> &'static str {
        match self {
            Point::Prestart => "prestart",
            Point::CreateRuntime => "createRuntime",
            Point::CreateContainer => "createContainer",
            Point::StartContainer => "startContainer",
            Point::Poststart => "poststart",
            Point::Poststop => "poststop",
        }
    }

    pub fn parse(name: &str) -> Option<Point> {
        Some(match name {
            "prestart" => Point::Prestart,
            "createRuntime" => Point::CreateRuntime,
            "createContainer" => Point::CreateContainer,
            "startContainer" => Point::StartContainer,
            "poststart" => Point::Poststart,
            "poststop" => Point::Poststop,
            _ => return None,
        })
    }

    /// The state's `status` while the point's hooks run.
    pub fn status(self) -> &'static str {
        match self {
            Point::Prestart | Point::CreateRuntime | Point::CreateContainer => "creating",
            Point::StartContainer => "created",
            Point::Poststart => "running",
            Point::Poststop => "stopped",
        }
    }
}

impl Hooks {
    pub fn is_empty(&self) -> bool {
        self.prestart.is_empty()
            && self.create_runtime.is_empty()
            && self.create_container.is_empty()
            && self.start_container.is_empty()
            && self.poststart.is_empty()
            && self.poststop.is_empty()
    }

    pub fn at(&self, p: Point) -> &[Hook] {
        match p {
            Point::Prestart => &self.prestart,
            Point::CreateRuntime => &self.create_runtime,
            Point::CreateContainer => &self.create_container,
            Point::StartContainer => &self.start_container,
            Point::Poststart => &self.poststart,
            Point::Poststop => &self.poststop,
        }
    }

    fn at_mut(&mut self, p: Point) -> &mut Vec<Hook> {
        match p {
            Point::Prestart => &mut self.prestart,
            Point::CreateRuntime => &mut self.create_runtime,
            Point::CreateContainer => &mut self.create_container,
            Point::StartContainer => &mut self.start_container,
            Point::Poststart => &mut self.poststart,
            Point::Poststop => &mut self.poststop,
        }
    }

    /// Whether the monitor has to stop the child half-way for `prestart`/`createRuntime`.
    pub fn runtime_before_pivot(&self) -> bool {
        !(self.prestart.is_empty() && self.create_runtime.is_empty())
    }

    /// Adds a hook at the point named `name` (as CDI and the OCI spec spell them); an
    /// unknown name or a relative path is refused.
    pub fn add(&mut self, name: &str, hook: Hook) -> Result<(), String> {
        let p = Point::parse(name).ok_or_else(|| {
            format!(
                "hook {:?}: {name:?} is not an OCI hook point (prestart, createRuntime, createContainer, startContainer, poststart, poststop)",
                hook.path
            )
        })?;
        if !hook.path.starts_with('/') {
            return Err(format!("hook path {:?} is not absolute", hook.path));
        }
        if let Some(bad) = hook.env.iter().find(|e| !e.contains('=')) {
            return Err(format!("hook {}: env {bad:?} is not NAME=value", hook.path));
        }
        self.at_mut(p).push(hook);
        Ok(())
    }

    /// The OCI state a hook at `p` reads on stdin; `pid` is left out when there is none
    /// (poststop).
    pub fn state(&self, id: &str, p: Point, pid: Option<i32>) -> String {
        let mut v = serde_json::json!({
            "ociVersion": OCI_VERSION,
            "id": id,
            "status": p.status(),
            "bundle": self.bundle,
            "annotations": self.annotations,
        });
        if let Some(pid) = pid.filter(|p| *p > 0) {
            v["pid"] = pid.into();
        }
        v.to_string()
    }
}

/// The `hooks` object of an OCI runtime spec (config.json) for these hooks.
pub fn spec_hooks(h: &Hooks) -> serde_json::Value {
    let list = |v: &[Hook]| -> serde_json::Value {
        v.iter()
            .map(|h| {
                let mut o = serde_json::json!({ "path": h.path });
                if !h.args.is_empty() {
                    o["args"] = h.args.clone().into();
                }
                if !h.env.is_empty() {
                    o["env"] = h.env.clone().into();
                }
                if let Some(t) = h.timeout {
                    o["timeout"] = t.into();
                }
                o
            })
            .collect()
    };
    let mut o = serde_json::Map::new();
    for p in [
        Point::Prestart,
        Point::CreateRuntime,
        Point::CreateContainer,
        Point::StartContainer,
        Point::Poststart,
        Point::Poststop,
    ] {
        if !h.at(p).is_empty() {
            o.insert(p.name().to_owned(), list(h.at(p)));
        }
    }
    o.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(path: &str) -> Hook {
        Hook {
            path: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn hooks_go_to_their_point_and_bad_ones_are_refused() {
        let mut h = Hooks::default();
        h.add("createContainer", hook("/usr/bin/a")).unwrap();
        h.add("prestart", hook("/usr/bin/b")).unwrap();
        assert_eq!(h.create_container[0].path, "/usr/bin/a");
        assert!(h.runtime_before_pivot());
        let e = h.add("preStart", hook("/x")).unwrap_err();
        assert!(e.contains("\"preStart\" is not an OCI hook point"), "{e}");
        let e = h.add("poststop", hook("bin/x")).unwrap_err();
        assert!(e.contains("not absolute"), "{e}");
        let e = h
            .add(
                "poststop",
                Hook {
                    env: vec!["JUSTNAME".into()],
                    ..hook("/x")
                },
            )
            .unwrap_err();
        assert!(e.contains("NAME=value"), "{e}");
        assert_eq!(h.poststop.len(), 0);
    }

    #[test]
    fn the_state_is_the_oci_state() {
        let h = Hooks {
            bundle: "/var/lib/berth/containers/c1".into(),
            annotations: [("a".to_owned(), "b".to_owned())].into(),
            ..Default::default()
        };
        let s: serde_json::Value =
            serde_json::from_str(&h.state("c1", Point::CreateRuntime, Some(42))).unwrap();
        assert_eq!(s["ociVersion"], OCI_VERSION);
        assert_eq!(s["id"], "c1");
        assert_eq!(s["status"], "creating");
        assert_eq!(s["pid"], 42);
        assert_eq!(s["bundle"], "/var/lib/berth/containers/c1");
        assert_eq!(s["annotations"]["a"], "b");
        let s: serde_json::Value =
            serde_json::from_str(&h.state("c1", Point::Poststop, None)).unwrap();
        assert_eq!(s["status"], "stopped");
        assert!(s.get("pid").is_none());
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&h.state(
                "c1",
                Point::StartContainer,
                Some(1)
            ))
            .unwrap()["status"],
            "created"
        );
    }

    #[test]
    fn argv_defaults_to_the_path_and_timeouts_to_the_bound() {
        let h = hook("/bin/true");
        assert_eq!(h.argv(), vec!["/bin/true"]);
        assert_eq!(h.timeout_secs(), DEFAULT_TIMEOUT_SECS);
        let h = Hook {
            args: vec!["true".into(), "-x".into()],
            timeout: Some(3),
            ..hook("/bin/true")
        };
        assert_eq!(h.argv(), vec!["true", "-x"]);
        assert_eq!(h.timeout_secs(), 3);
        let mut all = Hooks::default();
        all.add("poststart", h).unwrap();
        let v = spec_hooks(&all);
        assert_eq!(v["poststart"][0]["path"], "/bin/true");
        assert_eq!(v["poststart"][0]["timeout"], 3);
        assert!(v.get("prestart").is_none());
    }
}

//! CNI plugin mode (CNI spec 1.0): the first network configuration list in the configured
//! directory, its plugins run from the configured bin directories for ADD, CHECK and DEL,
//! results chained from plugin to plugin and cached on disk (libcni's layout), so that a
//! DEL after a restart gets the same configuration and the result ADD produced.
//!
//! Like containerd and CRI-O, berth also runs the `loopback` plugin for the pod's `lo`
//! when it is installed (berth's monitor brings `lo` up itself otherwise).

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::NetworkError;

/// Where the configuration and the plugins are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniSettings {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    /// berth's result cache (`<root>/cni`).
    pub cache_dir: PathBuf,
    /// How long one plugin may run.
    pub timeout: Duration,
}

/// A network configuration list.
#[derive(Debug, Clone)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    pub disable_check: bool,
    pub plugins: Vec<Value>,
    /// The file it came from.
    pub source: PathBuf,
}

/// One hostPort, as the portMappings capability carries it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniPortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
    #[serde(rename = "hostIP", skip_serializing_if = "String::is_empty", default)]
    pub host_ip: String,
}

/// What identifies one attachment.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// `K8S_POD_NAMESPACE` and friends, as `KEY=VALUE` pairs for CNI_ARGS.
    pub args: Vec<(String, String)>,
    pub port_mappings: Vec<CniPortMapping>,
}

/// The cache record of one attachment (libcni's `cniCacheV1` fields).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CacheEntry {
    kind: String,
    container_id: String,
    if_name: String,
    network_name: String,
    config: Value,
    cni_args: Vec<(String, String)>,
    capability_args: Value,
    result: Value,
    #[serde(default)]
    netns: String,
}

impl CacheEntry {
    /// The attachment as ADD saw it: interface, CNI_ARGS and capability arguments.
    fn attachment(&self, container_id: &str, netns: &Path) -> Attachment {
        Attachment {
            container_id: container_id.to_owned(),
            netns: netns.to_owned(),
            ifname: self.if_name.clone(),
            args: self.cni_args.clone(),
            port_mappings: serde_json::from_value(
                self.capability_args
                    .get("portMappings")
                    .cloned()
                    .unwrap_or(Value::Null),
            )
            .unwrap_or_default(),
        }
    }
}

fn err(plugin: &str, command: &str, message: impl Into<String>) -> NetworkError {
    NetworkError::Cni {
        plugin: plugin.to_owned(),
        command: command.to_owned(),
        message: message.into(),
    }
}

fn config_error(path: &Path, message: impl std::fmt::Display) -> NetworkError {
    NetworkError::CniConfig(format!("{}: {message}", path.display()))
}

impl NetworkList {
    /// Parses a `.conflist`, or a single-plugin `.conf`/`.json` (wrapped into a list).
    pub fn parse(path: &Path, text: &str) -> Result<NetworkList, NetworkError> {
        let v: Value = serde_json::from_str(text).map_err(|e| config_error(path, e))?;
        let is_list =
            path.extension().is_some_and(|e| e == "conflist") || v.get("plugins").is_some();
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| config_error(path, "no network name"))?
            .to_owned();
        let cni_version = v
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.2.0")
            .to_owned();
        let plugins = if is_list {
            v.get("plugins")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        } else {
            vec![v.clone()]
        };
        if plugins.is_empty() {
            return Err(config_error(path, "no plugins"));
        }
        for p in &plugins {
            if !p
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| !t.is_empty() && !t.contains('/'))
            {
                return Err(config_error(path, "a plugin has no valid \"type\""));
            }
        }
        Ok(NetworkList {
            name,
            cni_version,
            disable_check: v
                .get("disableCheck")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            plugins,
            source: path.to_owned(),
        })
    }

    fn as_value(&self) -> Value {
        json!({
            "cniVersion": self.cni_version,
            "name": self.name,
            "disableCheck": self.disable_check,
            "plugins": self.plugins,
        })
    }

    fn from_value(v: &Value, source: &Path) -> Result<NetworkList, NetworkError> {
        NetworkList::parse(&source.with_extension("conflist"), &v.to_string())
    }
}

/// Whether `version` (x.y.z) is at least `min`.
fn version_at_least(version: &str, min: (u32, u32, u32)) -> bool {
    let mut p = version.split('.').map(|s| s.parse::<u32>().unwrap_or(0));
    let v = (
        p.next().unwrap_or(0),
        p.next().unwrap_or(0),
        p.next().unwrap_or(0),
    );
    v >= min
}

/// The pod's addresses in a result: those on interfaces inside the sandbox (or on no
/// named interface). Results before 0.3.0 carry `ip4`/`ip6`.
pub fn result_ips(result: &Value) -> Vec<IpAddr> {
    let strip = |s: &str| s.split('/').next().and_then(|a| a.parse::<IpAddr>().ok());
    if let Some(ips) = result.get("ips").and_then(Value::as_array) {
        let interfaces = result.get("interfaces").and_then(Value::as_array);
        return ips
            .iter()
            .filter(|ip| {
                let idx = ip.get("interface").and_then(Value::as_u64);
                match (idx, interfaces) {
                    (Some(i), Some(ifs)) => ifs
                        .get(usize::try_from(i).unwrap_or(usize::MAX))
                        .and_then(|f| f.get("sandbox"))
                        .and_then(Value::as_str)
                        .is_some_and(|s| !s.is_empty()),
                    _ => true,
                }
            })
            .filter_map(|ip| ip.get("address").and_then(Value::as_str).and_then(strip))
            .collect();
    }
    ["ip4", "ip6"]
        .iter()
        .filter_map(|k| result.get(*k)?.get("ip")?.as_str().and_then(strip))
        .collect()
}

/// The CNI runner.
#[derive(Debug, Clone)]
pub struct Cni {
    pub settings: CniSettings,
}

impl Cni {
    /// The first valid configuration in the directory, in lexical order of file names.
    pub fn load(&self) -> Result<NetworkList, NetworkError> {
        let dir = &self.settings.conf_dir;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| NetworkError::CniConfig(format!("cannot read {}: {e}", dir.display())))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "conflist" || e == "conf" || e == "json")
            })
            .collect();
        files.sort();
        let mut errors = Vec::new();
        for f in files {
            match std::fs::read_to_string(&f)
                .map_err(|e| config_error(&f, e))
                .and_then(|t| NetworkList::parse(&f, &t))
            {
                Ok(l) => {
                    for p in &l.plugins {
                        let t = p.get("type").and_then(Value::as_str).unwrap_or_default();
                        self.find(t)?;
                    }
                    return Ok(l);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(NetworkError::CniConfig(if errors.is_empty() {
            format!(
                "no network configuration (.conflist, .conf or .json) in {}",
                dir.display()
            )
        } else {
            errors.join("; ")
        }))
    }

    fn find(&self, plugin: &str) -> Result<PathBuf, NetworkError> {
        self.settings
            .bin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                NetworkError::CniConfig(format!(
                    "plugin {plugin:?} not found in {}",
                    self.settings
                        .bin_dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                ))
            })
    }

    fn cache_path(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.settings
            .cache_dir
            .join("results")
            .join(format!("{network}-{container_id}-{ifname}"))
    }

    /// The configuration one plugin gets: its own, with the list's name and version, the
    /// previous result, and the runtime config of the capabilities it declares.
    fn plugin_config(
        list: &NetworkList,
        plugin: &Value,
        prev: Option<&Value>,
        att: &Attachment,
    ) -> Value {
        let mut conf = plugin.clone();
        if let Some(o) = conf.as_object_mut() {
            o.insert("name".into(), json!(list.name));
            o.insert("cniVersion".into(), json!(list.cni_version));
            if let Some(p) = prev {
                o.insert("prevResult".into(), p.clone());
            }
            let wants_ports = plugin
                .get("capabilities")
                .and_then(|c| c.get("portMappings"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if wants_ports && !att.port_mappings.is_empty() {
                o.insert(
                    "runtimeConfig".into(),
                    json!({ "portMappings": att.port_mappings }),
                );
            }
        }
        conf
    }

    /// Runs one plugin; its stdout parsed as JSON (empty output is `null`).
    fn exec(
        &self,
        plugin: &str,
        command: &str,
        conf: &Value,
        att: &Attachment,
    ) -> Result<Value, NetworkError> {
        let bin = self.find(plugin)?;
        let cni_args = std::iter::once("IgnoreUnknown=1".to_owned())
            .chain(att.args.iter().map(|(k, v)| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(";");
        let path = self
            .settings
            .bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let mut child = Command::new(&bin)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            )
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &att.container_id)
            .env("CNI_NETNS", &att.netns)
            .env("CNI_IFNAME", &att.ifname)
            .env("CNI_ARGS", cni_args)
            .env("CNI_PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                err(
                    plugin,
                    command,
                    format!("cannot run {}: {e}", bin.display()),
                )
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(conf.to_string().as_bytes())
                .map_err(|e| err(plugin, command, format!("write config: {e}")))?;
        }
        // A watchdog kills a plugin that hangs; it is told to stand down when the plugin ends.
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
        let timeout = self.settings.timeout;
        let watchdog = std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(timeout) {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                return true;
            }
            false
        });
        let out = child.wait_with_output();
        let _ = done.send(());
        let timed_out = watchdog.join().unwrap_or(false);
        let out = out.map_err(|e| err(plugin, command, format!("wait: {e}")))?;
        if timed_out {
            return Err(err(
                plugin,
                command,
                format!("did not finish within {timeout:?}"),
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let msg = serde_json::from_str::<Value>(&stdout)
                .ok()
                .map(|v| {
                    let m = v.get("msg").and_then(Value::as_str).unwrap_or_default();
                    match v.get("details").and_then(Value::as_str) {
                        Some(d) if !d.is_empty() => format!("{m}: {d}"),
                        _ => m.to_owned(),
                    }
                })
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| {
                    format!(
                        "{} {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                });
            return Err(err(plugin, command, msg));
        }
        if stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&stdout)
            .map_err(|e| err(plugin, command, format!("result is not JSON: {e}")))
    }

    /// The loopback plugin for the pod's `lo`, when it is installed.
    fn loopback(&self, command: &str, att: &Attachment) -> Result<(), NetworkError> {
        if self.find("loopback").is_err() {
            return Ok(());
        }
        let list = NetworkList {
            name: "cni-loopback".into(),
            cni_version: "1.0.0".into(),
            disable_check: false,
            plugins: vec![json!({ "type": "loopback" })],
            source: PathBuf::new(),
        };
        let lo = Attachment {
            ifname: "lo".into(),
            port_mappings: Vec::new(),
            ..att.clone()
        };
        self.exec(
            "loopback",
            command,
            &Self::plugin_config(&list, &list.plugins[0], None, &lo),
            &lo,
        )
        .map(|_| ())
    }

    /// ADD: every plugin in order, each given the previous one's result; the final result
    /// cached. On failure, what was added is deleted again (as the spec asks).
    pub fn add(&self, att: &Attachment) -> Result<(NetworkList, Value), NetworkError> {
        let list = self.load()?;
        self.loopback("ADD", att)?;
        let mut prev: Option<Value> = None;
        for p in &list.plugins {
            let t = p.get("type").and_then(Value::as_str).unwrap_or_default();
            let conf = Self::plugin_config(&list, p, prev.as_ref(), att);
            match self.exec(t, "ADD", &conf, att) {
                Ok(r) if !r.is_null() => prev = Some(r),
                Ok(_) => {}
                Err(e) => {
                    let _ = self.run_del(&list, prev.as_ref(), att);
                    return Err(e);
                }
            }
        }
        let result = prev.unwrap_or(Value::Null);
        let entry = CacheEntry {
            kind: "cniCacheV1".into(),
            container_id: att.container_id.clone(),
            if_name: att.ifname.clone(),
            network_name: list.name.clone(),
            config: list.as_value(),
            cni_args: att.args.clone(),
            capability_args: json!({ "portMappings": att.port_mappings }),
            result: result.clone(),
            netns: att.netns.display().to_string(),
        };
        if let Err(e) = self.write_cache(&entry) {
            let _ = self.run_del(&list, Some(&result), att);
            return Err(e);
        }
        Ok((list, result))
    }

    fn write_cache(&self, entry: &CacheEntry) -> Result<(), NetworkError> {
        let path = self.cache_path(&entry.network_name, &entry.container_id, &entry.if_name);
        let io =
            |e: std::io::Error| NetworkError::CniConfig(format!("cache {}: {e}", path.display()));
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(io)?;
        }
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_vec(entry).map_err(|e| io(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&text).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    fn run_del(
        &self,
        list: &NetworkList,
        prev: Option<&Value>,
        att: &Attachment,
    ) -> Result<(), NetworkError> {
        for p in list.plugins.iter().rev() {
            let t = p.get("type").and_then(Value::as_str).unwrap_or_default();
            let conf = Self::plugin_config(list, p, prev, att);
            self.exec(t, "DEL", &conf, att)?;
        }
        Ok(())
    }

    fn cached(&self, network: &str, container_id: &str, ifname: &str) -> Option<CacheEntry> {
        let text = std::fs::read(self.cache_path(network, container_id, ifname)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// DEL with the cached configuration, arguments and result (the current
    /// configuration when nothing is cached). Idempotent: a second DEL finds no cache and
    /// plugins must accept deleting what is gone.
    pub fn del(&self, network: &str, container_id: &str, netns: &Path) -> Result<(), NetworkError> {
        let cached = self.cached(network, container_id, "eth0");
        let (list, result, att) = match &cached {
            Some(c) => (
                NetworkList::from_value(&c.config, &self.settings.conf_dir)?,
                Some(c.result.clone()),
                c.attachment(container_id, netns),
            ),
            None => (
                self.load()?,
                None,
                Attachment {
                    container_id: container_id.to_owned(),
                    netns: netns.to_owned(),
                    ifname: "eth0".into(),
                    args: Vec::new(),
                    port_mappings: Vec::new(),
                },
            ),
        };
        self.run_del(&list, result.as_ref(), &att)?;
        if netns.exists() {
            self.loopback("DEL", &att)?;
        }
        let _ = std::fs::remove_file(self.cache_path(network, container_id, &att.ifname));
        Ok(())
    }

    /// CHECK (spec 0.4.0 and later, unless the list disables it), with the cached result.
    pub fn check(
        &self,
        network: &str,
        container_id: &str,
        netns: &Path,
    ) -> Result<(), NetworkError> {
        let c = self
            .cached(network, container_id, "eth0")
            .ok_or_else(|| err("-", "CHECK", "no cached result for this pod"))?;
        let list = NetworkList::from_value(&c.config, &self.settings.conf_dir)?;
        if list.disable_check || !version_at_least(&list.cni_version, (0, 4, 0)) {
            return Ok(());
        }
        let att = c.attachment(container_id, netns);
        for p in &list.plugins {
            let t = p.get("type").and_then(Value::as_str).unwrap_or_default();
            self.exec(
                t,
                "CHECK",
                &Self::plugin_config(&list, p, Some(&c.result), &att),
                &att,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_single_configs() {
        let l = NetworkList::parse(
            Path::new("/x/10-net.conflist"),
            r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        assert_eq!(l.name, "pods");
        assert_eq!(l.plugins.len(), 2);
        let l = NetworkList::parse(
            Path::new("/x/10.conf"),
            r#"{"cniVersion":"0.3.1","name":"one","type":"ptp"}"#,
        )
        .unwrap();
        assert_eq!(l.plugins[0]["type"], "ptp");
        assert!(
            NetworkList::parse(Path::new("/x/a.conflist"), r#"{"name":"x","plugins":[]}"#).is_err()
        );
        assert!(
            NetworkList::parse(
                Path::new("/x/a.conflist"),
                r#"{"name":"x","plugins":[{"type":"../evil"}]}"#
            )
            .is_err()
        );
        assert!(NetworkList::parse(Path::new("/x/a.conf"), "not json").is_err());
    }

    #[test]
    fn plugin_config_carries_name_version_prev_and_ports() {
        let l = NetworkList::parse(
            Path::new("/x/n.conflist"),
            r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        let att = Attachment {
            container_id: "c".into(),
            netns: "/n".into(),
            ifname: "eth0".into(),
            args: vec![],
            port_mappings: vec![CniPortMapping {
                host_port: 80,
                container_port: 8080,
                protocol: "tcp".into(),
                host_ip: String::new(),
            }],
        };
        let prev = json!({"cniVersion":"1.0.0","ips":[]});
        let bridge = Cni::plugin_config(&l, &l.plugins[0], None, &att);
        assert_eq!(bridge["name"], "pods");
        assert!(bridge.get("runtimeConfig").is_none() && bridge.get("prevResult").is_none());
        let pm = Cni::plugin_config(&l, &l.plugins[1], Some(&prev), &att);
        assert_eq!(pm["runtimeConfig"]["portMappings"][0]["hostPort"], 80);
        assert_eq!(
            pm["runtimeConfig"]["portMappings"][0]["containerPort"],
            8080
        );
        assert_eq!(pm["prevResult"], prev);
    }

    #[test]
    fn result_addresses_inside_the_sandbox() {
        let r = json!({
            "interfaces": [{"name":"cni0"},{"name":"veth1"},{"name":"eth0","sandbox":"/run/netns/x"}],
            "ips": [{"address":"10.22.0.5/16","gateway":"10.22.0.1","interface":2},
                    {"address":"10.22.0.1/16","interface":0},
                    {"address":"fd00::5/64","interface":2}]
        });
        assert_eq!(
            result_ips(&r),
            vec![
                "10.22.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        let old = json!({"ip4":{"ip":"10.1.0.2/24"}});
        assert_eq!(
            result_ips(&old),
            vec!["10.1.0.2".parse::<IpAddr>().unwrap()]
        );
        assert!(version_at_least("1.0.0", (0, 4, 0)));
        assert!(!version_at_least("0.3.1", (0, 4, 0)));
    }
}

//! berthd's configuration: TOML file + command-line overrides -> a validated [`Config`].
//!
//! Everything is validated while parsing (values that need checking are newtypes that
//! deserialize through `TryFrom<String>`), so that a bad value is reported with the file,
//! line and key, and before any socket is bound. Unknown keys are refused.
//!
//! [`DEFAULT_TOML`] is the commented default config (`berthd config default`), built in
//! from `manifests/config.toml`; a test keeps it equal to [`Config::default`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_cni::{NetworkMode, PodCidr};
use berth_engine::images::reference::ImageRef;
use berth_engine::images::registry::{HostConfig, RegistryConfig};
use berth_engine::{CgroupDriver, EngineConfig};
use serde::{Deserialize, Serialize};

/// Where berthd looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/config.toml";

/// The default config, with comments; `berthd config default` prints it and packages
/// install it. One file, `manifests/config.toml`, so the two cannot drift.
pub const DEFAULT_TOML: &str = include_str!("../../manifests/config.toml");

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub root: PathBuf,
    pub state: PathBuf,
    pub grpc: GrpcConfig,
    pub log: LogConfig,
    pub cgroup: CgroupConfig,
    pub network: NetworkConfig,
    pub metrics: MetricsConfig,
    pub streaming: StreamingConfig,
    pub images: ImagesConfig,
    pub security: SecurityConfig,
    pub cdi: CdiConfig,
    pub registries: BTreeMap<String, HostConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CdiConfig {
    /// Directories of CDI device specs, in rising priority.
    pub spec_dirs: Vec<PathBuf>,
}

impl Default for CdiConfig {
    fn default() -> Self {
        CdiConfig {
            spec_dirs: vec![PathBuf::from("/etc/cdi"), PathBuf::from("/var/run/cdi")],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Refuse hostPath volumes of berth's root, state directory and CRI socket to
    /// non-privileged containers.
    pub protect_runtime_paths: bool,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            protect_runtime_paths: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub listen: MetricsListen,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: MetricsListen(Some(
                "127.0.0.1:9464"
                    .parse()
                    .unwrap_or(std::net::SocketAddr::from(([127, 0, 0, 1], 9464))),
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingConfig {
    pub listen: std::net::SocketAddr,
    pub token_ttl_seconds: u64,
    pub idle_timeout_seconds: u64,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            token_ttl_seconds: 60,
            idle_timeout_seconds: 4 * 3600,
        }
    }
}

/// The metrics endpoint's address, or none ("").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MetricsListen(pub Option<std::net::SocketAddr>);

impl TryFrom<String> for MetricsListen {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(MetricsListen(None));
        }
        s.parse()
            .map(|a| MetricsListen(Some(a)))
            .map_err(|_| format!("invalid metrics address {s:?}: expected host:port such as 127.0.0.1:9464, or \"\" to turn it off"))
    }
}

impl From<MetricsListen> for String {
    fn from(m: MetricsListen) -> String {
        m.0.map(|a| a.to_string()).unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    pub max_concurrent_downloads: usize,
    pub pinned: Vec<ImageName>,
    pub sync_layers: bool,
    /// Image archives imported at start-up and when they appear (empty: none).
    pub preload_dir: Option<PathBuf>,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            max_concurrent_downloads: 3,
            pinned: Vec::new(),
            sync_layers: true,
            preload_dir: None,
        }
    }
}

/// An image reference, checked at parse time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageName(String);

impl TryFrom<String> for ImageName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse::<ImageRef>()
            .map(|_| ImageName(s))
            .map_err(|e| e.to_string())
    }
}

impl From<ImageName> for String {
    fn from(n: ImageName) -> String {
        n.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    pub listen: PathBuf,
    pub shutdown_grace_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: LogLevel,
}

/// A tracing filter directive string, checked at parse time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LogLevel(String);

impl LogLevel {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for LogLevel {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        tracing_subscriber::EnvFilter::builder()
            .parse(&s)
            .map_err(|e| format!("invalid log level {s:?}: {e}"))?;
        Ok(LogLevel(s))
    }
}

impl From<LogLevel> for String {
    fn from(l: LogLevel) -> String {
        l.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CgroupConfig {
    pub driver: CgroupDriver,
    pub parent: CgroupParent,
}

/// A cgroup path component chain such as `berth` or `kubepods/berth`, checked at parse time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CgroupParent(String);

impl TryFrom<String> for CgroupParent {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.trim_matches('/')
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
        if ok {
            Ok(CgroupParent(s.trim_matches('/').to_owned()))
        } else {
            Err(format!(
                "invalid cgroup parent {s:?}: expected names separated by '/', without '..'"
            ))
        }
    }
}

impl From<CgroupParent> for String {
    fn from(p: CgroupParent) -> String {
        p.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    pub mode: NetworkMode,
    pub pod_cidr: PodCidrs,
    pub bridge: IfName,
    pub mtu: Mtu,
    pub nft_table: NftName,
    pub remove_idle: bool,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dirs: Vec<PathBuf>,
}

/// A network interface name (1-15 characters of letters, digits, '-', '_' and '.').
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IfName(String);

impl TryFrom<String> for IfName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = (1..=15).contains(&s.len())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && s != "."
            && s != "..";
        if ok {
            Ok(IfName(s))
        } else {
            Err(format!(
                "invalid interface name {s:?}: 1 to 15 letters, digits, '-', '_' or '.'"
            ))
        }
    }
}

impl From<IfName> for String {
    fn from(p: IfName) -> String {
        p.0
    }
}

/// An nftables table name (letters, digits, '-' and '_', starting with a letter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NftName(String);

impl TryFrom<String> for NftName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = (1..=64).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        if ok {
            Ok(NftName(s))
        } else {
            Err(format!(
                "invalid nftables table name {s:?}: up to 64 letters, digits, '-' or '_', starting with a letter"
            ))
        }
    }
}

impl From<NftName> for String {
    fn from(p: NftName) -> String {
        p.0
    }
}

/// A pod interface MTU: 0 (the uplink's) or 576 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Mtu(u32);

impl TryFrom<u32> for Mtu {
    type Error = String;
    fn try_from(v: u32) -> Result<Self, String> {
        if v == 0 || (576..=65535).contains(&v) {
            Ok(Mtu(v))
        } else {
            Err(format!("invalid mtu {v}: 0 (automatic) or 576 to 65535"))
        }
    }
}

impl From<Mtu> for u32 {
    fn from(m: Mtu) -> u32 {
        m.0
    }
}

/// A comma-separated list of pod CIDRs, checked at parse time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "String", into = "String")]
pub struct PodCidrs(Vec<PodCidr>);

impl TryFrom<String> for PodCidrs {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        PodCidr::parse_list(&s)
            .map(PodCidrs)
            .map_err(|e| e.to_string())
    }
}

impl From<PodCidrs> for String {
    fn from(p: PodCidrs) -> String {
        p.0.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from("/var/lib/berth"),
            state: PathBuf::from("/run/berth"),
            grpc: GrpcConfig::default(),
            log: LogConfig::default(),
            cgroup: CgroupConfig::default(),
            network: NetworkConfig::default(),
            metrics: MetricsConfig::default(),
            streaming: StreamingConfig::default(),
            images: ImagesConfig::default(),
            security: SecurityConfig::default(),
            cdi: CdiConfig::default(),
            registries: BTreeMap::new(),
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            listen: PathBuf::from("/run/berth/berth.sock"),
            shutdown_grace_seconds: 10,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: LogLevel("info".into()),
        }
    }
}

impl Default for CgroupConfig {
    fn default() -> Self {
        CgroupConfig {
            driver: CgroupDriver::Cgroupfs,
            parent: CgroupParent("berth".into()),
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            mode: NetworkMode::Builtin,
            pod_cidr: PodCidrs::try_from("10.88.0.0/16".to_owned()).unwrap_or_default(),
            bridge: IfName("berth0".into()),
            mtu: Mtu(0),
            nft_table: NftName("berth".into()),
            remove_idle: false,
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            cni_bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
        }
    }
}

/// A config that could not be loaded; the message names the file, line and key.
#[derive(Debug, thiserror::Error)]
#[error("config {path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

/// Values from the command line that override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub root: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub listen: Option<PathBuf>,
}

impl Config {
    /// Parses a config file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let mut cfg = cfg;
        cfg.grpc.listen = unix_endpoint(&cfg.grpc.listen).map_err(|message| ConfigError {
            path: origin.to_owned(),
            message: format!("grpc.listen: {message}"),
        })?;
        cfg.check(origin)?;
        Ok(cfg)
    }

    /// Loads the config: `explicit` must exist; otherwise the default path is used when it
    /// exists, else the built-in defaults. Then applies the overrides.
    pub fn load(
        explicit: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<(Config, String), ConfigError> {
        let (mut cfg, origin) = match explicit {
            Some(p) => (read(p)?, p.display().to_string()),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => (
                read(Path::new(DEFAULT_CONFIG_PATH))?,
                DEFAULT_CONFIG_PATH.to_owned(),
            ),
            None => (Config::default(), "(built-in defaults)".to_owned()),
        };
        if let Some(r) = &overrides.root {
            cfg.root = r.clone();
        }
        if let Some(s) = &overrides.state {
            cfg.state = s.clone();
        }
        if let Some(l) = &overrides.listen {
            cfg.grpc.listen = unix_endpoint(l).map_err(|message| ConfigError {
                path: "command line".into(),
                message: format!("--listen: {message}"),
            })?;
        }
        cfg.check("command line")?;
        Ok((cfg, origin))
    }

    /// Checks that relate several keys or that the type system cannot express.
    fn check(&self, origin: &str) -> Result<(), ConfigError> {
        let err = |message: String| ConfigError {
            path: origin.to_owned(),
            message,
        };
        for (key, p) in [
            ("root", &self.root),
            ("state", &self.state),
            ("grpc.listen", &self.grpc.listen),
        ] {
            if !p.is_absolute() {
                return Err(err(format!("{key} = {p:?}: must be an absolute path")));
            }
        }
        if let Some(d) = &self.images.preload_dir
            && !d.is_absolute()
        {
            return Err(err(format!(
                "images.preload_dir = {d:?}: must be an absolute path"
            )));
        }
        if self.images.max_concurrent_downloads == 0 || self.images.max_concurrent_downloads > 64 {
            return Err(err(format!(
                "images.max_concurrent_downloads = {}: must be between 1 and 64",
                self.images.max_concurrent_downloads
            )));
        }
        if !(1..=3600).contains(&self.streaming.token_ttl_seconds) {
            return Err(err(format!(
                "streaming.token_ttl_seconds = {}: must be between 1 and 3600",
                self.streaming.token_ttl_seconds
            )));
        }
        if self.root == self.state {
            return Err(err(
                "root and state must be different directories (state is emptied at boot)".into(),
            ));
        }
        Ok(())
    }

    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            root: self.root.clone(),
            state: self.state.clone(),
            cgroup_driver: self.cgroup.driver,
            cgroup_parent: self.cgroup.parent.0.clone(),
            network: berth_engine::network::NetworkConfig {
                mode: self.network.mode,
                bridge: self.network.bridge.0.clone(),
                mtu: self.network.mtu.0,
                nft_table: self.network.nft_table.0.clone(),
                remove_idle: self.network.remove_idle,
                cni_conf_dir: self.network.cni_conf_dir.clone(),
                cni_bin_dirs: self.network.cni_bin_dirs.clone(),
            },
            pod_cidrs: self.network.pod_cidr.0.clone(),
            registry: RegistryConfig {
                hosts: self.registries.clone(),
            },
            max_concurrent_downloads: self.images.max_concurrent_downloads,
            pinned_images: self.images.pinned.iter().map(|n| n.0.clone()).collect(),
            sync_layers: self.images.sync_layers,
            monitor_exe: std::env::current_exe()
                .unwrap_or_else(|_| PathBuf::from("/proc/self/exe")),
            kernel: Default::default(),
            cdi_spec_dirs: self.cdi.spec_dirs.clone(),
            protected_paths: if self.security.protect_runtime_paths {
                vec![
                    self.root.clone(),
                    self.state.clone(),
                    self.grpc.listen.clone(),
                ]
            } else {
                Vec::new()
            },
        }
    }
}

/// The CRI socket as a path: a plain path, or the endpoint as kubelet and crictl spell it
/// (`unix:///run/berth/berth.sock`, or gRPC's `unix:/run/berth/berth.sock`).
fn unix_endpoint(p: &Path) -> Result<PathBuf, String> {
    let Some(s) = p.to_str() else {
        return Ok(p.to_owned());
    };
    if let Some(rest) = s
        .strip_prefix("unix://")
        .or_else(|| s.strip_prefix("unix:"))
    {
        return Ok(PathBuf::from(rest));
    }
    match s.split_once("://") {
        Some((scheme, _)) if !s.starts_with('/') => Err(format!(
            "{s:?}: berth serves the CRI on a unix socket only (a path, or unix:///path), not {scheme}"
        )),
        _ => Ok(p.to_owned()),
    }
}

fn read(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.display().to_string(),
        message: format!("cannot read: {e}"),
    })?;
    Config::parse(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_is_the_default_config() {
        assert_eq!(
            Config::parse(DEFAULT_TOML, "default").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn unknown_key_is_refused_with_line_and_key() {
        let e = Config::parse(
            "root = \"/x\"\n\n[grpc]\nlisten_on = \"/y\"\n",
            "/etc/b.toml",
        )
        .unwrap_err();
        let m = e.to_string();
        assert!(m.contains("/etc/b.toml"), "{m}");
        assert!(m.contains("line 4"), "{m}");
        assert!(m.contains("listen_on"), "{m}");
    }

    #[test]
    fn bad_values_are_refused_with_line() {
        for (text, line, needle) in [
            (
                "[network]\npod_cidr = \"10.0.0.1/8\"\n",
                "line 2",
                "host bits",
            ),
            ("[log]\nformat = \"xml\"\n", "line 2", "xml"),
            (
                "[cgroup]\nparent = \"../escape\"\n",
                "line 2",
                "cgroup parent",
            ),
            (
                "[cgroup]\ndriver = \"systemd-ish\"\n",
                "line 2",
                "systemd-ish",
            ),
            (
                "[grpc]\nshutdown_grace_seconds = -1\n",
                "line 2",
                "shutdown_grace_seconds",
            ),
            ("[log]\nlevel = \"info,=[\"\n", "line 2", "log level"),
            ("[images]\npinned = [\"Bad:Name\"]\n", "line 2", "Bad:Name"),
            (
                "[registries.\"docker.io\"]\nmirrors = [\"127.0.0.1:5000\"]\n",
                "line 2",
                "http://",
            ),
            ("[registries.\"x\"]\nmirror = []\n", "line 2", "mirror"),
        ] {
            let m = Config::parse(text, "f").unwrap_err().to_string();
            assert!(m.contains(line) && m.contains(needle), "{text}: {m}");
        }
    }

    #[test]
    fn the_socket_may_be_spelt_as_kubelet_does() {
        let c = Config::parse("[grpc]\nlisten = \"unix:///run/x/b.sock\"\n", "f").unwrap();
        assert_eq!(c.grpc.listen, PathBuf::from("/run/x/b.sock"));
        let c = Config::parse("[grpc]\nlisten = \"unix:/run/x/b.sock\"\n", "f").unwrap();
        assert_eq!(c.grpc.listen, PathBuf::from("/run/x/b.sock"));
        let e = Config::parse("[grpc]\nlisten = \"tcp://127.0.0.1:1\"\n", "f").unwrap_err();
        assert!(e.to_string().contains("unix socket only"), "{e}");
        // unix://relative is a relative path, refused as any other.
        assert!(Config::parse("[grpc]\nlisten = \"unix://run/b.sock\"\n", "f").is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "").unwrap();
        let (cfg, _) = Config::load(
            Some(&p),
            &Overrides {
                listen: Some("unix:///tmp/r.sock".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(cfg.grpc.listen, PathBuf::from("/tmp/r.sock"));
    }

    #[test]
    fn relative_paths_and_equal_dirs_are_refused() {
        assert!(Config::parse("root = \"var/lib\"\n", "f").is_err());
        assert!(Config::parse("root = \"/a\"\nstate = \"/a\"\n", "f").is_err());
    }

    #[test]
    fn overrides_apply() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[network]\npod_cidr = \"10.88.0.0/16\"\n").unwrap();
        let (cfg, origin) = Config::load(
            Some(&p),
            &Overrides {
                root: Some("/tmp/r".into()),
                state: None,
                listen: Some("/tmp/r.sock".into()),
            },
        )
        .unwrap();
        assert_eq!(origin, p.display().to_string());
        assert_eq!(cfg.root, PathBuf::from("/tmp/r"));
        assert_eq!(cfg.grpc.listen, PathBuf::from("/tmp/r.sock"));
        assert_eq!(cfg.engine().pod_cidrs.len(), 1);
        assert!(
            Config::load(
                Some(&dir.path().join("missing.toml")),
                &Overrides::default()
            )
            .is_err()
        );
    }
}

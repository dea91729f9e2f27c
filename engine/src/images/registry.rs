//! Registry hosts: which endpoints serve a registry's names (mirrors first, then the origin),
//! over which protocol and TLS settings, with which credentials.
//!
//! Registries on loopback (`localhost`, 127.0.0.0/8, `::1`) are plain HTTP by default, as in
//! Docker and containerd; any other host is HTTPS unless configured `plain_http`. Mirrors
//! are tried in order; the origin is tried last. Credentials from the CRI request are sent
//! to the origin only: a mirror gets the credentials configured for its own host, if any.
//! Credentials never appear in `Debug` output, logs or error messages.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;

use super::reference::is_loopback_host;

/// Per-host settings from the config file (`[registries."host"]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Mirrors tried before the origin, in order: `http://host:port` or `https://host`.
    pub mirrors: Vec<Mirror>,
    /// Talk plain HTTP to this host (default: only for loopback hosts).
    pub plain_http: Option<bool>,
    /// A PEM file of extra CA certificates for this host.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate. Only for testing: it disables server authentication.
    pub skip_verify: bool,
    /// Use only the mirrors, never the origin (air-gapped nodes).
    pub mirrors_only: bool,
}

/// A mirror URL, checked when the config is read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mirror {
    pub host: String,
    pub plain_http: bool,
}

impl TryFrom<String> for Mirror {
    type Error = BadMirror;
    fn try_from(s: String) -> Result<Self, BadMirror> {
        let (host, plain_http) = parse_mirror(&s)?;
        Ok(Mirror { host, plain_http })
    }
}

impl From<Mirror> for String {
    fn from(m: Mirror) -> String {
        format!(
            "{}://{}",
            if m.plain_http { "http" } else { "https" },
            m.host
        )
    }
}

/// Registry settings of the whole node.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    pub hosts: BTreeMap<String, HostConfig>,
}

/// Where one attempt goes.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host and port, as used in URLs.
    pub host: String,
    pub plain_http: bool,
    pub ca_file: Option<PathBuf>,
    pub skip_verify: bool,
    pub is_mirror: bool,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}://{}{}",
            if self.plain_http { "http" } else { "https" },
            self.host,
            if self.is_mirror { " (mirror)" } else { "" }
        )
    }
}

/// A mirror URL that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("registry mirror {url:?}: {reason}")]
pub struct BadMirror {
    pub url: String,
    pub reason: &'static str,
}

/// Parses `scheme://host[:port][/]` into (host, plain_http).
pub fn parse_mirror(url: &str) -> Result<(String, bool), BadMirror> {
    let bad = |reason| BadMirror {
        url: url.to_owned(),
        reason,
    };
    let (plain, rest) = if let Some(r) = url.strip_prefix("http://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (false, r)
    } else {
        return Err(bad("must start with http:// or https://"));
    };
    let host = rest.strip_suffix('/').unwrap_or(rest);
    if host.is_empty() || host.contains('/') || host.contains('@') || host.contains('?') {
        return Err(bad(
            "must be scheme://host[:port] without a path or credentials",
        ));
    }
    Ok((host.to_owned(), plain))
}

impl RegistryConfig {
    /// The endpoints to try for a registry domain, in order.
    pub fn endpoints(&self, domain: &str) -> Vec<Endpoint> {
        let host_cfg = self.hosts.get(domain).cloned().unwrap_or_default();
        let mut out = Vec::new();
        for m in &host_cfg.mirrors {
            let (host, plain) = (m.host.clone(), m.plain_http);
            let mcfg = self.hosts.get(&host).cloned().unwrap_or_default();
            out.push(Endpoint {
                plain_http: plain,
                ca_file: mcfg.ca_file.clone(),
                skip_verify: mcfg.skip_verify,
                host,
                is_mirror: true,
            });
        }
        if !host_cfg.mirrors_only || out.is_empty() {
            let origin = if domain == "docker.io" {
                "index.docker.io".to_owned()
            } else {
                domain.to_owned()
            };
            out.push(Endpoint {
                plain_http: host_cfg
                    .plain_http
                    .unwrap_or_else(|| is_loopback_host(domain)),
                ca_file: host_cfg.ca_file.clone(),
                skip_verify: host_cfg.skip_verify,
                host: origin,
                is_mirror: false,
            });
        }
        out
    }
}

/// Credentials for a pull, from CRI's AuthConfig.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// A bearer token for the registry itself (CRI `registry_token`).
    RegistryToken(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::Anonymous => "Anonymous",
            Credentials::Basic { .. } => "Basic(<redacted>)",
            Credentials::RegistryToken(_) => "RegistryToken(<redacted>)",
        })
    }
}

impl Credentials {
    fn to_auth(&self) -> RegistryAuth {
        match self {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Credentials::RegistryToken(t) => RegistryAuth::Bearer(t.clone()),
        }
    }

    /// Every secret string, so that error messages can be scrubbed of them.
    pub fn secrets(&self) -> Vec<&str> {
        match self {
            Credentials::Anonymous => vec![],
            Credentials::Basic { password, .. } => vec![password.as_str()],
            Credentials::RegistryToken(t) => vec![t.as_str()],
        }
    }
}

/// Errors building a registry client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("registry {host}: cannot read CA file {path}: {source}")]
    CaFile {
        host: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A client for one endpoint, with the credentials that endpoint gets.
pub struct EndpointClient {
    pub endpoint: Endpoint,
    pub client: oci_client::Client,
    pub auth: RegistryAuth,
}

impl std::fmt::Debug for EndpointClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointClient")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Installs the process-wide TLS crypto provider once (rustls with ring).
fn ensure_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl EndpointClient {
    /// A fresh client: tokens and credentials are never shared between pulls.
    pub fn new(
        endpoint: Endpoint,
        origin_credentials: &Credentials,
    ) -> Result<EndpointClient, ClientError> {
        ensure_crypto_provider();
        let mut extra = Vec::new();
        if let Some(path) = &endpoint.ca_file {
            let data = std::fs::read(path).map_err(|source| ClientError::CaFile {
                host: endpoint.host.clone(),
                path: path.clone(),
                source,
            })?;
            extra.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        let config = ClientConfig {
            protocol: if endpoint.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: endpoint.skip_verify,
            extra_root_certificates: extra,
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(60)),
            user_agent: concat!("berth/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let auth = if endpoint.is_mirror {
            RegistryAuth::Anonymous
        } else {
            origin_credentials.to_auth()
        };
        Ok(EndpointClient {
            client: oci_client::Client::new(config),
            endpoint,
            auth,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_come_first_and_loopback_is_plain_http() {
        let mut hosts = BTreeMap::new();
        hosts.insert(
            "docker.io".to_owned(),
            HostConfig {
                mirrors: vec![
                    "http://127.0.0.1:5000".to_owned().try_into().unwrap(),
                    "https://mirror.example".to_owned().try_into().unwrap(),
                ],
                ..HostConfig::default()
            },
        );
        let cfg = RegistryConfig { hosts };
        let eps = cfg.endpoints("docker.io");
        assert_eq!(
            format!("{eps:?}"),
            "[http://127.0.0.1:5000 (mirror), https://mirror.example (mirror), https://index.docker.io]"
        );
        assert_eq!(
            format!("{:?}", cfg.endpoints("127.0.0.1:5000")),
            "[http://127.0.0.1:5000]"
        );
        assert_eq!(
            format!("{:?}", cfg.endpoints("registry.k8s.io")),
            "[https://registry.k8s.io]"
        );
    }

    #[test]
    fn mirrors_only_skips_the_origin() {
        let mut hosts = BTreeMap::new();
        hosts.insert(
            "registry.k8s.io".to_owned(),
            HostConfig {
                mirrors: vec!["http://localhost:5000".to_owned().try_into().unwrap()],
                mirrors_only: true,
                ..HostConfig::default()
            },
        );
        let cfg = RegistryConfig { hosts };
        assert_eq!(
            format!("{:?}", cfg.endpoints("registry.k8s.io")),
            "[http://localhost:5000 (mirror)]"
        );
    }

    #[test]
    fn mirror_urls_are_checked() {
        assert_eq!(
            parse_mirror("http://h:5000/").unwrap(),
            ("h:5000".into(), true)
        );
        for bad in [
            "h:5000",
            "ftp://h",
            "https://u:p@h",
            "https://h/path",
            "https://",
        ] {
            assert!(parse_mirror(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_are_redacted() {
        let c = Credentials::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}

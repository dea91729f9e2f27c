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
    /// An OAuth2 refresh token (CRI `identity_token`), exchanged at the registry's token
    /// service for an access token before each pull.
    IdentityToken(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::Anonymous => "Anonymous",
            Credentials::Basic { .. } => "Basic(<redacted>)",
            Credentials::RegistryToken(_) => "RegistryToken(<redacted>)",
            Credentials::IdentityToken(_) => "IdentityToken(<redacted>)",
        })
    }
}

impl Credentials {
    /// Every secret string, so that error messages can be scrubbed of them.
    pub fn secrets(&self) -> Vec<&str> {
        match self {
            Credentials::Anonymous => vec![],
            Credentials::Basic { password, .. } => vec![password.as_str()],
            Credentials::RegistryToken(t) | Credentials::IdentityToken(t) => vec![t.as_str()],
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
    #[error("registry {host}: {message}")]
    Token { host: String, message: String },
}

/// A client for one endpoint, with the credentials that endpoint gets.
#[derive(Clone)]
pub struct EndpointClient {
    pub endpoint: Endpoint,
    pub client: oci_client::Client,
    pub auth: RegistryAuth,
    /// For the requests berth makes itself (manifests, read with a bound), with the same
    /// TLS settings as `client`.
    pub http: reqwest::Client,
    /// The Bearer token of this endpoint's pull, once asked for (None: no token service).
    token: std::sync::Arc<tokio::sync::OnceCell<Option<String>>>,
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
    /// A fresh client: tokens and credentials are never shared between pulls. The origin
    /// gets the pull's credentials (an identity token is exchanged for an access token
    /// here); a mirror pulls anonymously.
    pub async fn new(
        endpoint: Endpoint,
        origin_credentials: &Credentials,
        repository: &str,
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
        let http = http_client(&endpoint, &extra).map_err(|message| ClientError::Token {
            host: endpoint.host.clone(),
            message,
        })?;
        let auth = if endpoint.is_mirror {
            RegistryAuth::Anonymous
        } else {
            match origin_credentials {
                Credentials::Anonymous => RegistryAuth::Anonymous,
                Credentials::Basic { username, password } => {
                    RegistryAuth::Basic(username.clone(), password.clone())
                }
                Credentials::RegistryToken(t) => RegistryAuth::Bearer(t.clone()),
                Credentials::IdentityToken(t) => RegistryAuth::Bearer(
                    exchange_identity_token(&endpoint, &extra, repository, t).await?,
                ),
            }
        };
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
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        };
        Ok(EndpointClient {
            client: oci_client::Client::new(config),
            endpoint,
            auth,
            http,
            token: Default::default(),
        })
    }

    /// The URL of a manifest (by digest, else tag) at this endpoint.
    pub fn manifest_url(&self, oref: &oci_client::Reference) -> String {
        let scheme = if self.endpoint.plain_http {
            "http"
        } else {
            "https"
        };
        let r = oref
            .digest()
            .map(str::to_owned)
            .or_else(|| oref.tag().map(str::to_owned))
            .unwrap_or_else(|| "latest".into());
        format!(
            "{scheme}://{}/v2/{}/manifests/{r}",
            oref.resolve_registry(),
            oref.repository()
        )
    }

    /// The Authorization header value for this endpoint's pulls: the Bearer token of its
    /// token service (asked once, and shared with `client`'s own requests), the given
    /// token, or Basic credentials; None for anonymous access.
    pub async fn authorization(
        &self,
        oref: &oci_client::Reference,
    ) -> Result<Option<String>, oci_client::errors::OciDistributionError> {
        let token = self
            .token
            .get_or_try_init(|| async {
                self.client
                    .auth(oref, &self.auth, oci_client::RegistryOperation::Pull)
                    .await
            })
            .await?;
        Ok(match (token, &self.auth) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            (None, RegistryAuth::Bearer(t)) => Some(format!("Bearer {t}")),
            (None, RegistryAuth::Basic(u, p)) => {
                use base64::Engine as _;
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                ))
            }
            (None, _) => None,
        })
    }
}

/// A reqwest client with an endpoint's TLS settings and berth's timeouts.
fn http_client(
    endpoint: &Endpoint,
    extra_roots: &[Certificate],
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .danger_accept_invalid_certs(endpoint.skip_verify);
    for c in extra_roots {
        let cert = reqwest::Certificate::from_pem(&c.data).map_err(|e| format!("CA file: {e}"))?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build().map_err(|e| format!("http client: {e}"))
}

const USER_AGENT: &str = concat!("berth/", env!("CARGO_PKG_VERSION"));

/// Parses `Bearer realm="...",service="...",scope="..."` into its parameters.
pub fn parse_bearer_challenge(header: &str) -> Option<BTreeMap<String, String>> {
    let rest = header
        .trim()
        .strip_prefix("Bearer ")
        .or_else(|| header.trim().strip_prefix("bearer "))?;
    let mut out = BTreeMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remainder) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (q[..end].to_owned(), &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        out.insert(key, value);
        s = remainder.trim_start().trim_start_matches(',').trim_start();
    }
    Some(out)
}

/// Exchanges an OAuth2 refresh token for an access token at the registry's token service
/// (the realm of its Bearer challenge), as Docker does for identity tokens.
async fn exchange_identity_token(
    endpoint: &Endpoint,
    extra_roots: &[Certificate],
    repository: &str,
    refresh_token: &str,
) -> Result<String, ClientError> {
    let err = |message: String| ClientError::Token {
        host: endpoint.host.clone(),
        message,
    };
    let http = http_client(endpoint, extra_roots).map_err(err)?;
    let scheme = if endpoint.plain_http { "http" } else { "https" };
    let ping = http
        .get(format!("{scheme}://{}/v2/", endpoint.host))
        .send()
        .await
        .map_err(|e| err(format!("GET /v2/: {e}")))?;
    let challenge = ping
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_bearer_challenge)
        .ok_or_else(|| {
            err(
                "an identity token was given but the registry offers no Bearer token service"
                    .into(),
            )
        })?;
    let realm = challenge
        .get("realm")
        .ok_or_else(|| err("Bearer challenge without a realm".into()))?;
    let scope = format!("repository:{repository}:pull");
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", "berth"),
        ("scope", scope.as_str()),
    ];
    if let Some(service) = challenge.get("service") {
        form.push(("service", service.as_str()));
    }
    let resp = http
        .post(realm)
        .form(&form)
        .send()
        .await
        .map_err(|e| err(format!("token service {realm}: {e}")))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| err(format!("token service {realm}: {e}")))?;
    if !status.is_success() {
        return Err(err(format!(
            "token service {realm} refused the identity token: HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(512)])
                .replace(refresh_token, "<redacted>")
        )));
    }
    #[derive(serde::Deserialize)]
    struct TokenResponse {
        #[serde(default)]
        access_token: String,
        #[serde(default)]
        token: String,
    }
    let t: TokenResponse = serde_json::from_slice(&body)
        .map_err(|e| err(format!("token service {realm}: bad JSON: {e}")))?;
    let access = if t.access_token.is_empty() {
        t.token
    } else {
        t.access_token
    };
    if access.is_empty() {
        return Err(err(format!(
            "token service {realm} returned no access token"
        )));
    }
    Ok(access)
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
    fn bearer_challenges_parse() {
        let c = parse_bearer_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c["realm"], "https://auth.example/token");
        assert_eq!(c["service"], "registry.example");
        assert_eq!(c["scope"], "repository:a/b:pull,push");
        assert!(parse_bearer_challenge(r#"Basic realm="x""#).is_none());
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
